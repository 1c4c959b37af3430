"""Decode steps replayed from CUDA graphs: one graph per padded batch size.

A decode step (one new token per sequence, no images) of B sequences runs the graph captured for
the smallest size G >= B. The graph reads only static input buffers, so a step copies its host
arrays into rows [0, B) and sets rows [B, G) to padding:

- padding rows write their K/V to the cache's scratch slot (``KVCache.scratch_slot``) and
  attend over one token (context length 1) of whatever block their block-table row still names
  (a valid block, only read), so they never change a sequence's cache;
- their logits are computed and dropped.

The graphs capture the whole language model and the LM head ([G, V] fp32 logits); sampling
stays outside. Decode attention splits depend on the batch size only
(``num_kv_splits_for``), so one graph serves every context length up to the block-table width
(``max_model_len``). Graphs share one memory pool, captured largest first.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from valora.forward import EagerForward, StepBatch
from valora.layers.paged_attention import KVCache, PagedAttentionMetadata
from valora.models.qwen2_vl import Qwen2VLForConditionalGeneration


def capture_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_batch_size (and max_batch_size)."""
    sizes = [s for s in (1, 2, 4, 8) if s < max_batch_size]
    sizes += list(range(16, max_batch_size, 16))
    return sorted({*sizes, max_batch_size})


class DecodeGraphs:
    """Static buffers and one captured graph per size.

    Invariant: between replays, every buffer row a graph may read holds either the current
    step's data (rows < B) or padding (rows >= B): scratch slot, context length 1.
    """

    def __init__(
        self,
        model: Qwen2VLForConditionalGeneration,
        kv_cache: KVCache,
        max_batch_size: int,
        max_model_len: int,
    ) -> None:
        self.model = model
        self.sizes = capture_sizes(max_batch_size)
        self.pad_slot = kv_cache.scratch_slot
        width = -(-max_model_len // kv_cache.block_size)
        size, device = self.sizes[-1], model.device
        self.input_ids = torch.zeros(size, dtype=torch.int64, device=device)
        self.positions = torch.zeros(3, size, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((size,), self.pad_slot, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(size, width, dtype=torch.int32, device=device)
        self.context_lens = torch.ones(size, dtype=torch.int32, device=device)
        self.query_start = torch.arange(size + 1, dtype=torch.int32, device=device)
        self.no_image_rows = torch.zeros(0, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}  # size -> [size, V] fp32, the graph's output

    @property
    def max_batch_size(self) -> int:
        return self.sizes[-1]

    @property
    def max_blocks_per_seq(self) -> int:
        return self.block_tables.shape[1]

    def capture(self) -> None:
        pool = None
        for size in tqdm(sorted(self.sizes, reverse=True), desc="capturing decode graphs"):
            self._forward(size)  # warm-up: compiles the kernels outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[size] = self._forward(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def _forward(self, size: int) -> torch.Tensor:
        meta = PagedAttentionMetadata(
            query_lens=(1,) * size,
            context_lens=(1,) * size,  # host copy: only checked, never steers a decode launch
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            query_start=self.query_start[: size + 1],
            context_lens_tensor=self.context_lens[:size],
        )
        hidden = self.model(
            self.input_ids[:size], self.positions[:, :size], meta, None, self.no_image_rows
        )
        return self.model.compute_logits(hidden)

    def replay(self, batch: StepBatch) -> torch.Tensor:
        """Logits [B, V] of a decode batch (a view into the graph's output buffer)."""
        num = batch.num_seqs
        size = next(s for s in self.sizes if s >= num)
        width = batch.block_tables.shape[1]
        slots = np.full(size, self.pad_slot, dtype=np.int64)
        slots[:num] = batch.slot_mapping
        context_lens = np.ones(size, dtype=np.int32)
        context_lens[:num] = batch.context_lens
        self.input_ids[:num].copy_(torch.from_numpy(batch.input_ids), non_blocking=True)
        self.positions[:, :num].copy_(torch.from_numpy(batch.positions), non_blocking=True)
        self.slot_mapping[:size].copy_(torch.from_numpy(slots), non_blocking=True)
        self.context_lens[:size].copy_(torch.from_numpy(context_lens), non_blocking=True)
        self.block_tables[:num, :width].copy_(
            torch.from_numpy(batch.block_tables), non_blocking=True
        )
        self.graphs[size].replay()
        return self.logits[size][:num]


class GraphForward:
    """Decode batches that fit go through ``DecodeGraphs``; everything else runs eagerly."""

    def __init__(self, graphs: DecodeGraphs, eager: EagerForward) -> None:
        self.graphs = graphs
        self.eager = eager

    def __call__(self, batch: StepBatch) -> torch.Tensor | None:
        if (
            batch.is_decode
            and batch.num_seqs <= self.graphs.max_batch_size
            and batch.block_tables.shape[1] <= self.graphs.max_blocks_per_seq
        ):
            return self.graphs.replay(batch)
        return self.eager(batch)
