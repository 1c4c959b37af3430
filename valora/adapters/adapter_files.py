"""Reading a PEFT adapter directory's files: once each, confined to a root, hashed.

``read_adapter_files`` returns the parsed config, the tensors and the SHA-256 of the bytes read,
so what is validated is exactly what was hashed (the registry compares that hash when it reads
an evicted adapter again). With a root, each file is opened without following a final symlink
and the real path of the *open descriptor* must lie under the real root, so a link swapped in
after a check cannot redirect the read. Files over ``MAX_ADAPTER_FILE_BYTES`` are refused before
they are read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
MAX_ADAPTER_FILE_BYTES = 8 << 30  # larger files are refused before reading


def read_adapter_files(
    path: Path, allow_pickle: bool, root: str | Path | None
) -> tuple[dict, dict[str, torch.Tensor], str]:
    """-> (config, tensors, SHA-256 of the bytes read). Each file is read once, so the hash
    covers exactly what was parsed."""
    if not path.is_dir():
        raise FileNotFoundError(f"adapter directory not found: {path}")
    config_bytes = read_confined(path / CONFIG_FILE, root)
    try:
        config = json.loads(config_bytes)
    except ValueError as exc:
        raise ValueError(f"{path / CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path / CONFIG_FILE} must hold a JSON object")
    if (path / SAFETENSORS_FILE).is_file():
        data = read_confined(path / SAFETENSORS_FILE, root)
        tensors = _parse(lambda: safetensors_load(data), path / SAFETENSORS_FILE)
    elif (path / PICKLE_FILE).is_file():
        if not allow_pickle:
            raise ValueError(
                f"{path / PICKLE_FILE} is a pickled adapter; loading pickled adapters needs the "
                "explicit opt-in allow_pickle=True (or convert it to safetensors)"
            )
        data = read_confined(path / PICKLE_FILE, root)
        unpickle = lambda: dict(  # noqa: E731
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        )
        tensors = _parse(unpickle, path / PICKLE_FILE)
    else:
        raise FileNotFoundError(f"neither {SAFETENSORS_FILE} nor {PICKLE_FILE} found in {path}")
    digest = hashlib.sha256(config_bytes + b"\0" + data).hexdigest()
    return config, tensors, digest


def read_confined(
    file: Path, root: str | Path | None, max_bytes: int = MAX_ADAPTER_FILE_BYTES
) -> bytes:
    """The file's bytes, if it is a regular file of at most ``max_bytes``; with ``root``, only if
    the file *opened* (its descriptor's real path, so a symlink swapped in after a check cannot
    redirect the read) lies under the real ``root``."""
    try:
        fd = os.open(os.path.realpath(file), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} not found (not a PEFT adapter directory?)") from None
    with os.fdopen(fd, "rb") as handle:
        opened = _opened_path(fd, file)
        if root is not None and not opened.is_relative_to(os.path.realpath(root)):
            raise PermissionError(f"{file} resolves to a path outside the adapter root")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{file} is not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"{file} is larger than {max_bytes} bytes")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the check
        raise ValueError(f"{file} is larger than {max_bytes} bytes")
    return data


def _opened_path(fd: int, file: Path) -> Path:
    """The real path of an open descriptor (Linux: /proc/self/fd); elsewhere the path's."""
    proc = Path(f"/proc/self/fd/{fd}")
    return Path(os.readlink(proc)) if proc.exists() else Path(os.path.realpath(file))


def _parse(read, file: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = read()
    except Exception as exc:  # safetensors / unpickling errors have their own classes
        raise ValueError(f"cannot read the tensors of {file}: {exc}") from exc
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ValueError(f"{file} holds something other than tensors")
    return tensors
