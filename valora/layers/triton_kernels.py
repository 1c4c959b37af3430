"""Triton versions of the decoder layer's small ops (semantics: ``valora.layers.kernels``) and
the paged KV-cache write (semantics: ``KVCache.write``).

Each op is one launch with one program per token row (silu_and_mul: per row and column tile).
Intermediates that the torch reference materialises in the model dtype are rounded to that dtype
here too (``_round``), so bf16 results match the torch ops bit for bit up to the order of the
fp32 sum in the norm.

Tested: against ``TorchKernels`` in fp32/fp16 under the CPU interpreter (TRITON_INTERPRET=1) and
in bf16/fp16 on the GPU with the real Qwen2-VL sizes (test/kernel/test_layer_kernels.py).
Limits: the last dim of every tensor is contiguous; rows may be strided (q/k are views into the
fused qkv output and are rotated in place). hidden <= 65536; head_dim even.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from valora.layers.kernels import TorchKernels


# fmt: off
@triton.jit
def _round(x, dtype):
    """Round fp32 ``x`` to ``dtype`` and back: what storing an intermediate in dtype does."""
    return x.to(dtype).to(tl.float32)
# fmt: on


# fmt: off
@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr,
    stride_x, stride_r, stride_o, stride_s, hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    dtype = x.dtype
    x = x.to(tl.float32)
    if HAS_RESIDUAL:  # s = x + residual, stored in the model dtype: the new residual stream
        r = tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        x = _round(x + r, dtype)
        tl.store(sum_ptr + row * stride_s + offs, x.to(dtype), mask=mask)
    variance = tl.sum(x * x, axis=0) / hidden
    normed = _round(x * tl.rsqrt(variance + eps), dtype)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (w * normed).to(dtype), mask=mask)
# fmt: on


# fmt: off
@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, stride_x, stride_o, inter, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0)
    dtype = gate.dtype
    g = gate.to(tl.float32)
    silu = _round(g / (1.0 + tl.exp(-g)), dtype)
    tl.store(out_ptr + row * stride_o + cols, (silu * up.to(tl.float32)).to(dtype), mask=mask)
# fmt: on


# fmt: off
@triton.jit
def _rotate_heads(
    base, stride_h, num_heads, c1, c2, s1, s2,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    """In place for heads [0, num_heads) of one token: (x1, x2) -> (x1 c1 - x2 s1, x2 c2 + x1 s2),
    each product and the sum rounded to the dtype (x * cos + rotate_half(x) * sin)."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask = (offs_h < num_heads)[:, None] & (offs_d < HALF)[None, :]
    ptr = base + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0)
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    o1 = _round(x1 * c1, dtype) + _round(-x2 * s1, dtype)
    o2 = _round(x2 * c2, dtype) + _round(x1 * s2, dtype)
    tl.store(ptr, o1.to(dtype), mask=mask)
    tl.store(ptr + HALF, o2.to(dtype), mask=mask)
# fmt: on


# fmt: off
@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_ct, stride_st,
    num_q_heads, num_kv_heads,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)[None, :]  # [1, BLOCK_HALF]
    mask_d = offs_d < HALF
    c1 = tl.load(cos_ptr + t * stride_ct + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + t * stride_ct + HALF + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + t * stride_st + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + t * stride_st + HALF + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr + t * stride_qt, stride_qh, num_q_heads, c1, c2, s1, s2,
                  HALF, BLOCK_H, BLOCK_HALF)
    _rotate_heads(k_ptr + t * stride_kt, stride_kh, num_kv_heads, c1, c2, s1, s2,
                  HALF, BLOCK_H, BLOCK_HALF)
# fmt: on


# fmt: off
@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    stride_kt, stride_vt, stride_cache_slot, row_len,
    BLOCK: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    for start in range(0, row_len, BLOCK):
        mask = start + offs < row_len
        k = tl.load(k_ptr + t * stride_kt + start + offs, mask=mask)
        v = tl.load(v_ptr + t * stride_vt + start + offs, mask=mask)
        dst = slot * stride_cache_slot + start + offs
        tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)
# fmt: on


