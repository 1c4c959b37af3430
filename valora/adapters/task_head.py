"""Vision task heads: closed-set outputs (e.g. action recognition) in one forward pass.

A task head sits in an adapter directory next to the PEFT files, as two files:

- ``task_head.json``: ``{"format_version": 1, "pooling": "last_token", "activation": "gelu" |
  "relu" | "tanh" | "identity", "layers": [[in, out], ...], "labels": [...], "hidden_size": H}``
- ``task_head.safetensors``: ``layers.{i}.weight`` [out, in] and ``layers.{i}.bias`` [out] per
  declared layer (float32, bfloat16 or float16), nothing else.

The head maps the last prompt token's final hidden state (after the model's final norm) through
``Linear -> act -> Linear -> ... -> Linear`` (the activation between layers, none after the last)
to a softmax over ``labels``; it always computes in float32. Invariants checked on load: the
layer chain starts at the base model's hidden size, each ``out`` is the next ``in``, the last
``out`` is ``len(labels)``; labels are unique non-empty strings; tensors are exactly the declared
names and shapes and finite; both files exist or neither does; files are size-capped.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file

from valora.adapters.adapter_files import read_confined

HEAD_CONFIG_FILE = "task_head.json"
HEAD_WEIGHTS_FILE = "task_head.safetensors"
FORMAT_VERSION = 1
POOLINGS = ("last_token",)
MAX_HEAD_CONFIG_BYTES = 4 << 20  # a label list of ~100k names fits
MAX_HEAD_WEIGHTS_BYTES = 1 << 30
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU
    "relu": F.relu,
    "tanh": torch.tanh,
    "identity": lambda x: x,
}
_KEYS = ("format_version", "pooling", "activation", "layers", "labels", "hidden_size")


@dataclass(frozen=True)
class TaskHeadSpec:
    """What ``task_head.json`` declares; construction validates it (``ValueError``)."""

    layers: tuple[tuple[int, int], ...]  # (in, out) per Linear, in order
    labels: tuple[str, ...]
    hidden_size: int
    activation: str = "gelu"
    pooling: str = "last_token"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "layers", tuple(tuple(p) for p in self.layers))
            object.__setattr__(self, "labels", tuple(self.labels))
        except TypeError as exc:
            raise ValueError(f"task head layers must be [in, out] pairs: {exc}") from exc
        _check_spec(self)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @classmethod
    def from_dict(cls, data: object) -> TaskHeadSpec:
        if not isinstance(data, dict):
            raise ValueError(f"{HEAD_CONFIG_FILE} must hold a JSON object")
        missing = [k for k in _KEYS if k not in data]
        unknown = sorted(set(data) - set(_KEYS))
        if missing:
            raise ValueError(f"{HEAD_CONFIG_FILE}: missing keys {missing}")
        if unknown:
            raise ValueError(f"{HEAD_CONFIG_FILE}: unknown keys {unknown}")
        if not isinstance(data["layers"], list) or not all(
            isinstance(p, list) and len(p) == 2 for p in data["layers"]
        ):
            raise ValueError(f"{HEAD_CONFIG_FILE}: layers must be a list of [in, out] pairs")
        if not isinstance(data["labels"], list):
            raise ValueError(f"{HEAD_CONFIG_FILE}: labels must be a list of strings")
        return cls(**{k: data[k] for k in _KEYS})

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "pooling": self.pooling,
            "activation": self.activation,
            "layers": [list(p) for p in self.layers],
            "labels": list(self.labels),
            "hidden_size": self.hidden_size,
        }

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape, exactly what ``task_head.safetensors`` must hold."""
        shapes = {}
        for i, (fan_in, fan_out) in enumerate(self.layers):
            shapes[f"layers.{i}.weight"] = (fan_out, fan_in)
            shapes[f"layers.{i}.bias"] = (fan_out,)
        return shapes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_spec(spec: TaskHeadSpec) -> None:
    if spec.format_version != FORMAT_VERSION or not _is_int(spec.format_version):
        raise ValueError(
            f"task head format_version {spec.format_version!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    if not isinstance(spec.pooling, str) or spec.pooling not in POOLINGS:
        raise ValueError(f"task head pooling {spec.pooling!r} is not one of {POOLINGS}")
    if not isinstance(spec.activation, str) or spec.activation not in ACTIVATIONS:
        raise ValueError(
            f"task head activation {spec.activation!r} is not one of {tuple(ACTIVATIONS)}"
        )
    if not _is_int(spec.hidden_size) or spec.hidden_size <= 0:
        raise ValueError(f"task head hidden_size must be a positive int, got {spec.hidden_size!r}")
    _check_labels(spec.labels)
    _check_chain(spec)


def _check_labels(labels: tuple) -> None:
    if not labels:
        raise ValueError("task head labels must not be empty")
    if not all(isinstance(label, str) and label for label in labels):
        raise ValueError("task head labels must be non-empty strings")
    if len(set(labels)) != len(labels):
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"task head labels must be unique; duplicate labels {duplicates}")


