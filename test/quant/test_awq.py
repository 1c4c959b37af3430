"""``python -m valora.quantize --method awq``: the AWQ GEMM checkpoint it writes loads and
dequantizes to exactly what was quantized; folding the scales leaves the unquantized model's
function unchanged; the scale search beats RTN where a few input channels carry outliers (and
never loses to it); a loaded AWQ checkpoint generates what transformers generates on the
dequantized weights; the options AWQ GEMM cannot express are refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hf_reference import make_hf_model
from safetensors.torch import load_file
from test_quant_engine import load_dequantized_into
from test_quantizer import assert_generates_like_transformers, copy_into_hf, quantized_modules

from valora.config import ModelConfig
from valora.layers.attention import AttentionMetadata
from valora.llm import LLM
from valora.quant.awq import (
    awq_quantize_model,
    effective_weight,
    fold_scales,
    output_error,
    scale_groups,
    search_scales,
)
from valora.quant.calibration import BUILTIN_CALIB, collect_input_stats
from valora.quant.loader import PACKED
from valora.quant.reference import dequantize
from valora.quantize import main
from valora.tokenizer import Tokenizer
from valora.weights import build_model, init_dummy_weights, load_model

AWQ_ARGS = ["--model", "tiny", "--method", "awq", "--group-size", "32"]


def logits_of(model, ids: list[int]) -> torch.Tensor:
    """[T, vocab] fp32 logits of one text-only sequence."""
    t = len(ids)
    with torch.no_grad():
        hidden = model(
            torch.tensor(ids), torch.arange(t).expand(3, t), AttentionMetadata.for_lengths([t])
        )
        return model.compute_logits(hidden)


def tiny_awq(model=None):
    """(the folded tiny model, the ``AwqResult``) exactly as the quantizer computes them."""
    model = model or load_model("tiny", torch.float32, "cpu")
    stats = collect_input_stats(model, Tokenizer.builtin(), BUILTIN_CALIB)
    return model, awq_quantize_model(model, stats, 4, 32)


def test_awq_checkpoint_loads_and_dequantizes_to_what_it_quantized(tmp_path):
    main(AWQ_ARGS + ["--out", str(tmp_path)])
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "awq" and config["version"] == "gemm"
    assert config["zero_point"] is True and config["w_bit"] == 4 and config["q_group_size"] == 32
    report = json.loads((tmp_path / "quantization_report.json").read_text())
    assert max(report["relative_error"].values()) < 0.3
    folded, expected = tiny_awq()
    assert report["alpha"] == expected.alphas
    for path, alpha in expected.alphas.items():  # GQA: o_proj is in no scale group
        assert (alpha is None) == path.endswith("o_proj"), path
        assert alpha is None or 0 <= alpha < 1
    llm = LLM(str(tmp_path), device="cpu")
    loaded = quantized_modules(llm)
    assert set(loaded) == set(expected.quantized)
    for path, q in expected.quantized.items():  # Q(W s): before dividing by s
        assert torch.equal(loaded[path].weight, dequantize(q)), path
    model = llm.engine.model
    for i, layer in enumerate(model.model.layers):  # the folded norms were written and loaded
        for norm in ("input_layernorm", "post_attention_layernorm"):
            want = folded.get_submodule(f"model.layers.{i}.{norm}").weight
            assert torch.equal(getattr(layer, norm).weight, want)
            assert not torch.equal(want, torch.ones_like(want))  # the dummy norms were all 1


def test_folding_keeps_the_function_of_the_unquantized_model():
    """The quantizer's own folds, and random scales on every group of a model without GQA
    (so v -> o is folded too, through v's bias), leave the logits unchanged."""
    tokenizer = Tokenizer.builtin()
    ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}]))
    model = load_model("tiny", torch.float32, "cpu")
    before = logits_of(model, ids)
    tiny_awq(model)
    torch.testing.assert_close(logits_of(model, ids), before, rtol=1e-4, atol=1e-5)

    cfg = dataclasses.replace(ModelConfig.from_setting("tiny"), num_key_value_heads=4)
    model = build_model(cfg, torch.float32, "cpu")
    init_dummy_weights(model)
    before = logits_of(model, ids)
    gen = torch.Generator().manual_seed(0)
    for layer in range(cfg.num_hidden_layers):
        groups = scale_groups(model, layer)
        assert [g.consumer.rpartition(".")[2] for g in groups] == [
            "o_proj",
            "down_proj",
            "gate_up_proj",
            "qkv_proj",
        ]
        for group in groups:
            k = model.get_submodule(group.consumer).in_features
            fold_scales(model, group, torch.exp(torch.randn(k, generator=gen)))
    torch.testing.assert_close(logits_of(model, ids), before, rtol=1e-4, atol=1e-5)


def test_awq_beats_rtn_on_outlier_channels_and_never_loses():
    """The chosen scales' loss is the grid's minimum, never above RTN's (alpha 0), and is
    ||X W'^T - X W^T||^2; with a few outlier input channels it is well below RTN's."""
    gen = torch.Generator().manual_seed(0)
    w = 0.02 * torch.randn(64, 256, generator=gen)
    outliers = torch.randn(512, 256, generator=gen)
    outliers[:, [3, 50, 130, 201]] *= 30  # a few large input channels, as real activations have
    plain = torch.randn(512, 256, generator=gen)
    for x in (outliers, plain):
        hessian = x.t() @ x
        alpha, s, losses = search_scales(w, hessian, x.abs().mean(dim=0), 4, 64)
        rtn = losses[0]  # alpha 0: s = 1
        _, effective = effective_weight(w, s, 4, 64)
        chosen = output_error(w, effective, hessian)
        assert chosen == min(losses) <= rtn
        direct = float(((x @ (effective - w).t()) ** 2).sum())
        assert chosen == pytest.approx(direct, rel=1e-3)
        if x is outliers:
            assert alpha > 0 and chosen < 0.5 * rtn, (alpha, chosen / rtn)


def test_loaded_awq_checkpoint_generates_like_transformers(tmp_path):
    main(AWQ_ARGS + ["--out", str(tmp_path)])
    llm = LLM(str(tmp_path), device="cpu")
    hf = make_hf_model(tie_word_embeddings=False)
    tensors = load_file(str(tmp_path / "model.safetensors"))  # the folded norms among them
    copy_into_hf(hf, {n: t for n, t in tensors.items() if not n.endswith(PACKED)})
    load_dequantized_into(hf, llm.engine.model)
    assert_generates_like_transformers(llm, hf)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bits", "8"], "4-bit only"),
        (["--act-order"], "no act-order"),
        (["--sym"], "zero points"),
    ],
)
def test_awq_refuses_what_awq_gemm_cannot_store(tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        main(AWQ_ARGS + extra + ["--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
