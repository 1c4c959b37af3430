"""Pure-torch reference of every ATMM op (the oracle of the kernel tests).

Semantics in ``atmm.types``. Everything is computed in fp32 from the inputs as given, one segment
at a time; ``y`` is returned out of place, rounded once to its dtype.
"""

from __future__ import annotations

import torch

from atmm.types import LoRASegments, LoRAWeights


def _segments(segs: LoRASegments):
    """(start, end, slot) of every segment that has an adapter and at least one row."""
    indptr, slots = segs.seg_indptr.tolist(), segs.seg_slots.tolist()
    for i, slot in enumerate(slots):
        if slot >= 0 and indptr[i + 1] > indptr[i]:
            yield indptr[i], indptr[i + 1], slot


def lora_shrink_ref(x: torch.Tensor, w: LoRAWeights, segs: LoRASegments) -> torch.Tensor:
    """v [T, num_slices, max_rank] fp32: v[t, s, :r] = x[t] @ a[slot, s, :r]^T; zero elsewhere
    (rows of no segment or of slot -1, and ranks past the slot's rank)."""
    v = torch.zeros(x.shape[0], w.num_slices, w.max_rank, dtype=torch.float32, device=x.device)
    ranks = w.ranks.tolist()
    for start, end, slot in _segments(segs):
        r = ranks[slot]
        a = w.a[slot, :, :r].float()  # [L, r, K]
        v[start:end, :, :r] = torch.einsum("tk,lrk->tlr", x[start:end].float(), a)
    return v


def lora_expand_ref(
    v: torch.Tensor, y: torch.Tensor, w: LoRAWeights, segs: LoRASegments
) -> torch.Tensor:
    """y + c * v[t, s, :r] @ b[slot, :r, slice s], per slice, for rows with an adapter."""
    out = y.float().clone()
    ranks, scalings = w.ranks.tolist(), w.scalings.tolist()
    offsets = w.slice_offsets
    for start, end, slot in _segments(segs):
        r = ranks[slot]
        for s in range(w.num_slices):
            lo, hi = offsets[s], offsets[s + 1]
            b = w.b[slot, :r, lo:hi].float()  # [r, N_s]
            out[start:end, lo:hi] += scalings[slot] * (v[start:end, s, :r].float() @ b)
    return out.to(y.dtype)


def add_lora_ref(
    y: torch.Tensor, x: torch.Tensor, w: LoRAWeights, segs: LoRASegments
) -> torch.Tensor:
    """y + the LoRA term of every segment (shrink then expand, all in fp32)."""
    return lora_expand_ref(lora_shrink_ref(x, w, segs), y, w, segs)
