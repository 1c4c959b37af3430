"""Video classification on the in-process engine: a task head against generating the label, and
video throughput against the offered rate.

    python benchmarks/bench_vat.py --model-setting qwen2-vl-7b \\
        --out benchmarks/results/vat/bench_vat_h100.json
    python benchmarks/bench_vat.py --model-setting tiny --device cpu --num-clips 2 --frames 4 \\
        --latency-clips 1 --rates 2 --duration 1 --out /tmp/bench_vat.json   # smoke test

Clips: ``--num-clips`` synthetic clips (``replay.clips``: distinct seeds, so nothing is shared)
of ``--frames`` frames at ``--size``, one instruction after the video, each request on one of
``--num-adapters`` dummy adapters carrying a task head of ``--num-classes`` classes (ranks
cycling ``--ranks``). Prompts are processed once before timing (``engine.process_prompt``; its
time per clip is reported apart): the figures are the engine's (vision tower, prefill, head or
decode). The prefix cache is off unless ``--prefix-caching``, so a clip seen again is computed
again.

(a) ``head_vs_generate``: the head (``classify=True``, one prefill) and greedy generation of
``max_tokens=k`` for each ``--ks`` (ignore_eos), each on the same clips and adapters: latency
of one request alone (``--latency-clips`` clips, one after another) and the total time of a
batch of all ``--num-clips`` clips submitted at once.

(b) ``throughput``: classify requests arriving as a Poisson process at each ``--rates`` rate for
``--duration`` seconds (wall clock, open loop: added at the first step boundary after their
arrival), clips cycled; achieved requests/s and frames/s (completed over the longer of the
arrival window and the time to the last answer: the offered rate while the engine keeps up, its
capacity once it falls behind) and latency (arrival -> answer) mean / p50 / p90.

One JSON file (``--out``; default ``benchmarks/results/vat/bench_vat_<gpu>.json``) with the GPU,
versions, git commit and command (``harness.provenance``) and every figure; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from harness import provenance, wall_time
from tqdm import tqdm

from replay.clips import make_clip_arrays, parse_size
from replay.traces import poisson_arrivals
from replay.vat import VAT_VIDEO_INSTRUCTION
from valora.llm import LLM
from valora.sampling_params import SamplingParams

LIBRARIES = ("torch", "triton", "transformers", "av")
PROMPT = (
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>"
    f"{VAT_VIDEO_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-setting", default="qwen2-vl-7b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-clips", type=int, default=24)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=parse_size, default=(336, 448), help="HEIGHTxWIDTH")
    p.add_argument("--num-adapters", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=8)
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8], help="generated label tokens")
    p.add_argument("--latency-clips", type=int, default=8, help="batch-1 requests per mode")
    p.add_argument("--rates", type=float, nargs="*", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--duration", type=float, default=8.0, help="seconds of arrivals per rate")
    p.add_argument("--prefix-caching", action="store_true")
    p.add_argument("--lora-backend", help="default: the policy's on a GPU, torch on the CPU")
    p.add_argument("--policy", default="valora")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--warmup", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--num-token", type=int, help="KV-cache tokens (default: by GPU memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON result (default benchmarks/results/vat/bench_vat_<gpu>)")
    return p


def build_llm(args: argparse.Namespace) -> LLM:
    """The engine, head-carrying dummy adapters lora0.., and the server's warm-up on a GPU."""
    from valora.adapters.peft_loader import dummy_ranks

    on_cpu = args.device == "cpu"
    llm = LLM(
        args.model_setting,
        device=args.device,
        enable_lora=True,
        max_loras=max(args.num_adapters, 1),
        backend=args.lora_backend or ("torch" if on_cpu else None),
        policy=args.policy,
        enable_prefix_caching=args.prefix_caching,
        enforce_eager=args.enforce_eager,
        num_token=args.num_token or (32768 if on_cpu else None),
    )
    for i, rank in enumerate(dummy_ranks(args.num_adapters, args.ranks)):
        llm.engine.load_dummy_adapter(
            f"lora{i}", rank, seed=args.seed + 1 + i, num_classes=args.num_classes
        )
    if args.warmup == "on" or (args.warmup == "auto" and not on_cpu):
        from valora.engine.warmup import warmup

        warmup(llm.engine)
    return llm


