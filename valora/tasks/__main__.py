"""``python -m valora.tasks --out DIR --tasks all --train 200 --val 50 --seed 0``: write the
task suite (or a comma-separated subset of it) and its ``tasks.json`` manifest; ``--pretrain N``
adds a captioning split per task for pre-training a base."""

from __future__ import annotations

import argparse

from valora.tasks.registry import TASKS, generate_suite


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m valora.tasks", description=__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--tasks", default="all", help=f"'all' or a comma-separated subset of {','.join(TASKS)}"
    )
    parser.add_argument("--train", type=int, default=200, help="train examples per task")
    parser.add_argument("--val", type=int, default=50, help="val examples per task")
    parser.add_argument(
        "--pretrain",
        type=int,
        default=0,
        help="captioning examples per task for pre-training a base (pretrain.jsonl; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="non-negative seed")
    return parser.parse_args(argv)


def task_names(spec: str) -> list[str]:
    """'all' -> every task; else the comma-separated names, blanks and repeats dropped."""
    if spec.strip() == "all":
        return list(TASKS)
    return list(dict.fromkeys(name.strip() for name in spec.split(",") if name.strip()))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Generate and print seconds per task; -> those timings."""
    args = parse_args(argv)
    names = task_names(args.tasks)
    seconds = generate_suite(args.out, names, args.train, args.val, args.seed, args.pretrain)
    for name, took in seconds.items():
        print(f"{name:12s} {args.train:5d} train + {args.val:4d} val  {took:6.2f} s")
    print(f"wrote {args.out}/tasks.json")
    return seconds


if __name__ == "__main__":
    main()
