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


def run_engine(llm: LLM, batch: int, prompt_len: int, output_len: int) -> dict:
    gen = torch.Generator().manual_seed(batch)
    prompts = [
        torch.randint(0, 150000, (prompt_len,), generator=gen).tolist() for _ in range(batch)
    ]
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    torch.cuda.synchronize()
    end = time.perf_counter()
    first = max(o.first_token_time for o in outs)
    last = max(o.finish_time for o in outs)
    return {
        "output_tok_s": batch * output_len / (end - start),
        "decode_tok_s": batch * (output_len - 1) / (last - first),
    }


def hf_generate(llm: LLM, setting: str, batch: int, prompt_len: int, output_len: int) -> float:
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
    ids = torch.randint(0, 150000, (batch, prompt_len), device="cuda")
    kwargs = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False)
    hf.generate(ids[:, :8], max_new_tokens=4, do_sample=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    hf.generate(ids, **kwargs)
    torch.cuda.synchronize()
    rate = batch * output_len / (time.perf_counter() - start)
    del hf
    torch.cuda.empty_cache()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-setting", default="qwen2-vl-7b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--hf-batch-sizes", type=int, nargs="*", default=[1, 32])
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/engine.json")
    args = parser.parse_args()

    max_tokens = max(args.batch_sizes) * (args.prompt_len + args.output_len)
    llm = LLM(args.model_setting, device="cuda", dtype="bfloat16", num_token=max_tokens + 4096)
    cfg = llm.engine.model_config
    bandwidth = copy_bandwidth()
    text_params = sum(
        p.numel() for n, p in llm.engine.model.named_parameters() if not n.startswith("visual.")
    )
    weight_bytes = 2 * text_params
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
    record = {
        "benchmark": "engine_decode",
        "gpu": torch.cuda.get_device_name(),
        "versions": _versions(),
        "command": " ".join([sys.executable, *sys.argv]),
        "model_setting": args.model_setting,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "lm_weight_bytes": weight_bytes,
        "results": rows,
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
