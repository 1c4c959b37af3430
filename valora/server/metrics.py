"""Prometheus metrics of one server (their own registry, so several servers can share a process).

Gauges are read from the engine at scrape time (plain counters, read without locks: a scrape may
see a step half done, never a broken value); histograms and counters are fed by ``observe`` when
a request finishes (in the engine thread).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from valora.engine import LLMEngine
from valora.request import RequestOutput

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EngineCollector:
    def __init__(self, engine: LLMEngine, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.metrics = metrics

    def collect(self):
        snap, m = self.engine.snapshot(), self.metrics
        for name, doc, value in (
            ("valora_num_requests_waiting", "Requests waiting", snap.num_waiting),
            ("valora_num_requests_running", "Requests running", snap.num_running),
            (
                "valora_kv_cache_usage_perc",
                "Fraction of KV blocks in use (idle cached blocks count as free)",
                snap.kv_usage,
            ),
            (
                "valora_kv_blocks_in_use",
                "KV blocks held by unfinished requests",
                snap.kv_blocks_in_use,
            ),
            (
                "valora_lora_request_pins",
                "Adapter pool pins held by unfinished requests",
                snap.adapter_request_pins,
            ),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        hit = m.cached_tokens / m.prompt_tokens if m.prompt_tokens else 0.0
        doc = "Prompt tokens served from the prefix cache"
        yield GaugeMetricFamily("valora_prefix_cache_hit_rate", doc, value=hit)
        for name, doc, value in (
            ("valora_lora_loads", "Adapter loads into the GPU pool", snap.pool_loads),
            ("valora_lora_evictions", "Adapters evicted from the GPU pool", snap.pool_evictions),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield from _step_families(snap.steps)


def _step_families(stats: dict):
    """Steps, step seconds and step tokens per LoRA mode; switches and their seconds (one
    source, ``valora.engine.stats``, for the count and the seconds)."""
    for key, name, doc in (
        ("steps", "valora_steps", "Engine steps by LoRA mode"),
        ("step_seconds", "valora_step_seconds", "Seconds spent in engine steps by LoRA mode"),
        ("step_tokens", "valora_step_tokens", "Tokens computed in engine steps by LoRA mode"),
    ):
        family = CounterMetricFamily(name, doc, labels=["mode"])
        for mode, value in stats[key].items():
            family.add_metric([mode], value)
        yield family
    yield CounterMetricFamily(
        "valora_mode_switches", "Merged-adapter switches", value=stats["switches"]
    )
    yield CounterMetricFamily(
        "valora_switch_seconds",
        "Seconds spent switching the merged adapter",
        value=stats["switch_seconds"],
    )


class ServerMetrics:
    def __init__(self, engine: LLMEngine) -> None:
        self.registry = CollectorRegistry()
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.ttft = Histogram(
            "valora_time_to_first_token_seconds",
            "Time to first token",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tpot = Histogram(
            "valora_time_per_output_token_seconds",
            "Time per output token",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "valora_e2e_request_latency_seconds",
            "End-to-end request latency",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "valora_requests_finished",
            "Finished requests by reason",
            ["finish_reason"],
            registry=self.registry,
        )
        self.generation_tokens = Counter(
            "valora_generation_tokens", "Generated tokens", registry=self.registry
        )
        self.registry.register(EngineCollector(engine, self))

    def observe(self, out: RequestOutput) -> None:
        """A finished request (engine thread); streamed (DELTA) and final outputs count the
        same (``num_output_tokens`` is the request's total, not the last chunk's)."""
        completion = out.outputs[0]
        self.prompt_tokens += len(out.prompt_token_ids)
        self.cached_tokens += out.num_cached_tokens
        self.finished.labels(completion.finish_reason or "abort").inc()
        num_out = out.num_output_tokens  # the whole request's, whatever the output kind
        self.generation_tokens.inc(num_out)
        if out.first_token_time is None or out.finish_time is None:
            return
        self.ttft.observe(out.first_token_time - out.arrival_time)
        self.e2e.observe(out.finish_time - out.arrival_time)
        if num_out > 1:
            self.tpot.observe((out.finish_time - out.first_token_time) / (num_out - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
