"""Merged mode: one adapter folded into the base weights, and back, exactly.

``BaseWeightMerger`` writes ``W = W0 + c B A`` in one pass per (target, slice) over all layers
(``valora.adapters.merge_kernels``: fp32 accumulation, rounded once). Each merged module is a site:

- a dense ``Linear``: a pristine copy of W0 is kept (allocated once, before the KV cache is
  sized); merging writes the live weight in place, unmerging copies W0 back, so the base
  weights are bit-identical after any number of switches (no in-place add/sub drift);
- a ``QuantLinear`` (quantized base): the quantized weight is never written. A dense overlay
  [N, K] (allocated once, like the pristine copies, only where the engine found the memory)
  holds dequant(W_q) at all times, plus c B A for the layers the merged adapter trains. While
  any adapter is merged *every* quantized target layer computes on its overlay
  (``QuantLinear.merged_weight``), so eager steps and the decode graphs captured with all
  overlays on (``overlays_active``) compute the same thing whichever layers the adapter
  trains; unmerging switches them all back to the quantized kernels. The engine builds no
  merger on a quantized base without the memory for the overlays (merge plans are then not
  carried out).

Switching from adapter m to m' rewrites only what either touches. The adapter's factors are read
from the GPU pool rows, so a merged adapter stays pinned there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from valora.adapters.merge_kernels import SliceMerge, merge_layers_for
from valora.adapters.pool import AdapterKey, AdapterPool
from valora.adapters.types import LoRAAdapter
from valora.quant.linear import QuantLinear

Module = tuple[str, int]  # (target, layer)


class _DenseSite:
    """A dense weight merged in place; W0 kept aside. The layer always computes on it."""

    def __init__(self, module: nn.Module) -> None:
        self.live = module.weight
        self.pristine = module.weight.detach().clone()

    def prepare(self) -> None:
        pass

    def use_overlay(self, on: bool) -> None:
        pass

    def restore(self) -> None:
        self.live.copy_(self.pristine)


class _OverlaySite:
    """A quantized weight: a dense overlay, W0 or W0 + delta, that the layer computes on while
    any adapter is merged. Invariant: the overlay holds W0 unless this layer is merged."""

    def __init__(self, module: QuantLinear) -> None:
        self.module = module
        self.live = torch.empty(
            module.out_features,
            module.in_features,
            dtype=module.dtype,
            device=module.quantized.qweight.device,
        )
        self.pristine = self.live  # merged in place after ``prepare`` wrote W0 into it
        self.prepare()

    def prepare(self) -> None:
        self.module.dequantize_into(self.live)

    def use_overlay(self, on: bool) -> None:
        self.module.merged_weight = self.live if on else None

    def restore(self) -> None:
        self.prepare()


def overlay_bytes(model: nn.Module, targets) -> int:
    """Memory the overlays of the quantized merge targets (``TargetSpec``s) would take."""
    total = 0
    for spec in targets:
        for layer in range(spec.num_layers):
            module = _base_layer(model, spec.module_path(layer))
            if isinstance(module, QuantLinear):
                total += module.out_features * module.in_features * module.dtype.itemsize
    return total


def _base_layer(model: nn.Module, path: str) -> nn.Module:
    """The base linear at ``path`` (inside its ``LoRALinear`` wrapper once LoRA is attached)."""
    module = model.get_submodule(path)
    return getattr(module, "base", module)


class BaseWeightMerger:
    """Invariant: every (target, layer) not touched by ``merged`` computes with its base weight
    (dense: the live weight equals the pristine copy bit for bit; quantized: the quantized
    kernels when nothing is merged, else an overlay holding its dequantized weight)."""

    def __init__(self, model: nn.Module, pool: AdapterPool) -> None:
        self.pool = pool
        self.sites: dict[Module, _DenseSite | _OverlaySite] = {}
        for name, buffers in pool.targets.items():
            for layer in range(buffers.spec.num_layers):
                module = _base_layer(model, buffers.spec.module_path(layer))
                site = (
                    _OverlaySite(module)
                    if isinstance(module, QuantLinear)
                    else (_DenseSite(module))
                )
                self.sites[(name, layer)] = site
        self.merge_layers = merge_layers_for(pool.device)  # Triton on CUDA, addmm elsewhere
        self.merged: AdapterKey | None = None
        self._merged_modules: set[Module] = set()
        self.num_switches = 0
        self.switch_seconds = 0.0

    @property
    def live(self) -> dict[Module, torch.Tensor]:
        """The weight each site merges into (dense: the layer's weight; quantized: its overlay)."""
        return {module: site.live for module, site in self.sites.items()}

    @property
    def num_bytes(self) -> int:
        return sum(site.pristine.nbytes for site in self.sites.values())

    @property
    def has_overlays(self) -> bool:
        return any(isinstance(site, _OverlaySite) for site in self.sites.values())

    @contextmanager
    def overlays_active(self) -> Iterator[None]:
        """Every quantized site computing on its overlay (whatever it holds): for capturing the
        CUDA graphs of merged steps; the previous state comes back afterwards."""
        for site in self.sites.values():
            site.use_overlay(True)
        try:
            yield
        finally:
            for site in self.sites.values():
                site.use_overlay(self.merged is not None)

    def switch(self, key: AdapterKey | None, adapter: LoRAAdapter | None) -> float:
        """Merge ``key`` (None: unmerge); returns the seconds taken (device work included)."""
        start = time.perf_counter()
        new_modules = set(adapter.modules) if adapter is not None else set()
        for module in self._merged_modules - new_modules:
            self.sites[module].restore()
        if key is not None:
            try:
                self._merge(adapter, self.pool.slot(key))
            except Exception:  # back to the base weights everywhere: never half merged
                self._restore_all(self._merged_modules | new_modules)
                raise
        for site in self.sites.values():
            site.use_overlay(key is not None)
        self.merged, self._merged_modules = key, new_modules
        if self.pool.device.type == "cuda":
            torch.cuda.synchronize(self.pool.device)
        seconds = time.perf_counter() - start
        self.num_switches += 1
        self.switch_seconds += seconds
        return seconds

    def _restore_all(self, modules: set[Module]) -> None:
        for module in modules:
            self.sites[module].restore()
        for site in self.sites.values():
            site.use_overlay(False)
        self.merged, self._merged_modules = None, set()

    def _merge(self, adapter: LoRAAdapter, slot: int) -> None:
        """One ``merge_layers`` call per (target, slice), covering every layer it trains."""
        by_target: dict[str, list[int]] = {}
        for target, layer in adapter.modules:
            by_target.setdefault(target, []).append(layer)
        for target, layers in by_target.items():
            buffers = self.pool.targets[target]
            offsets = buffers.spec.slice_offsets
            modules = [adapter.modules[(target, layer)] for layer in layers]
            sites = [self.sites[(target, layer)] for layer in layers]
            for layer, site in zip(layers, sites):
                if (target, layer) in self._merged_modules:  # holds the previous delta
                    site.prepare()
            for s, (lo, hi) in enumerate(zip(offsets, offsets[1:])):
                self.merge_layers(
                    SliceMerge(
                        outs=[site.live[lo:hi] for site in sites],
                        pristine=[site.pristine[lo:hi] for site in sites],
                        a_rows=[
                            buffers.a_buf[layer, s, slot : slot + m.rank]
                            for layer, m in zip(layers, modules)
                        ],
                        b_rows=[
                            buffers.b_buf[layer, slot : slot + m.rank, lo:hi]
                            for layer, m in zip(layers, modules)
                        ],
                        scales=[m.scaling for m in modules],
                    )
                )
