"""Baseline LoRA kernels with ATMM's interface (``atmm.backends``), each as fast as its design
allows: Punica-style SGMV, S-LoRA-style MBGMV/MBGMM, dLoRA-style einsum, a per-segment torch
loop."""
