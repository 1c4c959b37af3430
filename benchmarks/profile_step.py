"""Profile the engine's steps on one synthetic batch: which mode each step ran, how long it took,
and (torch profiler, last round) where the GPU time went, by kernel.

    python benchmarks/profile_step.py --engine_args "--model-setting qwen2-vl-7b --dummy \\
        --quantization w4a16 --num-adapter 16 --no-prefix-caching" --task vqa vat \\
        --adapters lora0 lora0 lora1 lora2 --modes mixture merged unmerged --rounds 2 \\
        --out profile.json

The engine is built from the server's flags (and warmed up like the server; without
``--no-prefix-caching`` later rounds hit the prefix cache and skip their prefills). For each of
``--modes`` (the VaLoRA policy's mode pinned: unmerged | merged | mixture; ``auto``: the policy
decides) every round sends the same requests at once (``--adapters``: one request each, ``base``
for none) and steps the engine until they finish; the profiler records the last round, so the
earlier ones absorb first-use costs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import numpy as np
from harness import DEFAULT_DATASET, provenance

from replay.client import engine_prompt
from replay.datasets import load_sharegpt4v
from replay.workload import build_workload


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine_args", required=True, help="the server's flags")
    p.add_argument("--task", nargs="+", default=["vqa"], choices=["vqa", "vat"],
                   help="profiled in turn on one engine")  # fmt: skip
    p.add_argument("--adapters", nargs="+", default=["lora0", "lora0", "lora1", "base"])
    p.add_argument("--modes", nargs="+", default=["auto"],
                   choices=["auto", "unmerged", "merged", "mixture"])  # fmt: skip
    p.add_argument("--max-output-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--top", type=int, default=30, help="kernels listed")
    p.add_argument("--dataset", default=str(DEFAULT_DATASET))
    p.add_argument("--host", action="store_true",
                   help="profile the last round's Python (cProfile), not its kernels")  # fmt: skip
    p.add_argument("--out")
    return p


def run_round(engine, prompts: list, adapters: list, tokens: int, tag: str) -> list[dict]:
    from valora.sampling_params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    for i, (prompt, adapter) in enumerate(zip(prompts, adapters)):
        engine.add_request(f"{tag}-{i}", prompt, params, adapter)
    steps = []
    while engine.has_unfinished():
        before = sum(engine.stats.step_seconds.values())
        executed = sum(engine.stats.steps.values())
        engine.step()
        if sum(engine.stats.steps.values()) == executed:
            continue  # nothing was scheduled: no forward ran
        seconds = sum(engine.stats.step_seconds.values()) - before  # the forward only
        record = engine.runner.step_record(seconds)
        steps.append({"mode": record.mode, "tokens": record.num_tokens,
                      "lora_rows": record.num_lora_rows, "segments": record.num_segments,
                      "ms": 1e3 * seconds})  # fmt: skip
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
    rounds = [run_round(engine, prompts, adapters, tokens, f"{mode}{i}")
              for i in range(args.rounds - 1)]  # fmt: skip
    last = lambda: run_round(engine, prompts, adapters, tokens, f"{mode}-last")  # noqa: E731
    if args.host:
        rounds_last, table = host_profile(last, args.top)
    else:
        rounds_last, table = kernel_profile(last, args.top)
    rounds.append(rounds_last)
    print(f"== {mode} ==\n{table}")
    for i, steps in enumerate(rounds):
        print(f"{mode} round {i}: " + ", ".join(f"{s['mode']} {s['tokens']} tok {s['ms']:.1f} ms"
                                                for s in steps[:8]))  # fmt: skip
    return {"rounds": rounds, "kernels": table}


def main(argv: list[str] | None = None) -> dict:
    from valora.server.cli import build_parser as server_parser
    from valora.server.cli import build_server

    args = build_parser().parse_args(argv)
    _, engine, _ = build_server(server_parser().parse_args(shlex.split(args.engine_args)))
    adapters = [None if a == "base" else a for a in args.adapters]
    run = provenance(sys.argv if argv is None else [__file__, *argv])
    result = {"args": vars(args), **run, "tasks": {}}
    for task in args.task:
        specs = build_workload(np.zeros(len(adapters)), np.arange(len(adapters)), task,
                               load_sharegpt4v(args.dataset), seed=0,
                               max_output_tokens=args.max_output_tokens)  # fmt: skip
        prompts = [engine_prompt(engine.tokenizer, spec) for spec in specs]
        modes = result["tasks"].setdefault(task, {})
        for mode in args.modes:
            engine.policy.force_mode = None if mode == "auto" else mode
            modes[mode] = profile_mode(engine, prompts, adapters, args, f"{task}-{mode}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
