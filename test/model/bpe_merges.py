"""Recover a BPE merge list from ranks, to build Hugging Face's Qwen2 tokenizer from the same
vocabulary our tokenizer uses (test reference only)."""

from __future__ import annotations

from valora.tokenizer_files import gpt2_byte_decoder


def _split_at_rank(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run BPE on ``token`` using only merges ranked below ``max_rank``."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best_i, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_i, best_rank = i, rank
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    encoder = {b: ch for ch, b in gpt2_byte_decoder().items()}

    def to_str(token: bytes) -> str:
        return "".join(encoder[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        left, right = _split_at_rank(ranks, token, rank)
        merges.append((to_str(left), to_str(right)))
    return vocab, merges
