"""A compressed-tensors ``pack-quantized`` checkpoint (int4 / int8, group or channel scales,
symmetric or asymmetric) loads with ``LLM(model=dir)`` and no flag: its language-model linears
become ``QuantLinear``s and greedy generation equals transformers running the weights the
library itself decompresses (the library is the oracle: transformers cannot load every variant,
asymmetric packed int4 among them). Unsupported variants are refused before loading."""

from __future__ import annotations

import json

import pytest
import torch
from hf_reference import make_hf_model
from safetensors.torch import save_file
from test_quantizer import assert_generates_like_transformers, quantized_modules

from valora.llm import LLM

pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.pack_quantized.base import (  # noqa: E402
    PackedQuantizationCompressor,
)
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

LM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _weights_args(bits: int, group_size: int | None, symmetric: bool) -> dict:
    strategy = "group" if group_size else "channel"
    return {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": strategy,
        "group_size": group_size,
        "dynamic": False,
        "actorder": None,
    }


def _quant_config(weights: dict, **extra) -> dict:
    group = {"targets": ["Linear"], "weights": weights, "input_activations": None}
    config = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {"group_0": group | {"format": "pack-quantized"}},
        "ignore": ["lm_head", "re:.*visual.*"],
        "quantization_status": "compressed",
    }
    return config | extra


def _compress(weight: torch.Tensor, scheme: QuantizationScheme) -> tuple[dict, torch.Tensor]:
    """(the module's compressed tensors, the weight the library decompresses them to)."""
    args = scheme.weights
    n, k = weight.shape
    grouped = weight.reshape(n, -1, args.group_size or k)  # [N, G, group]
    scale, zero_point = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
    state = {"weight": weight, "weight_scale": scale}
    if not args.symmetric:
        state["weight_zero_point"] = zero_point
    packed = PackedQuantizationCompressor.compress(state, scheme)
    dense = PackedQuantizationCompressor.decompress(dict(packed), scheme)["weight"]
    return packed, dense.to(weight.dtype)


def write_checkpoint(root, bits: int, group_size: int | None, symmetric: bool):
    """A tiny Qwen2-VL with every LM linear compressed; -> (dir, transformers model holding the
    library's decompressed weights)."""
    hf = make_hf_model(tie_word_embeddings=False)
    weights = _weights_args(bits, group_size, symmetric)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**weights))
    tensors = {}
    for name, tensor in hf.state_dict().items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module.rsplit(".", 1)[-1] in LM_LINEARS:
            packed, dense = _compress(tensor.detach().clone(), scheme)
            tensors |= {f"{module}.{key}": value.contiguous() for key, value in packed.items()}
            with torch.no_grad():
                hf.get_parameter(name).copy_(dense)
        else:
            tensors[name] = tensor.detach().clone().contiguous()
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "model.safetensors"))
    config = hf.config.to_dict() | {"quantization_config": _quant_config(weights)}
    (root / "config.json").write_text(json.dumps(config))
    return root, hf


@pytest.mark.parametrize(
    "bits, group_size, symmetric",
    [(4, 32, True), (4, 32, False), (8, None, True), (4, None, False)],
)
def test_checkpoint_loads_without_a_flag_and_generates_like_the_library(
    tmp_path, bits, group_size, symmetric
):
    path, hf = write_checkpoint(tmp_path / "ct", bits, group_size, symmetric)
    llm = LLM(str(path), device="cpu")
    modules = quantized_modules(llm)
    assert modules and all(m.quantized.bits == bits for m in modules.values())
    assert_generates_like_transformers(llm, hf)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": "float-quantized"}, "format 'float-quantized' is not supported yet"),
        ({"input_activations": {"num_bits": 8, "type": "int"}}, "activation quantization"),
        ({"weights": {"num_bits": 4, "type": "int", "strategy": "tensor"}}, "strategy 'tensor'"),
        ({"sparsity": True}, "sparse"),
    ],
)
def test_unsupported_variants_are_refused_before_loading(tmp_path, change, message):
    weights = _weights_args(4, 32, True)
    config = _quant_config(weights)
    group = config["config_groups"]["group_0"]
    if "sparsity" in change:
        config["sparsity_config"] = {"format": "sparse-24-bitmask"}
    else:
        group.update(change)
    hf_config = make_hf_model(tie_word_embeddings=False).config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps(hf_config | {"quantization_config": config}))
    with pytest.raises(ValueError, match=message):
        LLM(str(tmp_path), device="cpu")
