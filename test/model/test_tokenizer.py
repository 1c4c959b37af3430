"""Tokenizer: agreement with transformers' Qwen2 tokenizer on the same vocabulary, round trips,
special-token ids, incremental detokenization, chat template, checkpoint files precedence."""

from __future__ import annotations

import json
import random
import unicodedata

import pytest
from bpe_merges import vocab_and_merges
from transformers import AddedToken
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

from valora.tokenizer import (
    QWEN2_VL_SPECIAL_TOKENS,
    IncrementalDetokenizer,
    Tokenizer,
)

TEXTS = [
    "Hello, world! It's a test: we'll see 12345 numbers.",
    "人工智能正在改变世界，视觉语言模型可以理解图片。",
    "日本語のテキストとカタカナ、ひらがな。",
    "Привет, как дела? Ünïcödé façade naïve café",
    "مرحبا بالعالم — שלום עולם — नमस्ते दुनिया",
    "Emoji: 🤖🎉👩‍👩‍👧‍👦 🇫🇷 ✨ and ZWJ sequences",
    "code:\n\tdef f(x):\n        return x ** 2  # comment\r\n\n\n  trailing   ",
    "e\u0301 (decomposed e-acute) and Å vs \u212b",
]
EXPECTED_SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.builtin()


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer: Tokenizer) -> Qwen2Tokenizer:
    """transformers' Qwen2 tokenizer built from the same BPE ranks."""
    vocab, merges = vocab_and_merges(tokenizer.mergeable_ranks)
    hf = Qwen2Tokenizer(vocab=vocab, merges=merges)
    hf.add_tokens([AddedToken(t, special=True) for t in QWEN2_VL_SPECIAL_TOKENS])
    return hf


def test_special_token_ids(tokenizer):
    for token, token_id in EXPECTED_SPECIAL_IDS.items():
        assert tokenizer.token_id(token) == token_id
        assert tokenizer.encode(token) == [token_id]
    assert tokenizer.vocab_size == 151657
    assert tokenizer.eos_token_ids == (151645, 151643)


def test_special_tokens_as_plain_text_when_not_allowed(tokenizer):
    ids = tokenizer.encode("<|im_start|>", allow_special=False)
    assert len(ids) > 1 and 151644 not in ids
    assert tokenizer.decode(ids) == "<|im_start|>"


def test_matches_transformers_qwen2_tokenizer(tokenizer, hf_tokenizer):
    for text in TEXTS + ["<|im_start|>user\nHi<|im_end|>\n<|vision_start|><|image_pad|>"]:
        assert tokenizer.encode(text) == hf_tokenizer.encode(text), text


def test_round_trip_is_nfc(tokenizer):
    for text in TEXTS:
        assert tokenizer.decode(tokenizer.encode(text)) == unicodedata.normalize("NFC", text)


def test_decode_skips_special_tokens(tokenizer):
    ids = tokenizer.encode("<|im_start|>assistant\nok<|im_end|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "assistant\nok"


def test_incremental_detokenizer_never_splits_characters(tokenizer):
    rng = random.Random(0)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
        pieces = [detok.step(t) for t in ids] + [detok.finish()]
        assert "".join(pieces) == tokenizer.decode(ids)
        assert all("\ufffd" not in p for p in pieces)
    # random byte-level tokens (including broken UTF-8) still concatenate to decode()
    ids = [rng.randrange(151643) for _ in range(300)]
    detok = IncrementalDetokenizer(tokenizer)
    streamed = "".join(detok.step(t) for t in ids) + detok.finish()
    assert streamed == tokenizer.decode(ids)


def test_emoji_split_across_tokens_is_emitted_whole(tokenizer):
    ids = tokenizer.encode("🫠")
    assert len(ids) > 1  # the character spans several byte-level tokens
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.step(t) for t in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "🫠"


def test_chat_template_text_conversation(tokenizer):
    messages = [{"role": "user", "content": "Hi there"}]
    assert tokenizer.apply_chat_template(messages) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_template_multi_turn_with_system_and_images(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "What is this?"},
            ],
        },
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"}]},
    ]
    assert tokenizer.apply_chat_template(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>And this?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_template_vision_ids_and_no_generation_prompt(tokenizer):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False, add_vision_id=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
        "Picture 2: <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
    )


def test_empty_conversation_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        tokenizer.apply_chat_template([])


def test_checkpoint_tokenizer_files_take_precedence(tmp_path, hf_tokenizer, tokenizer):
    template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    hf_tokenizer.chat_template = template
    hf_tokenizer.save_pretrained(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.apply_chat_template([{"role": "user", "content": "x"}]) == "[user]x"
    for text in TEXTS:
        assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.special_tokens == tokenizer.special_tokens


def test_vocab_json_with_separate_template_file(tmp_path, tokenizer):
    vocab, _ = vocab_and_merges(tokenizer.mergeable_ranks)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    added = {str(i): {"content": t, "special": True} for t, i in tokenizer.special_tokens.items()}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")
    loaded = Tokenizer.load(tmp_path)
    assert loaded.apply_chat_template([{"role": "user", "content": "hey"}]) == "hey!"
    assert loaded.encode(TEXTS[1]) == tokenizer.encode(TEXTS[1])


def test_template_only_in_tokenizer_config_is_used(tmp_path, tokenizer):
    config = {"chat_template": "{{ messages[-1]['content'] }}?"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = Tokenizer.load(tmp_path)
    assert loaded.apply_chat_template([{"role": "user", "content": "why"}]) == "why?"
    assert loaded.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])


def test_directory_without_tokenizer_files_uses_builtin(tmp_path, tokenizer):
    loaded = Tokenizer.load(tmp_path)
    assert loaded.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])
    assert loaded.chat_template == tokenizer.chat_template


def test_ids_past_the_vocabulary_decode_to_nothing(tokenizer):
    ids = tokenizer.encode("ok") + [151_700, 152_063]
    assert tokenizer.decode(ids) == "ok"
    detok = IncrementalDetokenizer(tokenizer)
    assert "".join(detok.step(t) for t in ids) + detok.finish() == "ok"
