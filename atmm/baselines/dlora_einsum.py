"""dLoRA-style baseline: one dense einsum over every adapter slot, masked by a one-hot mapping.

dLoRA (OSDI'24; the VaLoRA release keeps it as its "dlora" baseline) computes the unmerged LoRA
term of a heterogeneous batch as

    delta = torch.einsum("bk,bi,ikr,ird->bd", x, mapping, A, B)

with ``mapping`` [T, num_slots] the per-token one-hot adapter matrix (scaling folded in; rows of
tokens with no adapter all zero) and A / B every slot's weights zero-padded to max_rank. Here, per
slice s: ``y[:, off_s:off_{s+1}] += delta_s``.

``prepare`` keeps the slots in use (rank > 0), zero-pads (rank rows past ``ranks[slot]`` become 0,
so padding adds nothing) and pre-arranges the pool so torch lowers the einsum to two plain GEMMs
without copies: A_s is stored [K, num_slots, R] and passed as its [num_slots, K, R] view, B_s is
[num_slots, R, N_s]. The operands are passed in the order x, A, mapping, B (same subscripts and
result) and contracted left to right (opt_einsum's path search is switched off for the call): ``(x @
A_all) * mapping @ B_all``. dLoRA's own operand order, left to right, would first materialise x once
per slot ([T, num_slots, K]); opt_einsum's choice measured up to 2x slower on an H100 (bf16, K=3584)
and its path search costs ~0.3 ms of host time per einsum. Everything runs in the input dtype (GEMMs
accumulate in fp32 inside; the [T, num_slots, R] intermediate and delta are rounded to the input
dtype), then delta is added to y.

The mapping is built on the device each call (searchsorted over ``seg_indptr``; no host sync).

Limits: the cost is that of every slot for every token (T x K x num_slots x max_rank), the
design's known weakness with many adapters. Rows of slot -1, of empty segments and past
``seg_indptr[-1]`` get ``+= 0``: their values stay the same unless x holds inf/NaN there
(0 * inf = NaN), and -0.0 becomes +0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atmm.types import LoRASegments, LoRAWeights, check_call


@dataclass(frozen=True)
class EinsumPrepared:
    weights: LoRAWeights
    a_kir: tuple[torch.Tensor, ...]  # per slice [K, num_slots, R], rank rows past r zeroed
    b_ird: tuple[torch.Tensor, ...]  # per slice [num_slots, R, N_s], rank rows past r zeroed
    slot_ids: torch.Tensor  # [U] int32: the slots with rank > 0 (U of them), in order
    scalings: torch.Tensor  # [U] fp32 scalings of those slots


def pad_mask(weights: LoRAWeights, slots: torch.Tensor) -> torch.Tensor:
    """[len(slots), max_rank] bool: rank row j of slot i is real (j < ranks[i])."""
    rows = torch.arange(weights.max_rank, device=weights.ranks.device)
    return rows[None, :] < weights.ranks[slots][:, None]


def token_mapping(
    segs: LoRASegments, num_tokens: int, prepared: EinsumPrepared, dtype: torch.dtype
) -> torch.Tensor:
    """[T, num_slots] one-hot * scaling of each token's slot (no adapter: zero row), on device."""
    dev = segs.seg_indptr.device
    tokens = torch.arange(num_tokens, dtype=torch.int32, device=dev)
    # segment of token t: largest i with seg_indptr[i] <= t; i == S for rows past the end
    seg = torch.searchsorted(segs.seg_indptr, tokens, right=True) - 1  # [T] int64
    slots = torch.cat([segs.seg_slots, segs.seg_slots.new_full((1,), -1)])  # [S + 1]
    token_slot = slots[seg]  # [T], -1: no adapter
    hit = token_slot[:, None] == prepared.slot_ids[None, :]  # [T, num_slots]
    return (hit * prepared.scalings[None, :]).to(dtype)


class EinsumBackend:
    name = "einsum"
    graph_safe = True  # no host syncs: CUDA-graph capture checked on the H100

    def prepare(self, weights: LoRAWeights) -> EinsumPrepared:
        """Dense copies of the slots in use (rank > 0; reads the device once per pool change)."""
        slots = (weights.ranks > 0).nonzero().squeeze(1)  # [U]
        keep = pad_mask(weights, slots)[:, :, None]  # [U, R, 1]
        a_kir, b_ird = [], []
        for s, (lo, hi) in enumerate(zip(weights.slice_offsets, weights.slice_offsets[1:])):
            # where, not a multiply: padding rows may hold anything (NaN * 0 = NaN)
            a = torch.where(keep, weights.a[slots, s], 0)  # [U, R, K]
            a_kir.append(a.permute(2, 0, 1).contiguous())  # [K, U, R]
            b_ird.append(torch.where(keep, weights.b[slots, :, lo:hi], 0).contiguous())
        return EinsumPrepared(
            weights, tuple(a_kir), tuple(b_ird), slots.to(torch.int32), weights.scalings[slots]
        )

    def add_lora(
        self, y: torch.Tensor, x: torch.Tensor, prepared: EinsumPrepared, segs: LoRASegments
    ) -> None:
        w = prepared.weights
        check_call(x, y, w, segs)
        if segs.num_segments == 0 or x.shape[0] == 0:
            return
        mapping = token_mapping(segs, x.shape[0], prepared, x.dtype)  # [T, num_slots]
        offsets = w.slice_offsets
        for s, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
            a = prepared.a_kir[s].permute(1, 0, 2)  # [num_slots, K, R] view
            # dLoRA's einsum: x @ A_all [T, slots*R], * mapping, @ B_all [slots*R, N_s]
            with torch.backends.opt_einsum.flags(enabled=False):  # the left-to-right path
                delta = torch.einsum("bk,ikr,bi,ird->bd", x, a, mapping, prepared.b_ird[s])
            y[:, lo:hi].add_(delta)
