"""The engine's LoRA state in one place: registry, GPU pool, kernels runtime, merger.

It is also the scheduler's adapter gate: a request is admitted only if its adapter can be pinned
in the GPU pool (``admit``), and unpinned when it leaves the running set (``release``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from valora.adapters.merge import BaseWeightMerger
from valora.adapters.peft_loader import dummy_adapter, load_peft_adapter
from valora.adapters.pool import AdapterKey, AdapterPool
from valora.adapters.registry import AdapterRegistry
from valora.adapters.runtime import LoRARuntime, attach_lora
from valora.adapters.targets import model_targets
from valora.adapters.task_head import load_task_head, random_task_head
from valora.config import LoRAConfig, ModelConfig, triton_interpreter_enabled
from valora.request import Request


def lora_targets(cfg: ModelConfig, config: LoRAConfig) -> tuple:
    """The ``TargetSpec``s of the towers LoRA is enabled on."""
    return tuple(t for t in model_targets(cfg) if t.tower in config.towers)


class LoRAManager:
    def __init__(
        self,
        model: nn.Module,
        config: LoRAConfig,
        backend: str,
        enable_merge: bool,
        dtype: torch.dtype,
        device: str,
    ) -> None:
        self.config = config
        self.model_config: ModelConfig = model.cfg
        self.dtype = dtype
        self.device = device
        targets = lora_targets(model.cfg, config)
        rows = config.max_loras * config.max_lora_rank
        self.pool = AdapterPool(targets, rows, config.max_lora_rank, dtype, device)
        self.registry = AdapterRegistry(config.max_cpu_loras, device.startswith("cuda"))
        self.backend_name = lora_backend_for(backend, device)
        self.runtime = LoRARuntime(self.pool, self.backend_name)
        attach_lora(model, self.runtime)
        self.merger = BaseWeightMerger(model, self.pool) if enable_merge else None
        self.num_switches = 0

    # ---- adapters -------------------------------------------------------------------------
    def add_adapter(self, name: str, path: str | Path, root: str | Path | None = None) -> int:
        """Load and validate a PEFT adapter directory; returns the new version. With ``root``,
        every file read (now and on re-reads) must resolve to a path under it."""
        cfg, rank, dtype, pickle = (
            self.model_config,
            self.config.max_lora_rank,
            self.dtype,
            self.config.allow_pickle,
        )
        source = lambda: self._keep_towers(  # noqa: E731
            load_peft_adapter(path, name, cfg, rank, dtype, allow_pickle=pickle, root=root)
        )
        head = load_task_head(path, cfg.hidden_size, root=root)  # None: the adapter has none
        return self.registry.register(name, source, str(path), self._on_device(head))

    def add_dummy(self, name: str, rank: int, seed: int, num_classes: int = 0) -> int:
        """A random adapter; ``num_classes`` > 0 gives it a random task head of that many
        classes (labels ``class_0`` ...), as VaLoRA's Linear(hidden, 2048) -> Linear(2048, n)."""
        if rank > self.config.max_lora_rank:
            raise ValueError(f"rank {rank} exceeds max_lora_rank {self.config.max_lora_rank}")
        cfg, dtype, towers = self.model_config, self.dtype, self.config.towers
        source = lambda: dummy_adapter(name, cfg, rank, seed, dtype, towers)  # noqa: E731
        head = random_task_head(cfg.hidden_size, num_classes, seed) if num_classes else None
        description = f"dummy rank {rank} seed {seed}"
        return self.registry.register(name, source, description, self._on_device(head))

    def task_head(self, key: AdapterKey):
        """The task head of an adapter version (``valora.adapters.task_head.TaskHead``), or
        None."""
        entry = self.registry.entries.get(key)
        return None if entry is None else entry.task_head

    def _on_device(self, head):
        return None if head is None else head.to(self.device)

    def remove_adapter(self, name: str) -> None:
        key = self.registry.unregister(name)
        self.pool.drop(key)  # pinned (in use): stays until its requests are done

    def _keep_towers(self, adapter):
        unknown = adapter.towers - set(self.config.towers)
        if unknown:
            raise ValueError(
                f"adapter {adapter.name!r} trains the {sorted(unknown)} tower(s), which this "
                f"engine serves without LoRA (towers={self.config.towers})"
            )
        return adapter

    def resolve(self, name: str) -> AdapterKey:
        try:
            return self.registry.resolve(name)
        except KeyError:
            known = ", ".join(self.registry.names()) or "none loaded"
            raise ValueError(f"unknown adapter {name!r} (adapters: {known})") from None

    # ---- the scheduler's gate -------------------------------------------------------------
    def admit(self, request: Request) -> bool:
        key = _key(request)
        if key is None:
            return True
        if not self.pool.can_acquire(key, self.registry.rank(key)):
            return False
        self.pool.acquire(key, self.registry.weights(key))
        return True

    def release(self, request: Request) -> None:
        key = _key(request)
        if key is not None:
            self.pool.release(key)

    def prefetch(self, requests: list[Request], limit: int = 2) -> None:
        if not self.config.enable_prefetch:
            return
        for request in requests:
            key = _key(request)
            if limit == 0:
                break
            if key is not None and not self.pool.is_resident(key):
                self.pool.prefetch(key, self.registry.weights(key))
                limit -= 1

    # ---- per step -------------------------------------------------------------------------
    def slot_of(self, request: Request) -> int:
        key = _key(request)
        return -1 if key is None else self.pool.slot(key)

    @property
    def merged(self) -> AdapterKey | None:
        return None if self.merger is None else self.merger.merged

    @property
    def merged_slot(self) -> int | None:
        return None if self.merged is None else self.pool.slot(self.merged)

    def switch(self, key: AdapterKey | None) -> float | None:
        """Merge ``key`` into the base (None: unmerge); pins it while merged. Seconds taken, or
        None when the pool has no room to pin ``key`` (nothing changes then)."""
        if self.merger is None:
            raise RuntimeError("this engine's policy never merges (no pristine weights kept)")
        old = self.merger.merged
        if key == old:
            return 0.0
        adapter = None
        if key is not None:
            if not self.pool.can_acquire(key, self.registry.rank(key)):
                return None
            adapter = self.registry.weights(key)
            self.pool.acquire(key, adapter)
        try:
            seconds = self.merger.switch(key, adapter)
        except Exception:  # the merger went back to the base weights: nothing is merged
            for pinned in {key, old} - {None}:
                self.pool.release(pinned)
            raise
        if old is not None:
            self.pool.release(old)
        self.num_switches += 1
        return seconds

    def num_request_pins(self) -> int:
        """Pool pins held by requests (the merged adapter's own pin not counted)."""
        pins = sum(r.pins for r in list(self.pool.resident.values()))  # list(): one GIL hold
        return pins - (self.merged is not None)

    def set_vision_adapters(self, requests: list[Request], num_patches: list[int]) -> None:
        """Segments for encoding these requests' images in one vision pass, in order (each
        request's ``num_patches`` rows use its adapter)."""
        slots = [self.slot_of(r) for r in requests]
        windows = [p // self.model_config.vision.spatial_merge_size**2 for p in num_patches]
        groups = {"vision": (slots, num_patches), "merger": (slots, windows)}
        self.runtime.set_step(groups, self.merged_slot)


def lora_backend_for(name: str, device: str) -> str:
    """The backend to run: on a CPU without Triton's interpreter the Triton backends (atmm,
    sgmv, mbgmv) fall back to the torch loop; einsum and torch run anywhere."""
    triton_backends = ("atmm", "sgmv", "mbgmv")
    if device.startswith("cuda") or triton_interpreter_enabled() or name not in triton_backends:
        return name
    return "torch"


def _key(request: Request) -> AdapterKey | None:
    if request.adapter_id is None:
        return None
    return (request.adapter_id, request.adapter_version)
