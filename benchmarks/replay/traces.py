"""Request arrival times: Azure LLM / LMM inference traces, and synthetic arrival processes.

Every arrival array is float64 seconds, sorted ascending. Readers accept the three Azure schemas:

- 2023 (`AzureLLMInferenceTrace_{code,conv}.csv`): `TIMESTAMP,ContextTokens,GeneratedTokens`, with
  timestamps like `2023-11-16 18:17:03.9799600` (7 fraction digits, one more than `datetime` takes);
- 2024 one-week files: the same columns, timestamps like `2024-05-10 00:00:00.009930+00:00`, with
  other fraction widths or none mixed in one file;
- 2025 multimodal: `TIMESTAMP,NumImages,ContextTokens,GeneratedTokens`, ISO timestamps like
  `2024-10-15T12:00:00.269Z` (`.csv` or `.csv.gz`).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import math
import re
import warnings
from array import array
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
IMAGES_COLUMN = "NumImages"

_TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?"
)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


@dataclass(frozen=True, eq=False)
class Trace:
    """One trace, rows sorted by time (stable: rows with equal timestamps keep file order)."""

    arrival_s: np.ndarray  # [n] float64, seconds since the earliest row (so arrival_s[0] == 0)
    context_tokens: np.ndarray  # [n] int64
    generated_tokens: np.ndarray  # [n] int64
    num_images: np.ndarray | None = None  # [n] int64; only the 2025 multimodal schema has it
    start_epoch_s: float = 0.0  # UTC epoch seconds of the earliest row (naive stamps taken as UTC)

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    @property
    def aligned_arrival_s(self) -> np.ndarray:
        """Arrivals counted from the whole second holding the earliest row, so that `floor()`
        gives the trace clock's own seconds (VaLoRA buckets by those in `per_second_sampling`)."""
        fraction = round(self.start_epoch_s - math.floor(self.start_epoch_s), 7)
        return self.arrival_s + fraction


def parse_timestamp(text: str) -> tuple[int, float]:
    """`text` as (whole UTC epoch seconds, fraction in [0, 1)); naive timestamps are UTC.

    Splitting keeps sub-microsecond digits exact and takes any fraction width."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"unparsable timestamp {text!r}")
    date, hours, minutes, seconds, fraction, zone = match.groups()
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 59:
        raise ValueError(f"unparsable timestamp {text!r}: time out of range")
    whole = _epoch_days(date) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return whole - _zone_offset_s(zone), float(f"0.{fraction}") if fraction else 0.0


@lru_cache(maxsize=4096)
def _epoch_days(date: str) -> int:
    try:
        return dt.date.fromisoformat(date).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise ValueError(f"unparsable date {date!r}") from None


def _zone_offset_s(zone: str | None) -> int:
    if zone is None or zone == "Z":
        return 0
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    return sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)


def load_azure_trace(path: str | Path, *, max_rows: int | None = None) -> Trace:
    """Read an Azure inference trace CSV (any of the schemas in the module docstring), or only its
    first `max_rows` rows (the one-week files hold 17-27 M rows, about 3 s per million to read).

    Raises ValueError naming the file (and line) on a missing column, an unparsable timestamp or
    token count, or a file without rows."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        columns = _column_indices(next(reader, None), path)
        whole, fraction, counts = _read_rows(reader, columns, path, max_rows)
    if not whole:
        raise ValueError(f"{path}: no rows")
    return _build_trace(whole, fraction, counts)


def _column_indices(header: list[str] | None, path: Path) -> dict[str, int]:
    names = [name.strip() for name in header or []]
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header has {names}")
    wanted = (*REQUIRED_COLUMNS, IMAGES_COLUMN)
    return {name: names.index(name) for name in wanted if name in names}


def _read_rows(
    reader: Any, columns: dict[str, int], path: Path, max_rows: int | None
) -> tuple[array, array, dict[str, array]]:
    """Columns as compact arrays: whole epoch seconds, fractions, and each integer column.

    `reader` is a `csv.reader` (its `line_num` names the failing line)."""
    whole, fraction = array("q"), array("d")
    counts = {name: array("q") for name in columns if name != "TIMESTAMP"}
    time_index = columns["TIMESTAMP"]
    for row in reader:
        if max_rows is not None and len(whole) >= max_rows:
            break
        if not row:
            continue
        try:
            seconds, part = parse_timestamp(row[time_index])
            for name, values in counts.items():
                values.append(int(row[columns[name]]))
        except (ValueError, IndexError) as error:
            raise ValueError(f"{path}:{reader.line_num}: {error}") from None
        whole.append(seconds)
        fraction.append(part)
    return whole, fraction, counts


def _build_trace(whole: array, fraction: array, counts: dict[str, array]) -> Trace:
    whole_s = np.frombuffer(whole, dtype=np.int64)
    fraction_s = np.frombuffer(fraction, dtype=np.float64)
    order = np.lexsort((fraction_s, whole_s))  # stable: by whole second, then fraction
    whole_s, fraction_s = whole_s[order], fraction_s[order]
    arrival_s = (whole_s - whole_s[0]).astype(np.float64) + (fraction_s - fraction_s[0])
    column = {name: np.frombuffer(values, dtype=np.int64)[order] for name, values in counts.items()}
    return Trace(
        arrival_s=arrival_s,
        context_tokens=column["ContextTokens"],
        generated_tokens=column["GeneratedTokens"],
        num_images=column.get(IMAGES_COLUMN),
        start_epoch_s=float(whole_s[0]) + float(fraction_s[0]),
    )


