"""Video analytics (vat) on one GPU: the task head against generating the label (left), and
video throughput and tail latency against the offered rate (right), from one
``benchmarks/bench_vat.py`` result file.

    python draw/vat.py benchmarks/results/vat/bench_vat_h100.json --out draw/vat_h100

Left: latency of one request alone (mean, whisker to p90) per mode, head vs ``max_tokens=k``,
each bar labelled with the time of a batch of all clips. Right: achieved frames/s (with the
offered frames/s dashed) and p90 latency (right axis) per offered request rate.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from results import figure_from_json, save  # noqa: E402


def mode_label(row: dict) -> str:
    return "task head" if row["max_tokens"] == 0 else f"generate\nk={row['max_tokens']}"


def draw_modes(ax, rows: list[dict]) -> None:
    means = [r["batch1_latency_ms"]["mean"] for r in rows]
    p90s = [r["batch1_latency_ms"]["p90"] for r in rows]
    colors = ["C3" if r["max_tokens"] == 0 else "C0" for r in rows]
    xs = range(len(rows))
    whiskers = [[0] * len(rows), [max(0.0, p - m) for m, p in zip(means, p90s)]]
    bars = ax.bar(xs, means, color=colors, yerr=whiskers, capsize=4)
    for bar, row, top in zip(bars, rows, p90s):
        ax.annotate(
            f"batch {row['batch']}:\n{row['batch_total_s']:.2f} s",
            (bar.get_x() + bar.get_width() / 2, max(top, bar.get_height())),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=7,
        )
    ax.set_xticks(list(xs), [mode_label(r) for r in rows])
    ax.set_ylabel("latency of one request (ms)")
    ax.set_ylim(0, max(p90s + means) * 1.35)
    ax.set_title("classify: task head vs generating the label")
    ax.grid(axis="y", alpha=0.3)


def draw_rates(ax, rows: list[dict], frames: int) -> None:
    rates = [r["offered_rate"] for r in rows]
    ax.plot(rates, [r["achieved_frames_s"] for r in rows], "o-", color="C3", label="frames/s")
    ax.plot(rates, [rate * frames for rate in rates], "k--", linewidth=1, label="offered")
    ax.set_xscale("log", base=2)
    ax.set_xticks(rates, [f"{rate:g}" for rate in rates])
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("achieved frames/s")
    ax.grid(alpha=0.3)
    right = ax.twinx()
    p90 = [r["latency_ms"]["p90"] for r in rows]
    right.plot(rates, p90, "s:", color="C0", label="p90 latency")
    right.set_ylabel("p90 latency, arrival -> answer (ms)")
    right.set_yscale("log")
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper left")
    ax.set_title("video throughput vs offered rate")


def draw(record: dict, out: str) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    draw_modes(left, record["head_vs_generate"])
    draw_rates(right, record["throughput"], record["clips"]["frames"])
    clips = record["clips"]
    height, width = clips["size"]
    tokens = clips["prompt_tokens_per_clip"]["mean"]
    fig.suptitle(
        f"{record['model_setting']} on {record['gpu']}: clips of {clips['frames']} frames "
        f"{height}x{width} ({tokens:.0f} tokens)",
        fontsize=10,
    )
    fig.tight_layout()
    save(fig, out)


def main() -> None:
    figure_from_json(__doc__.splitlines()[0], "bench_vat.py JSON", "draw/vat", draw)


if __name__ == "__main__":
    main()
