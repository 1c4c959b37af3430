"""What the engine's weights will be, decided once before anything is loaded: the model
config, and the *effective* quantization of the language model's linears.

Two sources can ask for quantization: the checkpoint (its ``quantization_config``: GPTQ / AWQ /
compressed-tensors packed weights) and the ``quantization`` option (RTN of whatever is loaded;
the dummy quantized weights of the named settings). They must agree: a 4-bit checkpoint asked to
load as w8a16 is an error, not a silent re-quantization of dequantized 4-bit weights.
bitsandbytes 4-bit checkpoints are dequantized on load (``valora.quant.bnb``) and served dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from valora.config import ModelConfig, is_model_setting
from valora.models.qwen2_vl import Qwen2VLForConditionalGeneration
from valora.quant.bnb import (
    check_bitsandbytes_config,
    is_bitsandbytes,
    is_quant_state,
    read_dequantized,
)
from valora.quant.convert import METHODS, quantize_model_rtn
from valora.quant.formats import QuantSpec, parse_quant_config
from valora.quant.loader import install_quantized_linears
from valora.weights import build_model, init_dummy_weights, load_checkpoint

QUANTIZATION_CHOICES = ("none", *sorted(METHODS))


@dataclass(frozen=True)
class WeightsPlan:
    model: str  # a model setting or a checkpoint directory
    model_config: ModelConfig
    quantization: str  # effective: "none" | "w4a16" | "w8a16"
    checkpoint_spec: QuantSpec | None  # the checkpoint's packed format (None: dense or RTN)
    dequantize_on_load: bool = False  # a bitsandbytes 4-bit checkpoint, served dense

    @property
    def is_dummy(self) -> bool:
        return is_model_setting(self.model)

    @property
    def is_quantized(self) -> bool:
        return self.quantization != "none"

    @property
    def rtn(self) -> bool:
        """Quantized here (round to nearest) from dense weights, not read packed."""
        return self.is_quantized and self.checkpoint_spec is None


def plan_weights(model: str, quantization: str) -> WeightsPlan:
    """Reads only the config (ValueError on an unknown setting, an unknown or conflicting
    quantization, or an unsupported checkpoint format)."""
    if quantization not in QUANTIZATION_CHOICES:
        raise ValueError(
            f"unknown quantization {quantization!r}; choose one of {list(QUANTIZATION_CHOICES)}"
        )
    if is_model_setting(model):
        return WeightsPlan(model, ModelConfig.from_setting(model), quantization, None)
    if not Path(model).is_dir():
        raise ValueError(f"{model!r} is neither a model setting nor a checkpoint directory")
    cfg = ModelConfig.from_path(model)
    if cfg.quantization_config is None:
        return WeightsPlan(model, cfg, quantization, None)
    if is_bitsandbytes(cfg.quantization_config):
        check_bitsandbytes_config(cfg.quantization_config)
        if quantization != "none":
            raise ValueError(
                f"the checkpoint is bitsandbytes 4-bit (served dense after exact dequantization); "
                f"quantization={quantization!r} would re-quantize it: leave it 'none'"
            )
        return WeightsPlan(model, cfg, "none", None, dequantize_on_load=True)
    spec = parse_quant_config(cfg.quantization_config)
    effective = f"w{spec.bits}a16"
    if quantization not in ("none", effective):
        raise ValueError(
            f"the checkpoint is {spec.method.upper()} {spec.bits}-bit "
            f"({effective}); quantization={quantization!r} conflicts with it "
            "(leave it 'none' or pass the checkpoint's)"
        )
    return WeightsPlan(model, cfg, effective, spec)


def load_weights(
    plan: WeightsPlan, dtype: torch.dtype, device: str, seed: int
) -> Qwen2VLForConditionalGeneration:
    """The model on ``device`` with the plan's weights (and its quantization applied)."""
    net = build_model(plan.model_config, dtype, device)
    if plan.is_dummy:
        init_dummy_weights(net, seed)
    else:
        skip, read = None, None
        if plan.checkpoint_spec is not None:  # GPTQ / AWQ / compressed-tensors: packed LM linears
            skip = install_quantized_linears(net, plan.model, plan.model_config.quantization_config)
        if plan.dequantize_on_load:
            skip, read = is_quant_state, read_dequantized
        load_checkpoint(net, plan.model, skip, read)
    if plan.rtn:
        quantize_model_rtn(net, plan.quantization)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return net
