"""The adapter half of the engine's front door: which adapters it serves, loading and unloading
them, and resolving a request's adapter name (``LLMEngine`` inherits it; it reads only
``self.lora``, the engine's ``LoRAManager`` or None)."""

from __future__ import annotations

from pathlib import Path

from valora.adapters.manager import LoRAManager
from valora.orchestrator.base import AdapterKey


class AdapterAPI:
    lora: LoRAManager | None

    def adapters(self) -> dict[str, str]:
        """Loaded adapters (newest versions): name -> where it came from (path or dummy)."""
        if self.lora is None:
            return {}
        registry = self.lora.registry
        latest = dict(registry.latest)  # one atomic copy: servers read this off the engine thread
        entries = {name: registry.entries.get((name, version)) for name, version in latest.items()}
        return {name: e.description for name, e in sorted(entries.items()) if e is not None}

    def has_adapter(self, name: str) -> bool:
        """Whether ``name`` is loaded (one dict lookup: servers call it per request)."""
        return self.lora is not None and name in self.lora.registry.latest

    def load_adapter(self, name: str, path: str | Path, root: str | Path | None = None) -> int:
        """Load (or reload: a new version) a PEFT adapter directory; returns its version. With
        ``root``, every file must resolve to a path under it."""
        return self._lora_or_error().add_adapter(name, path, root)

    def load_dummy_adapter(self, name: str, rank: int, seed: int, num_classes: int = 0) -> int:
        """A random adapter of ``rank`` on every target (benchmarks, tests, the demo), with a
        random task head of ``num_classes`` classes when > 0."""
        return self._lora_or_error().add_dummy(name, rank, seed, num_classes)

    def task_labels(self, name: str) -> list[str] | None:
        """The labels of adapter ``name``'s task head (newest version), or None without one."""
        if not self.has_adapter(name):
            raise KeyError(f"adapter {name!r} is not loaded")
        head = self.lora.task_head(self.lora.resolve(name))
        return None if head is None else list(head.labels)

    def unload_adapter(self, name: str) -> None:
        """New requests can no longer name it; requests already using it finish on it."""
        lora = self._lora_or_error()
        if not self.has_adapter(name):
            raise KeyError(f"adapter {name!r} is not loaded")
        lora.remove_adapter(name)

    def _lora_or_error(self) -> LoRAManager:
        if self.lora is None:
            raise ValueError("this engine runs without LoRA (enable it: enable_lora=True)")
        return self.lora

    def _check_task_head(self, name: str | None, key: AdapterKey | None) -> None:
        if key is None:
            raise ValueError("classification needs an adapter with a task head (model=<adapter>)")
        if self.lora.task_head(key) is None:
            raise ValueError(f"adapter {name!r} has no task head: it can only generate")

    def _resolve_adapter(self, name: str | None) -> tuple[str, int] | None:
        if name is None:
            return None
        if self.lora is None:
            raise ValueError(f"unknown adapter {name!r}: this engine was started without LoRA")
        return self.lora.resolve(name)
