"""The default demo: the tiny Qwen2-VL on CPU (dummy weights) with two LoRA adapters, answering
text and image chats on the base model and on each adapter, all in the same batches through the
engine (paged KV cache, prefix cache, continuous batching, per-request adapters).

Run ``valora-demo`` (or ``python -m valora.demo``). The weights are random, so the words are
random too, but every token is computed by the real pipeline: Qwen2 tokenizer and chat template,
image processor, vision tower, M-RoPE, paged attention, sampler.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from valora.llm import LLM
from valora.sampling_params import SamplingParams


def demo_image(width: int = 224, height: int = 168) -> Image.Image:
    """A colour gradient with a dark square: a deterministic picture that needs no file."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], axis=-1).astype(np.uint8)
    rgb[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 30
    return Image.fromarray(rgb)


def demo_chats() -> list[tuple[str, list[dict], list[Image.Image]]]:
    image_question = [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]
    haiku = "Write a haiku about serving many adapters."
    return [
        (haiku, [{"role": "user", "content": haiku}], []),
        (
            "What is in this picture? [+ a 224x168 image]",
            [{"role": "user", "content": image_question}],
            [demo_image()],
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model setting or checkpoint directory")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=3, help="dummy-weight seed")
    args = parser.parse_args(argv)

    llm = LLM(
        args.model,
        device="cpu",
        dtype="float32",
        seed=args.seed,
        num_dummy_adapters=2,
        dummy_ranks=(8, 16),
    )
    num_params = sum(p.numel() for p in llm.engine.model.parameters()) / 1e6
    adapters = list(llm.engine.adapters())
    print(
        f"model: {args.model} ({num_params:.1f}M parameters, CPU, fp32); "
        f"adapters: {', '.join(adapters)} (dummy, ranks 8 and 16)"
    )
    chats = [chat for chat in demo_chats() for _ in (None, *adapters)]
    loras = [lora for _ in demo_chats() for lora in (None, *adapters)]
    params = SamplingParams(temperature=0, max_tokens=args.max_new_tokens)
    start = time.perf_counter()
    outputs = llm.chat([c for _, c, _ in chats], params, [im for _, _, im in chats], False, loras)
    elapsed = time.perf_counter() - start
    for (question, _, _), lora, out in zip(chats, loras, outputs):
        completion = out.outputs[0]
        print(f"\nuser ({lora or 'base model'}): {question}\nassistant: {completion.text}")
        print(f"({len(completion.token_ids)} tokens, finish: {completion.finish_reason})")
    total = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"\n{total} tokens for {len(outputs)} batched requests in {elapsed:.2f}s")


if __name__ == "__main__":
    main()