def prepare_prompts(llm: LLM, args: argparse.Namespace) -> tuple[list, dict]:
    """Each clip's processed prompt, and the clip figures (tokens per clip, processing time)."""
    clips = make_clip_arrays(args.num_clips, args.frames, args.size, args.seed)
    prompts, seconds = [], []
    for frames in tqdm(clips, desc="processing clips", unit="clip"):
        start = time.perf_counter()
        prompts.append(llm.engine.process_prompt(_video_prompt(frames)))
        seconds.append(time.perf_counter() - start)
    tokens = [len(p.token_ids) for p in prompts]
    return prompts, {
        "num_clips": len(clips),
        "frames": args.frames,
        "size": list(args.size),
        "prompt_tokens_per_clip": {
            "mean": float(np.mean(tokens)),
            "min": min(tokens),
            "max": max(tokens),
        },
        "preprocess_ms_per_clip": 1e3 * float(np.mean(seconds)),
    }


def _video_prompt(frames: np.ndarray) -> dict:
    return {"prompt": PROMPT, "multi_modal_data": {"video": frames}}


class Runner:
    """Adds requests to the engine and steps it; request ids stay unique across phases."""

    def __init__(self, llm: LLM, num_adapters: int) -> None:
        self.engine = llm.engine
        self.num_adapters = num_adapters
        self.next_id = 0
        self.steps = 0  # engine steps run (a per-mode step count explains its latency)

    def add(self, prompt, index: int, max_tokens: int) -> str:
        """Request ``index``'s prompt on adapter ``index % num_adapters``; ``max_tokens`` 0: the
        task head, else greedy generation of exactly that many tokens."""
        request_id = f"vat-{self.next_id}"
        self.next_id += 1
        adapter = f"lora{index % self.num_adapters}"
        if max_tokens == 0:
            self.engine.add_request(request_id, prompt, adapter=adapter, classify=True)
        else:
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
            self.engine.add_request(request_id, prompt, params, adapter)
        return request_id

    def step(self, finished: dict[str, float], start: float) -> None:
        """One engine step; finished requests' end times (seconds after ``start``)."""
        self.steps += 1
        for out in self.engine.step():
            if out.finished:
                if out.error:
                    raise RuntimeError(f"{out.request_id}: {out.error}")
                finished[out.request_id] = time.perf_counter() - start

    def drain(self, start: float) -> dict[str, float]:
        finished: dict[str, float] = {}
        while self.engine.has_unfinished():
            self.step(finished, start)
        return finished


def measure_mode(runner: Runner, prompts: list, max_tokens: int, latency_clips: int) -> dict:
    """One mode of (a): batch-1 latencies over ``latency_clips`` clips, then one batch of all."""
    latencies, steps_before = [], runner.steps
    for i in range(min(latency_clips, len(prompts))):
        start = time.perf_counter()
        runner.add(prompts[i], i, max_tokens)
        latencies.append(max(runner.drain(start).values()))
    steps = (runner.steps - steps_before) / max(len(latencies), 1)
    start = time.perf_counter()
    ids = [runner.add(p, i, max_tokens) for i, p in enumerate(prompts)]
    finished, total_s = wall_time(lambda: runner.drain(start))
    return {
        "mode": "head" if max_tokens == 0 else f"generate_{max_tokens}",
        "max_tokens": max_tokens,
        "batch1_latency_ms": _latency_stats(latencies),
        "batch1_steps_per_request": steps,
        "batch": len(ids),
        "batch_total_s": total_s,
        "batch_mean_latency_ms": 1e3 * float(np.mean([finished[i] for i in ids])),
    }


def _latency_stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {
        "mean": float(ms.mean()),
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }


def head_vs_generate(runner: Runner, prompts: list, args: argparse.Namespace) -> list[dict]:
    """(a), after one warm-up request per mode."""
    modes = [0, *args.ks]
    for k in modes:
        runner.add(prompts[0], 0, k)
        runner.drain(time.perf_counter())
    rows = []
    for k in tqdm(modes, desc="head vs generate", unit="mode"):
        rows.append(measure_mode(runner, prompts, k, args.latency_clips))
    return rows


