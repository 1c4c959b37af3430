"""CUDA-graph decode against the eager forward on the same decode batch (GPU only).

bf16 on qwen2-vl-2b dims with dummy weights: batches that fill a captured size exactly and
batches padded up to one; the logits of the real rows must match the eager forward (same
kernels; only the GEMM row count differs), and the padded rows must leave the cache alone.
"""

from __future__ import annotations

import gc

import pytest
import torch

from valora.cuda_graphs import GraphForward, capture_sizes
from valora.forward import EagerForward
from valora.llm import LLM
from valora.sampling_params import SamplingParams


def test_capture_sizes():
    assert capture_sizes(1) == [1]
    assert capture_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    assert capture_sizes(256)[-3:] == [224, 240, 256]


@pytest.mark.gpu
@pytest.mark.parametrize("num_seqs", [1, 3, 16, 17, 40])
def test_graph_logits_match_eager(num_seqs):
    llm = LLM(
        "qwen2-vl-2b",
        device="cuda",
        dtype="bfloat16",
        num_token=40 * 600,
        max_num_seqs=40,
        max_model_len=4096,
    )
    engine = llm.engine
    assert isinstance(engine.runner.forward, GraphForward)
    gen = torch.Generator().manual_seed(num_seqs)
    for i in range(num_seqs):
        length = int(torch.randint(5, 500, (1,), generator=gen))
        prompt = torch.randint(0, 150000, (length,), generator=gen).tolist()
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=20, ignore_eos=True))
    num_blocks = engine.snapshot().kv_blocks_total
    graph_forward, seen = engine.runner.forward, {}

    def compare_on_the_first_decode_step(batch):
        """Records the graph replay's logits and the cache rows it touched; eager beside it."""
        if "eager" in seen or not (batch.is_decode and batch.num_seqs == num_seqs):
            return graph_forward(batch)
        k_before = engine.runner.kv_cache.k[:, :num_blocks].clone()
        out = graph_forward(batch)
        seen["graph"], seen["batch"] = out.logits.clone(), batch
        seen["k_after"] = engine.runner.kv_cache.k[:, :num_blocks].clone()
        seen["k_before"] = k_before
        seen["eager"] = EagerForward(engine.model)(batch).logits
        return out

    engine.runner.forward = compare_on_the_first_decode_step  # a spy on the engine's forward
    for _ in range(6):  # prefills (budget 8192), then the first step that decodes them all
        engine.step()
        if "eager" in seen:
            break
    graph_logits, eager_logits, batch = seen["graph"], seen["eager"], seen["batch"]
    assert graph_logits.shape == eager_logits.shape == (num_seqs, engine.model_config.vocab_size)
    scale = eager_logits.abs().max()
    torch.testing.assert_close(graph_logits / scale, eager_logits / scale, atol=2e-2, rtol=0)
    # only the slots of this step's tokens changed in the sequences' blocks
    changed = (seen["k_after"] != seen["k_before"]).flatten(3).any(-1).any(0).nonzero()
    slots = {int(b) * engine.config.block_size + int(o) for b, o in changed}  # (block, offset)
    assert slots <= set(batch.slot_mapping.tolist())


@pytest.mark.gpu
def test_kv_cache_sized_from_the_memory_fraction():
    """No num_token: the KV cache takes what the fraction leaves after weights (1 GiB spare)."""
    gc.collect()  # engines of earlier tests give their memory back first
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    llm = LLM(
        "qwen2-vl-2b",
        device="cuda",
        dtype="bfloat16",
        gpu_memory_utilization=0.5,
        max_num_seqs=8,
        max_model_len=4096,
    )
    cache = llm.engine.runner.kv_cache
    kv_bytes = 2 * cache.k.numel() * cache.k.element_size()
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.engine.model.parameters())
    expected = 0.5 * total - (total - free) - weight_bytes - (1 << 30)
    assert abs(kv_bytes - expected) < 0.05 * expected
    assert torch.cuda.memory_allocated() < 0.5 * total
    out = llm.generate([[1, 2, 3]] * 4, SamplingParams(max_tokens=4), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 4 for o in out)


def _step_batch(num_seqs: int, sample_rows: list[int], image_rows=()):
    import numpy as np

    from valora.forward import StepBatch

    return StepBatch(
        input_ids=np.zeros(num_seqs, dtype=np.int64),
        positions=np.zeros((3, num_seqs), dtype=np.int64),
        query_lens=[1] * num_seqs,
        context_lens=[5] * num_seqs,
        slot_mapping=np.zeros(num_seqs, dtype=np.int64),
        block_tables=np.zeros((num_seqs, 1), dtype=np.int32),
        image_embeds=None,
        image_rows=list(image_rows),
        sample_rows=sample_rows,
        sample_requests=[],
    )


def test_graph_forward_replays_only_batches_where_every_row_samples():
    """A one-token prefill chunk that is not the prompt's end looks like decode but does not
    sample: it must run eagerly (the graph returns logits for every row)."""
    calls = []

    class FakeGraphs:
        max_batch_size, max_blocks_per_seq, variants = 8, 4, ("none",)

        def variant(self, batch):
            return "none"

        def replay(self, batch, variant):
            calls.append("graph")

    forward = GraphForward(FakeGraphs(), lambda batch: calls.append("eager"))
    forward(_step_batch(3, [0, 1, 2]))
    forward(_step_batch(3, [0, 1]))  # row 2: a 1-token chunk in the middle of a prompt
    forward(_step_batch(3, [0, 1, 2], image_rows=[1]))
    forward(_step_batch(9, list(range(9))))  # larger than any graph
    assert calls == ["graph", "eager", "eager", "eager"]


def test_cpu_engine_never_builds_graphs_and_torch_attention_is_not_graph_safe():
    from valora.layers.paged_attention import TorchPagedAttention

    assert TorchPagedAttention.graph_safe is False
    llm = LLM("tiny", device="cpu")
    assert isinstance(llm.engine.runner.forward, EagerForward)
