"""Random pools and segment tables for tests, benchmarks and the tuner.

Popularity (how requests pick adapters), after Punica's benchmark settings plus one hot adapter:
``distinct`` (every request its own adapter), ``uniform`` (about sqrt(n) adapters, equal shares),
``zipf`` (request shares per adapter grow geometrically by 1.5), ``identical`` (one adapter) and
``hot`` (one adapter takes 0.8 of the requests, the rest are distinct). Requests are sorted by
adapter and runs of one adapter become one segment, as a serving engine batches them.
"""

from __future__ import annotations

import math
import random

import torch

from atmm.types import LoRASegments, LoRAWeights

POPULARITIES = ("distinct", "uniform", "zipf", "identical", "hot")
MIXED_RANKS = (8, 16, 32, 64, 128)


def make_weights(
    ranks: list[int],
    in_features: int,
    slice_sizes: list[int],
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int = 0,
    max_rank: int | None = None,
) -> LoRAWeights:
    """One slot per entry of ``ranks``; a/b ~ N(0, 1/sqrt(fan-in)) so outputs stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    max_rank = max_rank or max(ranks)
    num_slots, num_slices = len(ranks), len(slice_sizes)
    n = sum(slice_sizes)
    a = torch.randn(num_slots, num_slices, max_rank, in_features, generator=gen)
    b = torch.randn(num_slots, max_rank, n, generator=gen)
    offsets = [0]
    for size in slice_sizes:
        offsets.append(offsets[-1] + size)
    return LoRAWeights(
        a=(a / math.sqrt(in_features)).to(device, dtype),
        b=(b / math.sqrt(max_rank)).to(device, dtype),
        ranks=torch.tensor(ranks, dtype=torch.int32, device=device),
        scalings=(torch.rand(num_slots, generator=gen) + 0.5).to(device),
        slice_offsets=tuple(offsets),
    )


def adapter_of_requests(num_requests: int, popularity: str, rng: random.Random) -> list[int]:
    """Adapter index (0-based, dense) of each request."""
    n = num_requests
    if popularity == "distinct":
        return list(range(n))
    if popularity == "identical":
        return [0] * n
    if popularity == "uniform":
        k = max(1, round(math.sqrt(n)))
        return [i % k for i in range(n)]
    if popularity == "zipf":
        shares, size = [], 1.0
        while sum(shares) < n:
            shares.append(max(1, round(size)))
            size *= 1.5
        shares[-1] -= sum(shares) - n
        return [i for i, share in enumerate(shares) for _ in range(share)]
    if popularity == "hot":
        num_hot = max(1, round(0.8 * n))
        return [0] * num_hot + list(range(1, n - num_hot + 1))
    raise ValueError(f"unknown popularity {popularity!r}; choose one of {POPULARITIES}")


def make_segments(
    request_lens: list[int],
    popularity: str,
    device: torch.device | str,
    seed: int = 0,
    num_base_requests: int = 0,
) -> tuple[LoRASegments, int]:
    """Segments for requests of the given lengths; returns (segments, number of adapters used).
    ``num_base_requests`` extra requests (length 1) use no adapter (slot -1)."""
    rng = random.Random(seed)
    adapters = adapter_of_requests(len(request_lens), popularity, rng)
    order = sorted(range(len(request_lens)), key=lambda i: adapters[i])
    seg_lens, seg_slots = [], []
    for i in order:
        if seg_slots and seg_slots[-1] == adapters[i]:
            seg_lens[-1] += request_lens[i]
        else:
            seg_lens.append(request_lens[i])
            seg_slots.append(adapters[i])
    seg_lens += [1] * num_base_requests
    seg_slots += [-1] * num_base_requests
    return LoRASegments.build(seg_lens, seg_slots, device), max(adapters) + 1


def mixed_ranks(num_slots: int, seed: int = 0, choices: tuple[int, ...] = MIXED_RANKS):
    rng = random.Random(seed)
    return [rng.choice(choices) for _ in range(num_slots)]
