"""AWQ (activation-aware weight quantization, Lin et al., MLSys 2024) of the language model.

The few input channels that carry large activations matter most to a linear's output. AWQ
scales them up before quantizing, W -> W diag(s), so they lose less to rounding, and divides the
*producer* of those inputs by s so the model computes the same function (the fold). Scale groups
of each decoder layer, producer -> consumer:

    input_layernorm (RMSNorm weight)     -> self_attn.qkv_proj
    post_attention_layernorm             -> mlp.gate_up_proj
    the up rows of mlp.gate_up_proj      -> mlp.down_proj     (down's input is silu(gate) * up)
    the v rows of self_attn.qkv_proj     -> self_attn.o_proj  only where v's width equals o's
                                                              input width; with GQA (every
                                                              Qwen2-VL release) it is skipped
                                                              and o_proj is plain RTN

Search, per group (consumer weight W [N, K], its inputs' mean |x| [K] and H = X^T X [K, K]):
for alpha in 0, 0.05, ..., 0.95, s = mean|x|^alpha normalised to s / sqrt(max(s) min(s)) and
kept >= 1e-4 max(s); W' = dequant(Q(W s)) / s; loss = tr((W' - W) H (W' - W)^T), which is
||X W'^T - X W^T||^2 over the calibration tokens. alpha = 0 is s = 1, plain RTN, so the chosen
scales never do worse than RTN on this loss. Q is RTN with zero points (``quantize_rtn``).

The statistics come from one forward pass of the unquantized model, not layer by layer on the
outputs of the already-quantized layers. The folds keep them valid: a consumer's inputs become
x / s, and the search measures W' against W in the original coordinates. Within a layer the
groups are folded consumers last (v -> o, up -> down, then the two norms), so a consumer's
weight already carries every fold into its rows when it is searched and quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from valora.quant.calibration import InputStats
from valora.quant.convert import lm_linears
from valora.quant.reference import dequantize, quantize_rtn
from valora.quant.types import QuantizedWeight

GRID = 20  # alphas 0, 1/GRID, ..., (GRID-1)/GRID
MIN_RELATIVE_SCALE = 1e-4  # s >= this * max(s): dead channels are not scaled to 0


@dataclass(frozen=True)
class ScaleGroup:
    """The input channels of ``consumer`` (a linear) are scaled by s; their ``producer`` is
    divided by s: an RMSNorm's weight (``rows`` None) or rows [lo, hi) of a linear, bias too."""

    consumer: str
    producer: str
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class AwqResult:
    """Per LM linear (module path): its quantized weight (Q(W s) for a scaled consumer), the
    relative Frobenius error of its effective weight dequant / s against the weight it replaces
    in the folded model (the original one, with any folds into its rows), and the chosen alpha
    (None: in no scale group, plain RTN)."""

    quantized: dict[str, QuantizedWeight]
    errors: dict[str, float]
    alphas: dict[str, float | None]


def scale_groups(model, layer: int) -> list[ScaleGroup]:
    """The scale groups of decoder layer ``layer``, in fold order (see the module docstring)."""
    prefix = f"model.layers.{layer}"
    qkv, o = f"{prefix}.self_attn.qkv_proj", f"{prefix}.self_attn.o_proj"
    gate_up, down = f"{prefix}.mlp.gate_up_proj", f"{prefix}.mlp.down_proj"
    qkv_offsets = model.get_submodule(qkv).output_offsets  # q | k | v rows
    groups = []
    if qkv_offsets[3] - qkv_offsets[2] == model.get_submodule(o).in_features:  # no GQA
        groups.append(ScaleGroup(o, qkv, (qkv_offsets[2], qkv_offsets[3])))
    up_rows = model.get_submodule(gate_up).output_offsets[1:3]  # gate | up rows
    groups.append(ScaleGroup(down, gate_up, (up_rows[0], up_rows[1])))
    groups.append(ScaleGroup(gate_up, f"{prefix}.post_attention_layernorm"))
    groups.append(ScaleGroup(qkv, f"{prefix}.input_layernorm"))
    return groups


