"""Reading a checkpoint's own Qwen2 tokenizer files into BPE ranks.

Qwen2's byte-level BPE numbers its tokens in merge order, so a token's id is its BPE rank: the
vocabulary alone (``tokenizer.json``'s ``model.vocab`` or ``vocab.json``) defines the ranks.
Token strings use GPT-2's printable byte alphabet and are mapped back to raw bytes here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CheckpointTokenizerFiles:
    """What a checkpoint directory says about its tokenizer; every field may be absent."""

    mergeable_ranks: dict[bytes, int] | None = None  # None: no vocabulary files
    special_tokens: dict[str, int] = field(default_factory=dict)
    pattern: str | None = None  # pre-tokenizer split regex
    chat_template: str | None = None


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


def read_checkpoint_tokenizer(model_dir: Path) -> CheckpointTokenizerFiles:
    """Vocabulary, special tokens, split pattern and chat template found in ``model_dir``."""
    config = _read_json(model_dir / "tokenizer_config.json") or {}
    specials = {
        entry["content"]: int(token_id)
        for token_id, entry in (config.get("added_tokens_decoder") or {}).items()
    }
    pattern = None
    tokenizer_json = _read_json(model_dir / "tokenizer.json")
    if tokenizer_json is not None:
        model = tokenizer_json.get("model") or {}
        if model.get("type") != "BPE":
            raise ValueError(f"{model_dir}/tokenizer.json is not a BPE tokenizer")
        vocab = model["vocab"]
        added = tokenizer_json.get("added_tokens", [])
        specials.update({t["content"]: int(t["id"]) for t in added})
        pattern = _split_pattern(tokenizer_json.get("pre_tokenizer"))
    else:
        vocab = _read_json(model_dir / "vocab.json")
    return CheckpointTokenizerFiles(
        mergeable_ranks=None if vocab is None else _ranks(vocab, specials),
        special_tokens=specials,
        pattern=pattern,
        chat_template=_template_file(model_dir) or _template_from_config(config),
    )


def _template_file(model_dir: Path) -> str | None:
    """A template shipped beside the checkpoint (``chat_template.jinja`` / ``.json``); it wins
    over the one in ``tokenizer_config.json``, as in transformers."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = _read_json(model_dir / "chat_template.json")
    return None if as_json is None else as_json.get("chat_template")


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
