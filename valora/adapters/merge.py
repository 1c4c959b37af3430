"""Merged mode: one adapter folded into the base weights, and back, exactly.

``BaseWeightMerger`` keeps a pristine copy of every base weight a merge may touch (allocated once,
before the KV cache is sized) and writes ``W = W0 + c B A`` in one pass per (target, slice) over all
layers (``valora.layers.merge_kernels``: fp32 accumulation, rounded once). Unmerging copies ``W0``
back, so the base weights are bit-identical after any number of switches (no in-place add/sub
drift). Switching from adapter m to m' rewrites only what either touches.

The adapter's factors are read from the GPU pool rows, so a merged adapter stays pinned there.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from valora.adapters.pool import AdapterKey, AdapterPool
from valora.adapters.types import LoRAAdapter
from valora.layers.merge_kernels import SliceMerge, merge_layers_for


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
        self.merge_layers = merge_layers_for(pool.device)  # Triton on CUDA, addmm elsewhere
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
            self._merge(adapter, self.pool.slot(key))
        self.merged, self._merged_modules = key, new_modules
        if self.pool.device.type == "cuda":
            torch.cuda.synchronize(self.pool.device)
        seconds = time.perf_counter() - start
        self.num_switches += 1
        self.switch_seconds += seconds
        return seconds

    def _merge(self, adapter: LoRAAdapter, slot: int) -> None:
        """One ``merge_layers`` call per (target, slice), covering every layer it trains."""
        by_target: dict[str, list[int]] = {}
        for target, layer in adapter.modules:
            by_target.setdefault(target, []).append(layer)
        for target, layers in by_target.items():
            buffers = self.pool.targets[target]
            offsets = buffers.spec.slice_offsets
            modules = [adapter.modules[(target, layer)] for layer in layers]
            for s, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
                self.merge_layers(SliceMerge(
                    outs=[self.live[(target, layer)][lo:hi] for layer in layers],
                    pristine=[self.pristine[(target, layer)][lo:hi] for layer in layers],
                    a_rows=[buffers.a_buf[layer, s, slot : slot + m.rank]
                            for layer, m in zip(layers, modules)],
                    b_rows=[buffers.b_buf[layer, slot : slot + m.rank, lo:hi]
                            for layer, m in zip(layers, modules)],
                    scales=[m.scaling for m in modules],
                ))  # fmt: skip
