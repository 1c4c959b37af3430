"""The workload side of trace replay: Azure trace parsing, arrival processes, adapter popularity,
the ShareGPT4V loader and mini dataset, and the request list."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replay.datasets import generate_dataset, load_sharegpt4v
from replay.popularity import assign_adapters
from replay.traces import (
    gamma_arrivals,
    interarrival_cv,
    load_azure_trace,
    per_second_sampling,
    poisson_arrivals,
    rescale,
)
from replay.workload import VAT_INSTRUCTION, build_workload, workload_stats

ROOT = Path(__file__).resolve().parents[2]
TRACE_DIRS = (ROOT / "benchmarks" / "data" / "traces", ROOT.parent / "shared" / "traces")
MINI_DIR = ROOT / "benchmarks" / "data" / "sharegpt4v_mini"


def trace_file(name: str) -> Path:
    for folder in TRACE_DIRS:
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"{name} not found")


@pytest.fixture(scope="module")
def code_trace():
    return load_azure_trace(trace_file("AzureLLMInferenceTrace_code.csv"))


def write_csv(path: Path, text: str) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        f.write(text)
    return path


# ---- traces ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, rows, second_gap, first_tokens",
    [("code", 8819, 0.052, (4808, 10)), ("conv", 19366, 4.314579, (374, 44))],
)
def test_2023_traces(name, rows, second_gap, first_tokens):
    trace = load_azure_trace(trace_file(f"AzureLLMInferenceTrace_{name}.csv"))
    assert len(trace) == rows and trace.num_images is None
    assert trace.arrival_s[0] == 0.0 and np.all(np.diff(trace.arrival_s) >= 0)
    assert trace.arrival_s[1] == pytest.approx(second_gap, abs=1e-9)  # hand-computed from rows 1-2
    assert (trace.context_tokens[0], trace.generated_tokens[0]) == first_tokens
    assert trace.arrival_s[-1] == pytest.approx(3500, rel=0.03)  # about an hour


def test_2023_start_time_and_alignment(code_trace):
    start = dt.datetime(2023, 11, 16, 18, 17, 3, 979960, tzinfo=dt.timezone.utc).timestamp()
    assert code_trace.start_epoch_s == pytest.approx(start, abs=1e-6)
    assert code_trace.aligned_arrival_s[0] == pytest.approx(0.97996, abs=1e-9)
    assert len(code_trace) / code_trace.arrival_s[-1] == pytest.approx(2.57, abs=0.01)
    assert interarrival_cv(code_trace.arrival_s) == pytest.approx(13.2, abs=0.2)


def test_2024_schema_mixed_fractions(tmp_path):
    text = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,100,10\n"
        "2024-05-10 00:00:01+00:00,200,20\n"  # no fraction
        "2024-05-10 00:00:00.5+00:00,300,30\n"  # one digit, earlier than the row above
        "2024-05-10 00:00:02.1234567+00:00,400,40\n"  # seven digits
        "2024-05-10 02:00:03.5+02:00,500,50\n"  # = 00:00:03.5 UTC
        "2024-05-11 00:00:00,600,60\n"  # naive = UTC, next day
    )
    trace = load_azure_trace(write_csv(tmp_path / "week.csv", text))
    expected = np.array([0.0, 0.5, 1.0, 2.1234567, 3.5, 86400.0]) - np.r_[0, [0.00993] * 5]
    np.testing.assert_allclose(trace.arrival_s, expected, atol=1e-9)
    np.testing.assert_array_equal(trace.context_tokens, [100, 300, 200, 400, 500, 600])
    np.testing.assert_array_equal(trace.generated_tokens, [10, 30, 20, 40, 50, 60])
    first_two = load_azure_trace(tmp_path / "week.csv", max_rows=2)
    np.testing.assert_allclose(first_two.arrival_s, [0.0, 1.0 - 0.00993], atol=1e-9)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_2025_multimodal_schema(tmp_path, suffix):
    text = (
        "TIMESTAMP,NumImages,ContextTokens,GeneratedTokens\n"
        "2024-10-15T12:00:00.269Z,1,500,20\n"
        "2024-10-15T12:00:01Z,0,100,5\n"
        "2024-10-15T11:59:59.900Z,2,700,9\n"
    )
    trace = load_azure_trace(write_csv(tmp_path / f"mm{suffix}", text))
    np.testing.assert_allclose(trace.arrival_s, [0.0, 0.369, 1.1], atol=1e-9)
    np.testing.assert_array_equal(trace.num_images, [2, 1, 0])
    np.testing.assert_array_equal(trace.context_tokens, [700, 500, 100])


@pytest.mark.parametrize(
    "text, message",
    [
        ("TIMESTAMP,ContextTokens\n2024-05-10 00:00:00,1\n", r"missing column.*GeneratedTokens"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00,1,2\n2024-05-10 x,1,2\n",
            r"bad\.csv:3: unparsable timestamp",
        ),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-13-10 00:00:00,1,2\n", r":2: unparsable"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00,many,2\n", r":2: "),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", r"no rows"),
    ],
)
def test_trace_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_azure_trace(write_csv(tmp_path / "bad.csv", text))


# ---- arrival processes -------------------------------------------------------------------------


def test_rescale_keeps_rate_and_burstiness(code_trace):
    start_s, rate, duration = 600.0, 6.0, 300.0
    out = rescale(code_trace.arrival_s, rate, duration, start_s=start_s)
    assert out.size / duration == rate
    assert out[0] == 0.0 and out[-1] < duration and np.all(np.diff(out) >= 0)
    first = np.searchsorted(code_trace.arrival_s, start_s)
    window = code_trace.arrival_s[first : first + out.size]
    assert interarrival_cv(window) > 3  # the code trace is bursty: the check below means something
    assert interarrival_cv(out) == pytest.approx(interarrival_cv(window), rel=1e-9)


def test_rescale_wraps_a_short_trace(code_trace):
    out = rescale(code_trace.arrival_s, 50.0, 300.0)  # 15,000 > 8,819 rows
    assert out.size == 15000 and out[-1] < 300.0 and np.all(np.diff(out) >= 0)


def test_per_second_sampling():
    trace = np.array([0.1, 0.2, 0.3, 1.5, 2.1, 2.2, 5.7, 5.8, 5.9, 6.4])
    with pytest.warns(UserWarning, match="only 3 trace seconds"):
        out = per_second_sampling(trace, 2, num_seconds=5, seed=0)
    assert np.floor(out).tolist() == [0, 0, 1, 1, 2, 2]  # trace seconds 0, 2, 5 back to back
    np.testing.assert_allclose(out[2:4], [1.1, 1.2])  # second 2 has exactly 2: both taken
    assert set(np.round(out[:2], 6)) <= {0.1, 0.2, 0.3}


def test_per_second_sampling_on_the_code_trace(code_trace):
    out = per_second_sampling(code_trace.aligned_arrival_s, 4, num_seconds=50, seed=42)
    assert out.size == 4 * 50 and np.all(np.diff(out) >= 0)
    assert np.bincount(np.floor(out).astype(int)).tolist() == [4] * 50
    again = per_second_sampling(code_trace.aligned_arrival_s, 4, num_seconds=50, seed=42)
    other = per_second_sampling(code_trace.aligned_arrival_s, 4, num_seconds=50, seed=7)
    assert np.array_equal(out, again) and not np.array_equal(out, other)


@pytest.mark.parametrize("cv", [1.0, 4.0])
def test_gamma_arrivals(cv):
    rate, duration = 10.0, 20000.0
    out = gamma_arrivals(rate, cv, duration, seed=3)
    assert out[0] >= 0 and out[-1] < duration and np.all(np.diff(out) >= 0)
    assert interarrival_cv(out) == pytest.approx(cv, rel=0.05)
    assert out.size / duration == pytest.approx(rate, rel=0.04)
    assert np.array_equal(out, gamma_arrivals(rate, cv, duration, seed=3))


def test_poisson_is_gamma_cv1():
    assert np.array_equal(poisson_arrivals(5.0, 100.0, 1), gamma_arrivals(5.0, 1.0, 100.0, 1))


# ---- popularity --------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle_hot", [False, True])
def test_skewness(shuffle_hot):
    n, num_adapters, skew = 20000, 16, 0.5
    out = assign_adapters(n, num_adapters, "skewness", 1, skewness=skew, shuffle_hot=shuffle_hot)
    assert np.mean(out == 0) == pytest.approx(skew + (1 - skew) / num_adapters, abs=0.01)
    assert (np.all(out[: int(n * skew)] == 0)) != shuffle_hot
    assert out.min() == 0 and out.max() == num_adapters - 1
    assert assign_adapters(10, 4, "skewness", 0, skewness=0.35)[:3].tolist() == [0, 0, 0]


@pytest.mark.parametrize("alpha", [0.1, 0.3, 1.0])
def test_power_matches_the_cdf(alpha):
    n, num_adapters = 100000, 16
    out = assign_adapters(n, num_adapters, "power", 2, alpha=alpha)
    ids = np.arange(1, num_adapters + 1)
    cdf = np.array([np.mean(out < k) for k in ids])
    np.testing.assert_allclose(cdf, (ids / num_adapters) ** alpha, atol=0.01)
    expected_mean = np.sum(1 - (ids[:-1] / num_adapters) ** alpha)  # sum of P(id >= k)
    assert out.mean() == pytest.approx(expected_mean, abs=0.05)


def test_zipf_frequencies():
    n, num_adapters, s = 100000, 8, 1.1
    out = assign_adapters(n, num_adapters, "zipf", 3, zipf_s=s)
    weights = 1 / np.arange(1, num_adapters + 1) ** s
    freq = np.bincount(out, minlength=num_adapters) / n
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.01)


def test_uniform_and_distinct():
    out = assign_adapters(50000, 10, "uniform", 4)
    observed, expected = np.bincount(out, minlength=10), 5000
    assert np.sum((observed - expected) ** 2 / expected) < 30  # chi-square, 9 dof: p ~ 0.0005
    assert assign_adapters(5, 8, "distinct", 0).tolist() == [0, 1, 2, 3, 4]
    assert assign_adapters(6, 4, "distinct", 0).tolist() == [0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("kind", ["skewness", "power", "zipf", "uniform", "distinct"])
def test_popularity_deterministic(kind):
    a, b = assign_adapters(500, 7, kind, 9), assign_adapters(500, 7, kind, 9)
    assert a.dtype == np.int64 and np.array_equal(a, b) and 0 <= a.min() and a.max() < 7


@pytest.mark.parametrize(
    "args, options",
    [
        ((10, 4, "hot"), {}),
        ((10, 0, "uniform"), {}),
        ((10, 4, "skewness"), {"skewness": 1.1}),
        ((10, 4, "skewness"), {"skewness": -0.1}),
        ((10, 4, "power"), {"alpha": 0.0}),
    ],
)
def test_popularity_errors(args, options):
    with pytest.raises(ValueError):
        assign_adapters(*args, seed=0, **options)


# ---- datasets ----------------------------------------------------------------------------------


def test_shipped_mini_dataset():
    samples = load_sharegpt4v(MINI_DIR / "sharegpt4v_mini.json")
    assert len(samples) == 48
    for sample in samples:
        assert len(sample.image_paths) == 1 and "<image>" not in sample.prompt
        assert 3 <= len(sample.prompt.split()) <= 45 and 60 <= sample.output_words <= 250
        with Image.open(sample.image_paths[0]) as image:
            assert all(160 <= side <= 448 for side in image.size)
    assert sum(f.stat().st_size for f in MINI_DIR.rglob("*") if f.is_file()) < 300_000


def test_generate_dataset_deterministic(tmp_path):
    first = generate_dataset(tmp_path / "a", num_samples=10, num_images=4, seed=5)
    again = generate_dataset(tmp_path / "b", num_samples=10, num_images=4, seed=5)
    other = generate_dataset(tmp_path / "c", num_samples=10, num_images=4, seed=6)
    assert first.read_text() == again.read_text() != other.read_text()
    for k in range(4):
        name = f"images/img_{k:02d}.png"
        assert np.array_equal(
            np.asarray(Image.open(first.parent / name)), np.asarray(Image.open(again.parent / name))
        )
    shipped = generate_dataset(tmp_path / "shipped", seed=0)  # the shipped one is reproducible
    assert shipped.read_text() == (MINI_DIR / "sharegpt4v_mini.json").read_text()


def test_missing_images_are_skipped(tmp_path, caplog):
    Image.new("RGB", (8, 8)).save(tmp_path / "there.png")
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a b c"}]
    entries = [
        {"id": "1", "image": "there.png", "conversations": turns},
        {"id": "2", "image": "gone.png", "conversations": turns},
        {"id": "3", "conversations": turns},
    ]
    (tmp_path / "d.json").write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING):
        samples = load_sharegpt4v(tmp_path / "d.json")
    assert "skipped 1" in caplog.text
    assert [len(s.image_paths) for s in samples] == [1, 0]
    assert samples[0].prompt == "What is it?" and samples[0].output_words == 3
    assert len(load_sharegpt4v(tmp_path / "d.json", limit=1)) == 1
    (tmp_path / "gone.json").write_text(json.dumps(entries[1:2]))
    with pytest.raises(ValueError, match="no usable entry"):
        load_sharegpt4v(tmp_path / "gone.json")


# ---- workload ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini_samples():
    return load_sharegpt4v(MINI_DIR / "sharegpt4v_mini.json")


def test_vqa_workload(mini_samples):
    arrivals = gamma_arrivals(4.0, 2.0, 30.0, seed=0)
    adapters = assign_adapters(arrivals.size, 4, "skewness", 0, skewness=0.8)
    specs = build_workload(arrivals[::-1], adapters[::-1], "vqa", mini_samples, seed=0)
    assert [s.arrival_s for s in specs] == sorted(arrivals.tolist())
    assert [s.adapter for s in specs] == [f"lora{k}" for k in adapters]  # follows its arrival
    assert len({s.request_id for s in specs}) == len(specs)
    assert all(len(s.image_paths) == 1 and 1 <= s.max_tokens <= 120 for s in specs)
    assert all(s.prompt_words == len(s.prompt.split()) for s in specs)
    stats = workload_stats(specs)
    assert stats["count"] == len(specs) and stats["adapter_share"]["lora0"] > 0.8
    assert sum(stats["adapter_share"].values()) == pytest.approx(1.0)


def test_vat_workload_and_base_model(mini_samples):
    arrivals = np.arange(10) * 0.5
    adapters = np.array([-1, 0, 1, -1, 2, 0, 1, 2, -1, 0])
    specs = build_workload(
        arrivals, adapters, "vat", mini_samples, seed=1, adapter_names=["a", "b", "c"]
    )
    assert all(len(s.image_paths) == 6 and s.max_tokens == 1 for s in specs)
    assert all(s.prompt == VAT_INSTRUCTION for s in specs)
    assert [s.adapter for s in specs][:3] == [None, "a", "b"]
    assert len({s.request_id for s in specs}) == 10
    assert workload_stats(specs)["adapter_share"]["base"] == pytest.approx(0.3)


def test_workload_errors(mini_samples):
    with pytest.raises(ValueError, match="unknown task"):
        build_workload(np.zeros(2), np.zeros(2), "ocr", mini_samples, seed=0)
    with pytest.raises(ValueError, match="must be equal"):
        build_workload(np.zeros(2), np.zeros(3), "vqa", mini_samples, seed=0)
