"""``python -m valora.quantize`` writes GPTQ checkpoints that the engine loads and that dequantize
to exactly what was quantized; GPTQ beats RTN on the layer outputs it optimizes; AWQ GEMM
checkpoints load too; a loaded GPTQ checkpoint generates what transformers generates on the
dequantized weights."""

from __future__ import annotations

import json

import pytest
import torch
from hf_reference import make_hf_model
from safetensors.torch import save_file
from test_quant_engine import load_dequantized_into

import exp_suite
from valora.llm import LLM
from valora.quant.calibration import BUILTIN_CALIB, collect_input_stats
from valora.quant.formats import to_awq
from valora.quant.gptq import gptq_quantize
from valora.quant.linear import QuantLinear
from valora.quant.reference import dequantize, quantize_rtn
from valora.quantize import main, quantize_weights
from valora.sampling_params import SamplingParams
from valora.tokenizer import Tokenizer
from valora.weights import checkpoint_tensors, load_model


def quantized_modules(llm: LLM) -> dict[str, QuantLinear]:
    model = llm.engine.model
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


@pytest.mark.parametrize(
    "method, bits, act_order", [("rtn", 4, False), ("gptq", 4, True), ("gptq", 8, False)]
)
def test_quantizer_output_loads_and_dequantizes_to_what_it_quantized(
    tmp_path, method, bits, act_order
):
    out = tmp_path / "q"
    argv = [
        "--model",
        "tiny",
        "--method",
        method,
        "--bits",
        str(bits),
        "--group-size",
        "32",
        "--out",
        str(out),
    ] + (["--act-order"] if act_order else [])
    main(argv)
    report = json.loads((out / "quantization_report.json").read_text())
    assert len(report["relative_error"]) == 8 and max(report["relative_error"].values()) < 0.3
    model = load_model("tiny", torch.float32, "cpu")
    hessians = collect_input_stats(model, Tokenizer.builtin(), BUILTIN_CALIB).hessians
    expected, _ = quantize_weights(model, method, bits, 32, False, act_order, hessians)
    loaded = quantized_modules(LLM(str(out), device="cpu"))
    assert set(loaded) == set(expected)
    for path, q in expected.items():
        assert torch.equal(loaded[path].weight, dequantize(q)), path
        assert (loaded[path].quantized.g_idx is not None) == act_order


def test_gptq_beats_rtn_on_the_outputs_it_optimizes():
    """Correlated inputs (as real activations are): GPTQ's error feedback cuts ||X (W - Q)^T||
    well below round-to-nearest's, with and without act-order."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=gen)
    x = torch.randn(512, 32, generator=gen) @ torch.randn(32, 256, generator=gen)
    x += 0.1 * torch.randn(512, 256, generator=gen)
    hessian = x.t() @ x
    for bits in (4, 8):
        rtn = (x @ (dequantize(quantize_rtn(w, bits, 64, False)) - w).t()).norm()
        for act_order in (False, True):
            q = gptq_quantize(w, hessian, bits, 64, act_order=act_order)
            gptq = (x @ (dequantize(q) - w).t()).norm()
            assert gptq < 0.5 * rtn, (bits, act_order, float(gptq / rtn))


def test_awq_gemm_checkpoint_loads(tmp_path):
    model = load_model("tiny", torch.float32, "cpu")
    tensors = {n: t.clone() for n, t in checkpoint_tensors(model).items()}
    expected = {}
    for i in range(2):
        pieces = (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
        for piece in pieces:
            name = f"model.layers.{i}.{piece}"
            q = quantize_rtn(tensors.pop(f"{name}.weight"), 4, 32, False)
            expected[name] = dequantize(q)
            tensors.update({f"{name}.{k}": v.clone() for k, v in to_awq(q).items()})
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config = {
        **json.loads(json.dumps(dict(exp_suite.MODEL_SETTINGS["tiny"]))),
        "quantization_config": {
            "quant_method": "awq",
            "bits": 4,
            "group_size": 32,
            "zero_point": True,
            "version": "gemm",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    llm = LLM(str(tmp_path), device="cpu")
    qkv = quantized_modules(llm)["model.layers.1.self_attn.qkv_proj"].weight
    want = torch.cat([expected[f"model.layers.1.self_attn.{p}_proj"] for p in "qkv"])
    assert torch.equal(qkv, want)


def test_loaded_gptq_checkpoint_generates_like_transformers(tmp_path):
    main(["--model", "tiny", "--method", "gptq", "--group-size", "32", "--out", str(tmp_path)])
    llm = LLM(str(tmp_path), device="cpu")
    hf = make_hf_model(tie_word_embeddings=False)
    # the same dense weights as the dummy tiny model, then dequantized
    copy_into_hf(hf, checkpoint_tensors(load_model("tiny", torch.float32, "cpu")))
    load_dequantized_into(hf, llm.engine.model)
    assert_generates_like_transformers(llm, hf)


def copy_into_hf(hf, tensors: dict[str, torch.Tensor]) -> None:
    """Tensors under our checkpoint names -> transformers' parameters of the same tensors."""
    with torch.no_grad():
        for name, tensor in tensors.items():
            hf_name = (
                "model.language_model." + name[6:]
                if name.startswith("model.")
                else ("model." + name if name.startswith("visual.") else name)
            )
            hf.get_parameter(hf_name).copy_(tensor)


def assert_generates_like_transformers(llm: LLM, hf) -> None:
    """Six greedy tokens of a short chat prompt: our engine's equal transformers'."""
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}])
    ours = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
    ids = llm.tokenizer.encode(prompt)
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False
        )
    assert ours == out[0, len(ids) :].tolist()