def _check_chain(spec: TaskHeadSpec) -> None:
    layers = spec.layers
    if not layers:
        raise ValueError("task head layers must not be empty")
    if not all(len(p) == 2 and _is_int(p[0]) and _is_int(p[1]) and min(p) > 0 for p in layers):
        raise ValueError(f"task head layers must be [in, out] pairs of positive ints: {layers}")
    if layers[0][0] != spec.hidden_size:
        raise ValueError(
            f"task head layer chain: layer 0 takes {layers[0][0]} inputs but hidden_size is "
            f"{spec.hidden_size}"
        )
    for i in range(len(layers) - 1):
        if layers[i][1] != layers[i + 1][0]:
            raise ValueError(
                f"task head layer chain is broken: layer {i} gives {layers[i][1]} outputs, "
                f"layer {i + 1} takes {layers[i + 1][0]}"
            )
    if layers[-1][1] != len(spec.labels):
        raise ValueError(
            f"task head layer chain: the last layer gives {layers[-1][1]} outputs but there are "
            f"{len(spec.labels)} labels (wrong label count)"
        )


def check_tensors(spec: TaskHeadSpec, tensors: dict[str, torch.Tensor]) -> None:
    """``tensors`` must be exactly ``spec.tensor_shapes()``, of a float dtype, finite."""
    shapes = spec.tensor_shapes()
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    if missing or extra:
        raise ValueError(f"{HEAD_WEIGHTS_FILE}: missing tensors {missing}, extra tensors {extra}")
    for name, shape in shapes.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{HEAD_WEIGHTS_FILE}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"expected {shape}"
            )
        if tensor.dtype not in WEIGHT_DTYPES:
            raise ValueError(f"{HEAD_WEIGHTS_FILE}: tensor {name} has dtype {tensor.dtype}")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{HEAD_WEIGHTS_FILE}: tensor {name} has non-finite values (NaN/inf)")


class TaskHead(torch.nn.Module):
    """The MLP of a ``TaskHeadSpec``: ``layers[i]`` are ``Linear(in, out)`` with bias (their
    state_dict keys are the file's tensor names). Weights keep their dtype (fp32 when trained);
    ``forward`` casts hidden states and weights to float32."""

    def __init__(self, spec: TaskHeadSpec, tensors: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.spec = spec
        self.digest: str | None = None  # SHA-256 of the two files' bytes when loaded
        device = "meta" if tensors is not None else None  # no throwaway init when loading
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(i, o, device=device) for i, o in spec.layers
        )
        if tensors is not None:
            check_tensors(spec, tensors)
            for i, layer in enumerate(self.layers):
                w, b = tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]
                layer.weight = torch.nn.Parameter(w.detach().clone(), requires_grad=False)
                layer.bias = torch.nn.Parameter(b.detach().clone(), requires_grad=False)
        self._act = ACTIVATIONS[spec.activation]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] (any float dtype) -> float32 logits [N, num_classes]."""
        x = hidden.float()
        for i, layer in enumerate(self.layers):
            x = F.linear(x, layer.weight.float(), layer.bias.float())
            if i < len(self.layers) - 1:
                x = self._act(x)
        return x

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden_size] -> float32 probabilities [N, num_classes], rows sum to 1."""
        return torch.softmax(self.logits(hidden), dim=-1)


