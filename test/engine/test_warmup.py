"""The warm-up requests run the base model and adapters through prefill and decode, with an
image, and leave the engine as they found it: no request, every block free."""

from __future__ import annotations

import pytest
import torch

from valora.engine.warmup import lora_kernel_limits, precompile_lora, precompile_quant, warmup
from valora.llm import LLM


def test_warmup_runs_adapters_and_images_and_frees_everything():
    llm = LLM(
        "tiny",
        device="cpu",
        num_token=8192,
        num_dummy_adapters=3,
        lora_backend="torch",
        scheduler="valora",
    )
    engine = llm.engine
    report = warmup(engine, lengths=(16, 64))
    assert report.seconds > 0 and report.kernel_configs == 0  # the torch loop compiles nothing
    snap = engine.snapshot()
    assert not engine.has_unfinished() and snap.is_idle
    # merge kernels: one adapter per rank class (dummy ranks 8, 16, 32: classes 16 and 32)
    assert snap.merged_adapter is None and snap.steps["switches"] == 3
    assert snap.pool_loads + snap.pool_prefetches >= 3  # adapters ran
    out = llm.generate(["hello"], use_tqdm=False)  # serving goes on normally afterwards
    assert out[0].outputs[0].token_ids


def test_precompile_covers_every_target_with_the_atmm_backend():
    from atmm.ops.precompile import distinct_configs

    # one-row launches of the tiny model's shapes (on CPU: the Triton interpreter)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    llm = LLM("tiny", device=device, num_token=4096, num_dummy_adapters=2, lora_backend="atmm")
    engine = llm.engine
    limits = lora_kernel_limits(engine)  # the engine's real limits, read from its config
    assert len(limits) == 10  # qkv, o, gate_up, down; the vision tower 4; the merger 2
    by_rows = {rows for _, rows, _ in limits}
    assert by_rows == {8192, 4 * 32768, 32768}  # token budget; patches; merger windows
    expected = 0
    for w, rows, segments in limits:
        configs = distinct_configs(w, rows, segments, w.a.dtype, w.a.device)
        expected += len(configs["shrink"]) + len(configs["expand"])
    assert precompile_lora(engine) == expected > 0
    torch_engine = LLM(
        "tiny", device="cpu", num_token=4096, num_dummy_adapters=2, lora_backend="torch"
    ).engine
    assert precompile_lora(torch_engine) == 0  # nothing to compile for the torch loop


@pytest.mark.gpu
def test_quantized_gemm_buckets_compile_at_warmup():
    from valora.quant import triton_gemm

    engine = LLM("tiny", device="cuda", quantization="w4a16", num_token=4096).engine
    calls = precompile_quant(engine)
    assert calls > 0
    kernels = [k for k in vars(triton_gemm).values() if hasattr(k, "device_caches")]
    index = torch.cuda.current_device()

    def compiled() -> int:
        return sum(len(k.device_caches[index][0]) for k in kernels)

    count = compiled()
    for m in (2, 5, 13, 31, 40, 77, 100, 300, 2000):
        for module in engine.model.modules():
            if hasattr(module, "quantized"):
                module(torch.randn(m, module.in_features, dtype=module.dtype, device="cuda"))
    torch.cuda.synchronize()
    assert compiled() == count
