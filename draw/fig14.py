"""Figure 14: average latency per token vs request rate, one line per policy, one panel per task
(vqa, vat), from the fig14 suite's result files; prints VaLoRA's ratio to each baseline.

    python draw/fig14.py benchmarks/results/fig14_h100 --out draw/fig14_h100
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from results import POLICY_STYLE, load_runs, save  # noqa: E402


def series(runs: list[dict]) -> dict:
    """{task: {policy: [(rate, ms per token)]}} sorted by rate."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for run in runs:
        value = run["summary"].get("avg_latency_per_token_s")
        if value is not None:
            out[run["args"]["task"]][run["policy"]].append((run["args"]["req_rate"], value * 1e3))
    return {task: {p: sorted(points) for p, points in per.items()} for task, per in out.items()}


def ratios(data: dict) -> list[str]:
    lines = []
    for task, per in sorted(data.items()):
        ours = dict(per.get("valora", []))
        for policy, points in sorted(per.items()):
            if policy == "valora":
                continue
            text = ", ".join(
                f"{rate:g}: {ours[rate] / v:.2f}x" for rate, v in points if rate in ours and v > 0
            )
            lines.append(f"{task} valora/{policy} latency per token: {text}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", help="directories of run_exp.py JSONL results")
    p.add_argument("--out", default="draw/fig14")
    args = p.parse_args()
    data = series(load_runs(args.dirs))
    tasks = [t for t in ("vqa", "vat") if t in data]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for policy, points in data[task].items():
            name, color, marker = POLICY_STYLE.get(policy, (policy, "C7", "x"))
            ax.plot(*zip(*points), label=name, color=color, marker=marker)
        ax.set_title({"vqa": "visual retrieval (vqa)", "vat": "video analytics (vat)"}[task])
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel("avg latency per token (ms)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    save(fig, args.out)
    print("\n".join(ratios(data)))


if __name__ == "__main__":
    main()
