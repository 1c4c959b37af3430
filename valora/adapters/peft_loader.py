"""Load PEFT LoRA adapters into the engine layout, and make dummy adapters.

A PEFT adapter directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with
``base_model.model.<module>.lora_A.weight`` [r, K] and ``...lora_B.weight`` [N, r] per trained
module (optionally ``.lora_A.<adapter name>.weight``). The module path follows the transformers
version used for training (``model.language_model.layers.N...`` or ``model.layers.N...``,
``model.visual...`` or ``visual...``); ``canonical_name`` maps both onto our names. Slices of a
stacked target (q|k|v, gate|up) are gathered into one ``LoRAModule`` (see ``types.py``).

Only plain LoRA on linear layers is accepted; anything that would change the math silently
(DoRA, biases, modules_to_save, embedding LoRA, fan_in_fan_out) is refused with the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from valora.adapters.adapter_files import CONFIG_FILE, read_adapter_files
from valora.adapters.targets import TargetSpec, model_targets
from valora.adapters.types import LoRAAdapter, LoRAModule
from valora.config import ModelConfig
from valora.weights import canonical_name

_PEFT_PREFIX = "base_model.model."
# <module>.lora_A.weight or <module>.lora_A.<adapter name>.weight
_LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_[AB])(?:\.[^.]+)?\.weight")


@dataclass
class _Slice:
    """One PEFT module: slice ``index`` of ``spec`` at ``layer``."""

    spec: TargetSpec
    layer: int
    index: int
    a: torch.Tensor  # [r, K] fp32
    b: torch.Tensor  # [N_s, r] fp32
    scaling: float


def load_peft_adapter(
    path: str | Path,
    name: str,
    cfg: ModelConfig,
    max_rank: int,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    root: str | Path | None = None,
) -> LoRAAdapter:
    """Read a PEFT LoRA adapter directory and validate it against the model ``cfg``. With
    ``root``, every file read must resolve (symlinks followed) to a path under it. The
    adapter's ``content_hash`` is the SHA-256 of the bytes read."""
    config, tensors, digest = read_adapter_files(Path(path), allow_pickle, root)
    try:
        modules = _build_modules(config, tensors, cfg, max_rank, dtype, path)
    except (OSError, ValueError):
        raise
    except Exception as exc:  # a malformed config or tensor (wrong types): the adapter's fault
        raise ValueError(f"adapter {path} is malformed ({type(exc).__name__}: {exc})") from exc
    return LoRAAdapter(name, modules, digest)


def _build_modules(
    config: dict, tensors: dict, cfg: ModelConfig, max_rank: int, dtype: torch.dtype, path
) -> dict[tuple[str, int], LoRAModule]:
    _check_config(config, path)
    pairs = _pair_tensors(tensors)
    slices = [_make_slice(module, a, b, config, cfg, max_rank) for module, (a, b) in pairs.items()]
    grouped: dict[tuple[str, int], list[_Slice]] = {}
    for s in slices:
        key = (s.spec.name, s.layer)
        if any(other.index == s.index for other in grouped.get(key, [])):
            raise ValueError(f"adapter trains slice {s.index} of {key} twice (two key layouts?)")
        grouped.setdefault(key, []).append(s)
    return {key: _stack(group, dtype) for key, group in grouped.items()}


def _check_config(config: dict, path: str | Path) -> None:
    where = f"adapter {path}"
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{where}: peft_type {config['peft_type']!r} is not supported (LORA only)")
    for key in ("r", "lora_alpha"):
        if key not in config:
            raise ValueError(f"{where}: {CONFIG_FILE} has no {key!r}")
    refusals = {
        "use_dora": "DoRA adapters (use_dora) are not supported",
        "fan_in_fan_out": "fan_in_fan_out=true (Conv1D-style weights) is not supported",
        "modules_to_save": "modules_to_save (fully trained module copies) is not supported",
        "lora_bias": "LoRA biases (lora_bias) are not supported",
        "layer_replication": "layer_replication is not supported",
        "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported",
        "arrow_config": "Arrow routing (arrow_config) is not supported",
        "kasa_config": "KaSA (kasa_config, modifies the base weights) is not supported",
        "monteclora_config": "MonteCLoRA (monteclora_config) is not supported",
    }
    for key, reason in refusals.items():
        if config.get(key):
            raise ValueError(f"{where}: {reason} (got {key}={config[key]!r})")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{where}: bias={config['bias']!r} is not supported (only 'none')")


def _pair_tensors(
    tensors: dict[str, torch.Tensor],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path (as trained, PEFT prefix stripped) -> (lora_A [r, K], lora_B [N, r])."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PEFT_PREFIX)
        match = _LORA_KEY.fullmatch(name)
        if match is None:
            raise ValueError(_unsupported_key(key))
        parts.setdefault(match["module"], {})[match["part"]] = tensor
    pairs = {}
    for module, found in parts.items():
        for part, other in (("lora_A", "lora_B"), ("lora_B", "lora_A")):
            if part in found and other not in found:
                raise ValueError(f"module {module!r} has {part} but no {other}")
        pairs[module] = (found["lora_A"], found["lora_B"])
    return pairs


def _unsupported_key(key: str) -> str:
    if "lora_magnitude_vector" in key:
        return f"DoRA adapters are not supported (found {key!r})"
    if "lora_embedding_" in key:
        return f"embedding LoRA is not supported (found {key!r})"
    if key.endswith(".bias"):
        return f"biases are not supported, only bias='none' (found {key!r})"
    if key.endswith(".weight"):
        return f"modules_to_save / full weight copies are not supported (found {key!r})"
    return f"unsupported tensor {key!r} in adapter (only lora_A/lora_B weights are accepted)"


def _make_slice(
    module: str,
    a: torch.Tensor,
    b: torch.Tensor,
    config: dict,
    cfg: ModelConfig,
    max_rank: int,
) -> _Slice:
    spec, layer, index = _resolve_module(module, cfg)
    for part, t in (("lora_A", a), ("lora_B", b)):
        if t.dim() != 2:
            raise ValueError(f"{module}.{part}: expected a 2-D tensor, got shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{module}.{part} contains NaN or Inf")
    rank = a.shape[0]
    if b.shape[1] != rank:
        raise ValueError(f"{module}: lora_A rank {rank} != lora_B rank {b.shape[1]}")
    if rank > max_rank:
        raise ValueError(f"{module}: rank {rank} exceeds max_rank {max_rank}")
    expected_a = (rank, spec.in_features)
    expected_b = (spec.slice_sizes[index], rank)
    for part, t, expected in (("lora_A", a, expected_a), ("lora_B", b, expected_b)):
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{module}.{part}: shape {tuple(t.shape)} does not match the model, "
                f"expected {expected}"
            )
    scaling = _scaling(module, rank, config)
    return _Slice(spec, layer, index, a.float(), b.float(), scaling)


