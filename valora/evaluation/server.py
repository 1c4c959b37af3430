"""Predictions from a running VaLoRA (or any OpenAI-compatible) server: chat completions through
the official ``openai`` client, task heads through ``POST /v1/classify``; ``concurrency``
requests in flight, media inlined as base64 data URLs."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import httpx
import openai
from tqdm import tqdm

from valora.evaluation.evaluate import BASE
from valora.evaluation.messages import file_data_url, openai_messages


def api_root(url: str) -> str:
    """``http://host:port``, ``.../`` or ``.../v1`` -> ``http://host:port``."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class ServerRunner:
    """A predictor (``valora.evaluation.evaluate``) over a server at ``url``. ``"base"`` is the
    served base model (``base_model``, default: the card without a parent in ``/v1/models``).
    Requests are greedy (``temperature=0``) with ``max_tokens``; a failed request raises."""

    def __init__(
        self,
        url: str,
        max_tokens: int = 32,
        concurrency: int = 8,
        api_key: str = "EMPTY",
        base_model: str | None = None,
        timeout: float = 600.0,
        use_tqdm: bool = True,
    ) -> None:
        self.root = api_root(url)
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.use_tqdm = use_tqdm
        self.client = openai.OpenAI(base_url=self.root + "/v1", api_key=api_key, timeout=timeout)
        headers = {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.Client(base_url=self.root, headers=headers, timeout=timeout)
        self._base = base_model
        self._urls: dict[str, str] = {}

    def close(self) -> None:
        self.client.close()
        self.http.close()

    def __enter__(self) -> ServerRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def base_model(self) -> str:
        if self._base is None:
            cards = self.http.get("/v1/models").raise_for_status().json()["data"]
            self._base = next(c["id"] for c in cards if not c.get("parent"))
        return self._base

    def __call__(
        self, examples: Sequence[dict], adapters: Sequence[str], classify: bool = False
    ) -> list[str]:
        one = self.classify_one if classify else self.generate_one
        models = [self.base_model if a == BASE else a for a in adapters]
        messages = [openai_messages(e["messages"], self._data_url) for e in examples]
        results: list[str | None] = [None] * len(examples)
        desc = "classifying" if classify else "generating"
        with ThreadPoolExecutor(self.concurrency) as pool:
            jobs = zip(messages, models)
            futures = {pool.submit(one, m, model): i for i, (m, model) in enumerate(jobs)}
            with tqdm(total=len(futures), desc=desc, disable=not self.use_tqdm) as bar:
                try:
                    for future in as_completed(futures):
                        results[futures[future]] = future.result()
                        bar.update(1)
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # fail fast: drop what has not started
                    raise
        return results

    def generate_one(self, messages: list[dict], model: str) -> str:
        reply = self.client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=self.max_tokens
        )
        return reply.choices[0].message.content or ""

    def classify_one(self, messages: list[dict], model: str) -> str:
        reply = self.http.post("/v1/classify", json={"model": model, "messages": messages})
        if reply.status_code != 200:
            raise RuntimeError(f"/v1/classify for {model!r}: {reply.status_code} {reply.text}")
        return reply.json()["data"][0]["label"]

    def _data_url(self, kind: str, path: str) -> str:
        if path not in self._urls:
            self._urls[path] = file_data_url(kind, path)
        return self._urls[path]
