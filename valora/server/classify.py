"""``POST /classify`` and ``/v1/classify`` (vLLM's classification route) for adapters that carry a
vision task head: each input is one prefill-only request, batched with everything else, answered
by the head in one pass (no decode). ``model`` must name such an adapter (400 otherwise)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import Response

from valora.sampling_params import SamplingParams
from valora.server.lifecycle import adapter_for, last_output, until_done
from valora.server.prompts import chat_prompt
from valora.server.protocol import ClassificationRequest, RequestError
from valora.server.responses import classification_response, new_id


def add_classify_routes(app: FastAPI, engine, runner, config) -> None:
    async def classify(body: ClassificationRequest, request: Request):
        count = body.prompts_given()
        adapter = adapter_for(engine, config, body.model)
        if adapter is None or engine.task_labels(adapter) is None:
            raise RequestError(
                f"the model {body.model!r} has no task head: classification needs an adapter "
                "that carries one",
                "model",
            )
        prompts = await _prompts(body, count, engine, config)
        request_id = new_id("classify")
        params = SamplingParams(temperature=0.0, max_tokens=1)
        work = asyncio.gather(
            *(
                last_output(runner.generate(f"{request_id}-{i}", p, params, adapter, True))
                for i, p in enumerate(prompts)
            )
        )
        outs = await until_done(request, work)
        if outs is None:  # the client went away; nothing to answer
            return Response(status_code=499)
        return classification_response(outs, body.model, request_id)

    app.post("/classify")(classify)
    app.post("/v1/classify")(classify)


async def _prompts(body: ClassificationRequest, count: int, engine, config) -> list:
    if body.messages is not None:
        prompt = await chat_prompt(body.messages, engine, config.media, body.mm_processor_kwargs)
        return [prompt]
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    kwargs = body.mm_processor_kwargs
    return [{"prompt": t, "mm_processor_kwargs": kwargs} if kwargs else t for t in texts[:count]]
