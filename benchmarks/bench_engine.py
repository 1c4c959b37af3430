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
import platform
import sys
import time

import torch

from valora.llm import LLM
from valora.sampling_params import SamplingParams
from valora.weights import checkpoint_tensors


def copy_bandwidth(num_bytes: int = 1 << 30) -> float:
    """Device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * num_bytes * 10 / (time.perf_counter() - start)


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


def profile_decode(llm: LLM, batch: int, prompt_len: int, steps: int = 16,
                   adapters: list[str | None] | None = None) -> dict:  # fmt: skip
    """GPU kernel time per decode step (torch.profiler) next to the wall time per step;
    ``adapters``: one adapter name (or None) per request."""
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator().manual_seed(1234)
    prompts = [torch.randint(0, 150000, (prompt_len,), generator=gen).tolist()
               for _ in range(batch)]  # fmt: skip
    engine = llm.engine
    adapters = adapters or [None] * batch
    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_tokens=steps + 2, ignore_eos=True)
        engine.add_request(f"profile-{i}", prompt, params, adapters[i])
    engine.step()  # prefill
    engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    while engine.has_unfinished():
        engine.step()
    kernels = [e for e in prof.key_averages() if _is_kernel(e)]
    kernels.sort(key=_device_time, reverse=True)
    gpu_us = sum(_device_time(e) for e in kernels) / steps
    return {
        "batch": batch,
        "wall_ms_per_step": wall * 1e3,
        "gpu_kernel_ms_per_step": gpu_us / 1e3,
        "top_kernels_us_per_step": {e.key[:90]: _device_time(e) / steps for e in kernels[:15]},
    }


def _is_kernel(event) -> bool:
    return str(event.device_type).endswith("CUDA") and _device_time(event) > 0


def _device_time(event) -> float:
    return getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)


def run_engine(llm: LLM, batch: int, prompt_len: int, output_len: int,
               adapters: list[str | None] | None = None) -> dict:  # fmt: skip
    gen = torch.Generator().manual_seed(batch)
    prompts = [
        torch.randint(0, 150000, (prompt_len,), generator=gen).tolist() for _ in range(batch)
    ]
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    outs = llm.generate(prompts, params, lora=adapters, use_tqdm=False)
    torch.cuda.synchronize()
    end = time.perf_counter()
    first = max(o.first_token_time for o in outs)
    last = max(o.finish_time for o in outs)
    return {
        "output_tok_s": batch * output_len / (end - start),
        "decode_tok_s": batch * (output_len - 1) / (last - first),
    }


def hf_generate(llm: LLM, setting: str, batch: int, prompt_len: int, output_len: int) -> float:
    hf = hf_model_from(llm, setting)
    rate = time_hf_generate(hf, batch, prompt_len, output_len)
    del hf
    torch.cuda.empty_cache()
    return rate


def time_hf_generate(hf, batch: int, prompt_len: int, output_len: int, **extra) -> float:
    """Output tok/s of one greedy ``generate`` of ``batch`` random prompts (after a warm-up)."""
    ids = torch.randint(0, 150000, (batch, prompt_len), device="cuda")
    kwargs = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False)
    hf.generate(ids[:, :8], max_new_tokens=4, do_sample=False, **extra)
    torch.cuda.synchronize()
    start = time.perf_counter()
    hf.generate(ids, **kwargs, **extra)
    torch.cuda.synchronize()
    return batch * output_len / (time.perf_counter() - start)


def hf_model_from(llm: LLM, setting: str):
    """transformers' Qwen2-VL (bf16, on the GPU) holding the engine's weights."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    import exp_suite

    config = Qwen2VLConfig(**json.loads(json.dumps(dict(exp_suite.MODEL_SETTINGS[setting]))))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            hf = Qwen2VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    state = {}
    for k, v in checkpoint_tensors(llm.engine.model).items():
        k = "model.language_model." + k[6:] if k.startswith("model.") else k
        state["model." + k if k.startswith("visual.") else k] = v
    hf.load_state_dict(state, strict=False)
    hf.tie_weights()
    return hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-setting", default="qwen2-vl-7b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--hf-batch-sizes", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/engine.json")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--profile-batch", type=int, default=32,
                        help="batch whose decode steps are profiled (0: none)")  # fmt: skip
    args = parser.parse_args()

    max_tokens = max(args.batch_sizes) * (args.prompt_len + args.output_len)
    start = time.perf_counter()
    llm = LLM(args.model_setting, device="cuda", dtype="bfloat16", num_token=max_tokens + 4096,
              max_num_seqs=max(args.batch_sizes), enforce_eager=args.enforce_eager)  # fmt: skip
    startup_s = time.perf_counter() - start
    cfg = llm.engine.model_config
    bandwidth = copy_bandwidth()
    weight_bytes = decode_weight_bytes(llm)
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2
    rows = []
    for batch in args.batch_sizes:
        result = run_engine(llm, batch, args.prompt_len, args.output_len)
        mean_context = args.prompt_len + args.output_len / 2
        step_bytes = weight_bytes + batch * mean_context * kv_per_token
        floor_tok_s = batch / (step_bytes / bandwidth)
        row = {"batch": batch, **result, "floor_tok_s": floor_tok_s,
               "decode_fraction_of_floor": result["decode_tok_s"] / floor_tok_s}  # fmt: skip
        if batch in args.hf_batch_sizes:
            row["hf_generate_tok_s"] = hf_generate(
                llm, args.model_setting, batch, args.prompt_len, args.output_len
            )
        print(json.dumps(row), flush=True)
        rows.append(row)
    profile = None
    if args.profile_batch:
        profile = profile_decode(llm, args.profile_batch, args.prompt_len)
        print(json.dumps(profile)[:2000], flush=True)
    record = {
        "benchmark": "engine_decode",
        "gpu": torch.cuda.get_device_name(),
        "versions": _versions(),
        "command": " ".join([sys.executable, *sys.argv]),
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


def _versions() -> dict:
    import transformers
    import triton

    return {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    main()
