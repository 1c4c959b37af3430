"""One LoRA fine-tuning step at real shapes, and the trained adapter served: ``python
benchmarks/bench_train_step.py --models qwen2-vl-2b qwen2-vl-7b --bases bf16 nf4 --out F``.

Per (model, base): a checkpoint of dummy weights (the setting's config, seeded random weights,
written once) is loaded the way ``valora-train`` loads it (``sft_model.load_base_model``: bf16,
or bitsandbytes NF4 with PEFT's k-bit preparation and gradient checkpointing), LoRA is attached
to ``--target-modules``, and full optimizer steps (forward, answer-token loss, backward, clip,
AdamW) run on a micro-batch of image + question + answer examples collated by the trainer's own
collate function. Recorded: the median step seconds, tokens/s, peak allocated and reserved GPU
memory, and the step's floor: the matmul FLOPs of a LoRA step (forward 2 * params * tokens,
backward 2 * params * tokens for input gradients only, plus one more forward under gradient
checkpointing) over the matmul peak measured in the same run.

Then the adapter just trained is served by the engine on the bf16 base, and its decode tok/s is
measured beside the base model's in the same process (``harness.run_engine``).
Every result carries ``harness.provenance``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from harness import matmul_peak, provenance, run_engine, wall_time
from PIL import Image

from valora.model_settings import MODEL_SETTINGS
from valora.training.sft import load_records, make_optimizer, processor_batch_encoder
from valora.training.sft_checkpoint import save_peft_adapter
from valora.training.sft_config import SFTConfig
from valora.training.sft_loop import answer_loss_sum
from valora.training.sft_model import attach_lora, load_base_model

QUESTION = "Describe the picture in one short sentence."
ANSWER = "A grey square with a red circle near the top left corner and some noise."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["qwen2-vl-2b", "qwen2-vl-7b"])
    p.add_argument("--bases", nargs="+", choices=["bf16", "nf4"], default=["bf16", "nf4"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, default=448, help="square side in pixels")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--target-modules", default="language")
    p.add_argument("--steps", type=int, default=5, help="timed steps after two warm-up steps")
    p.add_argument("--serve-batch", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--work-dir", help="dummy checkpoints go here (default: a temp dir)")
    p.add_argument("--out", help="result JSON")
    return p


def dummy_checkpoint(setting: str, root: Path) -> Path:
    """The setting's Qwen2-VL config with seeded random weights (bf16), saved once."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    out = root / setting
    if (out / "config.json").is_file():
        return out
    config = Qwen2VLConfig(**json.loads(json.dumps(dict(MODEL_SETTINGS[setting]), default=dict)))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(out)
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def micro_batch(root: Path, batch_size: int, side: int) -> list[dict]:
    """``batch_size`` records of one noise image each (distinct pixels), paths absolute."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(batch_size):
        path = root / f"image-{side}-{i}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        parts = [{"type": "image", "image": str(path)}, {"type": "text", "text": QUESTION}]
        messages = [{"role": "user", "content": parts}]
        record = {"id": str(i), "task": "t", "messages": messages, "answer": ANSWER}
        records.append(record | {"metric": "exact"})
    return load_records(records)


def step_flops(model, kwargs: dict, labels: torch.Tensor, checkpointing: bool) -> float:
    """Matmul FLOPs of one LoRA step: every weight's forward (2 * params * tokens it sees; the LM
    head only at answer positions, the embedding table is a lookup), the input-gradient backward
    (the same again), one recompute under checkpointing."""
    counts = {"visual": 0, "head": 0, "embed": 0, "language": 0}
    for name, param in model.named_parameters():
        part = "visual" if ".visual." in name else "language"
        part = "head" if "lm_head" in name else "embed" if "embed_tokens" in name else part
        counts[part] += param.numel()
    text_tokens = int(kwargs["attention_mask"].sum())
    answer_tokens = int((labels != -100).sum())
    patches = int(kwargs["pixel_values"].shape[0])
    forward = 2 * (
        counts["language"] * text_tokens
        + counts["visual"] * patches
        + counts["head"] * answer_tokens
    )
    return forward * (3 if checkpointing else 2)


def time_steps(model, optimizer, scheduler, kwargs, labels, steps: int) -> list[float]:
    def one_step() -> None:
        loss = answer_loss_sum(model, kwargs, labels) / (labels != -100).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        one_step()
    return [wall_time(one_step)[1] for _ in range(steps)]


def bench_step(checkpoint: Path, base: str, records: list[dict], args, out_dir: Path) -> dict:
    cfg = SFTConfig(
        rank=args.rank,
        alpha=2 * args.rank,
        dropout=0.0,
        target_modules=args.target_modules,
        load_in_4bit=base == "nf4",
        dtype="bfloat16",
        device=args.device,
        progress=False,
    )
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = load_base_model(checkpoint, cfg, device)
    collate = processor_batch_encoder(checkpoint, model.config, cfg)
    model = attach_lora(model, cfg)
    model.train()
    optimizer, scheduler = make_optimizer(model, cfg, total_steps=args.steps + 2)
    kwargs, labels = collate(records)
    kwargs = {k: v.to(device) for k, v in kwargs.items()}
    labels = labels.to(device)
    seconds = time_steps(model, optimizer, scheduler, kwargs, labels, args.steps)
    median = statistics.median(seconds)
    checkpointing = cfg.load_in_4bit or cfg.gradient_checkpointing
    flops = step_flops(model, kwargs, labels, checkpointing)
    result = {
        "base": base,
        "gradient_checkpointing": checkpointing,
        "step_s": median,
        "step_s_all": seconds,
        "tokens": int(kwargs["attention_mask"].sum()),
        "image_patches": int(kwargs["pixel_values"].shape[0]),
        "tokens_per_s": int(kwargs["attention_mask"].sum()) / median,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "step_matmul_flops": flops,
    }
    if device.type == "cuda":
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    save_peft_adapter(model, out_dir)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def bench_serving(checkpoint: Path, adapter: Path, args) -> dict:
    """Decode tok/s of the trained adapter on every request vs the base alone, one engine."""
    from valora.llm import LLM

    llm = LLM(str(checkpoint), device=args.device, lora_modules={"trained": str(adapter)})
    batch = args.serve_batch
    base = run_engine(llm, batch, prompt_len=256, output_len=64)
    lora = run_engine(llm, batch, prompt_len=256, output_len=64, adapters=["trained"] * batch)
    llm.shutdown() if hasattr(llm, "shutdown") else None
    return {"batch": batch, "prompt_len": 256, "output_len": 64, "base": base, "adapter": lora}


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    script = "benchmarks/bench_train_step.py"
    record = {**provenance(None if argv is None else [script, *argv]), "runs": []}
    if args.device.startswith("cuda"):
        record["matmul_peak_bf16_flops"] = matmul_peak(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work_dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        records = micro_batch(root, args.batch_size, args.image_size)
        for setting in args.models:
            checkpoint = dummy_checkpoint(setting, root)
            for base in args.bases:
                adapter = root / f"adapter-{setting}-{base}"
                run = {"model": setting, **bench_step(checkpoint, base, records, args, adapter)}
                if "matmul_peak_bf16_flops" in record:
                    floor = run["step_matmul_flops"] / record["matmul_peak_bf16_flops"]
                    run["step_floor_s"] = floor
                    run["step_vs_floor"] = run["step_s"] / floor
                if base == "bf16":
                    run["serving"] = bench_serving(checkpoint, adapter, args)
                record["runs"].append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "step_s_all"}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
