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

With LoRA, each size is captured once per variant the policy can produce: "none" (no adapter
rows, or every row the merged adapter's), "unmerged" (each row's own adapter: one segment per
row, slots in a static buffer) and "mixture" (own adapters plus the merged adapter's
correction). A step replays the variant its rows need. On a quantized base, merged weights live
in dense overlays the layers switch to (``valora.adapters.merge``), so a step whose rows all
belong to the merged adapter needs its own variant, "merged", and "merged" / "mixture" are
captured with the overlays switched on (``merged_weights``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from tqdm import tqdm

from valora.adapters.runtime import LoRASegments, lora_mode
from valora.forward import EagerForward, StepBatch, StepOutput
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
        runtime=None,
        variants: tuple[str, ...] = ("none",),
        merged_weights: Callable[[], AbstractContextManager] | None = None,
    ) -> None:
        self.model = model
        self.runtime = runtime  # valora.adapters.runtime.LoRARuntime, or None (no LoRA)
        # LoRA variants captured: "none", "unmerged", "mixture", and "merged" (overlays only)
        self.variants = variants
        # entered to capture "merged" / "mixture": the layers computing on merged overlays;
        # None: merged weights are written in place (nothing to switch)
        self.merged_weights = merged_weights
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
        # LoRA segments: one per row (decode), slots per row; -1 (no adapter) on padding rows
        self.seg_indptr = torch.arange(size + 1, dtype=torch.int32, device=device)
        self.own_slots = torch.full((size,), -1, dtype=torch.int32, device=device)
        self.corr_slots = torch.full((size,), -1, dtype=torch.int32, device=device)
        self.graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self.logits: dict[tuple[str, int], torch.Tensor] = {}  # [size, V] fp32 graph outputs

    @property
    def max_batch_size(self) -> int:
        return self.sizes[-1]

    @property
    def max_blocks_per_seq(self) -> int:
        return self.block_tables.shape[1]

    def capture(self) -> None:
        pool = None
        jobs = [(v, s) for s in sorted(self.sizes, reverse=True) for v in self.variants]
        for variant, size in tqdm(jobs, desc="capturing decode graphs"):
            self._set_lora_segments(variant, size)
            merged = variant in ("merged", "mixture") and self.merged_weights is not None
            with self.merged_weights() if merged else nullcontext():
                self._forward(size)  # warm-up: compiles the kernels outside the capture
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.logits[(variant, size)] = self._forward(size)
            pool = graph.pool()
            self.graphs[(variant, size)] = graph
        if self.runtime is not None:
            self.runtime.clear()
        torch.cuda.synchronize()

    def _set_lora_segments(self, variant: str, size: int) -> None:
        if self.runtime is None:
            return
        indptr = self.seg_indptr[: size + 1]
        lora_rows = variant in ("unmerged", "mixture")
        own = LoRASegments(indptr, self.own_slots[:size], 1) if lora_rows else None
        corr = LoRASegments(indptr, self.corr_slots[:size], 1) if variant == "mixture" else None
        self.runtime.set_segments("language", own, corr)

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

    def variant(self, batch: StepBatch) -> str:
        if batch.seq_slots is None:
            return "none"
        mode = lora_mode(batch.seq_slots, batch.merged_slot)
        if mode == "merged":  # merged in place: the base graph computes it
            return "merged" if "merged" in self.variants else "none"
        return mode

    def _copy_lora_slots(self, batch: StepBatch, variant: str, size: int) -> None:
        if variant in ("none", "merged"):
            return
        m, num = batch.merged_slot, batch.num_seqs
        own = np.full(size, -1, dtype=np.int32)
        own[:num] = [-1 if s == m else s for s in batch.seq_slots]
        self.own_slots[:size].copy_(torch.from_numpy(own), non_blocking=True)
        if variant == "mixture":
            corr = np.full(size, -1, dtype=np.int32)
            corr[:num] = [-1 if s == m else m for s in batch.seq_slots]
            self.corr_slots[:size].copy_(torch.from_numpy(corr), non_blocking=True)

    def replay(self, batch: StepBatch, variant: str) -> torch.Tensor:
        """Logits [B, V] of a decode batch (a view into the graph's output buffer); ``variant``
        is ``self.variant(batch)``, computed once by the caller."""
        num = batch.num_seqs
        size = next(s for s in self.sizes if s >= num)
        self._copy_lora_slots(batch, variant, size)
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
        self.graphs[(variant, size)].replay()
        return self.logits[(variant, size)][:num]


class GraphForward:
    """Decode batches that fit go through ``DecodeGraphs``; everything else runs eagerly."""

    def __init__(self, graphs: DecodeGraphs, eager: EagerForward) -> None:
        self.graphs = graphs
        self.eager = eager

    def __call__(self, batch: StepBatch) -> StepOutput:
        if (
            batch.is_decode
            and batch.num_seqs <= self.graphs.max_batch_size
            and batch.block_tables.shape[1] <= self.graphs.max_blocks_per_seq
        ):
            variant = self.graphs.variant(batch)
            if variant in self.graphs.variants:
                return StepOutput(self.graphs.replay(batch, variant))
        return self.eager(batch)
