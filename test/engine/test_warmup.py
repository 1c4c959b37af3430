"""The warm-up requests run the base model and adapters through prefill and decode, with an
image, and leave the engine as they found it: no request, every block free."""

from __future__ import annotations

from valora.llm import LLM
from valora.warmup import warmup


def test_warmup_runs_adapters_and_images_and_frees_everything():
    llm = LLM("tiny", device="cpu", num_token=8192, num_dummy_adapters=3, lora_backend="torch",
              scheduler="valora")  # fmt: skip
    engine = llm.engine
    seconds = warmup(engine, lengths=(16, 64))
    assert seconds > 0 and not engine.has_unfinished() and not engine._requests
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert engine.scheduler.num_unfinished == 0
    assert engine.lora.pool.stats.loads + engine.lora.pool.stats.prefetches >= 3  # adapters ran
    out = llm.generate(["hello"], use_tqdm=False)  # serving goes on normally afterwards
    assert out[0].outputs[0].token_ids
