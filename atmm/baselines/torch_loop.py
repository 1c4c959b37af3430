"""Plain per-segment torch loop: for each segment, ``y += c * (x @ A^T) @ B^T`` per slice.

Reads the segment table to the host once per call (a device sync): the simplest correct
implementation, as an unbatched engine would run LoRA. Intermediate in fp32.
"""

from __future__ import annotations

import torch

from atmm.types import LoRASegments, LoRAWeights, check_call


class TorchLoopBackend:
    name = "torch"
    graph_safe = False  # reads the segment table to the host

    def prepare(self, weights: LoRAWeights) -> LoRAWeights:
        return weights

    def add_lora(
        self, y: torch.Tensor, x: torch.Tensor, w: LoRAWeights, segs: LoRASegments
    ) -> None:
        check_call(x, y, w, segs)
        indptr, slots = segs.seg_indptr.tolist(), segs.seg_slots.tolist()
        ranks, scalings = w.ranks.tolist(), w.scalings.tolist()
        offsets = w.slice_offsets
        for i, slot in enumerate(slots):
            start, end = indptr[i], indptr[i + 1]
            if slot < 0 or end == start or ranks[slot] == 0:
                continue
            r = ranks[slot]
            v = torch.einsum("tk,lrk->tlr", x[start:end].float(), w.a[slot, :, :r].float())
            for s in range(w.num_slices):
                lo, hi = offsets[s], offsets[s + 1]
                delta = v[:, s] @ w.b[slot, :r, lo:hi].float()
                y[start:end, lo:hi] = (y[start:end, lo:hi].float() + scalings[slot] * delta).to(
                    y.dtype
                )
