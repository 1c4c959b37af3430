"""One step's flattened batch on the host, and the eager forward over it.

``StepBatch`` is what the model runner prepares from a ``SchedulerOutput``: host arrays (token
ids, M-RoPE positions, cache slots, block tables) plus the image embeddings of the step. A
forward strategy turns it into a ``StepOutput``: the logits of the rows that sample and the final
hidden states of the rows that a task head classifies: ``EagerForward`` here (any batch),
``GraphForward`` in ``valora.cuda_graphs`` (replays captured decode graphs, eager for the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from valora.layers.paged_attention import PagedAttentionMetadata
from valora.models.qwen2_vl import Qwen2VLForConditionalGeneration
from valora.request import Request


@dataclass
class StepBatch:
    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [3, T] int64
    query_lens: list[int]  # new tokens per sequence
    context_lens: list[int]  # KV tokens per sequence after this step
    slot_mapping: np.ndarray  # [T] int64
    block_tables: np.ndarray  # [B, width] int32, padded with block 0
    image_embeds: torch.Tensor | None  # [len(image_rows), hidden] on the model's device
    image_rows: list[int]  # rows of the batch that take image embeddings, in order
    sample_rows: list[int]  # last row of each request that samples this step
    sample_requests: list[Request]
    head_rows: list[int] = field(default_factory=list)  # last prompt row of classify requests
    head_requests: list[Request] = field(default_factory=list)
    seq_slots: list[int] | None = None  # adapter pool slot per sequence (-1: base); None: no LoRA
    merged_slot: int | None = None  # pool slot of the adapter merged into the base, if any

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @property
    def is_decode(self) -> bool:
        """One new token per sequence, no image rows, every sequence samples (a one-token prefill
        chunk that is not the prompt's last token does not sample, so it is not decode)."""
        num = self.num_seqs
        return len(self.input_ids) == num and len(self.sample_rows) == num and not self.image_rows


@dataclass
class StepOutput:
    logits: torch.Tensor | None  # [len(sample_rows), V] fp32; None when no row samples
    head_hidden: torch.Tensor | None = None  # [len(head_rows), hidden]; None when none


class EagerForward:
    """Runs the model on any StepBatch -> ``StepOutput``. With LoRA (``runtime``), sets the
    language tower's segments first."""

    def __init__(self, model: Qwen2VLForConditionalGeneration, runtime=None) -> None:
        self.model = model
        self.runtime = runtime  # valora.adapters.runtime.LoRARuntime or None

    def __call__(self, batch: StepBatch) -> StepOutput:
        device = self.model.device
        if self.runtime is not None:
            language = (batch.seq_slots, batch.query_lens)
            self.runtime.set_step({"language": language}, batch.merged_slot)
        meta = PagedAttentionMetadata.from_arrays(
            batch.query_lens, batch.context_lens, batch.slot_mapping, batch.block_tables, device
        )
        hidden = self.model(
            torch.from_numpy(batch.input_ids).to(device),
            torch.from_numpy(batch.positions).to(device),
            meta,
            batch.image_embeds,
            torch.tensor(batch.image_rows, dtype=torch.long, device=device),
        )
        logits = self.model.compute_logits(hidden[batch.sample_rows]) if batch.sample_rows else None
        return StepOutput(logits, hidden[batch.head_rows] if batch.head_rows else None)
