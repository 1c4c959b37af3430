"""Merged mode: one adapter folded into the base weights, and back, exactly.

``BaseWeightMerger`` keeps a pristine copy of every base weight a merge may touch (allocated
once, before the KV cache is sized) and writes ``W = W0 + c B A`` per slice in one pass
(``valora.layers.merge_kernels``: fp32 accumulation, rounded once). Unmerging copies ``W0``
back, so the base weights are bit-identical after any number of switches (no in-place add/sub
drift). Switching from adapter m to m' rewrites only what either touches.

The adapter's factors are read from the GPU pool rows, so a merged adapter stays pinned there.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from valora.adapters.pool import AdapterKey, AdapterPool
from valora.adapters.types import LoRAAdapter, LoRAModule
from valora.layers.merge_kernels import merge_slice_for


class BaseWeightMerger:
    """Invariant: for every (target, layer) not touched by ``merged``, the live weight equals the
    pristine copy bit for bit."""

    def __init__(self, model: nn.Module, pool: AdapterPool) -> None:
        self.pool = pool
        self.live: dict[tuple[str, int], torch.Tensor] = {}
        self.pristine: dict[tuple[str, int], torch.Tensor] = {}
        for name, buffers in pool.targets.items():
            for layer in range(buffers.spec.num_layers):
                weight = model.get_submodule(buffers.spec.module_path(layer)).weight
                self.live[(name, layer)] = weight
                self.pristine[(name, layer)] = weight.detach().clone()
        self.merge_slice = merge_slice_for(pool.device)  # Triton on CUDA, addmm elsewhere
        self.merged: AdapterKey | None = None
        self._merged_modules: set[tuple[str, int]] = set()
        self.num_switches = 0
        self.switch_seconds = 0.0

    @property
    def num_bytes(self) -> int:
        return sum(t.nbytes for t in self.pristine.values())

    def switch(self, key: AdapterKey | None, adapter: LoRAAdapter | None) -> float:
        """Merge ``key`` (None: unmerge); returns the seconds taken (device work included)."""
        start = time.perf_counter()
        new_modules = set(adapter.modules) if adapter is not None else set()
        for module in self._merged_modules - new_modules:
            self.live[module].copy_(self.pristine[module])
        if key is not None:
            slot = self.pool.slot(key)
            for module in new_modules:
                self._merge_module(module, slot, adapter.modules[module])
        self.merged, self._merged_modules = key, new_modules
        if self.pool.device.type == "cuda":
            torch.cuda.synchronize(self.pool.device)
        seconds = time.perf_counter() - start
        self.num_switches += 1
        self.switch_seconds += seconds
        return seconds

    def _merge_module(self, module: tuple[str, int], slot: int, weights: LoRAModule) -> None:
        target, layer = module
        buffers = self.pool.targets[target]
        offsets = buffers.spec.slice_offsets
        live, pristine = self.live[module], self.pristine[module]  # [N, K]
        rank, scaling = weights.rank, weights.scaling
        b = buffers.b_buf[layer, slot : slot + rank]  # [r, N]
        for s, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
            a = buffers.a_buf[layer, s, slot : slot + rank]  # [r, K]
            self.merge_slice(live[lo:hi], pristine[lo:hi], b[:, lo:hi], a, scaling)
