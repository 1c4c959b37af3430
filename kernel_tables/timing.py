"""The one GPU timer of the project: every tuner and benchmark times a kernel call with it.

``gpu_time(fn)`` returns the median GPU time in seconds of one call of ``fn`` (a callable with
no arguments that launches work on the current CUDA stream), measured as:

1. ``fn()`` once, eagerly: Triton compiles, caches allocate, cuBLAS picks its kernels;
2. ``fn`` captured in a CUDA graph (``cuda_graph=True``, the default) and replayed once: the
   host's launch cost is not in the number, as in the engine's decode graphs;
3. ``reps`` times: the L2 cache flushed by writing a buffer larger than it (``flush_l2=True``,
   the default: every call reads its inputs from HBM, as when other layers' weights ran in
   between), then one replay between two CUDA events; the median of the ``reps`` times.

The flush also keeps the GPU busy while the host enqueues the events and the replay, so the
time is the GPU's alone. ``flush_l2=False`` (warm L2: inputs that stay cached across calls)
keeps the GPU busy with a spin instead. ``cuda_graph=False`` times eager calls (work that
cannot be captured: host synchronisation, pageable host-to-device copies); their host launch
cost then counts wherever the GPU waits for it.

Without CUDA ``gpu_time`` raises a RuntimeError saying so (there is no CPU timing to fall back
on that would mean the same thing).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import cache

import torch

FLUSH_BYTES = 256 << 20  # larger than the L2 of every GPU we run on (H100 50 MB, H200 60 MB)
_SPIN_CYCLES = 100_000  # about 60 us of GPU time: covers the host's enqueue of event + replay


def gpu_time(
    fn: Callable[[], object], *, reps: int = 20, cuda_graph: bool = True, flush_l2: bool = True
) -> float:
    """Median GPU seconds of one ``fn()`` (see the module docstring for the method)."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "kernel_tables.timing.gpu_time needs a CUDA GPU: it times with CUDA graphs and "
            "CUDA events, and this process sees none (torch.cuda.is_available() is False)"
        )
    fn()  # compile and allocate outside the capture and the timed calls
    torch.cuda.synchronize()
    call = _capture(fn).replay if cuda_graph else fn
    call()  # the first replay uploads the graph
    flush = _flush_buffer(torch.cuda.current_device()) if flush_l2 else None
    times = []
    for _ in range(reps):
        if flush is not None:
            flush.zero_()
        else:
            _spin()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _capture(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


@cache
def _flush_buffer(device_index: int) -> torch.Tensor:
    """One buffer per device, allocated on first use and kept (256 MiB)."""
    return torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=torch.device("cuda", device_index))


def _spin() -> None:
    """Keep the GPU busy without touching memory (the L2 stays as the last call left it)."""
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is not None:
        sleep(_SPIN_CYCLES)