def offered_rate(runner: Runner, prompts: list, rate: float, args: argparse.Namespace) -> dict:
    """(b) at one rate: Poisson classify arrivals, open loop on the wall clock."""
    arrivals = poisson_arrivals(rate, args.duration, args.seed + int(rate * 1000))
    if arrivals.size == 0:
        arrivals = np.zeros(1)
    ids, finished, start = [], {}, time.perf_counter()
    while len(ids) < arrivals.size or runner.engine.has_unfinished():
        now = time.perf_counter() - start
        while len(ids) < arrivals.size and arrivals[len(ids)] <= now:
            i = len(ids)
            ids.append(runner.add(prompts[i % len(prompts)], i, 0))
        if runner.engine.has_unfinished():
            runner.step(finished, start)
        else:
            time.sleep(max(0.0, min(arrivals[len(ids)] - now, 0.05)))
    latencies = [finished[r] - a for r, a in zip(ids, arrivals)]
    span = max(args.duration, max(finished.values()))  # the window, or until the last answer
    return {
        "offered_rate": rate,
        "requests": len(ids),
        "duration_s": args.duration,
        "span_s": span,
        "achieved_req_s": len(ids) / span,
        "achieved_frames_s": len(ids) * args.frames / span,
        "latency_ms": _latency_stats(latencies),
    }


def throughput(runner: Runner, prompts: list, args: argparse.Namespace) -> list[dict]:
    return [
        offered_rate(runner, prompts, rate, args)
        for rate in tqdm(args.rates, desc="offered rates", unit="rate")
    ]


def default_out(gpu: str) -> str:
    """``benchmarks/results/vat/bench_vat_<gpu>.json``: the GPU's model (``h100``) or ``cpu``."""
    match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", gpu)
    slug = match.group(1).lower() if match else re.sub(r"[^a-z0-9]+", "_", gpu.lower())
    return f"benchmarks/results/vat/bench_vat_{slug}.json"


def format_table(record: dict) -> str:
    clip = record["clips"]
    lines = [
        f"vat bench, {record['gpu']}, {record['model_setting']}: {clip['num_clips']} clips of "
        f"{clip['frames']} frames {clip['size'][0]}x{clip['size'][1]}, "
        f"{clip['prompt_tokens_per_clip']['mean']:.0f} tokens/clip, "
        f"processing {clip['preprocess_ms_per_clip']:.1f} ms/clip",
        f"{'mode':<12}{'b1 mean ms':>12}{'b1 p50 ms':>12}{'batch':>7}{'batch s':>10}",
    ]
    for r in record["head_vs_generate"]:
        b1 = r["batch1_latency_ms"]
        lines.append(
            f"{r['mode']:<12}{b1['mean']:>12.1f}{b1['p50']:>12.1f}{r['batch']:>7}"
            f"{r['batch_total_s']:>10.3f}"
        )
    lines.append(f"{'rate':>6}{'reqs':>6}{'req/s':>9}{'frames/s':>10}{'p50 ms':>10}{'p90 ms':>10}")
    for r in record["throughput"]:
        lat = r["latency_ms"]
        lines.append(
            f"{r['offered_rate']:>6g}{r['requests']:>6}{r['achieved_req_s']:>9.2f}"
            f"{r['achieved_frames_s']:>10.1f}{lat['p50']:>10.1f}{lat['p90']:>10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    llm, startup_s = wall_time(lambda: build_llm(args))
    prompts, clips = prepare_prompts(llm, args)
    print(f"prompt tokens per clip: {clips['prompt_tokens_per_clip']}", flush=True)
    runner = Runner(llm, args.num_adapters)
    record = {
        "benchmark": "vat",
        **provenance(sys.argv if argv is None else [__file__, *argv], LIBRARIES),
        "model_setting": args.model_setting,
        "args": vars(args),
        "startup_s": startup_s,
        "clips": clips,
        "head_vs_generate": head_vs_generate(runner, prompts, args),
        "throughput": throughput(runner, prompts, args),
    }
    print(format_table(record), flush=True)
    out = Path(args.out or default_out(record["gpu"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
