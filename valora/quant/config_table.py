"""The quantized GEMM's strategy and tile config per call, looked up by shape bucket in O(1).

A bucket is (bits, N, K, M rounded up to one of ``M_BUCKETS``). Its entry says which of three
strategies runs and with what tiles:

- ``{"kernel": "gemv", BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages}`` (M = 1 only);
- ``{"kernel": "dot", BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, UNPACK, num_warps, num_stages}``
  (UNPACK: "planes" | "reshape", ``valora.quant.triton_gemm``);
- ``{"kernel": "dequant"}``: dequantize to [K, N] and multiply by cuBLAS (large M, where the
  GEMM is compute-bound and cuBLAS's tiles win).

Tables are measured by ``python -m valora.quant.tuner`` on one GPU and dtype (every strategy and
candidate tile timed, the fastest kept) and shipped as JSON in ``valora/quant/configs/``. A bucket
a table lacks, or a GPU without a table, gets ``default_config``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
import triton

from kernel_tables import device_name, read_table, table_file

CONFIG_DIR = Path(__file__).parent / "configs"
M_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 1024)  # M above the last uses the last bucket's entry


def m_bucket(m: int) -> int:
    return next((b for b in M_BUCKETS if m <= b), M_BUCKETS[-1])


def bucket_key(bits: int, n: int, k: int, m: int) -> str:
    return f"w{bits}|n{n}|k{k}|m{m_bucket(m)}"


def table_path(gpu: str, dtype: torch.dtype) -> Path:
    """This GPU and dtype's table in ``CONFIG_DIR``."""
    return table_file(CONFIG_DIR, gpu, dtype)


@cache
def _table(gpu: str, dtype: torch.dtype) -> dict[str, dict]:
    return read_table(table_path(gpu, dtype))


@cache
def get_config(m: int, n: int, k: int, bits: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The tuned entry of this bucket on this GPU and dtype, else the default (memoised: one dict
    lookup per call). Callers must not mutate the result. A tuned gemv entry serves M = 1 only;
    other M of its bucket (none: bucket 1 holds M = 1 alone) would get the default."""
    entry = _table(device_name(device), dtype).get(bucket_key(bits, n, k, m))
    if entry is not None and (entry["kernel"] != "gemv" or m == 1):
        return entry
    # the default of the bucket's upper M: one config per bucket (a config per exact M would
    # make Triton compile afresh for every new batch size)
    return default_config(1 if m == 1 else m_bucket(m), n, k, _num_sms(device))


def default_config(m: int, n: int, k: int, num_sms: int) -> dict:
    """A safe heuristic: gemv for one row, tensor-core tiles up to M 128, cuBLAS above; split-K
    until there are about two programs per SM."""
    if m >= 256:
        return {"kernel": "dequant"}
    if m == 1:
        # the H100 table's gemv winners: 64 columns, one group of 128 rows (one scale row)
        tiles, block_k = triton.cdiv(n, 64), 128
        config = {"kernel": "gemv", "BLOCK_N": 64, "BLOCK_K": block_k, "num_warps": 4}
    else:
        block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
        tiles, block_k = triton.cdiv(m, block_m) * triton.cdiv(n, 64), 128
        config = {
            "kernel": "dot",
            "BLOCK_M": block_m,
            "BLOCK_N": 64,
            "BLOCK_K": block_k,
            "num_warps": 4,
        }
    split = max(1, min(k // (4 * block_k), triton.cdiv(2 * num_sms, tiles)))
    return config | {"SPLIT_K": split, "UNPACK": "planes", "num_stages": 3}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count
