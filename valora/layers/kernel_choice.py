"""Which decoder-layer kernels a device runs: torch (``valora.layers.kernels``, also the
reference) or Triton (``valora.layers.triton_kernels``), chosen once by name or device."""

from __future__ import annotations

import torch

from valora.layers.kernels import TorchKernels


def _triton_kernels():
    from valora.layers.triton_kernels import TritonKernels

    return TritonKernels


_REGISTRY = {"torch": lambda: TorchKernels, "triton": _triton_kernels}


def get_kernels(name: str) -> type[TorchKernels]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown kernels {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]()


def kernels_for(device: torch.device | str) -> type[TorchKernels]:
    """Triton on CUDA devices (when triton imports), torch elsewhere."""
    if torch.device(device).type == "cuda":
        try:
            return get_kernels("triton")
        except ImportError:
            return TorchKernels
    return TorchKernels
