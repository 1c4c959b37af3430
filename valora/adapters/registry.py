"""Adapter names -> versions -> host weights.

Each ``register`` of a name creates a new version; requests carry (name, version), so a request
admitted before a reload finishes on the weights it started with and the prefix cache (seeded
with the version) never hands the new version the old version's KV blocks. Host weights (pinned
on CUDA) are kept in an LRU cache of at most ``max_cpu_loras`` adapters; an evicted one is read
again from its source (the PEFT directory, or the seed of a dummy adapter) when needed. A version
that was replaced keeps its weights in memory until its last request is done (``unref``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from valora.adapters.types import LoRAAdapter

AdapterKey = tuple[str, int]


@dataclass
class AdapterEntry:
    key: AdapterKey
    rank: int
    source: Callable[[], LoRAAdapter]  # re-reads the weights (disk or dummy seed)
    description: str  # the path, or "dummy rank R seed S"
    refs: int = 0  # unfinished requests of this version


class AdapterRegistry:
    """Invariant: ``latest[name]`` is the newest version of every registered name; entries of
    replaced or removed versions stay in ``entries`` only while requests still use them."""

    def __init__(self, max_cpu_loras: int, pin_memory: bool) -> None:
        if max_cpu_loras < 1:
            raise ValueError("max_cpu_loras must be >= 1")
        self.max_cpu_loras = max_cpu_loras
        self.pin_memory = pin_memory
        self.entries: dict[AdapterKey, AdapterEntry] = {}
        self.latest: dict[str, int] = {}
        self._host: OrderedDict[AdapterKey, LoRAAdapter] = OrderedDict()
        self._next_version: dict[str, int] = {}
        self.host_loads = 0

    def register(self, name: str, source: Callable[[], LoRAAdapter], description: str) -> int:
        """Load (and so validate) the adapter now; returns its new version."""
        adapter = source()  # raises on a bad adapter: nothing is registered then
        version = self._next_version.get(name, 0) + 1
        key = (name, version)
        self._next_version[name] = version
        old = self.latest.get(name)
        self.latest[name] = version
        self.entries[key] = AdapterEntry(key, adapter.rank, source, description)
        self._cache(key, adapter)
        if old is not None:
            self._forget_if_unused((name, old))
        return version

    def unregister(self, name: str) -> AdapterKey:
        if name not in self.latest:
            raise KeyError(name)
        key = (name, self.latest.pop(name))
        self._forget_if_unused(key)
        return key

    def resolve(self, name: str) -> AdapterKey:
        """The newest version of a registered name (KeyError if none)."""
        return (name, self.latest[name])

    def names(self) -> list[str]:
        return sorted(self.latest)

    def rank(self, key: AdapterKey) -> int:
        return self.entries[key].rank

    def weights(self, key: AdapterKey) -> LoRAAdapter:
        adapter = self._host.get(key)
        if adapter is None:
            adapter = self.entries[key].source()
            self.host_loads += 1
            self._cache(key, adapter)
        self._host.move_to_end(key)
        return adapter

    def ref(self, key: AdapterKey) -> None:
        self.entries[key].refs += 1

    def unref(self, key: AdapterKey) -> None:
        entry = self.entries[key]
        entry.refs -= 1
        if self.latest.get(key[0]) != key[1]:
            self._forget_if_unused(key)

    def _forget_if_unused(self, key: AdapterKey) -> None:
        entry = self.entries.get(key)
        if entry is not None and entry.refs == 0:
            del self.entries[key]
            self._host.pop(key, None)

    def _cache(self, key: AdapterKey, adapter: LoRAAdapter) -> None:
        """Keep the host copy; evict the least recently used copies of *current* versions over
        the limit (a replaced version's source may now read the new weights: it stays)."""
        self._host[key] = adapter.pin_memory() if self.pin_memory else adapter
        current = [k for k in self._host if self.latest.get(k[0]) == k[1] and k != key]
        while len(self._host) > self.max_cpu_loras and current:
            self._host.pop(current.pop(0))
