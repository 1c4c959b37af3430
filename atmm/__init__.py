"""ATMM: batched heterogeneous-LoRA kernels (adaptive-tiling Triton), independent of ``valora``.

Imports only torch, triton and ``kernel_tables`` (the table files and GPU timer it shares with
``valora.quant``). For token segments that share an adapter it computes
``y[s_i:s_{i+1}] += c_i * (x[s_i:s_{i+1}] @ A_i^T) @ B_i^T`` per output slice (semantics, shapes
and dtypes: ``atmm.types``):

- ``lora_shrink(x, weights, segments) -> v`` (fp32), ``lora_expand(v, y, weights, segments)``
  and ``add_lora(y, x, weights, segments)`` (both, in place): ``atmm.ops.lora``;
- ``atmm.ref``: the torch reference of each op; ``atmm.backends``: ATMM and the baselines
  (``atmm.baselines``) behind one interface; ``atmm.config_table`` (run-time lookup) /
  ``python -m atmm.tuner`` (offline profiler): the per-shape tiling table.

Triton is imported only when a kernel op is first used.
"""

from __future__ import annotations

from atmm.types import LoRASegments, LoRAWeights

__all__ = ["LoRASegments", "LoRAWeights", "add_lora", "lora_expand", "lora_shrink"]


def __getattr__(name: str):
    if name in ("add_lora", "lora_expand", "lora_shrink"):
        from atmm.ops import lora

        return getattr(lora, name)
    raise AttributeError(f"module 'atmm' has no attribute {name!r}")