def _resolve_module(module: str, cfg: ModelConfig) -> tuple[TargetSpec, int, int]:
    """Trained module path -> (target, layer, slice index)."""
    canonical = canonical_name(module)
    patterns = _module_patterns(cfg)
    for pattern, spec, index in patterns.values():
        match = pattern.fullmatch(canonical)
        if match is None:
            continue
        layer = int(match["layer"]) if "layer" in pattern.groupindex else 0
        if layer >= spec.num_layers:
            raise ValueError(
                f"module {module!r}: layer {layer} out of range (target {spec.name!r} has "
                f"{spec.num_layers} layers)"
            )
        return spec, layer, index
    raise ValueError(
        f"module {module!r} is not a supported LoRA target; supported modules: "
        + ", ".join(patterns)
    )


def _module_patterns(cfg: ModelConfig) -> dict[str, tuple[re.Pattern, TargetSpec, int]]:
    """Canonical module path (``N`` for the layer) -> (its regex, target, slice index)."""
    patterns = {}
    for spec in model_targets(cfg):
        for index, peft_name in enumerate(spec.peft_names):
            # the template's parent path: drop as many components as the PEFT name has
            parent = spec.path_template.rsplit(".", peft_name.count(".") + 1)[0]
            template = f"{parent}.{peft_name}"
            regex = r"(?P<layer>\d+)".join(re.escape(p) for p in template.split("{layer}"))
            patterns[template.replace("{layer}", "N")] = (re.compile(regex), spec, index)
    return patterns


def get_pattern_key(pattern_keys: Sequence[str], key_to_match: str) -> str:
    """PEFT's rule: the first key whose regex matches a suffix of the module name (at a dot)."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", key_to_match):
            return key
    return key_to_match


def _scaling(module: str, rank: int, config: dict) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA (per-module r, alpha)."""
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    r = rank_pattern.get(get_pattern_key(list(rank_pattern), module), config["r"])
    alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module), config["lora_alpha"])
    if int(r) != rank:
        raise ValueError(
            f"module {module!r}: config rank {r} (r / rank_pattern) disagrees with the "
            f"tensor rank {rank}"
        )
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _stack(slices: list[_Slice], dtype: torch.dtype) -> LoRAModule:
    """Gather a target's trained slices into one module of rank max(r_s)."""
    spec = slices[0].spec
    rank = max(s.a.shape[0] for s in slices)
    offsets = spec.slice_offsets
    a = torch.zeros(len(spec.slice_sizes), rank, spec.in_features)  # [S, r, K]
    b = torch.zeros(rank, spec.out_features)  # [r, N]
    scalings = {s.scaling for s in slices}
    fold = len(scalings) > 1
    for s in slices:
        r_s, lo, hi = s.a.shape[0], offsets[s.index], offsets[s.index + 1]
        a[s.index, :r_s] = s.a
        b[:r_s, lo:hi] = s.b.t() * s.scaling if fold else s.b.t()  # [r_s, N_s]
    scaling = 1.0 if fold else scalings.pop()
    return LoRAModule(a.to(dtype).contiguous(), b.to(dtype).contiguous(), scaling)


def dummy_adapter(
    name: str,
    cfg: ModelConfig,
    rank: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    towers: Sequence[str] = ("language", "vision"),
) -> LoRAAdapter:
    """Random adapter training every slice of every target of ``towers`` (alpha = 2r)."""
    unknown = set(towers) - {"language", "vision"}
    if unknown:
        raise ValueError(f"unknown towers {sorted(unknown)}; expected 'language' and/or 'vision'")
    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for spec in model_targets(cfg):
        if spec.tower not in towers:
            continue
        k, n, num_slices = spec.in_features, spec.out_features, len(spec.slice_sizes)
        for layer in range(spec.num_layers):
            a = torch.randn(num_slices, rank, k, generator=gen) / math.sqrt(k)  # [S, r, K]
            b = torch.randn(rank, n, generator=gen) / math.sqrt(rank) * 0.5  # [r, N]
            modules[(spec.name, layer)] = LoRAModule(a.to(dtype), b.to(dtype), 2.0)
    return LoRAAdapter(name, modules, f"dummy rank {rank} seed {seed} towers {sorted(towers)}")


def dummy_ranks(num_adapters: int, ranks: Sequence[int] = (8, 16, 32, 64)) -> list[int]:
    """Ranks of ``num_adapters`` dummy adapters, cycling through the ``ranks`` mix."""
    return [ranks[i % len(ranks)] for i in range(num_adapters)]
