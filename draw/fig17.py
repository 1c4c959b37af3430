"""Figure 17: LoRA op cost vs number of tokens, ATMM vs the baselines (decode and prefill panels,
one row per target width N), with the measured floor as a dashed line.

    python draw/fig17.py benchmarks/results/kernels_h100.jsonl --out draw/fig17.png

Reads the JSONL that ``benchmarks/bench_kernels.py`` writes (first line: the run's header).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "atmm": ("ATMM (ours)", "C3", "o"),
    "sgmv": ("Punica SGMV", "C0", "s"),
    "mbgmv": ("S-LoRA MBGMV/MBGMM", "C2", "^"),
    "einsum": ("dLoRA einsum", "C1", "v"),
    "torch": ("per-segment loop", "C7", "x"),
}


def load(path: str) -> tuple[dict, list[dict]]:
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return lines[0], lines[1:]


def draw(header: dict, rows: list[dict], out: str) -> None:
    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(len(targets), 2, figsize=(10, 3.2 * len(targets)), squeeze=False)
    for i, target in enumerate(targets):
        for j, phase in enumerate(("decode", "prefill")):
            ax = axes[i][j]
            series, floor = defaultdict(list), {}
            for r in rows:
                if r["target"] == target and r["phase"] == phase:
                    series[r["backend"]].append((r["tokens"], r["ms"]))
                    floor[r["tokens"]] = r["floor_ms"]
            for backend, points in series.items():
                label, color, marker = STYLE.get(backend, (backend, None, "."))
                xs, ys = zip(*sorted(points))
                ax.plot(xs, ys, label=label, color=color, marker=marker, markersize=4)
            xs = sorted(floor)
            ax.plot(xs, [floor[x] for x in xs], "k--", linewidth=1, label="floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            n = next(r["N"] for r in rows if r["target"] == target)
            ax.set_title(f"{phase}, {target} (K={rows[0]['K']}, N={n})", fontsize=9)
            ax.set_xlabel("tokens in batch")
            ax.set_ylabel("op cost (ms)")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"LoRA op cost, {header['gpu']}, {header['dtype']}, {header['ranks']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(out, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--out", default="draw/fig17.png")
    args = parser.parse_args()
    header, rows = load(args.results)
    draw(header, rows, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
