"""Reading ``benchmarks/run_exp.py`` result files (for the figure scripts; no valora import).

A result file is JSONL: one line per request, then a summary record ``{"summary": {...},
"label": ..., "args": {...}, ...}``. A run's policy is its label's first ``_`` field (the suite
names runs ``<policy>_...``)."""

from __future__ import annotations

import json
from pathlib import Path

POLICY_STYLE = {
    "valora": ("VaLoRA (ours)", "C3", "o"),
    "slora": ("S-LoRA", "C2", "^"),
    "punica": ("Punica", "C0", "s"),
    "dlora": ("dLoRA", "C1", "v"),
}


def load_run(path: Path) -> dict:
    """-> {"policy", "label", "args", "summary", "requests": [per-request dicts]}."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    record = next(line for line in reversed(lines) if "summary" in line)
    requests = [line for line in lines if "summary" not in line]
    label = record.get("label") or path.stem
    return {
        "policy": label.split("_")[0],
        "label": label,
        "args": record.get("args", {}),
        "summary": record["summary"],
        "requests": requests,
    }


def load_runs(directories: list[str]) -> list[dict]:
    runs = []
    for directory in directories:
        runs += [load_run(p) for p in sorted(Path(directory).glob("*.jsonl"))]
    if not runs:
        raise SystemExit(f"no result files (*.jsonl) in {directories}")
    return runs


def save(fig, out: str) -> None:
    """PNG and PDF next to each other."""
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path.with_suffix(".png"), dpi=150, bbox_inches="tight")
    fig.savefig(out_path.with_suffix(".pdf"), bbox_inches="tight")
    print(f"wrote {out_path.with_suffix('.png')} and .pdf")


def figure_from_json(description: str, results_help: str, default_out: str, draw) -> None:
    """The command line of a figure drawn from one JSON result file: ``draw(record, out)``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("results", help=results_help)
    parser.add_argument("--out", default=default_out, help="PNG and PDF (suffix replaced)")
    args = parser.parse_args()
    with open(args.results) as f:
        draw(json.load(f), args.out)