def rescale(
    trace_arrivals: np.ndarray, target_rate: float, duration_s: float, start_s: float = 0.0
) -> np.ndarray:
    """The trace's arrivals from `start_s` on, time axis scaled to `target_rate` req/s.

    Takes the `round(target_rate * duration_s)` arrivals at or after `start_s` and stretches their
    time axis uniformly so that they fill [0, duration_s): the first lands on 0, and the gap after
    the last is the scaled gap the trace has there. The mean rate is then exactly
    count / duration_s, and the inter-arrival CV is the window's own (CV is scale invariant).
    A trace too short for the window repeats: after its last row it starts again from its first,
    one mean inter-arrival later."""
    arrivals = _sorted_seconds(trace_arrivals)
    if arrivals.size < 2 or target_rate <= 0 or duration_s <= 0:
        raise ValueError("rescale needs >= 2 trace arrivals, target_rate > 0 and duration_s > 0")
    num_requests = int(round(target_rate * duration_s))
    first = int(np.searchsorted(arrivals, start_s, side="left"))
    if first == arrivals.size:
        raise ValueError(f"start_s={start_s} is after the trace's last arrival {arrivals[-1]}")
    if num_requests == 0:
        return np.empty(0)
    mean_gap = (arrivals[-1] - arrivals[0]) / (arrivals.size - 1)
    gaps = np.append(np.diff(arrivals), mean_gap)  # [n]: gaps[i] follows arrival i (cyclic)
    window = gaps[(first + np.arange(num_requests)) % gaps.size]  # [num_requests]
    if window.sum() <= 0:
        raise ValueError("all arrivals of the window share one timestamp: nothing to scale")
    times = np.concatenate(([0.0], np.cumsum(window[:-1]))) * (duration_s / window.sum())
    return np.minimum(times, np.nextafter(duration_s, 0.0))  # a zero last gap would hit the end


def per_second_sampling(
    trace_arrivals: np.ndarray, req_rate: int, num_seconds: int = 300, seed: int = 42
) -> np.ndarray:
    """VaLoRA's arrivals: exactly `req_rate` requests in each of `num_seconds` busy trace seconds.

    Walks the distinct whole seconds (`floor(t)`) of the trace in order; from each second holding
    at least `req_rate` arrivals it samples `req_rate` of them (without replacement, seeded), until
    `num_seconds` seconds are taken (fewer, with a warning, if the trace runs out). The i-th taken
    second is placed on [i, i + 1) with its sampled sub-second offsets kept, so the result starts
    in [0, 1) and quieter trace seconds in between are dropped (seconds back to back).
    Pass `Trace.aligned_arrival_s` to bucket by the trace clock's seconds as VaLoRA does.

    Differs from VaLoRA's `get_arrival_times`, which looks only at the first 300 distinct seconds
    (taking those with enough requests) and keeps the trace's own gaps between them."""
    if req_rate < 1 or num_seconds < 1:
        raise ValueError(f"req_rate and num_seconds must be >= 1 (got {req_rate}, {num_seconds})")
    arrivals = _sorted_seconds(trace_arrivals)
    seconds = np.floor(arrivals).astype(np.int64)
    run_starts = np.flatnonzero(np.r_[True, seconds[1:] != seconds[:-1]])  # [num_distinct]
    run_counts = np.diff(np.r_[run_starts, arrivals.size])  # [num_distinct]
    taken = np.flatnonzero(run_counts >= req_rate)[:num_seconds]
    if taken.size < num_seconds:
        warnings.warn(
            f"only {taken.size} trace seconds hold >= {req_rate} requests ({num_seconds} wanted)",
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    out = np.empty(taken.size * req_rate)
    for i, run in enumerate(taken):
        start = run_starts[run]
        picks = start + np.sort(rng.choice(run_counts[run], size=req_rate, replace=False))
        out[i * req_rate : (i + 1) * req_rate] = i + (arrivals[picks] - seconds[start])
    return out


def gamma_arrivals(rate: float, cv: float, duration_s: float, seed: int) -> np.ndarray:
    """Arrivals in [0, duration_s) with i.i.d. Gamma inter-arrivals of mean 1 / rate and
    coefficient of variation `cv` (shape 1 / cv^2, scale cv^2 / rate; cv = 1 is Poisson)."""
    if rate <= 0 or cv <= 0 or duration_s <= 0:
        raise ValueError(f"rate, cv and duration_s must be > 0 (got {rate}, {cv}, {duration_s})")
    rng = np.random.default_rng(seed)
    shape, scale = 1.0 / cv**2, cv**2 / rate
    expected = rate * duration_s
    chunk = int(expected + 10 * cv * math.sqrt(expected) + 16)
    times = np.cumsum(rng.gamma(shape, scale, size=chunk))
    while times[-1] < duration_s:
        times = np.append(times, times[-1] + np.cumsum(rng.gamma(shape, scale, size=chunk)))
    return times[times < duration_s]


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> np.ndarray:
    """Poisson arrivals (exponential inter-arrivals) of `rate` req/s in [0, duration_s)."""
    return gamma_arrivals(rate, 1.0, duration_s, seed)


def interarrival_cv(arrivals: np.ndarray) -> float:
    """Std / mean of the gaps between sorted arrivals (NaN with fewer than 2 gaps or mean 0)."""
    gaps = np.diff(_sorted_seconds(arrivals))
    if gaps.size < 2 or gaps.mean() <= 0:
        return float("nan")
    return float(gaps.std() / gaps.mean())


def _sorted_seconds(arrivals: np.ndarray) -> np.ndarray:
    values = np.asarray(arrivals, dtype=np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ValueError("arrivals must be a 1-D array of finite seconds")
    return np.sort(values)
