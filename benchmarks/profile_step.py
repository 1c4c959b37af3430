"""Profile the engine's steps on one synthetic batch: which mode each step ran, how long it took,
and (torch profiler, last round) where the GPU time went, by kernel.

    python benchmarks/profile_step.py --engine_args "--model-setting qwen2-vl-7b --dummy \\
        --quantization w4a16 --num-adapter 16 --no-prefix-caching" --task vqa vat \\
        --adapters lora0 lora0 lora1 lora2 --modes mixture merged unmerged --rounds 2 \\
        --out profile.json

For each of ``--modes`` an engine is built from the server's flags (adapters loaded and warmed up
like the server's) with the VaLoRA policy's mode pinned through its options (``policy_options``
``force_mode``: unmerged | merged | mixture; ``auto``: none, the policy decides); the ``--task``s
are profiled in turn on it. Every round sends the same requests at once (``--adapters``: one
request each, ``base`` for none) and steps the engine until they finish; without
``--no-prefix-caching`` later rounds hit the prefix cache and skip their prefills. The profiler
records the last round, so the earlier ones absorb first-use costs.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
from dataclasses import replace

import numpy as np
from harness import DEFAULT_DATASET, provenance

from replay.client import engine_prompt
from replay.datasets import load_sharegpt4v
from replay.workload import build_workload


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine_args", required=True, help="the server's flags")
    p.add_argument(
        "--task",
        nargs="+",
        default=["vqa"],
        choices=["vqa", "vat"],
        help="profiled in turn on each mode's engine",
    )
    p.add_argument("--adapters", nargs="+", default=["lora0", "lora0", "lora1", "base"])
    p.add_argument(
        "--modes", nargs="+", default=["auto"], choices=["auto", "unmerged", "merged", "mixture"]
    )
    p.add_argument("--max-output-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--top", type=int, default=30, help="kernels listed")
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument(
        "--host",
        action="store_true",
        help="profile the last round's Python (cProfile), not its kernels",
    )
    p.add_argument("--out")
    return p


def run_round(engine, prompts: list, adapters: list, tokens: int, tag: str) -> list[dict]:
    from valora.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    for i, (prompt, adapter) in enumerate(zip(prompts, adapters)):
        engine.add_request(f"{tag}-{i}", prompt, params, adapter)
    steps = []
    before = engine.snapshot().steps  # per-mode step totals
    while engine.has_unfinished():
        engine.step()
        after = engine.snapshot().steps
        executed = sum(after["steps"].values()) - sum(before["steps"].values())
        seconds = sum(after["step_seconds"].values()) - sum(before["step_seconds"].values())
        before = after
        if not executed:
            continue  # nothing was scheduled: no forward ran
        record = engine.runner.step_record(seconds)  # seconds: the forward only
        steps.append(
            {
                "mode": record.mode,
                "tokens": record.num_tokens,
                "lora_rows": record.num_lora_rows,
                "segments": record.num_segments,
                "ms": 1e3 * seconds,
            }
        )
    return steps


def kernel_profile(run, top: int) -> tuple[list, str]:
    """run() under the torch profiler -> (its result, the kernel table by GPU time)."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        result = run()
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    return result, prof.key_averages().table(sort_by=sort, row_limit=top)


def host_profile(run, top: int) -> tuple[list, str]:
    """run() under cProfile -> (its result, the functions by own time, then by cumulative)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    result = prof.runcall(run)
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return result, text.getvalue()


def profile_mode(engine, prompts: list, adapters: list, args, mode: str) -> dict:
    tokens = args.max_output_tokens
    rounds = [
        run_round(engine, prompts, adapters, tokens, f"{mode}{i}") for i in range(args.rounds - 1)
    ]
    last = lambda: run_round(engine, prompts, adapters, tokens, f"{mode}-last")  # noqa: E731
    if args.host:
        rounds_last, table = host_profile(last, args.top)
    else:
        rounds_last, table = kernel_profile(last, args.top)
    rounds.append(rounds_last)
    print(f"== {mode} ==\n{table}")
    for i, steps in enumerate(rounds):
        print(
            f"{mode} round {i}: "
            + ", ".join(f"{s['mode']} {s['tokens']} tok {s['ms']:.1f} ms" for s in steps[:8])
        )
    return {"rounds": rounds, "kernels": table}


def pinned_engine(engine_args: str, mode: str):
    """The server's engine (``build_server``'s steps: adapters loaded, warm-up) with the VaLoRA
    policy's mode pinned by its ``force_mode`` option (``auto``: not pinned)."""
    from valora.adapters.peft_loader import dummy_ranks
    from valora.engine import build_engine
    from valora.server.cli import build_parser as server_parser
    from valora.server.cli import engine_config_from, lora_modules

    server = server_parser().parse_args(shlex.split(engine_args))
    config = engine_config_from(server)
    options = dict(config.scheduler.policy_options)
    if mode != "auto":
        options["force_mode"] = mode
    config = replace(config, scheduler=replace(config.scheduler, policy_options=options))
    engine = build_engine(config)
    for name, path in lora_modules(server.lora_modules).items():
        engine.load_adapter(name, path)
    for i, rank in enumerate(dummy_ranks(server.num_adapter, server.dummy_ranks)):
        engine.load_dummy_adapter(f"lora{i}", rank, seed=config.seed + 1 + i)
    if server.warmup == "on" or (server.warmup == "auto" and engine.config.on_gpu):
        from valora.engine.warmup import warmup

        warmup(engine)
    return engine


def free_gpu_memory() -> None:
    """Collect a dropped engine (reference cycles hold it) and return its cached blocks, so the
    next engine's KV cache sizing sees the whole GPU."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    adapters = [None if a == "base" else a for a in args.adapters]
    run = provenance(sys.argv if argv is None else [__file__, *argv])
    result = {"args": vars(args), **run, "tasks": {task: {} for task in args.task}}
    specs = {
        task: build_workload(
            np.zeros(len(adapters)),
            np.arange(len(adapters)),
            task,
            load_sharegpt4v(args.dataset),
            seed=0,
            max_output_tokens=args.max_output_tokens,
        )
        for task in args.task
    }
    for mode in args.modes:  # one engine per mode: the mode is part of its configuration
        engine = pinned_engine(args.engine_args, mode)
        for task in args.task:
            prompts = [engine_prompt(engine.tokenizer, spec) for spec in specs[task]]
            result["tasks"][task][mode] = profile_mode(
                engine, prompts, adapters, args, f"{task}-{mode}"
            )
        del engine
        free_gpu_memory()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
