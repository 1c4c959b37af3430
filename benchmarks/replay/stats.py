"""Summary statistics the replay metrics share: latency distributions in ms and rates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def percentile_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def distribution(name: str, values_s: Sequence[float], percentiles: Iterable[float]) -> dict:
    """``mean_/median_/std_/pXX_{name}_ms``; all None for an empty set."""
    percentiles = list(percentiles)
    keys = [f"mean_{name}_ms", f"median_{name}_ms", f"std_{name}_ms"]
    keys += [f"p{percentile_word(p)}_{name}_ms" for p in percentiles]
    if not values_s:
        return dict.fromkeys(keys)
    ms = np.asarray(values_s, dtype=np.float64) * 1000.0
    stats = [ms.mean(), np.median(ms), ms.std()]
    stats += [np.percentile(ms, p) for p in percentiles]
    return {key: float(value) for key, value in zip(keys, stats)}


def rate(count: float, duration_s: float) -> float | None:
    return count / duration_s if duration_s > 0 else None
