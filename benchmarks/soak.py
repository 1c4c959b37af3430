"""Soak: mixed traffic against one server for several minutes, then a leak check.

Traffic (``--concurrency`` workers, each picking at random): greedy requests on the base and on
adapters, streamed and not, whose text must equal the same request answered alone before the
soak; streams dropped at a random chunk; requests whose client gives up while they wait; bad
requests (2**64 seeds, unknown models, malformed JSON, undecodable images, unsupported fields,
context overflows) that must get an OpenAI-shaped 4xx; requests without ``max_tokens``; PEFT
adapters loaded, used and unloaded at run time. Any 5xx, wrong text or missing error body is a
failure. Afterwards the server must be healthy with 0 requests, 0 KV blocks in use and 0 adapter
pins left (its /metrics), and still answer exactly.

    python benchmarks/soak.py --duration 300 --out benchmarks/results/soak.json

Without ``--server`` it starts ``valora-serve`` on the tiny model (CPU) with 4 dummy adapters and
a fresh ``--lora-root`` holding two PEFT adapters made with transformers + PEFT.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.soak_setup import (  # noqa: E402
    make_peft_adapters,
    provenance,
    start_server,
    wait_healthy,
)

PROMPTS = ["Tell me a story.", "What is LoRA?", "Count to five.", "Describe the sky."]
MODELS = ["tiny", "lora0", "lora1", "lora2", "lora3"]
DYNAMIC = ["dyn0", "dyn1"]
BAD_IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
BAD = [
    ({"seed": 2**64}, 400),
    ({"model": "no-such-adapter"}, 404),
    ({"max_tokens": 100000}, 400),
    ({"logit_bias": {"1": 2}}, 400),
    ({"response_format": {"type": "json_object"}}, 400),
    ({"temperature": -1}, 400),
    ({"messages": [{"role": "user", "content": [BAD_IMAGE]}]}, 400),
]


class Soak:
    def __init__(self, url: str, lora_root: Path, rng: random.Random) -> None:
        self.url, self.root, self.rng = url, lora_root, rng
        self.counts: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self.expected: dict[tuple[str, str], str] = {}
        self.loaded: set[str] = set()

    # ---- helpers --------------------------------------------------------------------------
    def body(self, model: str, prompt: str, **extra) -> dict:
        return {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": 8,
            "ignore_eos": True,
            **extra,
        }

    def fail(self, what: str) -> None:
        self.counts["failures"] += 1
        if len(self.failures) < 50:
            self.failures.append(what)

    def check_error(self, r: httpx.Response, status: int | None, what: str) -> None:
        if r.status_code >= 500 or (status is not None and r.status_code != status):
            return self.fail(f"{what}: {r.status_code} {r.text[:200]}")
        error = r.json().get("error", {})
        if set(error) != {"message", "type", "param", "code"}:
            self.fail(f"{what}: not an OpenAI error body: {r.text[:200]}")

    async def reference(self, http: httpx.AsyncClient, models: list[str]) -> None:
        for model in models:
            for prompt in PROMPTS:
                r = await http.post(
                    self.url + "/v1/chat/completions", json=self.body(model, prompt)
                )
                r.raise_for_status()
                self.expected[(model, prompt)] = r.json()["choices"][0]["message"]["content"]

    # ---- traffic --------------------------------------------------------------------------
    async def good(self, http: httpx.AsyncClient) -> None:
        model, prompt = self.rng.choice(MODELS), self.rng.choice(PROMPTS)
        r = await http.post(self.url + "/v1/chat/completions", json=self.body(model, prompt))
        if r.status_code != 200:
            return self.fail(f"good {model}: {r.status_code} {r.text[:200]}")
        if r.json()["choices"][0]["message"]["content"] != self.expected[(model, prompt)]:
            self.fail(f"good {model} {prompt!r}: wrong text")
        self.counts["good"] += 1

    async def stream(self, http: httpx.AsyncClient, drop_after: int | None = None) -> None:
        model, prompt = self.rng.choice(MODELS), self.rng.choice(PROMPTS)
        text, chunks = "", 0
        body = self.body(model, prompt, stream=True)
        async with http.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return self.fail(f"stream {model}: {r.status_code}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return self.fail(f"stream {model}: {chunk['error']}")
                text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
                chunks += 1
                if drop_after is not None and chunks >= drop_after:
                    self.counts["dropped_streams"] += 1
                    return  # leaving the block closes the connection mid-stream
        if text != self.expected[(model, prompt)]:
            self.fail(f"stream {model} {prompt!r}: wrong text")
        self.counts["streams"] += 1

    async def impatient(self, http: httpx.AsyncClient) -> None:
        body = self.body(self.rng.choice(MODELS), self.rng.choice(PROMPTS), max_tokens=64)
        try:
            await http.post(
                self.url + "/v1/chat/completions", json=body, timeout=self.rng.uniform(0.01, 0.3)
            )
        except httpx.TimeoutException:
            pass
        self.counts["impatient"] += 1

    async def bad(self, http: httpx.AsyncClient) -> None:
        if self.rng.random() < 0.15:
            r = await http.post(
                self.url + "/v1/chat/completions",
                content=b"{broken",
                headers={"content-type": "application/json"},
            )
            self.check_error(r, 400, "malformed json")
        else:
            extra, status = self.rng.choice(BAD)
            body = {**self.body(self.rng.choice(MODELS), self.rng.choice(PROMPTS)), **extra}
            r = await http.post(self.url + "/v1/chat/completions", json=body)
            self.check_error(r, status, f"bad {sorted(extra)}")
        self.counts["bad"] += 1

    async def no_max_tokens(self, http: httpx.AsyncClient) -> None:
        body = self.body(self.rng.choice(MODELS[1:]), "Hi")
        del body["max_tokens"]
        r = await http.post(self.url + "/v1/chat/completions", json=body)
        if r.status_code != 200 or r.json()["choices"][0]["finish_reason"] != "length":
            return self.fail(f"no max_tokens: {r.status_code} {r.text[:200]}")
        self.counts["no_max_tokens"] += 1

    async def adapter_churn(self, http: httpx.AsyncClient) -> None:
        """Load a PEFT adapter, use it (its text must match the reference), unload it."""
        name = self.rng.choice(DYNAMIC)
        if name in self.loaded:
            return
        self.loaded.add(name)
        try:
            r = await http.post(
                self.url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": name}
            )
            if r.status_code != 200:
                return self.fail(f"load {name}: {r.status_code} {r.text[:200]}")
            prompt = self.rng.choice(PROMPTS)
            r = await http.post(self.url + "/v1/chat/completions", json=self.body(name, prompt))
            if r.status_code != 200:
                return self.fail(f"use {name}: {r.status_code} {r.text[:200]}")
            if r.json()["choices"][0]["message"]["content"] != self.expected[(name, prompt)]:
                self.fail(f"use {name}: wrong text")
            r = await http.post(self.url + "/v1/unload_lora_adapter", json={"lora_name": name})
            if r.status_code != 200:
                self.fail(f"unload {name}: {r.status_code}")
            self.counts["adapter_churn"] += 1
        finally:
            self.loaded.discard(name)

    async def worker(self, deadline: float) -> None:
        actions = [
            (self.good, 30),
            (self.stream, 20),
            (self.drop, 10),
            (self.impatient, 10),
            (self.bad, 20),
            (self.no_max_tokens, 3),
            (self.adapter_churn, 3),
        ]
        funcs, weights = zip(*actions)
        async with httpx.AsyncClient(timeout=120) as http:
            while time.monotonic() < deadline:
                action = self.rng.choices(funcs, weights)[0]
                try:
                    await action(http)
                except httpx.HTTPError as exc:
                    self.fail(f"{action.__name__}: {type(exc).__name__} {exc}")

    async def drop(self, http: httpx.AsyncClient) -> None:
        await self.stream(http, drop_after=self.rng.randint(1, 6))


async def soak(args, url: str, root: Path) -> dict:
    runner = Soak(url, root, random.Random(args.seed))
    async with httpx.AsyncClient(timeout=120) as http:
        for name in DYNAMIC:  # references of the PEFT adapters, then unloaded again
            body = {"lora_name": name, "lora_path": name}
            r = await http.post(url + "/v1/load_lora_adapter", json=body)
            r.raise_for_status()
        await runner.reference(http, MODELS + DYNAMIC)
        for name in DYNAMIC:
            (
                await http.post(url + "/v1/unload_lora_adapter", json={"lora_name": name})
            ).raise_for_status()
    start = time.monotonic()
    deadline = start + args.duration
    await asyncio.gather(*(runner.worker(deadline) for _ in range(args.concurrency)))
    elapsed = time.monotonic() - start
    leftovers = await wait_quiet(url)
    async with httpx.AsyncClient(timeout=60) as http:
        await runner.good(http)  # still exact afterwards
        health = (await http.get(url + "/health")).status_code
    return {
        "seconds": round(elapsed, 1),
        "counts": dict(runner.counts),
        "health": health,
        "after": leftovers,
        "failures": runner.failures,
    }


async def wait_quiet(url: str, timeout: float = 60) -> dict:
    names = (
        "valora_num_requests_running",
        "valora_num_requests_waiting",
        "valora_kv_blocks_in_use",
        "valora_lora_request_pins",
    )
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=30) as http:
        while True:
            text = (await http.get(url + "/metrics")).text
            values = {
                n: float(line.split()[1])
                for line in text.splitlines()
                for n in names
                if line.startswith(n + " ")
            }
            if not any(values.values()) or time.monotonic() > deadline:
                return values
            await asyncio.sleep(0.2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--server",
        help="URL of a running server (its --lora-root must hold "
        "dyn0 and dyn1); default: start one",
    )
    p.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    p.add_argument("--concurrency", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/soak.json")
    args = p.parse_args()
    server: subprocess.Popen | None = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = args.server
        if url is None:
            make_peft_adapters(root, DYNAMIC)
            server, url = start_server(root)
        try:
            wait_healthy(url, server)
            summary = asyncio.run(soak(args, url, root))
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
    ok = (
        summary["health"] == 200
        and not summary["counts"].get("failures")
        and not any(summary["after"].values())
    )
    result = {"passed": ok, **summary, **provenance(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("passed", "seconds", "counts", "health", "after")}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
