"""Replay a workload against the server (HTTP streaming) or an in-process engine; write one JSON
line per request plus a summary record, and print the summary table.

    python benchmarks/run_exp.py --server http://localhost:8085 --num_adapters 16 \\
        --skewness 0.8 --req_rate 6 --task vqa \\
        --trace_file ../shared/traces/AzureLLMInferenceTrace_code.csv \\
        --out benchmarks/results/fig14/valora_vqa_6.jsonl

Arrivals (``--arrival``): ``per-second`` (the trace's first ``--duration`` seconds that hold at
least ``req_rate`` requests, ``req_rate`` of them sampled from each: VaLoRA's mode), ``rescale``
(the trace's time axis scaled to ``req_rate`` on average, its burstiness kept), ``poisson``,
``gamma`` (``--cv``). Popularity (``--popularity``): ``skewness`` (VaLoRA: that share of the
requests to one hot adapter), ``power`` (S-LoRA, ``--alpha``), ``zipf`` (Punica, ``--zipf_s``),
``uniform``, ``distinct``. Tasks:

- ``vqa``: text + one image, generated (VaLoRA's visual retrieval).
- ``vat``: video analytics mixed with vqa. A ``--vat_share`` of the requests (default 0.5) are
  short video clips classified by their adapter's task head (``/v1/classify``, one prefill, no
  decode); the rest are the vqa requests. Clips come from ``--clips_dir`` (its
  ``manifest.json``, written by ``make_clips.py``), or ``--num_clips`` are generated (into
  ``--clips_dir`` if given, else a scratch directory). Every adapter needs a task head: a server
  started with ``--num-adapter K --dummy-task-classes N`` (the in-process default has both).
- ``vat_images``: VaLoRA's emulation of vat: six still images, one output token (generated).

Popularity assigns every request (vat or vqa) its adapter. Without ``--server`` the engine runs
in this process, built from ``--engine_args`` (the server's flags). Metrics: ``replay.metrics``
(vLLM's definitions, VaLoRA's latency per token; classify requests have no TTFT / TPOT, their
latency is send -> answer) and ``replay.task_metrics``: per task (vat vs vqa) req/s, frames/s
and latency mean / p50 / p90 / p99, in the summary record's ``tasks``; each request's JSON line
has its ``task``, ``classify``, ``label`` and ``video_frames``.

    python benchmarks/make_clips.py --out benchmarks/data/clips --num_clips 64
    python benchmarks/run_exp.py --server http://localhost:8085 --num_adapters 16 \\
        --skewness 0.8 --req_rate 6 --arrival poisson --task vat --vat_share 0.5 \\
        --clips_dir benchmarks/data/clips --out benchmarks/results/vat/valora_vat_6.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
from harness import DEFAULT_DATASET, DEFAULT_TRACE, provenance

from replay import traces
from replay.client import EngineSender, HttpSender, replay
from replay.clips import parse_size
from replay.datasets import load_sharegpt4v
from replay.metrics import (
    engine_stats_delta,
    format_engine_stats,
    format_summary,
    summarize,
    write_jsonl,
)
from replay.popularity import assign_adapters
from replay.vat import build_vat_workload, clips_for_run
from replay.workload import build_workload, workload_stats

_LIBRARIES = ("torch", "triton", "httpx", "numpy", "av")  # versions recorded in the header


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model-setting",
        "--model_setting",
        default="tiny",
        help="recorded in the header; the in-process engine's model",
    )
    p.add_argument("--num_adapters", type=int, default=16)
    p.add_argument("--skewness", type=float, default=0.5)
    p.add_argument("--req_rate", type=float, default=6.0)
    p.add_argument("--task", choices=["vqa", "vat", "vat_images"], default="vqa")
    p.add_argument("--vat_share", type=float, default=0.5, help="vat: share of classify requests")
    p.add_argument("--clips_dir", help="vat: clip directory (manifest.json); generated if none")
    p.add_argument("--num_clips", type=int, default=64, help="vat: clips to generate")
    p.add_argument("--clip_frames", type=int, nargs="+", default=[8], help="generated clips")
    p.add_argument("--clip_fps", type=float, default=4.0, help="generated clips")
    p.add_argument("--clip_size", type=parse_size, default=(336, 448), help="HEIGHTxWIDTH")
    p.add_argument("--trace_file", default=str(DEFAULT_TRACE))
    p.add_argument("--dataset", default=str(DEFAULT_DATASET), help="ShareGPT4V JSON")
    p.add_argument("--image_root", help="image directory (default: the dataset's)")
    p.add_argument("--server", help="http://host:port; none: an in-process engine")
    p.add_argument(
        "--engine_args",
        default="--model-setting tiny --device cpu --num-adapter 4 --dummy-task-classes 8",
        help="in-process engine: the server's flags",
    )
    p.add_argument("--debug", action="store_true", help="8 requests, each result printed")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--arrival", choices=["per-second", "rescale", "poisson", "gamma"], default="per-second"
    )
    p.add_argument("--cv", type=float, default=1.0, help="gamma arrivals' coefficient of variation")
    p.add_argument(
        "--popularity",
        default="skewness",
        choices=["skewness", "power", "zipf", "uniform", "distinct"],
    )
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--zipf_s", type=float, default=1.1)
    p.add_argument("--max_output_tokens", type=int, default=120)
    p.add_argument("--slo", nargs="*", default=[], help="goodput SLOs: ttft:MS tpot:MS e2el:MS")
    p.add_argument("--label", default="", help="recorded in the header (policy name, ...)")
    p.add_argument("--gpu", default="", help="recorded in the header")
    p.add_argument("--out", help="JSONL result file")
    return p


def arrivals(args) -> np.ndarray:
    if args.arrival == "poisson":
        return traces.poisson_arrivals(args.req_rate, args.duration, args.seed)
    if args.arrival == "gamma":
        return traces.gamma_arrivals(args.req_rate, args.cv, args.duration, args.seed)
    trace = traces.load_azure_trace(args.trace_file)
    if args.arrival == "rescale":
        return traces.rescale(trace.arrival_s, args.req_rate, args.duration)
    if args.req_rate != int(args.req_rate):
        raise SystemExit("--arrival per-second needs a whole --req_rate")
    return traces.per_second_sampling(
        trace.aligned_arrival_s, int(args.req_rate), num_seconds=int(args.duration), seed=args.seed
    )


def workload(args, scratch: str | None = None) -> list:
    """The request list; ``scratch``: where ``--task vat`` writes generated clips without
    ``--clips_dir`` (they must outlive the replay)."""
    times = arrivals(args)
    if args.debug:
        times = times[:8]
    adapters = (
        assign_adapters(
            len(times),
            args.num_adapters,
            args.popularity,
            args.seed,
            skewness=args.skewness,
            alpha=args.alpha,
            zipf_s=args.zipf_s,
        )
        if args.num_adapters > 0
        else (np.full(len(times), -1))
    )
    samples = load_sharegpt4v(args.dataset, args.image_root)
    if args.task != "vat":
        return build_workload(
            times, adapters, args.task, samples, args.seed, max_output_tokens=args.max_output_tokens
        )
    clips = clips_for_run(
        args.clips_dir,
        args.num_clips,
        scratch or tempfile.mkdtemp(prefix="vat_clips_"),
        num_frames=args.clip_frames,
        fps=args.clip_fps,
        size=args.clip_size,
        seed=args.seed,
    )
    return build_vat_workload(
        times,
        adapters,
        samples,
        clips,
        args.seed,
        vat_share=args.vat_share,
        max_output_tokens=args.max_output_tokens,
    )


async def run(args, specs: list) -> tuple[list, float, dict | None]:
    """-> (results, wall seconds, the engine's step totals over the run)."""
    if args.server:
        sender = HttpSender(args.server)
        try:
            await sender.connect()
        except BaseException:
            await sender.close()
            raise
    else:
        from valora.server.cli import build_parser as server_parser
        from valora.server.cli import build_server

        _, engine, _ = build_server(server_parser().parse_args(shlex.split(args.engine_args)))
        check_task_heads(engine, specs)
        sender = EngineSender(engine)
    try:
        before = await sender.engine_stats()
        results, duration = await replay(specs, sender, progress=not args.debug)
        return results, duration, engine_stats_delta(before, await sender.engine_stats())
    finally:
        await sender.close()


def check_task_heads(engine, specs: list) -> None:
    """Refuse to start when a classify request's adapter has no task head (in-process engine)."""
    for name in sorted({s.adapter for s in specs if s.classify}):
        if not engine.has_adapter(name) or engine.task_labels(name) is None:
            raise SystemExit(
                f"vat requests go to adapter {name!r}, which has no task head: add "
                "--dummy-task-classes N (and --num-adapter K) to --engine_args"
            )


def parse_slos(items: list[str]) -> dict[str, float] | None:
    slos = {}
    for item in items:
        name, _, value = item.partition(":")
        if name not in ("ttft", "tpot", "e2el") or not value:
            raise SystemExit(f"--slo {item!r}: use ttft:MS, tpot:MS or e2el:MS")
        slos[name] = float(value)
    return slos or None


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vat_clips_") as scratch:
        specs = workload(args, scratch)
        print(json.dumps({"workload": workload_stats(specs)}), flush=True)
        results, duration, engine_stats = asyncio.run(run(args, specs))
    if args.debug:
        for r in results:
            print(json.dumps(r.to_json()))
    summary = summarize(results, duration, slos=parse_slos(args.slo))
    title = f"{args.label or 'replay'} {args.task} {args.req_rate} req/s"
    print(format_summary(summary, title), flush=True)
    print(format_engine_stats(engine_stats), flush=True)
    origin = provenance(sys.argv if argv is None else [__file__, *argv], _LIBRARIES)
    # the GPU this process sees serves only an in-process engine; a server's is --gpu's
    gpu = args.gpu or ("" if args.server else origin["gpu"])
    header = {
        "label": args.label,
        **origin,
        "gpu": gpu,
        "args": vars(args),
        "engine_stats": engine_stats,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(args.out, results, summary, header)
    return summary


if __name__ == "__main__":
    main()
