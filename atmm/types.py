"""What every ATMM op and baseline takes: the segment table and one target's adapter pool.

Segments. Token rows come grouped by adapter: segment i covers rows
``seg_indptr[i]:seg_indptr[i+1]`` and uses pool slot ``seg_slots[i]``; slot -1 means "no adapter"
(the rows are left alone). Adjacent segments may use the same slot, and a slot may appear in
several segments. Rows past ``seg_indptr[-1]`` belong to no segment and are left alone.
``max_seg_len`` is a host-side upper bound on every segment's length: launch grids are sized from
it and from the number of segments only, never from device values, so a call can be captured in
a CUDA graph when both are fixed (pad with empty segments, which repeat the last offset).

Pool. One LoRA target (q, o, down ...) or a stack of targets that share an input (qkv, gate_up) is
``num_slices`` output slices of one output row: slice s covers columns
``slice_offsets[s]:slice_offsets[s+1]`` of ``y``. Per slot, with rank ``r = ranks[slot]``
(heterogeneous, at most ``max_rank``) and scaling ``c = scalings[slot]``:

    a: [num_slots, num_slices, max_rank, K]   rows r.. of a slot are unused (never read)
    b: [num_slots, max_rank, N]               b[slot, :r, off_s:off_{s+1}] is B_s^T

    v[t, s, :r]               = x[t] @ a[slot, s, :r]^T                  (shrink; fp32)
    y[t, off_s:off_{s+1}]    += c * v[t, s, :r] @ b[slot, :r, off_s:off_{s+1}]   (expand)

A *packed* pool may give the slot dimension a stride of one rank row (``a.stride(0) == K``,
``b.stride(0) == N``): slot o then means rows ``o .. o + ranks[o]`` of a shared buffer, so adapters
of different ranks sit next to each other without padding (``ranks``/``scalings`` are indexed by
the same o). Every op and baseline reads the pool through its strides.

This is PEFT's ``y += scaling * B_s(A_s(x))`` with ``a[slot, s, :r] = lora_A.weight`` [r, K] and
``b[slot, :r, off_s:off_{s+1}] = lora_B.weight.T`` [r, N_s].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoRASegments:
    seg_indptr: torch.Tensor  # [S + 1] int32, non-decreasing, seg_indptr[0] == 0
    seg_slots: torch.Tensor  # [S] int32 in [-1, num_slots)
    max_seg_len: int  # host upper bound on seg_indptr[i + 1] - seg_indptr[i]

    @property
    def num_segments(self) -> int:
        return self.seg_slots.shape[0]

    @classmethod
    def build(
        cls,
        seg_lens: list[int],
        seg_slots: list[int],
        device: torch.device | str,
        max_seg_len: int | None = None,
    ) -> LoRASegments:
        """From host lists (validated here, once; the ops only check shapes)."""
        if len(seg_lens) != len(seg_slots):
            raise ValueError(f"{len(seg_lens)} segment lengths but {len(seg_slots)} slots")
        if any(not isinstance(n, int) or n < 0 for n in seg_lens):
            raise ValueError(f"segment lengths must be ints >= 0, got {seg_lens}")
        if any(not isinstance(s, int) or s < -1 for s in seg_slots):
            raise ValueError(f"segment slots must be ints >= -1 (-1: no adapter), got {seg_slots}")
        longest = max(seg_lens, default=0)
        if max_seg_len is None:
            max_seg_len = longest
        if max_seg_len < longest:
            raise ValueError(f"max_seg_len {max_seg_len} < longest segment {longest}")
        indptr = [0]
        for n in seg_lens:
            indptr.append(indptr[-1] + n)
        return cls(
            seg_indptr=torch.tensor(indptr, dtype=torch.int32, device=device),
            seg_slots=torch.tensor(seg_slots, dtype=torch.int32, device=device),
            max_seg_len=max(1, max_seg_len),
        )

    @property
    def num_tokens(self) -> int:
        """Rows covered (reads the device: for tests and references, not hot paths)."""
        return int(self.seg_indptr[-1])


@dataclass(frozen=True)
class LoRAWeights:
    a: torch.Tensor  # [num_slots, num_slices, max_rank, K]
    b: torch.Tensor  # [num_slots, max_rank, N]
    ranks: torch.Tensor  # [num_slots] int32 in [0, max_rank]
    scalings: torch.Tensor  # [num_slots] fp32
    slice_offsets: tuple[int, ...]  # [num_slices + 1] column offsets into N, host

    @property
    def num_slots(self) -> int:
        return self.a.shape[0]

    @property
    def num_slices(self) -> int:
        return self.a.shape[1]

    @property
    def max_rank(self) -> int:
        return self.a.shape[2]

    @property
    def in_features(self) -> int:
        return self.a.shape[3]

    @property
    def out_features(self) -> int:
        return self.b.shape[2]


def check_call(
    x: torch.Tensor | None, y: torch.Tensor | None, w: LoRAWeights, segs: LoRASegments
) -> None:
    """Shape/dtype/device checks every op runs (host metadata only: no device sync). x [T, K] and
    y [T, N] as given (an op that has only one of them passes None for the other)."""
    check_weights(w)
    for name, t, width in (("x", x, w.in_features), ("y", y, w.out_features)):
        if t is None:
            continue
        if t.dim() != 2 or t.shape[1] != width:
            raise ValueError(f"{name} must be [T, {width}] for this pool, got {tuple(t.shape)}")
        if t.dtype != w.a.dtype or w.b.dtype != w.a.dtype:
            raise ValueError(f"dtypes differ: {name} {t.dtype}, a {w.a.dtype}, b {w.b.dtype}")
        if t.stride(1) != 1:
            raise ValueError(f"{name} needs a contiguous last dim")
    if x is not None and y is not None and x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    check_segments(segs, (x if x is not None else y).device)


def check_weights(w: LoRAWeights) -> None:
    if w.a.dim() != 4 or w.b.dim() != 3 or w.a.shape[0] != w.b.shape[0]:
        raise ValueError(f"a {tuple(w.a.shape)} / b {tuple(w.b.shape)}: bad pool shapes")
    if w.a.shape[2] != w.b.shape[1]:
        raise ValueError(f"a has max_rank {w.a.shape[2]}, b has {w.b.shape[1]}")
    offsets = w.slice_offsets
    if len(offsets) != w.num_slices + 1 or offsets[0] != 0 or offsets[-1] != w.out_features:
        raise ValueError(
            f"slice_offsets {offsets} do not split N={w.out_features} in {w.num_slices} slices"
        )
    if any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"slice_offsets {offsets} must increase")
    if w.ranks.shape != (w.num_slots,) or w.scalings.shape != (w.num_slots,):
        raise ValueError("ranks and scalings need one entry per slot")
    if w.a.stride(3) != 1 or w.b.stride(2) != 1 or w.a.stride(2) != w.a.shape[3]:
        raise ValueError("a and b need contiguous rows (a: [.., R, K] rows of K, b: rows of N)")


def check_segments(segs: LoRASegments, device: torch.device) -> None:
    if segs.seg_indptr.shape != (segs.num_segments + 1,):
        raise ValueError("seg_indptr must have one more entry than seg_slots")
    for name, t in (("seg_indptr", segs.seg_indptr), ("seg_slots", segs.seg_slots)):
        if t.dtype != torch.int32 or t.device != device:
            raise ValueError(f"{name} must be int32 on {device}, got {t.dtype} on {t.device}")
    if segs.max_seg_len < 1:
        raise ValueError("max_seg_len must be >= 1")


def validate_segments(segs: LoRASegments, num_tokens: int, w: LoRAWeights) -> None:
    """Full check of a segment table against the data (reads the device: setup and tests)."""
    indptr = segs.seg_indptr.tolist()
    slots = segs.seg_slots.tolist()
    if indptr[0] != 0 or any(b < a for a, b in zip(indptr, indptr[1:])):
        raise ValueError(f"seg_indptr must start at 0 and not decrease, got {indptr}")
    if indptr[-1] > num_tokens:
        raise ValueError(f"segments cover {indptr[-1]} rows but there are {num_tokens}")
    if max((b - a for a, b in zip(indptr, indptr[1:])), default=0) > segs.max_seg_len:
        raise ValueError(f"a segment is longer than max_seg_len {segs.max_seg_len}")
    if any(not -1 <= s < w.num_slots for s in slots):
        raise ValueError(f"segment slots {slots} outside [-1, {w.num_slots})")
    ranks = w.ranks.tolist()
    if any(not 0 <= r <= w.max_rank for r in ranks):
        raise ValueError(f"ranks {ranks} outside [0, max_rank={w.max_rank}]")
