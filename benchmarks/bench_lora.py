"""LoRA overhead in the engine, HF + PEFT mixed-adapter generate, and the merge/unmerge switch.

On dummy weights (default ``qwen2-vl-7b``, bf16), one run measures:

1. decode tok/s at batch B (default 32) without LoRA and (3.) with LoRA, two engines side by
   side, alternating for ``--rounds`` rounds (medians reported);
2. HF + PEFT ``generate`` on the same weights with ``--hf-adapters`` rank-16 adapters on the
   seven language-model linears, mixed in one batch (``adapter_names``);
3. decode tok/s at batch B with B distinct rank-16 dummy adapters on all seven language-model
   linears (one adapter per request; unmerged, ATMM), and a profile of its decode steps;
4. merge + unmerge time of a rank-``--merge-rank`` adapter over all layers: all seven targets,
   and q/k/v/o only (median of ``--repeats``).

    python benchmarks/bench_lora.py --out benchmarks/results/lora_h100.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics

import torch
from harness import (
    hf_model_from,
    merge_manager,
    profile_decode,
    provenance,
    register_subset,
    run_engine,
    time_hf_generate,
)

from valora.adapters.manager import LoRAManager
from valora.adapters.peft_loader import dummy_adapter
from valora.llm import LLM

LM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def engine(args, **lora) -> LLM:
    tokens = args.batch * (args.prompt_len + args.output_len) + 4096
    return LLM(
        args.model_setting,
        device="cuda",
        dtype="bfloat16",
        num_token=tokens,
        max_num_seqs=args.batch,
        **{"policy": "fcfs", **lora},  # unmerged ATMM unless a caller asks for merging
    )


def free(*objects) -> None:
    del objects
    gc.collect()
    torch.cuda.empty_cache()


def hf_peft_generate(llm: LLM, args) -> float:
    from peft import LoraConfig, get_peft_model

    hf = hf_model_from(llm, args.model_setting)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=LM_TARGETS, init_lora_weights=False)
    model = get_peft_model(hf, config, adapter_name="a0")
    for i in range(1, args.hf_adapters):
        model.add_adapter(f"a{i}", config)
    model = model.to(torch.bfloat16).eval()
    names = [f"a{i % args.hf_adapters}" for i in range(args.batch)]
    rate = time_hf_generate(
        model, args.batch, args.prompt_len, args.hf_output_len, adapter_names=names
    )
    free(model, hf)
    return rate


def adapter_bytes(llm: LLM, names: list[str], rank: int) -> int:
    """Bytes of A and B one decode step reads: every distinct adapter of the batch, once (the
    dummy adapters the engine serves: ``rank`` on the language tower, in its dtype)."""
    cfg, dtype = llm.engine.model_config, getattr(torch, llm.engine.config.dtype)
    one = dummy_adapter("bytes", cfg, rank, seed=0, dtype=dtype, towers=("language",))
    return one.num_bytes * len(set(names))


def merge_times(lora: LoRAManager, rank: int, repeats: int) -> dict:
    """Merge + unmerge seconds (median of ``repeats``) of a rank-``rank`` dummy adapter on all
    seven targets and on q/k/v/o only, and the bytes each merge writes."""
    lora.add_dummy("merge-all", rank, seed=7)
    register_subset(lora, "merge-qkvo", "merge-all", ("qkv_proj", "o_proj"))
    out = {}
    for name in ("merge-all", "merge-qkvo"):
        key = lora.resolve(name)
        merge, unmerge = [], []
        for _ in range(repeats):
            merge.append(lora.switch(key))
            unmerge.append(lora.switch(None))
        out[name] = {
            "merge_ms": 1e3 * statistics.median(merge),
            "unmerge_ms": 1e3 * statistics.median(unmerge),
            "bytes_written": sum(
                lora.merger.live[m].nbytes for m in lora.registry.weights(key).modules
            ),
        }
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-setting", default="qwen2-vl-7b")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--hf-adapters", type=int, default=8)
    parser.add_argument("--hf-output-len", type=int, default=32)
    parser.add_argument("--merge-rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating base / LoRA runs")
    parser.add_argument("--out", default="benchmarks/results/lora.json")
    return parser.parse_args()


def base_and_lora_engines(args) -> tuple[LLM, LLM]:
    """The engine without LoRA and the one serving ``args.batch`` rank-16 dummy adapters."""
    base = engine(args)
    # max_lora_rank 16: the deployment's rank bound (vLLM's --max-lora-rank), so the kernels'
    # rank tiles and tuned buckets match the adapters served
    lora = engine(
        args,
        num_dummy_adapters=args.batch,
        dummy_ranks=(16,),
        lora_towers=("language",),
        max_loras=args.batch,
        max_lora_rank=16,
    )
    return base, lora


def alternate_runs(base: LLM, lora: LLM, args, names: list[str]) -> dict:
    """``args.rounds`` base / LoRA runs in turn -> medians, all runs and the LoRA overhead."""
    record = {}
    runs = {"base": [], "lora": []}
    for _ in range(args.rounds):
        runs["base"].append(run_engine(base, args.batch, args.prompt_len, args.output_len))
        runs["lora"].append(run_engine(lora, args.batch, args.prompt_len, args.output_len, names))
        print(json.dumps(runs["base"][-1]), json.dumps(runs["lora"][-1]), flush=True)
    for name in runs:
        record[name] = {key: statistics.median(r[key] for r in runs[name]) for key in runs[name][0]}
        record[f"{name}_runs"] = runs[name]
    record["lora_overhead"] = 1 - record["lora"]["decode_tok_s"] / record["base"]["decode_tok_s"]
    print("overhead", record["lora_overhead"], flush=True)
    return record


def main() -> None:
    args = parse_args()
    record = {"benchmark": "lora_overhead", **provenance(), "args": vars(args)}

    # both engines live side by side and alternate, so clock drift hits both alike
    base, lora = base_and_lora_engines(args)
    names = [f"lora{i}" for i in range(args.batch)]
    record.update(alternate_runs(base, lora, args, names))
    record["lora_profile"] = profile_decode(lora, args.batch, args.prompt_len, adapters=names)
    record["adapter_bytes_read_per_step"] = adapter_bytes(lora, names, 16)
    free(lora)
    record["hf_peft_mixed_tok_s"] = hf_peft_generate(base, args)
    print("hf+peft", record["hf_peft_mixed_tok_s"], flush=True)
    free(base)

    # the merger as a unit of the adapter package (the engine does not expose its internals)
    merging = merge_manager(args.model_setting, args.merge_rank)
    record["merge"] = merge_times(merging, args.merge_rank, args.repeats)
    record["pristine_copy_bytes"] = merging.merger.num_bytes
    print(json.dumps(record["merge"]), flush=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
