"""Adapter names -> versions -> host weights.

Each ``register`` of a name creates a new version; requests carry (name, version), so a request
admitted before a reload finishes on the weights it started with and the prefix cache (seeded
with the version) never hands the new version the old version's KV blocks. Host weights (pinned
on CUDA) are kept in an LRU cache of at most ``max_cpu_loras`` adapters not in use; the copy of an
adapter with unfinished requests (``refs`` > 0) is never evicted, so a step never reads files.
An evicted copy is read again from its source (the PEFT directory, or the seed of a dummy
adapter) on a later request's admission, and served only if its content hash equals the one
recorded at load: a version is immutable (``AdapterUnavailable`` if its files changed or
vanished). A version that was replaced keeps its weights until its last request is done.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from valora.adapters.types import AdapterUnavailable, LoRAAdapter

AdapterKey = tuple[str, int]


@dataclass
class AdapterEntry:
    key: AdapterKey
    rank: int
    source: Callable[[], LoRAAdapter]  # re-reads the weights (disk or dummy seed)
    description: str  # the path, or "dummy rank R seed S"
    content_hash: str  # of what was validated at load; a re-read must match it
    refs: int = 0  # unfinished requests of this version
    task_head: Any = None  # the version's task head module (on the device), if it has one


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

    def register(
        self,
        name: str,
        source: Callable[[], LoRAAdapter],
        description: str,
        task_head: Any = None,
    ) -> int:
        """Load (and so validate) the adapter now; returns its new version."""
        adapter = source()  # raises on a bad adapter: nothing is registered then
        version = self._next_version.get(name, 0) + 1
        key = (name, version)
        self._next_version[name] = version
        old = self.latest.get(name)
        self.latest[name] = version
        self.entries[key] = AdapterEntry(
            key, adapter.rank, source, description, adapter.content_hash, task_head=task_head
        )
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
        """The host copy, re-read (and verified) if it was evicted."""
        adapter = self._host.get(key)
        if adapter is None:
            adapter = self._reread(self.entries[key])
            self.host_loads += 1
            self._cache(key, adapter)
        self._host.move_to_end(key)
        return adapter

    @staticmethod
    def _reread(entry: AdapterEntry) -> LoRAAdapter:
        name, version = entry.key
        try:
            adapter = entry.source()
        except Exception as exc:
            raise AdapterUnavailable(
                f"adapter {name!r} (version {version}) cannot be read again "
                f"from {entry.description}: {exc}"
            ) from exc
        if adapter.content_hash != entry.content_hash:
            raise AdapterUnavailable(
                f"adapter {name!r} (version {version}): its files in {entry.description} changed "
                "since it was loaded; load it again to serve the new weights"
            )
        return adapter

    def num_refs(self) -> int:
        return sum(e.refs for e in list(self.entries.values()))  # list(): one GIL hold

    def ref(self, key: AdapterKey) -> None:
        self.entries[key].refs += 1

    def unref(self, key: AdapterKey) -> None:
        entry = self.entries[key]
        entry.refs -= 1
        if self.latest.get(key[0]) != key[1]:
            self._forget_if_unused(key)
        self._trim()

    def _forget_if_unused(self, key: AdapterKey) -> None:
        entry = self.entries.get(key)
        if entry is not None and entry.refs == 0:
            del self.entries[key]
            self._host.pop(key, None)

    def _cache(self, key: AdapterKey, adapter: LoRAAdapter) -> None:
        self._host[key] = adapter.pin_memory() if self.pin_memory else adapter
        self._trim(keep=key)

    def _trim(self, keep: AdapterKey | None = None) -> None:
        """Evict the least recently used copies over the limit among *current* versions that no
        request uses (a replaced version's source may now read the new weights: it stays)."""
        current = [
            k
            for k in self._host
            if self.latest.get(k[0]) == k[1] and k != keep and self.entries[k].refs == 0
        ]
        while len(self._host) > self.max_cpu_loras and current:
            self._host.pop(current.pop(0))
