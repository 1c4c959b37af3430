"""What the benchmark scripts share: the one GPU timer, wall-clock runs, the measured floors, the
provenance every result file carries, the default replay data, and the engine / HF runs and
LoRA workload that more than one script measures. Scripts import these from here, never from
each other.

- ``gpu_time(fn)``: median GPU seconds of one call (``kernel_tables.timing``: CUDA-graph
  replays, L2 flushed; ``cuda_graph=False`` / ``flush_l2=False`` for eager / warm-L2 timing).
- ``wall_time(fn)``: (result, seconds) of one end-to-end run that cannot be captured in a graph
  (``generate``, engine steps), between device synchronisations.
- ``copy_bandwidth()``, ``matmul_peak(dtype)``: the floors' denominators, measured in the run.
- ``provenance(argv)``: GPU, library versions, git commit and the exact command.
"""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kernel_tables import library_versions
from kernel_tables.timing import gpu_time
from valora.adapters.manager import LoRAManager
from valora.adapters.types import LoRAAdapter
from valora.config import LoRAConfig
from valora.weights import load_model

if TYPE_CHECKING:
    from valora.llm import LLM

__all__ = [
    "copy_bandwidth",
    "gpu_time",
    "hf_model_from",
    "lora_workload",
    "matmul_peak",
    "profile_decode",
    "provenance",
    "run_engine",
    "time_hf_generate",
    "wall_time",
]

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"
DEFAULT_DATASET = DATA / "sharegpt4v_mini" / "sharegpt4v_mini.json"  # ShareGPT4V format
DEFAULT_TRACE = DATA / "traces" / "AzureLLMInferenceTrace_code.csv"  # Azure 2023, CC-BY 4.0
LIBRARIES = ("torch", "triton", "transformers")
LORA_K = 3584  # the op-cost workload's K: Qwen2-VL-7B's hidden size
PREFILL_REQUEST_LEN = 256  # the op-cost workload's prefill request: an image's worth of tokens


def provenance(argv: list[str] | None = None, libraries: tuple[str, ...] = LIBRARIES) -> dict:
    """What a result file records about its run: ``gpu`` (or "cpu"), ``versions`` (python and
    ``libraries``, None where not installed), ``git_commit`` (``+dirty`` with uncommitted
    changes; None outside a git checkout) and ``command`` (``argv``, default ``sys.argv``, as a
    shell command line with this interpreter)."""
    argv = sys.argv if argv is None else argv
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    versions = {"python": platform.python_version(), **library_versions(*libraries)}
    command = shlex.join([sys.executable, *argv])
    return {"gpu": gpu, "versions": versions, "git_commit": git_commit(), "command": command}


def git_commit() -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def wall_time(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), its wall seconds), the device synchronised before and after."""
    _synchronize()
    start = time.perf_counter()
    result = fn()
    _synchronize()
    return result, time.perf_counter() - start


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def copy_bandwidth(num_bytes: int = 1 << 30) -> float:
    """Device copy bandwidth in bytes/s (read + write counted). Timed eagerly: captured in a
    CUDA graph the copy becomes a memcpy node on the copy engines, about 20% slower than the
    SM copy kernel the engine's own copies use (2.4 vs 3.0 TB/s on an H100), which would make
    every floor look easier than it is. 1 GiB: the launch cost is negligible."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    seconds = gpu_time(lambda: dst.copy_(src), reps=10, cuda_graph=False, flush_l2=False)
    return 2 * num_bytes / seconds


def matmul_peak(dtype: torch.dtype) -> float:
    """Dense matmul FLOP/s of an 8192^3 product."""
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    return 2 * 8192**3 / gpu_time(lambda: a @ a, reps=10, flush_l2=False)


