"""Task accuracy: the base model against its adapters, one group of bars per task, each bar the
task's primary metric, from one ``python -m valora.eval`` results file.

    python draw/eval_tasks.py results/eval_val.json --out draw/eval_tasks

Every metric is drawn on one 0-100 axis: exact match, edit similarity and task-head accuracy
as percentages, BLEU as it is. Base is grey; a task-head adapter's bars are hatched.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from results import figure_from_json, save  # noqa: E402

METRIC_NAMES = {
    "exact": "exact match %",
    "bleu": "BLEU",
    "edit": "edit sim. %",
    "classify": "head acc. %",
}
BAR = 0.8  # width of one task's group


def percent(row: dict) -> float:
    """The row's score on 0-100."""
    return row["score"] if row["metric"] == "bleu" else 100 * row["score"]


def colours(adapters: list[str]) -> dict[str, str]:
    others = [a for a in adapters if a != "base"]
    return {"base": "0.6", **{a: f"C{i % 10}" for i, a in enumerate(others)}}


def draw_task(ax, x: float, rows: list[dict], colour: dict[str, str], seen: set) -> None:
    """One task's bars (the adapters that ran on it, side by side), centred at ``x``."""
    width = BAR / len(rows)
    for i, row in enumerate(rows):
        adapter = row["adapter"]
        pos = x - BAR / 2 + (i + 0.5) * width
        label = None if adapter in seen else adapter
        seen.add(adapter)
        hatch = "//" if row.get("mode") == "head" else None
        bar = ax.bar(
            pos, percent(row), width * 0.9, color=colour[adapter], hatch=hatch, label=label
        )
        ax.bar_label(bar, [f"{percent(row):.0f}"], fontsize=7, padding=2)


def draw(record: dict, out: str) -> None:
    rows = record["results"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    adapters = list(dict.fromkeys(r["adapter"] for r in rows))
    adapters = sorted(adapters, key=lambda a: a != "base")  # base first
    colour, seen = colours(adapters), set()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(tasks) + 1.0), 3.6))
    for x, task in enumerate(tasks):
        task_rows = sorted(
            (r for r in rows if r["task"] == task), key=lambda r: adapters.index(r["adapter"])
        )
        draw_task(ax, x, task_rows, colour, seen)
    labels = []
    for task in tasks:
        metrics = dict.fromkeys(r["metric"] for r in rows if r["task"] == task)
        n = next(r["n"] for r in rows if r["task"] == task)
        names = "\n".join(METRIC_NAMES.get(m, m) for m in metrics)
        labels.append(f"{task} (n={n})\n{names}")
    ax.set_xticks(range(len(tasks)), labels, fontsize=8)
    ax.set_ylim(0, 108)
    ax.set_ylabel("score (0-100)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    setup = record.get("setup", {})
    where = setup.get("model") or setup.get("server") or ""
    ax.set_title(
        f"task accuracy: base vs adapters {where} ({setup.get('split', '')})".strip(), fontsize=10
    )
    fig.tight_layout()
    save(fig, out)


def main() -> None:
    figure_from_json(
        __doc__.splitlines()[0], "python -m valora.eval results JSON", "draw/eval_tasks", draw
    )


if __name__ == "__main__":
    main()
