"""Reading a checkpoint's own Qwen2 tokenizer files into BPE ranks.

Qwen2's byte-level BPE numbers its tokens in merge order, so a token's id is its BPE rank: the
vocabulary alone (``tokenizer.json``'s ``model.vocab`` or ``vocab.json``) defines the ranks.
Token strings use GPT-2's printable byte alphabet and are mapped back to raw bytes here.
"""

from __future__ import annotations

import json
from pathlib import Path

Found = tuple[dict[bytes, int], dict[str, int], "str | None", "str | None"]


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character -> the byte it stands for."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def read_checkpoint_tokenizer(model_dir: Path) -> Found | None:
    """(ranks, special tokens, split pattern, chat template) from ``model_dir``, or None."""
    config = _read_json(model_dir / "tokenizer_config.json") or {}
    template = _template_from_config(config)
    specials = {
        entry["content"]: int(token_id)
        for token_id, entry in (config.get("added_tokens_decoder") or {}).items()
    }
    tokenizer_json = _read_json(model_dir / "tokenizer.json")
    if tokenizer_json is not None:
        model = tokenizer_json.get("model") or {}
        if model.get("type") != "BPE":
            raise ValueError(f"{model_dir}/tokenizer.json is not a BPE tokenizer")
        vocab = model["vocab"]
        specials.update(
            {t["content"]: int(t["id"]) for t in tokenizer_json.get("added_tokens", [])}
        )
        pattern = _split_pattern(tokenizer_json.get("pre_tokenizer"))
    else:
        vocab = _read_json(model_dir / "vocab.json")
        if vocab is None:
            return None
        pattern = None
    return _ranks(vocab, specials), specials, pattern, template


def _ranks(vocab: dict[str, int], specials: dict[str, int]) -> dict[bytes, int]:
    decoder = gpt2_byte_decoder()
    special_ids = set(specials.values())
    ranks = {}
    for token, token_id in vocab.items():
        if token_id in special_ids:
            continue
        try:
            ranks[bytes(decoder[ch] for ch in token)] = int(token_id)
        except KeyError as exc:
            raise ValueError(f"vocabulary token {token!r} is not byte-level BPE") from exc
    return ranks


def _split_pattern(pre_tokenizer: dict | None) -> str | None:
    """The regex of the first ``Split`` pre-tokenizer, if any."""
    if not pre_tokenizer:
        return None
    steps = pre_tokenizer.get("pretokenizers") or [pre_tokenizer]
    for step in steps:
        if step.get("type") == "Split" and "Regex" in (step.get("pattern") or {}):
            return step["pattern"]["Regex"]
    return None


def _template_from_config(config: dict) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        return named.get("default")
    return template


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