def lora_workload(phase: str, num_tokens: int, n: int, dtype: torch.dtype, seed: int):
    """The LoRA op-cost workload: (weights, segments, x, y, ranks of the used adapters). Decode:
    one token per request; prefill: requests of ``PREFILL_REQUEST_LEN`` tokens; every request
    its own adapter of a mixed rank (max_rank 128), K = ``LORA_K``, one output slice of N."""
    from atmm.types import LoRASegments
    from atmm.workloads import make_weights, mixed_ranks

    if phase == "decode":
        lens = [1] * num_tokens
    else:
        lens = [PREFILL_REQUEST_LEN] * (num_tokens // PREFILL_REQUEST_LEN)
    ranks = mixed_ranks(len(lens), seed)
    w = make_weights(ranks, LORA_K, [n], dtype, "cuda", seed, max_rank=128)
    segs = LoRASegments.build(lens, list(range(len(lens))), "cuda")
    x = torch.randn(num_tokens, LORA_K, device="cuda", dtype=dtype)
    y = torch.randn(num_tokens, n, device="cuda", dtype=dtype)
    return w, segs, x, y, ranks


def run_engine(
    llm: LLM, batch: int, prompt_len: int, output_len: int, adapters: list[str | None] | None = None
) -> dict:
    """Output tok/s of one ``generate`` of ``batch`` random prompts (after a warm-up) and decode
    tok/s (after the last first token); ``adapters``: one adapter name (or None) per request."""
    from valora.sampling_params import SamplingParams

    gen = torch.Generator().manual_seed(batch)
    prompts = [
        torch.randint(0, 150000, (prompt_len,), generator=gen).tolist() for _ in range(batch)
    ]
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    outs, seconds = wall_time(lambda: llm.generate(prompts, params, lora=adapters, use_tqdm=False))
    first = max(o.first_token_time for o in outs)
    last = max(o.finish_time for o in outs)
    return {
        "output_tok_s": batch * output_len / seconds,
        "decode_tok_s": batch * (output_len - 1) / (last - first),
    }


def profile_decode(
    llm: LLM, batch: int, prompt_len: int, steps: int = 16, adapters: list[str | None] | None = None
) -> dict:
    """GPU kernel time per decode step (torch.profiler) next to the wall time per step;
    ``adapters``: one adapter name (or None) per request."""
    from torch.profiler import ProfilerActivity, profile

    from valora.sampling_params import SamplingParams

    gen = torch.Generator().manual_seed(1234)
    prompts = [
        torch.randint(0, 150000, (prompt_len,), generator=gen).tolist() for _ in range(batch)
    ]
    engine = llm.engine
    adapters = adapters or [None] * batch
    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_tokens=steps + 2, ignore_eos=True)
        engine.add_request(f"profile-{i}", prompt, params, adapters[i])
    engine.step()  # prefill
    engine.step()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _, wall = wall_time(lambda: [engine.step() for _ in range(steps)])
    while engine.has_unfinished():
        engine.step()
    kernels = [e for e in prof.key_averages() if _is_kernel(e)]
    kernels.sort(key=_device_time, reverse=True)
    gpu_us = sum(_device_time(e) for e in kernels) / steps
    return {
        "batch": batch,
        "wall_ms_per_step": wall / steps * 1e3,
        "gpu_kernel_ms_per_step": gpu_us / 1e3,
        "top_kernels_us_per_step": {e.key[:90]: _device_time(e) / steps for e in kernels[:15]},
    }


def _is_kernel(event) -> bool:
    return str(event.device_type).endswith("CUDA") and _device_time(event) > 0


def _device_time(event) -> float:
    return getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0.0)


def time_hf_generate(hf, batch: int, prompt_len: int, output_len: int, **extra) -> float:
    """Output tok/s of one greedy ``generate`` of ``batch`` random prompts (after a warm-up)."""
    ids = torch.randint(0, 150000, (batch, prompt_len), device="cuda")
    kwargs = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False)
    hf.generate(ids[:, :8], max_new_tokens=4, do_sample=False, **extra)
    _, seconds = wall_time(lambda: hf.generate(ids, **kwargs, **extra))
    return batch * output_len / seconds


def hf_model_from(llm: LLM, setting: str):
    """transformers' Qwen2-VL (bf16, on the GPU) holding the engine's weights."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    import exp_suite
    from valora.weights import checkpoint_tensors

    config = Qwen2VLConfig(**json.loads(json.dumps(dict(exp_suite.MODEL_SETTINGS[setting]))))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            hf = Qwen2VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    state = {}
    for k, v in checkpoint_tensors(llm.engine.model).items():
        k = "model.language_model." + k[6:] if k.startswith("model.") else k
        state["model." + k if k.startswith("visual.") else k] = v
    hf.load_state_dict(state, strict=False)
    hf.tie_weights()
    return hf


# ---- the merge switch as a unit of the adapter package (bench_lora, profile_merge): a
# LoRAManager on dummy weights with no engine around it (the engine's API switches adapters
# but does not expose what these scripts measure: the merger's kernels, copies, bytes)


def merge_manager(
    setting: str, max_rank: int, dtype: torch.dtype = torch.bfloat16, device: str = "cuda"
) -> LoRAManager:
    """Merging on, LoRA on the language tower, room for two adapters of ``max_rank`` (the one
    merged and one more), the ATMM backend (the VaLoRA policy's), on dummy ``setting`` weights."""
    model = load_model(setting, dtype, device)
    config = LoRAConfig(max_loras=2, max_lora_rank=max_rank, towers=("language",))
    return LoRAManager(model, config, "atmm", True, dtype, device)


def register_subset(lora: LoRAManager, name: str, of: str, targets: tuple[str, ...]) -> None:
    """Register ``name``: the modules of the loaded adapter ``of`` on ``targets`` only."""
    full = lora.registry.weights(lora.resolve(of))
    modules = {k: m for k, m in full.modules.items() if k[0] in targets}
    lora.registry.register(name, lambda: LoRAAdapter(name, modules), "+".join(targets))
