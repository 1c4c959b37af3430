"""Per-GPU kernel config tables: file naming, reading and writing, and bucket rounding.

A table is one JSON file per (GPU, dtype) in its owner's config directory (``atmm/configs/``,
``valora/quant/configs/``): ``{"gpu", "dtype", "torch", "triton", "configs": {key: config}}``.
What the keys and configs mean is the owner's business (``atmm.config_table``,
``valora.quant.config_table``); this module only names, reads and writes the files.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import torch


def pow2_ceil(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, n - 1).bit_length()


def device_name(device: torch.device) -> str:
    """The GPU's name as tables are keyed by it ("cpu" for a non-CUDA device)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def table_file(config_dir: Path, gpu: str, dtype: torch.dtype) -> Path:
    """``<config_dir>/<gpu slug>__<dtype>.json``, e.g. ``nvidia_h100_80gb_hbm3__bfloat16.json``."""
    slug = re.sub(r"[^a-z0-9]+", "_", gpu.lower()).strip("_")
    return Path(config_dir) / f"{slug}__{str(dtype).removeprefix('torch.')}.json"


def read_table(path: Path) -> dict[str, dict]:
    """A table file's configs by bucket key ({} when there is no file)."""
    return json.loads(path.read_text())["configs"] if path.exists() else {}


def write_table(path: Path, gpu: str, dtype: str, configs: dict[str, dict]) -> None:
    """A table file: the GPU, dtype and versions it was measured with, configs sorted by key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "gpu": gpu,
        "dtype": dtype,
        **library_versions("torch", "triton"),
        "configs": dict(sorted(configs.items())),
    }
    path.write_text(json.dumps(record, indent=1) + "\n")


# distributions that install a module under another name (PyTorch's nightly Triton)
_ALSO_DISTRIBUTED_AS = {"triton": ("pytorch-triton",)}


def library_versions(*names: str) -> dict[str, str | None]:
    """Installed version of each library (None where it is not installed), read from package
    metadata so that nothing is imported; torch's is ``torch.__version__`` (with the build's
    local tag, e.g. ``+cu128``)."""
    out = {}
    for name in names:
        out[name] = torch.__version__ if name == "torch" else _distribution_version(name)
    return out


def _distribution_version(name: str) -> str | None:
    for dist in (name, *_ALSO_DISTRIBUTED_AS.get(name, ())):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
