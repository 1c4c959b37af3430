"""``valora-eval`` / ``python -m valora.eval``: task accuracy of a base model and its adapters.

Offline (an in-process ``LLM``) or against a running server; writes a results JSON and prints a
task x adapter table of each task's primary metric (``draw/eval_tasks.py`` draws it).

    python -m valora.eval --data tasks/ --split val --server http://127.0.0.1:8000 \\
        --adapters base sql vqa --task-adapter sql=sql --out results.json
    python -m valora.eval --data tasks/val.jsonl --model tiny --num-dummy-adapters 2 \\
        --adapters base lora0 lora1 --head lora1 --device cpu --max-tokens 16 --out r.json
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from valora.cli_fields import add_cli_args, from_cli, key_value_pairs
from valora.config import EngineConfig, LoRAConfig, SchedulerConfig
from valora.evaluation.dataset import load_examples
from valora.evaluation.evaluate import BASE, evaluate
from valora.evaluation.report import format_table, results_record, write_results

CONFIGS = (EngineConfig, SchedulerConfig, LoRAConfig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="valora-eval", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a JSONL file, or a directory of SPLIT.jsonl")
    p.add_argument("--split", default="val", help="DATA/SPLIT.jsonl or DATA/*/SPLIT.jsonl")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="URL of a running server (http://host:port[/v1])")
    where.add_argument("--model", help="checkpoint directory or model setting (offline)")
    p.add_argument("--adapters", nargs="+", default=[BASE], help='"base" = the base model')
    p.add_argument(
        "--task-adapter",
        nargs="*",
        default=[],
        metavar="TASK=NAME",
        help="evaluate NAME on TASK only (base and unmapped adapters: every task)",
    )
    p.add_argument(
        "--head",
        nargs="*",
        default=[],
        metavar="NAME",
        help="adapters scored through their task head (label == answer)",
    )
    p.add_argument("--tasks", nargs="*", help="only these tasks")
    p.add_argument("--limit", type=int, help="the first N examples of each task")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", default="results.json")
    p.add_argument("--no-predictions", action="store_true", help="leave them out of --out")
    p.add_argument("--no-tqdm", action="store_true")
    server = p.add_argument_group("server")
    server.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    server.add_argument("--api-key", default="EMPTY")
    server.add_argument("--served-model-name", help="the base model's name (default: asked)")
    offline = p.add_argument_group("offline engine")
    offline.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=PATH")
    offline.add_argument("--num-dummy-adapters", type=int, default=0, help="lora0..loraN-1")
    for cls in CONFIGS:
        add_cli_args(cls, offline)
    return p


def select(examples: list[dict], tasks: list[str] | None, limit: int | None) -> list[dict]:
    """The examples of ``tasks`` (all when None), the first ``limit`` of each task."""
    counts: dict[str, int] = {}
    chosen = []
    for example in examples:
        task = example["task"]
        if (tasks and task not in tasks) or (limit is not None and counts.get(task, 0) >= limit):
            continue
        counts[task] = counts.get(task, 0) + 1
        chosen.append(example)
    if not chosen:
        raise SystemExit("no examples to evaluate")
    return chosen


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The engine flags given with a value other than their default, as ``LLM`` keywords."""
    kwargs = {}
    for cls in CONFIGS:
        given, default = from_cli(cls, args), cls()
        for f in dataclasses.fields(cls):
            if getattr(given, f.name) != getattr(default, f.name):
                kwargs[f.name] = getattr(given, f.name)
    return kwargs


def build_runner(args: argparse.Namespace):
    """The predictor: a ``ServerRunner`` for ``--server``, else an ``OfflineRunner``."""
    if args.server:
        from valora.evaluation.server import ServerRunner

        return ServerRunner(
            args.server,
            max_tokens=args.max_tokens,
            concurrency=args.concurrency,
            api_key=args.api_key,
            base_model=args.served_model_name,
            use_tqdm=not args.no_tqdm,
        )
    from valora.evaluation.offline import OfflineRunner
    from valora.llm import LLM

    kwargs = engine_kwargs(args)
    lora_given = any(k in {f.name for f in dataclasses.fields(LoRAConfig)} for k in kwargs)
    llm = LLM(
        args.model,
        lora_modules=dict(key_value_pairs(args.lora_modules, "--lora-modules")),
        num_dummy_adapters=args.num_dummy_adapters,
        enable_lora=True if lora_given else None,
        **kwargs,
    )
    return OfflineRunner(llm, max_tokens=args.max_tokens, use_tqdm=not args.no_tqdm)


def run(argv: list[str]) -> dict:
    """Evaluate, write ``--out``, print the table; returns the record written."""
    args = build_parser().parse_args(argv)
    task_adapters: dict[str, list[str]] = {}
    for task, name in key_value_pairs(args.task_adapter, "--task-adapter"):
        task_adapters.setdefault(task, []).append(name)
    examples = select(load_examples(args.data, args.split), args.tasks, args.limit)
    runner = build_runner(args)
    try:
        result = evaluate(examples, runner, args.adapters, task_adapters, args.head)
    finally:
        getattr(runner, "close", lambda: None)()
    command = "python -m valora.eval " + shlex.join(argv)
    record = results_record(result, command, setup(args), predictions=not args.no_predictions)
    write_results(args.out, record)
    print(format_table(result.rows))
    print(f"wrote {args.out}")
    return record


def setup(args: argparse.Namespace) -> dict:
    """This run's own flags, and (offline) the engine flags given."""
    engine_fields = {f.name for cls in CONFIGS for f in dataclasses.fields(cls)} - {"model"}
    skip = engine_fields | {"api_key"}  # never write the key into a results file
    own = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    return own if args.server else {**own, "engine": engine_kwargs(args)}


def main(argv: list[str] | None = None) -> None:
    run(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    main()
