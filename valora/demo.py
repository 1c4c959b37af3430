"""The default demo: the tiny Qwen2-VL on CPU (dummy weights) answering a text and an image chat.

Run ``valora-demo`` (or ``python -m valora.demo``). The weights are random, so the words are
random too, but every token is really computed by the model: the image goes through the vision
tower, positions through M-RoPE, text through the real Qwen2 tokenizer and chat template.
Until the paged engine lands, generation here recomputes the whole sequence each step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from valora.config import is_model_setting
from valora.layers.attention import AttentionMetadata
from valora.models.qwen2_vl import Qwen2VLForConditionalGeneration
from valora.mrope import decode_positions, mrope_positions
from valora.multimodal import ProcessedImage, expand_image_placeholders, process_image
from valora.tokenizer import IncrementalDetokenizer, Tokenizer
from valora.weights import load_model


def demo_image(width: int = 224, height: int = 168) -> Image.Image:
    """A colour gradient with a dark square: a deterministic picture that needs no file."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], axis=-1).astype(np.uint8)
    rgb[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 30
    return Image.fromarray(rgb)


@torch.no_grad()
def greedy_generate(
    model: Qwen2VLForConditionalGeneration,
    tokenizer: Tokenizer,
    messages: list[dict],
    images: list[ProcessedImage],
    max_new_tokens: int,
):
    """Yield text pieces of a greedy continuation of the chat (recomputing every step)."""
    cfg = model.cfg
    prompt = tokenizer.encode(tokenizer.apply_chat_template(messages))
    prompt = expand_image_placeholders(prompt, images, cfg.image_token_id)
    grids = [im.grid_thw for im in images]
    positions, rope_delta = mrope_positions(
        prompt, grids, cfg.image_token_id, cfg.vision.spatial_merge_size
    )
    image_embeds = None
    if images:
        image_embeds = model.encode_images(torch.cat([im.pixel_values for im in images]), grids)
    ids, detok = list(prompt), IncrementalDetokenizer(tokenizer)
    for _ in range(max_new_tokens):
        generated = decode_positions(len(prompt), len(ids) - len(prompt), rope_delta)
        all_positions = torch.from_numpy(np.concatenate([positions, generated], axis=1))
        metadata = AttentionMetadata.for_lengths([len(ids)])
        hidden = model(torch.tensor(ids), all_positions, metadata, image_embeds)
        token = int(model.compute_logits(hidden[-1:]).argmax(-1))
        if token in cfg.eos_token_ids:
            break
        ids.append(token)
        yield detok.step(token)
    yield detok.finish()


def demo_chats() -> list[tuple[list[dict], list[ProcessedImage]]]:
    image_question = [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]
    return [
        ([{"role": "user", "content": "Write a haiku about serving many adapters."}], []),
        ([{"role": "user", "content": image_question}], [process_image(demo_image())]),
    ]


def describe(messages: list[dict], images: list[ProcessedImage]) -> str:
    content = messages[-1]["content"]
    text = content if isinstance(content, str) else content[-1]["text"]
    for im in images:
        _, h, w = im.grid_thw
        text += f" [+ image resized to {w * 14}x{h * 14}px, {im.num_tokens} tokens]"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="model setting or checkpoint directory")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=3, help="dummy-weight seed")
    args = parser.parse_args(argv)

    model = load_model(args.model, dtype=torch.float32, device="cpu", seed=args.seed)
    tokenizer = Tokenizer.load(None if is_model_setting(args.model) else args.model)
    num_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {args.model} ({num_params:.1f}M parameters, CPU, fp32)")
    for messages, images in demo_chats():
        print(f"\nuser: {describe(messages, images)}\nassistant: ", end="", flush=True)
        start, num_tokens = time.perf_counter(), 0
        for piece in greedy_generate(model, tokenizer, messages, images, args.max_new_tokens):
            print(piece, end="", flush=True)
            num_tokens += 1
        print(f"\n({num_tokens - 1} tokens in {time.perf_counter() - start:.2f}s)")


if __name__ == "__main__":
    main()
