"""The builder decides the effective quantization once, before loading anything: a checkpoint's
own format wins, the flag must agree with it, and an unknown value is refused up front. Merged
mode's dense overlays exist on every quantized base (RTN or packed) only where ``quant_merge``
allows them."""

from __future__ import annotations

import pytest

from valora.engine.weights_plan import plan_weights
from valora.llm import LLM
from valora.quantize import main as quantize

TINY = dict(device="cpu", num_token=512, max_model_len=128)


@pytest.fixture(scope="module")
def gptq_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gptq4")
    quantize(
        [
            "--model",
            "tiny",
            "--method",
            "rtn",
            "--bits",
            "4",
            "--group-size",
            "32",
            "--out",
            str(out),
        ]
    )
    return str(out)


def test_an_unknown_quantization_is_refused_before_loading(monkeypatch):
    import valora.engine.weights_plan as plan_module

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(plan_module, "build_model", never)
    with pytest.raises(ValueError, match="unknown quantization 'w3a16'"):
        LLM("tiny", quantization="w3a16", **TINY)


def test_the_checkpoint_format_is_the_effective_quantization(gptq_dir):
    assert plan_weights(gptq_dir, "none").quantization == "w4a16"
    plan = plan_weights(gptq_dir, "w4a16")  # the same as the checkpoint's: fine
    assert plan.is_quantized and not plan.rtn and plan.checkpoint_spec.bits == 4
    with pytest.raises(ValueError, match="conflicts"):  # no re-quantization of 4-bit weights
        plan_weights(gptq_dir, "w8a16")
    rtn = plan_weights("tiny", "w8a16")
    assert rtn.rtn and rtn.quantization == "w8a16" and rtn.checkpoint_spec is None


@pytest.mark.parametrize("quant_merge, overlays", [("off", False), ("auto", True)])
def test_a_packed_checkpoint_builds_overlays_only_when_allowed(gptq_dir, quant_merge, overlays):
    """A GPTQ checkpoint is a quantized base like an RTN one: quant_merge="off" builds no dense
    overlays (they used to be built, shrinking the KV cache silently)."""
    llm = LLM(
        gptq_dir,
        num_dummy_adapters=1,
        lora_backend="torch",
        policy="valora",
        quant_merge=quant_merge,
        **TINY,
    )
    assert llm.engine.snapshot().merge_overlays is overlays
    out = llm.generate("hello", lora="lora0", use_tqdm=False)[0]
    assert out.outputs[0].token_ids and llm.engine.snapshot().is_idle


def test_keywords_are_routed_to_the_configs_by_field_name():
    llm = LLM("tiny", scheduler="fcfs", max_num_seqs=3, num_dummy_adapters=1, max_loras=2, **TINY)
    config = llm.engine.config
    assert config.scheduler.policy == "fcfs" and config.scheduler.max_num_seqs == 3
    assert config.lora.max_loras == 2 and config.num_token == 512
    with pytest.raises(TypeError, match="unknown option 'max_lorax'"):
        LLM("tiny", max_lorax=2, **TINY)
    with pytest.raises(ValueError, match="LoRA is off"):
        LLM("tiny", max_loras=2, **TINY)
