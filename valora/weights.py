"""Model construction and weights: Hugging Face safetensors checkpoints and dummy weights.

The model is built on the meta device and materialised once, directly on the target device and
dtype; weights are then copied in (checkpoint) or generated in place (dummy). Nothing is
materialised twice.

Checkpoint layouts accepted (both map onto the same parameters):
  * original release / transformers < 4.52 and v5 saves: ``model.layers.N...``, ``visual...``;
  * transformers 4.52-4.57 saves: ``model.language_model.layers.N...``, ``model.visual...``.
``lm_head.weight`` is absent when the embeddings are tied (and ignored if present).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from valora.config import ModelConfig, is_model_setting
from valora.layers.kernel_choice import kernels_for
from valora.layers.norm import RMSNorm
from valora.models.qwen2_vl import Qwen2VLForConditionalGeneration

# our stacked module -> the checkpoint modules it stacks, in slice order
UNSTACK = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_LAYOUT_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
DUMMY_INIT_STD = 0.02


@dataclass(frozen=True)
class _Target:
    """Where one checkpoint tensor lands: rows [start, stop) of a parameter."""

    param: nn.Parameter
    start: int
    stop: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.stop - self.start, *self.param.shape[1:])

    def copy_from(self, tensor: torch.Tensor) -> None:
        self.param[self.start : self.stop].copy_(tensor)


def build_model(
    cfg: ModelConfig, dtype: torch.dtype, device: str | torch.device, attn_backend=None
) -> Qwen2VLForConditionalGeneration:
    """Allocate the model's parameters once on ``device`` in ``dtype`` (uninitialised)."""
    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(cfg, attn_backend)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.kernels = kernels_for(device)
    return model.eval().requires_grad_(False)


def load_model(
    model: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    attn_backend=None,
) -> Qwen2VLForConditionalGeneration:
    """``model`` is a named setting (dummy weights) or a dense checkpoint directory."""
    if is_model_setting(model):
        net = build_model(ModelConfig.from_setting(model), dtype, device, attn_backend)
        init_dummy_weights(net, seed)
        return net
    if not Path(model).is_dir():
        raise ValueError(f"{model!r} is neither a model setting nor a checkpoint directory")
    cfg = ModelConfig.from_path(model)
    if cfg.quantization_config is not None:
        raise ValueError(
            f"{model} is a quantized checkpoint: load it through the engine "
            "(valora.engine.weights_plan.load_weights), which installs its packed "
            "linears"
        )
    net = build_model(cfg, dtype, device, attn_backend)
    load_checkpoint(net, model)
    return net


def canonical_name(name: str) -> str:
    """Map any accepted checkpoint layout onto the original names."""
    for prefix, replacement in _LAYOUT_PREFIXES:
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return name


def checkpoint_targets(model: nn.Module) -> dict[str, _Target]:
    """Every checkpoint tensor name the model expects -> where it goes."""
    targets = {}
    for name, param in model.named_parameters():
        module_path, leaf = name.rsplit(".", 1)
        parent, _, module_name = module_path.rpartition(".")
        if module_name not in UNSTACK:
            targets[name] = _Target(param, 0, param.shape[0])
            continue
        offsets = model.get_submodule(module_path).output_offsets
        for i, piece in enumerate(UNSTACK[module_name]):
            targets[f"{parent}.{piece}.{leaf}"] = _Target(param, offsets[i], offsets[i + 1])
    return targets


def checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under original checkpoint names (views, stacked params unstacked)."""
    return {name: t.param[t.start : t.stop] for name, t in checkpoint_targets(model).items()}


def load_checkpoint_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors named as in a checkpoint (e.g. from ``checkpoint_tensors``) into ``model``."""
    targets = checkpoint_targets(model)
    if set(tensors) != set(targets):
        raise ValueError(f"tensor names differ: {sorted(set(tensors) ^ set(targets))[:10]}")
    for name, tensor in tensors.items():
        targets[name].copy_from(tensor)


def checkpoint_files(path: str | Path) -> list[Path]:
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that do not exist: {missing}")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors weights in {path} (pickled .bin checkpoints are not loaded)"
        )
    return files


def load_checkpoint(
    model: Qwen2VLForConditionalGeneration,
    path: str | Path,
    skip: Callable[[str], bool] | None = None,
    read: Callable[[safe_open, str, set[str]], torch.Tensor] | None = None,
) -> None:
    """Copy every tensor of the checkpoint into ``model``; any missing, unexpected or mis-shaped
    tensor raises one ``ValueError`` that names each problem and the expected shape. ``skip``:
    tensor names someone else loads (a quantized checkpoint's packed tensors). ``read(shard,
    name, shard's names)``: the tensor to load for ``name`` (default: the file's own; weights
    dequantized on load), called one tensor at a time."""
    targets = checkpoint_targets(model)
    loaded: set[str] = set()
    read = read or (lambda shard, raw_name, _: shard.get_tensor(raw_name))
    problems: list[str] = []
    for file in tqdm(checkpoint_files(path), desc="loading weights", unit="shard", leave=False):
        with safe_open(str(file), framework="pt", device="cpu") as shard:
            names = set(shard.keys())
            for raw_name in shard.keys():
                name = canonical_name(raw_name)
                if name.endswith(_IGNORED_SUFFIXES) or _is_tied_alias(model, name):
                    continue
                if skip is not None and skip(name):
                    continue
                target = targets.get(name)
                if target is None:
                    problems.append(f"unexpected tensor {raw_name!r} in {file.name}")
                    continue
                tensor = read(shard, raw_name, names)
                if tuple(tensor.shape) != target.shape:
                    problems.append(
                        f"tensor {raw_name!r} has shape {tuple(tensor.shape)}, "
                        f"expected {target.shape}"
                    )
                    continue
                target.copy_from(tensor)
                loaded.add(name)
    for name in sorted(set(targets) - loaded):
        problems.append(f"missing tensor {name!r} of shape {targets[name].shape}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"checkpoint {path} does not fit the model:\n  {shown}{more}")


def _is_tied_alias(model: Qwen2VLForConditionalGeneration, name: str) -> bool:
    return name == "lm_head.weight" and model.lm_head is None


def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Deterministic weights generated in place on the parameters' device and dtype.

    Each parameter draws from its own generator seeded by (seed, name), so the values do not
    depend on construction order or device count. Norm scales are 1 and norm shifts 0; every other
    tensor is N(0, 0.02), the scale the released checkpoints were initialised at.
    """
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{leaf}" if module_name else leaf
            if isinstance(module, (nn.LayerNorm, RMSNorm)):
                param.fill_(1.0 if leaf == "weight" else 0.0)
                continue
            generator = torch.Generator(device=param.device)
            generator.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            param.normal_(0.0, DUMMY_INIT_STD, generator=generator)
