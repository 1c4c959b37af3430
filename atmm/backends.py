"""LoRA backends behind one interface, chosen by name (``get_backend``).

A backend computes ``y += LoRA(x)`` for a segment table (semantics: ``atmm.types``) in place:

    backend = get_backend("atmm")
    prepared = backend.prepare(weights)          # once per pool: layout conversion, not timed
    backend.add_lora(y, x, prepared, segments)   # every call

``atmm`` is ours (adaptive tiling); ``sgmv`` (Punica), ``mbgmv`` (S-LoRA), ``einsum`` (dLoRA) and
``torch`` (a per-segment loop) are the baselines in ``atmm.baselines``.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import torch

from atmm.types import LoRASegments, LoRAWeights


class LoRABackend(Protocol):
    name: str
    graph_safe: bool  # add_lora never syncs with the host (can be captured in a CUDA graph)
    # optional ``static_prepare``: prepare's result stays valid when the pool's contents (ranks,
    # scalings, rows) change; otherwise prepare again after every change

    def prepare(self, weights: LoRAWeights) -> Any: ...

    def add_lora(
        self, y: torch.Tensor, x: torch.Tensor, prepared: Any, segs: LoRASegments
    ) -> None: ...


# name -> "module:class"; imported on first use (triton is only needed by the Triton backends)
_BACKENDS = {
    "atmm": "atmm.ops.lora:ATMMBackend",
    "sgmv": "atmm.baselines.punica_sgmv:SGMVBackend",
    "mbgmv": "atmm.baselines.slora_mbgmv:MBGMVBackend",
    "einsum": "atmm.baselines.dlora_einsum:EinsumBackend",
    "torch": "atmm.baselines.torch_loop:TorchLoopBackend",
}
BACKEND_NAMES = tuple(_BACKENDS)


def get_backend(name: str) -> LoRABackend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown LoRA backend {name!r}; choose one of {list(_BACKENDS)}")
    module, cls = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
