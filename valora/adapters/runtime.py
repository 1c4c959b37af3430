"""LoRA on the model's linear layers: the one place that imports ``atmm``.

``LoRALinear`` wraps a ``Linear`` and adds, after the base GEMM, the LoRA terms of the rows'
adapters through the backend chosen once (``atmm`` | ``sgmv`` | ``mbgmv`` | ``einsum`` |
``torch``, ``atmm.backends``). What each row gets comes from the ``LoRARuntime``'s segments of
the current forward, per row group (language tokens, vision patches, merger windows):

- ``own``: each row's adapter slot (-1: none) -> ``y += c_i B_i A_i x``;
- ``correction`` (mixture mode): rows not of the merged adapter m -> ``y -= c_m B_m A_m x``,
  which with m folded into the base weights gives them exactly ``W x + c_i B_i A_i x``.

Either may be None (no launch). Inside CUDA graphs, with a backend that has separate shrink and
expand (ATMM), the shrinks run on a side stream while the base GEMM runs and the expands follow
the join (fork and join are captured, so replays pay no host cost for them). Eager forwards
(prefills) launch the halves in order on one stream: there every op is launched from Python, and
the fork and join cost the host more per linear than the overlap saved. The runner sets the
segments before each forward (``set_segments``); CUDA graphs set them once to static buffers at
capture.
"""

from __future__ import annotations

import torch
from torch import nn

from atmm.backends import get_backend
from atmm.types import LoRASegments
from valora.adapters.pool import AdapterPool, TargetBuffers
from valora.layers.linear import Linear

Segments = tuple[LoRASegments | None, LoRASegments | None]  # (own, correction)


def build_segments(row_slots: list[int], device, max_seg_len: int | None = None) -> LoRASegments:
    """Runs of equal slots over the rows -> one segment each."""
    return segments_from_runs(row_slots, [1] * len(row_slots), device, max_seg_len)


def segments_from_runs(
    slots: list[int], lens: list[int], device, max_seg_len: int | None = None
) -> LoRASegments:
    """Runs of ``lens[i]`` rows of slot ``slots[i]`` -> segments, adjacent equal slots joined
    (empty runs dropped)."""
    seg_lens, seg_slots = [], []
    for slot, n in zip(slots, lens):
        if n == 0:
            continue
        if seg_slots and seg_slots[-1] == slot:
            seg_lens[-1] += n
        else:
            seg_lens.append(n)
            seg_slots.append(slot)
    return LoRASegments.build(seg_lens, seg_slots, device, max_seg_len)


class LoRARuntime:
    """The backend, its prepared pool views (refreshed when the pool's rows change owner) and
    the segments of the forward in flight."""

    def __init__(self, pool: AdapterPool, backend: str) -> None:
        self.pool = pool
        self.backend = get_backend(backend)
        self.static_prepare = getattr(self.backend, "static_prepare", False)
        # per row group: "language" (tokens), "vision" (patches), "merger" (windows)
        groups = ("language", "vision", "merger")
        self.segments: dict[str, Segments] = {g: (None, None) for g in groups}
        self._prepared: dict[tuple[str, int, bool], object] = {}
        self._prepared_version = -1
        # a second stream for the shrinks when the backend has separate halves (ATMM, on CUDA)
        split = hasattr(self.backend, "shrink") and pool.device.type == "cuda"
        self.side_stream = torch.cuda.Stream(pool.device) if split else None

    def set_segments(
        self, group: str, own: LoRASegments | None, correction: LoRASegments | None
    ) -> None:
        self.segments[group] = (own, correction)

    def set_step(
        self, groups: dict[str, tuple[list[int], list[int]]], merged_slot: int | None
    ) -> None:
        """The one builder of a forward's segments: per row group ("language" tokens, "vision"
        patches, "merger" windows), each sequence's adapter slot (-1: base) and row count ->
        its own-adapter and correction segments (``step_segments``), set for the forward."""
        for group, (slots, rows) in groups.items():
            _, own, corr = step_segments(slots, rows, merged_slot, self.pool.device)
            self.set_segments(group, own, corr)

    def clear(self) -> None:
        for group in self.segments:
            self.segments[group] = (None, None)

    def prepared(self, buffers: TargetBuffers, layer: int, negate: bool):
        if not self.static_prepare and self._prepared_version != self.pool.version:
            self._prepared.clear()
            self._prepared_version = self.pool.version
        key = (buffers.spec.name, layer, negate)
        prepared = self._prepared.get(key)
        if prepared is None:
            weights = (buffers.neg_weights if negate else buffers.weights)[layer]
            prepared = self._prepared[key] = self.backend.prepare(weights)
        return prepared

    def apply(self, y: torch.Tensor, x: torch.Tensor, buffers: TargetBuffers, layer: int) -> None:
        own, correction = self.segments[buffers.spec.row_group]
        if own is not None:
            self.backend.add_lora(y, x, self.prepared(buffers, layer, False), own)
        if correction is not None:
            self.backend.add_lora(y, x, self.prepared(buffers, layer, True), correction)

    def begin(self, x: torch.Tensor, buffers: TargetBuffers, layer: int) -> list | None:
        """While a CUDA graph is captured, with a side stream: start the shrinks there (they
        need only x), so they run while the base GEMM runs on the main stream; ``finish`` joins
        and expands. None: nothing started (eager, no side stream, or no LoRA rows)."""
        if self.side_stream is None or not torch.cuda.is_current_stream_capturing():
            return None
        jobs = [
            (segs, neg)
            for segs, neg in zip(self.segments[buffers.spec.row_group], (False, True))
            if segs is not None
        ]
        if not jobs:
            return None
        main = torch.cuda.current_stream()
        slices, rank = len(buffers.spec.slice_sizes), self.pool.max_rank
        # v is allocated on the main stream, which uses and frees it after the join
        pending = [
            (
                torch.empty(x.shape[0], slices, rank, dtype=torch.float32, device=x.device),
                segs,
                self.prepared(buffers, layer, neg),
            )
            for segs, neg in jobs
        ]
        self.side_stream.wait_stream(main)
        with torch.cuda.stream(self.side_stream):
            for v, segs, weights in pending:
                self.backend.shrink(x, weights, segs, v)
        return pending

    def finish(
        self,
        pending: list | None,
        y: torch.Tensor,
        x: torch.Tensor,
        buffers: TargetBuffers,
        layer: int,
    ) -> None:
        if pending is None:
            self.apply(y, x, buffers, layer)
            return
        torch.cuda.current_stream().wait_stream(self.side_stream)
        for v, segs, weights in pending:
            self.backend.expand(v, y, weights, segs)


