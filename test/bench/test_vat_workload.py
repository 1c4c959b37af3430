"""The video-analytics (vat) workload on the tiny model (CPU): synthetic clips, the mixed
classify + vqa request list, its metrics, replays in process and over HTTP (``/v1/classify``),
and ``bench_vat.py`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")

import bench_vat  # noqa: E402
import run_exp  # noqa: E402
from harness import DEFAULT_DATASET  # noqa: E402

from replay.clips import load_manifest, make_clip_arrays, read_clip, write_clips  # noqa: E402
from replay.datasets import load_sharegpt4v  # noqa: E402
from replay.metrics import RequestResult, summarize  # noqa: E402
from replay.vat import VAT_VIDEO_INSTRUCTION, build_vat_workload  # noqa: E402
from replay.workload import workload_stats  # noqa: E402

ENGINE_ARGS = (
    "--model-setting tiny --device cpu --num-adapter 4 --dummy-task-classes 5 "
    "--num-token 8192 --lora-backend torch"
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clips")
    return write_clips(directory, 3, num_frames=(4, 6), fps=4.0, size=(32, 48), seed=7)


def test_clips_are_distinct_and_round_trip_through_mp4(clips):
    arrays = make_clip_arrays(3, (4, 6), (32, 48), seed=7)
    assert [a.shape for a in arrays] == [(4, 32, 48, 3), (6, 32, 48, 3), (4, 32, 48, 3)]
    assert all(a.dtype == np.uint8 for a in arrays)
    assert np.abs(arrays[0].astype(int) - arrays[2]).mean() > 20  # other seed, other pixels
    assert np.abs(arrays[0][0].astype(int) - arrays[0][-1]).mean() > 1  # it moves
    assert [(c.frames, c.seed, c.height, c.width) for c in clips] == [
        (4, 7, 32, 48),
        (6, 8, 32, 48),
        (4, 9, 32, 48),
    ]
    assert load_manifest(clips[0].path.rsplit("/", 1)[0]) == clips
    decoded = read_clip(clips[1].path)
    assert decoded.shape == arrays[1].shape
    assert np.abs(decoded.astype(int) - arrays[1]).mean() < 20  # lossy, but the same clip


def test_vat_workload_mixes_classify_and_vqa(clips):
    samples = load_sharegpt4v(DEFAULT_DATASET)
    arrivals = np.arange(40) * 0.25
    adapters = np.arange(40) % 4
    specs = build_vat_workload(arrivals, adapters, samples, clips, seed=3, vat_share=0.25)
    vat = [s for s in specs if s.task == "vat"]
    vqa = [s for s in specs if s.task == "vqa"]
    assert len(vat) == 10 and len(vqa) == 30
    assert all(s.classify and s.video in clips and not s.image_paths for s in vat)
    assert all(s.prompt == VAT_VIDEO_INSTRUCTION and s.max_tokens == 0 for s in vat)
    assert all(not s.classify and s.video is None and len(s.image_paths) == 1 for s in vqa)
    assert {s.video.seed for s in vat} == {7, 8, 9}  # every clip dealt
    assert [s.adapter for s in specs] == [f"lora{k}" for k in adapters]  # popularity kept
    again = build_vat_workload(arrivals, adapters, samples, clips, seed=3, vat_share=0.25)
    assert again == specs
    assert workload_stats(specs)["task_share"] == {"vqa": 0.75, "vat": 0.25}
    with pytest.raises(ValueError, match="base model"):
        build_vat_workload(arrivals, np.full(40, -1), samples, clips, seed=3)
    with pytest.raises(ValueError, match="vat_share"):
        build_vat_workload(arrivals, adapters, samples, clips, seed=3, vat_share=1.5)


def _classify_result(request_id: str, send_s: float, end_s: float) -> RequestResult:
    return RequestResult(
        request_id=request_id,
        adapter="lora0",
        task="vat",
        scheduled_s=send_s,
        send_s=send_s,
        chunk_s=[],
        end_s=end_s,
        prompt_tokens=300,
        output_tokens=0,
        num_images=0,
        success=True,
        classify=True,
        label="class_1",
        video_frames=8,
    )


def test_classify_results_in_the_summary():
    results = [_classify_result("a", 0.0, 1.0), _classify_result("b", 1.0, 9.0)]
    s = summarize(results, duration_s=10.0)
    assert s["mean_ttft_ms"] is None and s["mean_tpot_ms"] is None  # nothing streamed
    assert s["slo_attainment"] == 0.5  # the answer stands in for the first token: 1 s, 8 s
    vat = s["tasks"]["vat"]
    assert vat["completed"] == 2 and vat["classify"] and vat["mean_ttft_ms"] is None
    assert vat["request_throughput"] == pytest.approx(0.2)
    assert vat["video_frame_throughput"] == pytest.approx(1.6)
    assert vat["mean_latency_ms"] == pytest.approx(4500.0)
    assert vat["p50_latency_ms"] == pytest.approx(4500.0)
    assert vat["p90_latency_ms"] == pytest.approx(1000.0 + 0.9 * 7000.0)


def read(path) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return lines[:-1], lines[-1]


def replay_args(out, *extra: str) -> list[str]:
    return [
        *("--task", "vat", "--num_adapters", "4", "--arrival", "poisson", "--req_rate", "4"),
        *("--duration", "4", "--max_output_tokens", "4", "--seed", "5", "--num_clips", "4"),
        *("--clip_size", "56x56", "--clip_frames", "4", "8", "--out", str(out), *extra),
    ]


def check_vat_run(requests: list[dict], record: dict) -> None:
    assert all(r["success"] for r in requests), [r["error"] for r in requests]
    vat = [r for r in requests if r["task"] == "vat"]
    vqa = [r for r in requests if r["task"] == "vqa"]
    assert vat and vqa
    assert all(r["classify"] and r["label"].startswith("class_") for r in vat)
    assert all(r["ttft"] is None and r["e2e"] > 0 and r["output_tokens"] == 0 for r in vat)
    assert all(r["video_frames"] in (4, 8) and r["prompt_tokens"] > 100 for r in vat)
    assert all(not r["classify"] and r["ttft"] is not None for r in vqa)
    tasks = record["summary"]["tasks"]
    assert tasks["vat"]["completed"] == len(vat) and tasks["vqa"]["completed"] == len(vqa)
    for row in tasks.values():
        assert row["request_throughput"] > 0 and row["p90_latency_ms"] >= row["p50_latency_ms"]
    assert record["args"]["task"] == "vat" and record["args"]["vat_share"] == 0.5


def test_vat_replay_on_the_in_process_engine(tmp_path):
    out = tmp_path / "vat.jsonl"
    run_exp.main(replay_args(out, "--debug", "--engine_args", ENGINE_ARGS))
    requests, record = read(out)
    assert len(requests) == 8  # --debug
    check_vat_run(requests, record)


def test_vat_replay_against_the_tiny_server(tmp_path):
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from server_fixture import running_server

    out = tmp_path / "vat_http.jsonl"
    server = ("--num-adapter", "4", "--dummy-task-classes", "5", "--lora-backend", "torch")
    with running_server(*server) as (url, engine, _):
        run_exp.main(replay_args(out, "--server", url))
        assert engine.snapshot().is_idle
    requests, record = read(out)
    check_vat_run(requests, record)
    # the server kept every frame (sampled at the clip's own fps; at its default 2 fps both
    # clips, 1 s and 2 s long, would give 4 frames and the same tokens)
    tokens = {r["video_frames"]: r["prompt_tokens"] for r in requests if r["task"] == "vat"}
    assert tokens[8] > 1.5 * tokens[4]


def test_bench_vat_smoke_writes_its_result_file(tmp_path):
    out = tmp_path / "bench_vat.json"
    argv = ["--model-setting", "tiny", "--device", "cpu", "--num-clips", "2", "--frames", "4"]
    argv += ["--size", "56x56", "--ks", "1", "2", "--latency-clips", "1", "--rates", "4"]
    argv += ["--duration", "0.5", "--out", str(out)]
    bench_vat.main(argv)
    record = json.loads(out.read_text())
    assert record["benchmark"] == "vat" and record["gpu"] == "cpu" and "command" in record
    assert record["versions"]["torch"] and record["clips"]["prompt_tokens_per_clip"]["min"] > 0
    modes = {r["mode"]: r for r in record["head_vs_generate"]}
    assert set(modes) == {"head", "generate_1", "generate_2"}
    assert all(r["batch"] == 2 and r["batch_total_s"] > 0 for r in modes.values())
    (rate,) = record["throughput"]
    assert rate["offered_rate"] == 4 and rate["requests"] >= 1
    assert rate["achieved_frames_s"] == pytest.approx(4 * rate["achieved_req_s"])
    assert rate["latency_ms"]["p90"] >= rate["latency_ms"]["p50"] > 0
