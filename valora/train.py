"""LoRA fine-tuning (SFT) of a Qwen2-VL checkpoint from the command line.

    python -m valora.train --model ckpt/ --data suite/train.jsonl --out out/adapter \
        [--rank 16 --alpha 32 --target-modules all --lr 2e-4 --epochs 3 --batch-size 4 \
         --grad-accum 4 --save-every 100 --resume --load-in-4bit ...]

``--data`` is the task-suite JSONL (see ``valora.training.sft_data``). ``--out`` receives the PEFT
adapter (serve it with ``LLM(model, lora_modules={"name": out})`` or ``valora-serve``),
``loss_log.jsonl`` and the ``checkpoint-<step>/`` directories. All logic lives in
``valora.training.sft``.
"""

from __future__ import annotations

import argparse
import json

from valora.training.sft import SFTConfig, SFTResult, train_lora
from valora.training.sft_config import DTYPES, SCHEDULERS, TARGET_PRESETS


def build_parser() -> argparse.ArgumentParser:
    d = SFTConfig()
    p = argparse.ArgumentParser(
        prog="valora-train",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        default=argparse.SUPPRESS,
        help="Hugging Face Qwen2-VL checkpoint directory",
    )
    p.add_argument("--data", required=True, default=argparse.SUPPRESS, help="task-suite JSONL file")
    p.add_argument(
        "--out",
        required=True,
        default=argparse.SUPPRESS,
        help="output directory (adapter, log, checkpoints)",
    )
    _add_lora_args(p.add_argument_group("LoRA"), d)
    _add_optim_args(p.add_argument_group("optimisation"), d)
    _add_run_args(p.add_argument_group("model and run"), d)
    return p


def _add_lora_args(lora, d: SFTConfig) -> None:
    lora.add_argument("--rank", type=int, default=d.rank, help="LoRA rank")
    lora.add_argument("--alpha", type=float, default=d.alpha, help="scaling: alpha / rank")
    lora.add_argument("--dropout", type=float, default=d.dropout, help="LoRA input dropout")
    lora.add_argument(
        "--target-modules",
        nargs="+",
        default=[d.target_modules],
        help=f"a preset ({', '.join(TARGET_PRESETS)}) or module-name suffixes "
        "(q_proj ... down_proj; attn.qkv attn.proj mlp.fc1 mlp.fc2 in the vision tower)",
    )


def _add_optim_args(opt, d: SFTConfig) -> None:
    opt.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW)")
    opt.add_argument("--epochs", type=int, default=d.epochs, help="passes over the data")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="examples a micro-batch")
    opt.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches a step")
    opt.add_argument("--seed", type=int, default=d.seed, help="data order, LoRA init, dropout")
    opt.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="0: no clip")
    opt.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up")
    opt.add_argument(
        "--lr-scheduler", default=d.lr_scheduler, choices=SCHEDULERS, help="after warm-up"
    )
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW")


def _add_run_args(run, d: SFTConfig) -> None:
    run.add_argument("--load-in-4bit", action="store_true", help="QLoRA: NF4 base weights")
    run.add_argument("--gradient-checkpointing", action="store_true", help="(on with 4-bit)")
    run.add_argument(
        "--dtype", default=d.dtype, choices=DTYPES, help="auto: bf16 on CUDA, else fp32"
    )
    run.add_argument("--device", default=None, help="cpu | cuda | cuda:N; None: cuda if any")
    run.add_argument("--save-every", type=int, default=d.save_every, help="steps; 0: never")
    run.add_argument("--resume", action="store_true", help="continue the newest checkpoint")
    run.add_argument("--stop-after-steps", type=int, default=0, help="stop (and checkpoint)")
    run.add_argument(
        "--num-workers", type=int, default=d.num_workers, help="batch-encoding workers"
    )
    run.add_argument(
        "--mm-processor-kwargs",
        type=json.loads,
        default=None,
        help="image/video processor overrides as JSON, e.g. '{\"max_pixels\": 200704}'",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> SFTConfig:
    targets = tuple(args.target_modules)
    values = {
        name: getattr(args, name)
        for name in SFTConfig.__dataclass_fields__
        if hasattr(args, name) and name != "target_modules"
    }
    is_preset = len(targets) == 1 and targets[0] in TARGET_PRESETS
    values["target_modules"] = targets[0] if is_preset else targets
    return SFTConfig(**values, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result: SFTResult = train_lora(args.model, args.data, args.out, config_from_args(args))
    last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
    where = (
        f"adapter written to {result.out_dir}"
        if result.steps == result.total_steps
        else f"stopped; resume from {result.checkpoints[-1] if result.checkpoints else 'n/a'}"
    )
    print(f"{result.steps}/{result.total_steps} steps, last loss {last}; {where}")


if __name__ == "__main__":
    main()
