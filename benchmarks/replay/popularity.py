"""Adapter popularity: which adapter (index 0..num_adapters-1) each request, in arrival order, uses.

Kinds (a registry, chosen by name):

- `skewness` (VaLoRA): the first `int(n * skewness)` requests go to the hot adapter 0, the rest
  uniformly over all adapters (adapter 0 included), so adapter 0's expected share is
  `s + (1 - s) / num_adapters` with `s = int(n * skewness) / n`. `shuffle_hot=True` spreads the
  hot requests randomly over time instead of putting them first.
- `power` (S-LoRA): `floor(num_adapters * x)` with `x ~ power(alpha)` (pdf `alpha * x^(alpha-1)` on
  [0, 1], CDF `x^alpha`): alpha = 1 is uniform, smaller alpha concentrates on low ids.
- `zipf` (Punica-style): P(i) proportional to `1 / (i + 1)^zipf_s`.
- `uniform`; `distinct`: request i gets adapter `i % num_adapters`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Assigner = Callable[..., np.ndarray]  # (num_requests, num_adapters, rng, **options) -> [n] int64


def _skewness(
    num_requests: int,
    num_adapters: int,
    rng: np.random.Generator,
    *,
    skewness: float,
    shuffle_hot: bool,
    **_: object,
) -> np.ndarray:
    num_hot = int(num_requests * skewness)
    out = rng.integers(0, num_adapters, size=num_requests)
    hot = rng.permutation(num_requests)[:num_hot] if shuffle_hot else np.arange(num_hot)
    out[hot] = 0
    return out


def _power(
    num_requests: int, num_adapters: int, rng: np.random.Generator, *, alpha: float, **_: object
) -> np.ndarray:
    x = rng.power(alpha, size=num_requests)  # [n] in [0, 1]
    return np.minimum(np.floor(num_adapters * x).astype(np.int64), num_adapters - 1)


def _zipf(
    num_requests: int, num_adapters: int, rng: np.random.Generator, *, zipf_s: float, **_: object
) -> np.ndarray:
    weights = 1.0 / np.arange(1, num_adapters + 1, dtype=np.float64) ** zipf_s
    return rng.choice(num_adapters, size=num_requests, p=weights / weights.sum())


def _uniform(
    num_requests: int, num_adapters: int, rng: np.random.Generator, **_: object
) -> np.ndarray:
    return rng.integers(0, num_adapters, size=num_requests)


def _distinct(
    num_requests: int, num_adapters: int, rng: np.random.Generator, **_: object
) -> np.ndarray:
    return np.arange(num_requests) % num_adapters


POPULARITY_KINDS: dict[str, Assigner] = {
    "skewness": _skewness,
    "power": _power,
    "zipf": _zipf,
    "uniform": _uniform,
    "distinct": _distinct,
}


def assign_adapters(
    num_requests: int,
    num_adapters: int,
    kind: str,
    seed: int,
    *,
    skewness: float = 0.5,
    alpha: float = 1.0,
    zipf_s: float = 1.1,
    shuffle_hot: bool = False,
) -> np.ndarray:
    """[num_requests] int64 adapter indices in 0..num_adapters-1, deterministic per seed.

    Raises ValueError on an unknown kind, num_adapters < 1, num_requests < 0, skewness outside
    [0, 1], alpha <= 0 or zipf_s < 0."""
    if kind not in POPULARITY_KINDS:
        raise ValueError(f"unknown popularity {kind!r}; choose from {sorted(POPULARITY_KINDS)}")
    if num_adapters < 1 or num_requests < 0:
        raise ValueError(
            f"need num_adapters >= 1, num_requests >= 0 (got {num_adapters}, {num_requests})"
        )
    if not 0.0 <= skewness <= 1.0:
        raise ValueError(f"skewness must be in [0, 1] (got {skewness})")
    if alpha <= 0 or zipf_s < 0:
        raise ValueError(f"need alpha > 0 and zipf_s >= 0 (got {alpha}, {zipf_s})")
    rng = np.random.default_rng(seed)
    options = {"skewness": skewness, "alpha": alpha, "zipf_s": zipf_s, "shuffle_hot": shuffle_hot}
    out = POPULARITY_KINDS[kind](num_requests, num_adapters, rng, **options)
    return np.asarray(out, dtype=np.int64)