def read_head_files(
    adapter_dir: str | Path, root: str | Path | None = None
) -> tuple[bytes, bytes] | None:
    """-> (json bytes, safetensors bytes), or None when the directory has neither file.
    One file without the other is a ``ValueError``."""
    path = Path(adapter_dir)
    has_config = (path / HEAD_CONFIG_FILE).exists()
    has_weights = (path / HEAD_WEIGHTS_FILE).exists()
    if not has_config and not has_weights:
        return None
    if has_config != has_weights:
        present, absent = (
            (HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE)
            if has_config
            else (HEAD_WEIGHTS_FILE, HEAD_CONFIG_FILE)
        )
        raise ValueError(f"{path} has {present} without {absent}; a task head needs both files")
    config = read_confined(path / HEAD_CONFIG_FILE, root, MAX_HEAD_CONFIG_BYTES)
    weights = read_confined(path / HEAD_WEIGHTS_FILE, root, MAX_HEAD_WEIGHTS_BYTES)
    return config, weights


def load_task_head(
    adapter_dir: str | Path, hidden_size: int, root: str | Path | None = None
) -> TaskHead | None:
    """The adapter directory's task head on the CPU (eval mode, no grad), None when it has
    none. ``hidden_size`` is the base model's; every problem is a ``ValueError``."""
    files = read_head_files(adapter_dir, root)
    if files is None:
        return None
    config_bytes, weight_bytes = files
    try:
        data = json.loads(config_bytes)
    except ValueError as exc:
        raise ValueError(f"{HEAD_CONFIG_FILE} is not valid JSON: {exc}") from exc
    spec = TaskHeadSpec.from_dict(data)
    if spec.hidden_size != hidden_size:
        raise ValueError(
            f"task head hidden_size {spec.hidden_size} does not match the base model's "
            f"hidden size {hidden_size}"
        )
    try:
        tensors = safetensors_load(weight_bytes)
    except Exception as exc:  # safetensors raises its own error classes
        raise ValueError(f"cannot read the tensors of {HEAD_WEIGHTS_FILE}: {exc}") from exc
    head = TaskHead(spec, tensors).eval()
    head.digest = hashlib.sha256(config_bytes + b"\0" + weight_bytes).hexdigest()
    return head


def save_task_head(
    head_or_state: TaskHead | dict[str, torch.Tensor], spec: TaskHeadSpec, adapter_dir: str | Path
) -> Path:
    """Write ``task_head.json`` + ``task_head.safetensors`` into ``adapter_dir`` (validated
    first, so what is written loads; each file replaced atomically). -> the directory."""
    state = head_or_state.state_dict() if isinstance(head_or_state, TaskHead) else head_or_state
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    check_tensors(spec, tensors)
    out = Path(adapter_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_weights = out / (HEAD_WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    tmp_config = out / (HEAD_CONFIG_FILE + ".tmp")
    tmp_config.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    os.replace(tmp_weights, out / HEAD_WEIGHTS_FILE)
    os.replace(tmp_config, out / HEAD_CONFIG_FILE)
    return out


def head_reference_probs(hidden_last: torch.Tensor, adapter_dir: str | Path) -> torch.Tensor:
    """Plain-torch reference for parity tests: hidden_last [N, hidden] -> float32 probs
    [N, num_classes] by an ``F.linear`` chain over the files as written (no validation)."""
    from safetensors.torch import load_file

    path = Path(adapter_dir)
    config = json.loads((path / HEAD_CONFIG_FILE).read_text())
    tensors = load_file(str(path / HEAD_WEIGHTS_FILE))
    act = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "identity": lambda x: x}
    x = hidden_last.float()
    for i in range(len(config["layers"])):
        w, b = tensors[f"layers.{i}.weight"].float(), tensors[f"layers.{i}.bias"].float()
        x = F.linear(x, w.to(x.device), b.to(x.device))
        if i < len(config["layers"]) - 1:
            x = act[config["activation"]](x)
    return torch.softmax(x, dim=-1)


def random_task_head(hidden_size: int, num_classes: int, seed: int, width: int = 2048) -> TaskHead:
    """VaLoRA's action-recognition head, Linear(hidden, width) -> Linear(width, classes) with no
    activation between, with seeded random weights and labels ``class_0`` ... (dummy adapters:
    benchmarks, tests)."""
    spec = TaskHeadSpec(
        layers=((hidden_size, width), (width, num_classes)),
        labels=tuple(f"class_{i}" for i in range(num_classes)),
        hidden_size=hidden_size,
        activation="identity",
    )
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (n_in, n_out) in enumerate(spec.layers):
        tensors[f"layers.{i}.weight"] = torch.randn(n_out, n_in, generator=generator) / n_in**0.5
        tensors[f"layers.{i}.bias"] = torch.zeros(n_out)
    return TaskHead(spec, tensors)