def write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """k, v [T, Hkv, D] (rows may be strided, heads contiguous) -> slot ``slots[t]`` of one
    layer's caches [num_blocks, block_size, Hkv, D] (contiguous), one launch for both."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if v.shape != k.shape or k_cache.shape[2:] != k.shape[1:] or v_cache.shape != k_cache.shape:
        raise ValueError(f"k/v {tuple(k.shape)} do not fit the cache {tuple(k_cache.shape)}")
    if k.stride(2) != 1 or k.stride(1) != head_dim or v.stride(2) != 1 or v.stride(1) != head_dim:
        raise ValueError("k and v need contiguous heads")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or slots.shape != (num_tokens,):
        raise ValueError("caches must be contiguous and slots [T]")
    row_len = num_kv_heads * head_dim
    if num_tokens:
        _write_kv_kernel[(num_tokens,)](
            k,
            v,
            k_cache,
            v_cache,
            slots,
            k.stride(0),
            v.stride(0),
            row_len,
            row_len,
            BLOCK=min(1024, triton.next_power_of_2(row_len)),
        )


def _new_output(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """Every output tensor comes from here (tests replace it to poison outputs)."""
    return torch.empty(rows, cols, dtype=like.dtype, device=like.device)


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """x as [rows, last] with a contiguous last dim (a view when possible)."""
    if x.stride(-1) != 1:
        raise ValueError(f"{name} needs a contiguous last dim")
    return x.reshape(-1, x.shape[-1])


def _norm_warps(block: int) -> int:
    return max(1, min(16, block // 256))


class TritonKernels(TorchKernels):
    name = "triton"

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return _launch_norm(x, None, weight, eps)[0]

    @classmethod
    def add_rms_norm(
        cls, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} != x {x.dtype}")
        return _launch_norm(x, residual, weight, eps)

    @staticmethod
    def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
        if gate_up.shape[-1] % 2:
            raise ValueError("silu_and_mul needs an even last dim (gate | up)")
        x = _rows(gate_up, "gate_up")
        inter = x.shape[1] // 2
        out = _new_output(x.shape[0], inter, x)
        if x.shape[0]:
            block = min(1024, triton.next_power_of_2(inter))
            grid = (x.shape[0], triton.cdiv(inter, block))
            _silu_and_mul_kernel[grid](x, out, x.stride(0), out.stride(0), inter, BLOCK=block)
        return out.view(*gate_up.shape[:-1], inter)

    @staticmethod
    def rotary(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_tokens, head_dim = q.shape[0], q.shape[2]
        if k.shape[0] != num_tokens or k.shape[2] != head_dim or head_dim % 2:
            raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree")
        if cos.shape != (num_tokens, head_dim) or sin.shape != cos.shape:
            raise ValueError(f"cos/sin must be [{num_tokens}, {head_dim}]")
        if any(t.stride(-1) != 1 for t in (q, k, cos, sin)):
            raise ValueError("rotary needs contiguous last dims")
        if num_tokens:
            half = head_dim // 2
            _rotary_kernel[(num_tokens,)](
                q,
                k,
                cos,
                sin,
                q.stride(0),
                q.stride(1),
                k.stride(0),
                k.stride(1),
                cos.stride(0),
                sin.stride(0),
                q.shape[1],
                k.shape[1],
                HALF=half,
                BLOCK_H=triton.next_power_of_2(max(q.shape[1], k.shape[1])),
                BLOCK_HALF=triton.next_power_of_2(half),
            )
        return q, k


def _launch_norm(x, residual, weight, eps):
    """(normed, summed or None) for x [.., hidden]; summed = x + residual when given."""
    rows = _rows(x, "x")
    hidden = rows.shape[1]
    if weight.shape != (hidden,):
        raise ValueError(f"weight must be [{hidden}], got {tuple(weight.shape)}")
    out = _new_output(*rows.shape, rows)
    res = summed = rows  # placeholders when there is no residual (never read or written)
    if residual is not None:
        res = _rows(residual, "residual")
        summed = _new_output(*rows.shape, rows)
    if rows.shape[0]:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(rows.shape[0],)](
            rows,
            res,
            weight,
            out,
            summed,
            rows.stride(0),
            res.stride(0),
            out.stride(0),
            summed.stride(0),
            hidden,
            eps,
            HAS_RESIDUAL=residual is not None,
            BLOCK=block,
            num_warps=_norm_warps(block),
        )
    shape = x.shape
    return out.view(shape), (summed.view(shape) if residual is not None else None)
