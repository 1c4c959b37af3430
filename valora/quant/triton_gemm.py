"""W4A16 / W8A16 GEMM in Triton: y = x @ W^T with W dequantized inside the kernel.

x [M, K] fp16/bf16, W a ``QuantizedWeight`` (canonical layout, ``valora.quant.types``), y [M, N]
in x's dtype. Two kernels, one config each (``valora.quant.config_table`` picks per shape bucket):

- ``gemv`` (M = 1, decode): a program owns BLOCK_N columns and one K split; it accumulates
  ``w * x`` element-wise in an fp32 register tile and reduces it once at the end (no tensor
  cores: one row has nothing to share).
- ``dot`` (M > 1): [BLOCK_M, BLOCK_K] x [BLOCK_K, BLOCK_N] tiles on tensor cores, the weight
  dequantized to x's dtype first.

Unpacking (``UNPACK`` of a dot config; gemv and the dequantize pass always use planes): both
read each packed word once. "planes" takes the words apart value by value: value j of the
words of a tile holds rows p * pack + j, so the tile is ``pack`` planes of BLOCK_K // pack
rows, each multiplied by the matching (strided) rows of x; "reshape" reshapes the unpacked
values into one [BLOCK_K, BLOCK_N] tile. A value becomes fp32 without an int-to-float conversion
(``_as_float``), then ``w = q * s - z * s`` (one FMA). The scale / zero row is loaded once per
tile when the tile lies inside one group and there is no act-order, through g_idx per row
otherwise.

Split-K (few output tiles for the GPU; the number of splits is a run-time argument): each split
writes its fp32 partial into a workspace, then takes a ticket from the tile's counter; the last
one to arrive sums the partials, writes y and resets the counter, all in the one kernel
(graph-safe: the counters are zero between calls).
Tested against ``valora.quant.reference.dequantize`` + matmul (``test/quant``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from valora.quant.config_table import get_config
from valora.quant.types import QuantizedWeight


# fmt: off
@triton.jit
def _as_float(q):
    """Small non-negative ints -> fp32 without an int-to-float conversion: 0x4B000000 is 2^23 as
    fp32, and (q | it) read as fp32 is 2^23 + q exactly (q < 2^23)."""
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
# fmt: on


# fmt: off
@triton.jit
def _tile_group_params(scales_ptr, zeros_ptr, offs_n, n_ok, N, group):
    """(s, z * s) in fp32, [1, BLOCK_N]: one group for the whole tile (no act-order, the tile
    inside one group), W = q * s - z * s."""
    s = tl.load(scales_ptr + group * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    z = tl.load(zeros_ptr + group * N + offs_n, mask=n_ok, other=0).to(tl.float32)
    return s[None, :], (z * s)[None, :]
# fmt: on


# fmt: off
@triton.jit
def _row_group_params(scales_ptr, zeros_ptr, gidx_ptr, rows, row_ok, offs_n, n_ok, N,
                      group_size, HAS_GIDX: tl.constexpr):
    """(s, z * s) in fp32, [len(rows), BLOCK_N]: each row's group, through g_idx or
    row // group_size."""
    if HAS_GIDX:
        g = tl.load(gidx_ptr + rows, mask=row_ok, other=0)
    else:
        g = rows // group_size
    gn = g[:, None] * N + offs_n[None, :]
    mask = row_ok[:, None] & n_ok[None, :]
    s = tl.load(scales_ptr + gn, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(zeros_ptr + gn, mask=mask, other=0).to(tl.float32)
    return s, z * s
# fmt: on


# fmt: off
@triton.jit
def _load_packed(qw_ptr, k0, k_end, offs_n, n_ok, N, BITS: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """The packed words of rows k0 .. k0 + BLOCK_K: [BLOCK_K // pack, BLOCK_N] int32, each word
    read once; and the pack index of each word row, and whether it lies before k_end."""
    PACK: tl.constexpr = 32 // BITS
    offs_p = k0 // PACK + tl.arange(0, BLOCK_K // PACK)
    p_ok = offs_p * PACK < k_end
    packed = tl.load(qw_ptr + offs_p[:, None] * N + offs_n[None, :],
                     mask=p_ok[:, None] & n_ok[None, :], other=0)
    return packed, offs_p, p_ok
# fmt: on


# fmt: off
@triton.jit
def _dequant_tile(qw_ptr, scales_ptr, zeros_ptr, gidx_ptr, k0, k_end, offs_n, n_ok, N,
                  group, BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                  TILE_GROUPS: tl.constexpr, HAS_GIDX: tl.constexpr):
    """fp32 [BLOCK_K, BLOCK_N] weights W^T[k0 : k0 + BLOCK_K, offs_n], unpacked by a reshape of
    the [BLOCK_K // pack, PACK, BLOCK_N] values (rows from k_end on are
    masked; k0 and k_end are multiples of the pack); ``group``: the tile's group when
    TILE_GROUPS, else the group size."""
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_ok = offs_k < k_end
    packed, _, _ = _load_packed(qw_ptr, k0, k_end, offs_n, n_ok, N, BITS, BLOCK_K)
    shifts = tl.arange(0, PACK) * BITS
    q = tl.reshape((packed[:, None, :] >> shifts[None, :, None]) & MASK, (BLOCK_K, BLOCK_N))
    if TILE_GROUPS:  # ``group``: the tile's group
        s, zs = _tile_group_params(scales_ptr, zeros_ptr, offs_n, n_ok, N, group)
    else:  # ``group``: the group size
        s, zs = _row_group_params(scales_ptr, zeros_ptr, gidx_ptr, offs_k, k_ok, offs_n, n_ok, N,
                                  group, HAS_GIDX)
    return _as_float(q) * s - zs
# fmt: on


# fmt: off
@triton.jit
def _plane(packed, j, s, zs, BITS: tl.constexpr):
    """fp32 weights of the j-th value of every word: rows p * pack + j of the tile."""
    MASK: tl.constexpr = (1 << BITS) - 1
    return _as_float((packed >> (j * BITS)) & MASK) * s - zs
# fmt: on


# fmt: off
@triton.jit
def _write_output(acc, y_ptr, ws_ptr, lock_ptr, offs_m, offs_n, M, N, stride_ym, tile,
                  split, split_k, SPLITS: tl.constexpr):
    """y[offs_m, offs_n] = acc (no splits), else the sum of the split_k splits' partials,
    written by the split that arrives last at the tile's counter (which it resets to 0)."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    if not SPLITS:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        ws = ws_ptr + offs_m[:, None] * N + offs_n[None, :]  # workspace [SPLIT_K, M, N] fp32
        tl.store(ws + split * M * N, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the ticket is taken
        ticket = tl.atomic_add(lock_ptr + tile, 1, sem="acq_rel")
        if ticket == split_k - 1:
            total = tl.zeros_like(acc)
            for s in range(split_k):
                total += tl.load(ws + s * M * N, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(lock_ptr + tile, 0)
# fmt: on


# fmt: off
@triton.jit
def _qgemv_kernel(
    x_ptr, qw_ptr, scales_ptr, zeros_ptr, gidx_ptr, y_ptr, ws_ptr, lock_ptr,
    N, K, group_size, k_per_split, split_k,
    BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLITS: tl.constexpr,
    TILE_GROUPS: tl.constexpr, HAS_GIDX: tl.constexpr,
):
    """One row: grid (N tiles, SPLIT_K). Each packed word is read once and taken apart value by
    value (bit planes): value j of the words holds rows p * pack + j, multiplied by those rows
    of x; the fp32 accumulator is [BLOCK_K // pack, BLOCK_N], reduced once at the end."""
    PACK: tl.constexpr = 32 // BITS
    pid_n, split = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros([BLOCK_K // PACK, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        packed, offs_p, p_ok = _load_packed(qw_ptr, k0, k_end, offs_n, n_ok, N, BITS, BLOCK_K)
        if TILE_GROUPS:
            s, zs = _tile_group_params(scales_ptr, zeros_ptr, offs_n, n_ok, N, k0 // group_size)
        for j in tl.static_range(PACK):
            rows = offs_p * PACK + j
            if not TILE_GROUPS:
                s, zs = _row_group_params(scales_ptr, zeros_ptr, gidx_ptr, rows, p_ok, offs_n, n_ok,
                                          N, group_size, HAS_GIDX)
            x = tl.load(x_ptr + rows, mask=p_ok, other=0.0).to(tl.float32)
            acc += _plane(packed, j, s, zs, BITS) * x[:, None]
    out = tl.sum(acc, axis=0)[None, :]  # [1, BLOCK_N]
    _write_output(out, y_ptr, ws_ptr, lock_ptr, tl.arange(0, 1), offs_n, 1, N, N, pid_n, split,
                  split_k, SPLITS)
# fmt: on


# fmt: off
@triton.jit(do_not_specialize=["M"])  # one binary for every M (no M % 16 variant)
def _qgemm_kernel(
    x_ptr, qw_ptr, scales_ptr, zeros_ptr, gidx_ptr, y_ptr, ws_ptr, lock_ptr,
    M, N, K, group_size, k_per_split, split_k, stride_xm, stride_ym,
    BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLITS: tl.constexpr, TILE_GROUPS: tl.constexpr, HAS_GIDX: tl.constexpr,
    UNPACK: tl.constexpr,
):
    """Tensor-core tiles: grid (M tiles, N tiles, SPLIT_K); M tiles vary fastest, so programs
    running together share the weight tile in L2."""
    PACK: tl.constexpr = 32 // BITS
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < N
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        if UNPACK == "planes":  # pack dots of depth BLOCK_K // pack, one per bit plane
            packed, offs_p, p_ok = _load_packed(qw_ptr, k0, k_end, offs_n, n_ok, N, BITS,
                                                BLOCK_K)
            if TILE_GROUPS:
                s, zs = _tile_group_params(scales_ptr, zeros_ptr, offs_n, n_ok, N, k0 // group_size)
            for j in tl.static_range(PACK):
                rows = offs_p * PACK + j
                if not TILE_GROUPS:
                    s, zs = _row_group_params(scales_ptr, zeros_ptr, gidx_ptr, rows, p_ok, offs_n,
                                              n_ok, N, group_size, HAS_GIDX)
                x = tl.load(x_ptr + offs_m[:, None] * stride_xm + rows[None, :],
                            mask=m_ok[:, None] & p_ok[None, :], other=0.0)
                acc += tl.dot(x, _plane(packed, j, s, zs, BITS).to(x.dtype))
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                mask=m_ok[:, None] & (offs_k < k_end)[None, :],
                other=0.0,
            )  # [BLOCK_M, BLOCK_K]
            group = k0 // group_size if TILE_GROUPS else group_size
            w = _dequant_tile(qw_ptr, scales_ptr, zeros_ptr, gidx_ptr, k0, k_end, offs_n, n_ok,
                              N, group, BITS, BLOCK_K, BLOCK_N, TILE_GROUPS,
                              HAS_GIDX)
            acc += tl.dot(x, w.to(x.dtype))
    tile = pid_m * tl.num_programs(1) + pid_n
    _write_output(acc, y_ptr, ws_ptr, lock_ptr, offs_m, offs_n, M, N, stride_ym, tile, split,
                  split_k, SPLITS)
# fmt: on


# fmt: off
@triton.jit
def _dequant_kernel(qw_ptr, scales_ptr, zeros_ptr, gidx_ptr, out_ptr, N, K, group_size,
                    BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                    TILE_GROUPS: tl.constexpr, HAS_GIDX: tl.constexpr):
    """out[k, n] = W[n, k] ([K, N], the layout x @ out wants), one [BLOCK_K, BLOCK_N] tile: its
    words read once, written plane by plane (rows p * pack + j, each row contiguous in N)."""
    PACK: tl.constexpr = 32 // BITS
    k0 = tl.program_id(0) * BLOCK_K
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    packed, offs_p, p_ok = _load_packed(qw_ptr, k0, K, offs_n, n_ok, N, BITS, BLOCK_K)
    if TILE_GROUPS:
        s, zs = _tile_group_params(scales_ptr, zeros_ptr, offs_n, n_ok, N, k0 // group_size)
    for j in tl.static_range(PACK):
        rows = offs_p * PACK + j
        if not TILE_GROUPS:
            s, zs = _row_group_params(scales_ptr, zeros_ptr, gidx_ptr, rows, p_ok, offs_n, n_ok, N,
                                      group_size, HAS_GIDX)
        w = _plane(packed, j, s, zs, BITS)
        tl.store(out_ptr + rows[:, None] * N + offs_n[None, :], w.to(out_ptr.dtype.element_ty),
                 mask=p_ok[:, None] & n_ok[None, :])
# fmt: on


def dequantize_kn(w: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    """The weight dequantized to [K, N] in ``dtype`` (one pass: read packed, write dense)."""
    k, n = w.in_features, w.out_features
    out = torch.empty(k, n, device=w.qweight.device, dtype=dtype)
    block_k, block_n = 64, 256
    grid = (triton.cdiv(k, block_k), triton.cdiv(n, block_n))
    _dequant_kernel[grid](
        w.qweight,
        w.scales,
        w.zeros,
        _gidx_arg(w),
        out,
        n,
        k,
        w.group_size,
        BITS=w.bits,
        BLOCK_K=block_k,
        BLOCK_N=block_n,
        TILE_GROUPS=_tile_groups(w, block_k),
        HAS_GIDX=w.g_idx is not None,
        num_warps=8,
    )
    return out


def quant_matmul(x: torch.Tensor, w: QuantizedWeight, config: dict | None = None) -> torch.Tensor:
    """x [M, K] -> [M, N] in x.dtype. ``config``: an entry of ``valora.quant.config_table``
    (default: the tuned one of this shape): in-kernel dequantization (gemv, dot), or dequantize +
    cuBLAS."""
    m, k = x.shape
    n = w.out_features
    if k != w.in_features:
        raise ValueError(f"x has K={k}, the weight K={w.in_features}")
    if x.stride(1) != 1:
        x = x.contiguous()
    if config is None:
        config = get_config(m, n, k, w.bits, x.dtype, x.device)
    if config["kernel"] == "dequant":
        return x @ dequantize_kn(w, x.dtype)
    _check_kernel_config(config, m)
    split, block_k = config["SPLIT_K"], config["BLOCK_K"]
    # K splits in whole BLOCK_K tiles (multiples of pack), so a tile never straddles a split
    k_per_split = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    y = torch.empty(m, n, device=x.device, dtype=x.dtype)
    ws = torch.empty(split, m, n, device=x.device, dtype=torch.float32) if split > 1 else y
    args = (x, w.qweight, w.scales, w.zeros, _gidx_arg(w), y, ws)
    flags = _kernel_flags(w, config)
    if config["kernel"] == "gemv":
        _launch_qgemv(args, flags, n, k, w.group_size, k_per_split, split)
    else:
        _launch_qgemm(args, flags, config, m, n, k, w.group_size, k_per_split, split)
    return y


def _check_kernel_config(config: dict, m: int) -> None:
    if config["kernel"] == "dot" and config["UNPACK"] not in ("planes", "reshape"):
        raise ValueError(f"unknown UNPACK {config['UNPACK']!r}: planes or reshape")
    if config["kernel"] == "gemv" and m != 1:
        raise ValueError(f"the gemv kernel takes one row, got M={m}")


def _kernel_flags(w: QuantizedWeight, config: dict) -> dict:
    """The constexpr / launch keywords the gemv and gemm kernels share."""
    return {
        "BITS": w.bits,
        "BLOCK_N": config["BLOCK_N"],
        "BLOCK_K": config["BLOCK_K"],
        "SPLITS": config["SPLIT_K"] > 1,
        "TILE_GROUPS": _tile_groups(w, config["BLOCK_K"]),
        "HAS_GIDX": w.g_idx is not None,
        "num_warps": config["num_warps"],
        "num_stages": config["num_stages"],
    }


def _launch_qgemv(
    args: tuple, flags: dict, n: int, k: int, group_size: int, k_per_split: int, split: int
) -> None:
    """``args`` is (x, qweight, scales, zeros, g_idx, y, ws); y doubles as the unread locks."""
    x, y = args[0], args[5]
    n_tiles = triton.cdiv(n, flags["BLOCK_N"])
    locks = _split_k_counters(x.device, n_tiles) if split > 1 else y
    _qgemv_kernel[(n_tiles, split)](*args, locks, n, k, group_size, k_per_split, split, **flags)


def _launch_qgemm(
    args: tuple,
    flags: dict,
    config: dict,
    m: int,
    n: int,
    k: int,
    group_size: int,
    k_per_split: int,
    split: int,
) -> None:
    """``args`` is (x, qweight, scales, zeros, g_idx, y, ws); y doubles as the unread locks."""
    x, y = args[0], args[5]
    n_tiles = triton.cdiv(n, flags["BLOCK_N"])
    m_tiles = triton.cdiv(m, config["BLOCK_M"])
    locks = _split_k_counters(x.device, m_tiles * n_tiles) if split > 1 else y
    _qgemm_kernel[(m_tiles, n_tiles, split)](
        *args,
        locks,
        m,
        n,
        k,
        group_size,
        k_per_split,
        split,
        x.stride(0),
        y.stride(0),
        BLOCK_M=config["BLOCK_M"],
        UNPACK=config["UNPACK"],
        **flags,
    )


def _gidx_arg(w: QuantizedWeight) -> torch.Tensor:
    return w.g_idx if w.g_idx is not None else w.zeros  # an unread placeholder without act-order


def _tile_groups(w: QuantizedWeight, block_k: int) -> bool:
    return w.g_idx is None and w.group_size % block_k == 0


# split-K tile counters, zero between calls, one buffer per device. Calls on one stream run in
# order; the engine runs every quantized GEMM of a step on one stream (the LoRA side stream runs
# ATMM only), so no two such kernels share the counters at once. Keyed by device, not stream:
# a CUDA-graph capture runs on its own stream and must use the buffer the warm-up allocated.
_COUNTERS: dict[str, torch.Tensor] = {}


def _split_k_counters(device: torch.device, tiles: int) -> torch.Tensor:
    counters = _COUNTERS.get(str(device))
    if counters is None or counters.numel() < tiles:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "split-K counters must be allocated before graph capture: run "
                "the shape once outside the capture"
            )
        counters = torch.zeros(max(tiles, 1 << 16), device=device, dtype=torch.int32)
        _COUNTERS[str(device)] = counters
    return counters
