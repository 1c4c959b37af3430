"""Settings and result of LoRA supervised fine-tuning (``valora.training.sft``).

``SFTConfig`` is frozen: one value describes one training run, and a resumed run checks the
fields that shape the trajectory (``TRAJECTORY_FIELDS``) against the checkpoint's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LANGUAGE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # every vision block
TARGET_PRESETS = {
    "language": LANGUAGE_TARGETS,
    "vision": VISION_TARGETS,
    "all": LANGUAGE_TARGETS + VISION_TARGETS,
}
SCHEDULERS = ("constant", "linear", "cosine")  # each after ``warmup_steps`` of linear warm-up
DTYPES = ("auto", "float32", "bfloat16", "float16")

# fields that must match a checkpoint's for ``resume`` to continue the same run
TRAJECTORY_FIELDS = (
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "lr",
    "batch_size",
    "grad_accum",
    "seed",
    "warmup_steps",
    "lr_scheduler",
    "load_in_4bit",
)


@dataclass(frozen=True)
class SFTConfig:
    """One LoRA fine-tuning run. ``target_modules``: a preset name (``TARGET_PRESETS``) or
    module-name suffixes; ``mm_processor_kwargs``: vLLM-style image/video processor overrides
    (``min_pixels``, ``max_pixels``, ``fps``, ``max_frames`` ...), to be given to the engine too
    when serving the adapter."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "language"
    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 4
    grad_accum: int = 1  # micro-batches per optimizer step
    seed: int = 0
    max_grad_norm: float = 1.0  # 0: no clipping
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    load_in_4bit: bool = False  # bitsandbytes NF4 base weights (QLoRA)
    gradient_checkpointing: bool = False  # always on with load_in_4bit (PEFT's k-bit prep)
    dtype: str = "auto"  # base weights: "auto" = bfloat16 on CUDA, float32 on CPU
    device: str | None = None  # None: cuda when available, else cpu
    save_every: int = 0  # optimizer steps between checkpoints; 0: none
    resume: bool = False  # continue from the newest out_dir/checkpoint-<step>
    stop_after_steps: int = 0  # stop (with a checkpoint) after this many steps; 0: run to the end
    num_workers: int = 0  # DataLoader workers preparing batches (images, videos)
    mm_processor_kwargs: Mapping | None = field(default=None)
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        for name in ("rank", "epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "warmup_steps", "num_workers", "stop_after_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.max_grad_norm < 0:
            raise ValueError("lr must be > 0 and max_grad_norm >= 0")
        if self.lr_scheduler not in SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {SCHEDULERS}, got {self.lr_scheduler}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.mm_processor_kwargs is not None and not isinstance(
            self.mm_processor_kwargs, Mapping
        ):
            raise ValueError("mm_processor_kwargs must be a mapping (min_pixels, max_pixels ...)")
        if not self.targets():
            raise ValueError("target_modules must name at least one module")

    def targets(self) -> tuple[str, ...]:
        """The module-name suffixes LoRA attaches to (a preset expanded)."""
        if isinstance(self.target_modules, str):
            if self.target_modules not in TARGET_PRESETS:
                raise ValueError(
                    f"unknown target preset {self.target_modules!r}; presets: "
                    f"{', '.join(TARGET_PRESETS)} (or give module names)"
                )
            return TARGET_PRESETS[self.target_modules]
        return tuple(self.target_modules)

    def trajectory(self) -> dict:
        """The fields a resumed run must share with its checkpoint, JSON-ready."""
        values = {name: getattr(self, name) for name in TRAJECTORY_FIELDS}
        values["target_modules"] = list(self.targets())
        return values

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["target_modules"] = list(self.targets())
        values["mm_processor_kwargs"] = dict(self.mm_processor_kwargs or {})
        return values


@dataclass
class SFTResult:
    """What ``train_lora`` did: ``losses`` holds the mean answer-token loss of every optimizer
    step taken in this call (a resumed run's start at ``resumed_from``)."""

    losses: list[float]
    steps: int  # optimizer steps of the whole run (resumed ones included)
    out_dir: Path
    num_examples: int
    total_steps: int
    resumed_from: int | None = None
    checkpoints: list[Path] = field(default_factory=list)
