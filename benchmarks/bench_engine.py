"""Engine decode throughput on dummy weights, next to its memory floor and HF transformers.

For each batch size B: B prompts of ``--prompt-len`` random tokens, ``--output-len`` tokens each
(ignore_eos), greedy. Reported per B: output tok/s over the whole run, decode tok/s (after the
first token), the floor (LM weight bytes + KV bytes read per decode step, over the measured
device copy bandwidth) and, in the same run, HF ``generate`` on the same weights.

    python benchmarks/bench_engine.py --model-setting qwen2-vl-7b \
        --out benchmarks/results/engine.json
"""

from __future__ import annotations

import argparse
import json

import torch
from harness import (
    copy_bandwidth,
    hf_model_from,
    profile_decode,
    provenance,
    run_engine,
    time_hf_generate,
    wall_time,
)

from valora.llm import LLM


def decode_weight_bytes(llm: LLM) -> int:
    """Language-model weight bytes one decode step reads: every text weight except the input
    embedding table, of which only B rows are read (a tied table is read whole, as the head)."""
    model = llm.engine.model
    total = 0
    for name, p in model.named_parameters():
        if name.startswith("visual.") or (
            name == "model.embed_tokens.weight" and model.lm_head is not None
        ):
            continue
        total += p.numel() * p.element_size()
    return total


def hf_generate(llm: LLM, setting: str, batch: int, prompt_len: int, output_len: int) -> float:
    hf = hf_model_from(llm, setting)
    rate = time_hf_generate(hf, batch, prompt_len, output_len)
    del hf
    torch.cuda.empty_cache()
    return rate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-setting", default="qwen2-vl-7b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--hf-batch-sizes", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/engine.json")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    parser.add_argument(
        "--profile-batch",
        type=int,
        default=32,
        help="batch whose decode steps are profiled (0: none)",
    )
    return parser.parse_args()


def build_llm(args: argparse.Namespace) -> tuple[LLM, float]:
    """The engine sized for the largest batch, and its startup wall time."""
    max_tokens = max(args.batch_sizes) * (args.prompt_len + args.output_len)
    return wall_time(
        lambda: LLM(
            args.model_setting,
            device="cuda",
            dtype="bfloat16",
            num_token=max_tokens + 4096,
            max_num_seqs=max(args.batch_sizes),
            enforce_eager=args.enforce_eager,
        )
    )


def kv_bytes_per_token(llm: LLM) -> int:
    cfg = llm.engine.model_config
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2


def measure_batch(
    llm: LLM, args: argparse.Namespace, batch: int, floor: tuple[float, int, int]
) -> dict:
    """One result row: engine throughput at ``batch``, its floor and (if asked) HF generate.
    ``floor`` is (bandwidth, weight_bytes, kv_per_token)."""
    bandwidth, weight_bytes, kv_per_token = floor
    result = run_engine(llm, batch, args.prompt_len, args.output_len)
    mean_context = args.prompt_len + args.output_len / 2
    step_bytes = weight_bytes + batch * mean_context * kv_per_token
    floor_tok_s = batch / (step_bytes / bandwidth)
    row = {
        "batch": batch,
        **result,
        "floor_tok_s": floor_tok_s,
        "decode_fraction_of_floor": result["decode_tok_s"] / floor_tok_s,
    }
    if batch in args.hf_batch_sizes:
        row["hf_generate_tok_s"] = hf_generate(
            llm, args.model_setting, batch, args.prompt_len, args.output_len
        )
    return row


def profile_if_asked(llm: LLM, args: argparse.Namespace) -> dict | None:
    if not args.profile_batch:
        return None
    profile = profile_decode(llm, args.profile_batch, args.prompt_len)
    print(json.dumps(profile)[:2000], flush=True)
    return profile


def main() -> None:
    args = parse_args()
    llm, startup_s = build_llm(args)
    bandwidth = copy_bandwidth()
    weight_bytes = decode_weight_bytes(llm)
    kv_per_token = kv_bytes_per_token(llm)
    rows = []
    for batch in args.batch_sizes:
        row = measure_batch(llm, args, batch, (bandwidth, weight_bytes, kv_per_token))
        print(json.dumps(row), flush=True)
        rows.append(row)
    profile = profile_if_asked(llm, args)
    record = {
        "benchmark": "engine_decode",
        **provenance(),
        "model_setting": args.model_setting,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "lm_weight_bytes_read_per_step": weight_bytes,
        "kv_bytes_per_token": kv_per_token,
        "cuda_graphs": not args.enforce_eager,
        "startup_s": startup_s,
        "results": rows,
        "decode_profile": profile,
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