class LoRALinear(nn.Module):
    """A ``Linear`` plus the LoRA terms of its target and layer."""

    def __init__(
        self, base: Linear, runtime: LoRARuntime, buffers: TargetBuffers, layer: int
    ) -> None:
        super().__init__()
        self.base = base
        self.runtime = runtime
        self.buffers = buffers
        self.layer = layer

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def output_sizes(self) -> tuple[int, ...]:
        return self.base.output_sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        pending = self.runtime.begin(x2, self.buffers, self.layer)
        y = self.base(x2)
        self.runtime.finish(pending, y, x2, self.buffers, self.layer)
        return y.view(*x.shape[:-1], y.shape[-1])


def attach_lora(model: nn.Module, runtime: LoRARuntime) -> None:
    """Replace every pool target's ``Linear`` in ``model`` by a ``LoRALinear`` (in place)."""
    for buffers in runtime.pool.targets.values():
        spec = buffers.spec
        for layer in range(spec.num_layers):
            parent_path, _, child = spec.module_path(layer).rpartition(".")
            parent = model.get_submodule(parent_path)
            base = getattr(parent, child) if child.isidentifier() else parent[int(child)]
            if isinstance(base, LoRALinear):
                raise ValueError(f"{spec.module_path(layer)} already carries LoRA")
            wrapped = LoRALinear(base, runtime, buffers, layer)
            if child.isidentifier():
                setattr(parent, child, wrapped)
            else:
                parent[int(child)] = wrapped


def lora_mode(seq_slots: list[int], merged_slot: int | None) -> str:
    """ "none" (no adapter rows, nothing merged), "unmerged", "merged" (every row is the merged
    adapter's) or "mixture" (a merged adapter plus other rows, corrected)."""
    if merged_slot is None:
        return "none" if all(s < 0 for s in seq_slots) else "unmerged"
    return "merged" if all(s == merged_slot for s in seq_slots) else "mixture"


def step_segments(
    seq_slots: list[int], query_lens: list[int], merged_slot: int | None, device
) -> tuple[str, LoRASegments | None, LoRASegments | None]:
    """The forward's (mode, own, correction) segments from each sequence's slot (-1: base).

    With merged slot m, rows of m need nothing; the others get their own adapter and the
    correction -m."""
    mode = lora_mode(seq_slots, merged_slot)
    if mode in ("none", "merged"):
        return mode, None, None
    if mode == "unmerged":
        return mode, segments_from_runs(seq_slots, query_lens, device), None
    own = [-1 if s == merged_slot else s for s in seq_slots]
    corr = [-1 if s == merged_slot else merged_slot for s in seq_slots]
    own_segs = None
    if any(s >= 0 and n > 0 for s, n in zip(own, query_lens)):
        own_segs = segments_from_runs(own, query_lens, device)
    return mode, own_segs, segments_from_runs(corr, query_lens, device)
