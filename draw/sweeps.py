"""The skewness, adapter-count and rank-mix sweeps: average latency per token per policy against
the swept quantity, from a suite's result files.

    python draw/sweeps.py skewness benchmarks/results/skewness_h100 --out draw/skewness_h100
    python draw/sweeps.py adapters benchmarks/results/adapters_h100 --out draw/adapters_h100
    python draw/sweeps.py rank-mix benchmarks/results/rank_mix_h100 --out draw/rank_mix_h100
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from results import POLICY_STYLE, load_runs, save  # noqa: E402

X = {  # sweep -> (x of a run, axis label, log x)
    "skewness": (lambda run: run["args"]["skewness"], "skewness (share to the hot adapter)", False),
    "adapters": (lambda run: run["args"]["num_adapters"], "number of adapters", True),
    "rank-mix": (lambda run: run["label"].split("_", 1)[1], "adapter ranks", False),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", choices=sorted(X))
    p.add_argument("dirs", nargs="+")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    x_of, label, log_x = X[args.sweep]
    points: dict = defaultdict(list)
    for run in load_runs(args.dirs):
        value = run["summary"].get("avg_latency_per_token_s")
        if value is not None:
            points[run["policy"]].append((x_of(run), value * 1e3))
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for policy, values in sorted(points.items()):
        name, color, marker = POLICY_STYLE.get(policy, (policy, "C7", "x"))
        xs, ys = zip(*sorted(values, key=lambda v: str(v[0]) if args.sweep == "rank-mix" else v))
        ax.plot(
            [str(x) for x in xs] if args.sweep == "rank-mix" else xs,
            ys,
            label=name,
            color=color,
            marker=marker,
        )
    ax.set_xlabel(label)
    ax.set_ylabel("avg latency per token (ms)")
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, args.out)


if __name__ == "__main__":
    main()