@torch.no_grad()
def fold_scales(model, group: ScaleGroup, scales: torch.Tensor) -> None:
    """In place: consumer columns * s, producer / s; the model computes the same function."""
    consumer = model.get_submodule(group.consumer)
    s = scales.to(consumer.weight.dtype)  # [K]
    consumer.weight.mul_(s)  # [N, K] * [K]: column k is input channel k
    producer = model.get_submodule(group.producer)
    if group.rows is None:
        producer.weight.div_(s)  # RMSNorm: y = weight * x / rms(x), weight [K]
        return
    lo, hi = group.rows
    producer.weight[lo:hi].div_(s[:, None])  # [K, in]: output row k feeds input channel k
    if producer.bias is not None:
        producer.bias[lo:hi].div_(s)


def candidate_scales(mean_abs: torch.Tensor, alpha: float) -> torch.Tensor:
    """[K] mean |x| -> [K] s = mean|x|^alpha, geometric middle of its range at 1."""
    s = mean_abs.float().pow(alpha)
    if not s.max() > 0:  # no activation reached this linear: nothing to weigh by
        return torch.ones_like(s)
    s = s.clamp(min=float(s.max()) * MIN_RELATIVE_SCALE)
    return s / (s.max() * s.min()).sqrt()


def output_error(weight: torch.Tensor, effective: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(D H D^T) with D = effective - weight [N, K]: ||X D^T||^2 when H = X^T X."""
    delta = effective.float() - weight.float()
    return float(((delta @ hessian) * delta).sum())


def effective_weight(
    weight: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int
) -> tuple[QuantizedWeight, torch.Tensor]:
    """-> (Q(W s), dequant(Q(W s)) / s [N, K]): what the scaled layer computes with."""
    q = quantize_rtn(weight.float() * scales, bits, group_size, sym=False)
    return q, dequantize(q) / scales


def search_scales(
    weight: torch.Tensor, hessian: torch.Tensor, mean_abs: torch.Tensor, bits: int, group_size: int
) -> tuple[float, torch.Tensor, list[float]]:
    """-> (best alpha, its scales [K], the loss of every alpha on the grid; [0] is RTN's)."""
    losses, best = [], None
    for i in range(GRID):
        alpha = i / GRID
        s = candidate_scales(mean_abs, alpha)
        _, effective = effective_weight(weight, s, bits, group_size)
        losses.append(output_error(weight, effective, hessian))
        if best is None or losses[-1] < losses[best[0]]:
            best = (i, alpha, s)
    return best[1], best[2], losses


def _relative_error(effective: torch.Tensor, weight: torch.Tensor) -> float:
    return float((effective - weight).norm() / weight.norm())


def quantize_layer(model, layer: int, stats: InputStats, bits: int, group_size: int) -> AwqResult:
    """Search, fold and quantize the scale groups of one decoder layer (in place on ``model``:
    the folds). The layer's linears in no group are quantized RTN with zero points."""
    quantized, errors, alphas = {}, {}, {}
    for group in scale_groups(model, layer):
        path = group.consumer
        weight = model.get_submodule(path).weight.detach().float().clone()  # [N, K], unscaled
        device = weight.device
        hessian = stats.hessians[path].to(device)
        alpha, s, _ = search_scales(
            weight, hessian, stats.mean_abs(path).to(device), bits, group_size
        )
        fold_scales(model, group, s)
        quantized[path], effective = effective_weight(weight, s, bits, group_size)
        errors[path], alphas[path] = _relative_error(effective, weight), alpha
    for path, module in lm_linears(model):
        if path.startswith(f"model.layers.{layer}.") and path not in quantized:
            weight = module.weight.detach().float()
            quantized[path] = quantize_rtn(weight, bits, group_size, sym=False)
            errors[path] = _relative_error(dequantize(quantized[path]), weight)
            alphas[path] = None
    return AwqResult(quantized, errors, alphas)


def awq_quantize_model(model, stats: InputStats, bits: int, group_size: int) -> AwqResult:
    """AWQ of every LM linear, layer by layer (a progress bar); folds ``model`` in place."""
    quantized, errors, alphas = {}, {}, {}
    for layer in tqdm(range(len(model.model.layers)), desc=f"awq {bits}-bit", unit="layer"):
        result = quantize_layer(model, layer, stats, bits, group_size)
        quantized.update(result.quantized)
        errors.update(result.errors)
        alphas.update(result.alphas)
    order = [path for path, _ in lm_linears(model)]  # the other methods' order
    return AwqResult(
        {p: quantized[p] for p in order},
        {p: errors[p] for p in order},
        {p: alphas[p] for p in order},
    )
