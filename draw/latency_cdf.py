"""Latency CDFs per policy (TTFT and end-to-end) for the runs whose name contains ``--match``
(one rate and task of a suite, say ``_vqa_6``).

    python draw/latency_cdf.py benchmarks/results/fig14_h100 --match _vqa_6 \\
        --out draw/latency_cdf_vqa_6_h100
"""

from __future__ import annotations

import argparse

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from results import POLICY_STYLE, load_runs, save  # noqa: E402

METRICS = (("ttft", "time to first token (s)"), ("e2e", "end-to-end latency (s)"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--match", default="", help="substring of the run names to draw")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    runs = [r for r in load_runs(args.dirs) if args.match in r["label"]]
    if not runs:
        raise SystemExit(f"no run matches {args.match!r}")
    fig, axes = plt.subplots(1, len(METRICS), figsize=(10, 3.6))
    for ax, (key, label) in zip(axes, METRICS):
        for run in sorted(runs, key=lambda r: r["label"]):
            values = np.sort([r[key] for r in run["requests"] if r.get(key) is not None])
            if not len(values):
                continue
            name, color, _ = POLICY_STYLE.get(run["policy"], (run["policy"], "C7", "x"))
            ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=name, color=color)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(args.match.strip("_") or "all runs")
    save(fig, args.out)


if __name__ == "__main__":
    main()
