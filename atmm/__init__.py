"""ATMM: batched heterogeneous-LoRA kernels (adaptive-tiling Triton), independent of ``valora``.

This package imports only torch and triton. Its public ops compute, for segments of tokens that
share an adapter, ``y[s_i:s_{i+1}] += c_i * (x[s_i:s_{i+1}] @ A_i^T) @ B_i^T``. The kernels, the
torch reference (``atmm.ref``), the baselines and the tuner are not implemented yet: see the
status table in the README.
"""
