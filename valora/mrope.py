"""M-RoPE position ids for Qwen2-VL prompts (the semantics of Qwen2-VL's ``get_rope_index``).

Text tokens get 1-D positions (all three rows equal) continuing from the previous maximum + 1.
An image or video of (t, h, w) patches becomes t * (h/m) * (w/m) tokens whose (temporal, height,
width) positions are their grid coordinates offset by the position where it starts (a video's
temporal index is its temporal patch group); the text after it resumes at that offset +
max(t, h/m, w/m), i.e. the largest position so far + 1, as the released Qwen2-VL code (and
transformers 4.x, vLLM) computes it. transformers 5 resumes at offset + max(h/m, w/m) instead,
which differs only for videos with more temporal groups than merged rows or columns.
``rope_delta`` = max position + 1 - prompt length (<= 0 with images): the token at index
i >= prompt length has position i + rope_delta on all rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mrope_positions(
    token_ids: Sequence[int],
    grids: Sequence[tuple[int, int, int]],
    pad_token_ids: int | Sequence[int],
    merge_size: int,
) -> tuple[np.ndarray, int]:
    """Expanded prompt -> (positions [3, len] int64, rope_delta).

    ``grids`` are the prompt's images and videos in prompt order; ``pad_token_ids`` is each
    one's pad token (``<|image_pad|>`` or ``<|video_pad|>``), or one id for all of them."""
    ids = np.asarray(token_ids, dtype=np.int64)
    pads = [pad_token_ids] * len(grids) if isinstance(pad_token_ids, int) else pad_token_ids
    pieces: list[np.ndarray] = []
    cursor = 0  # next token index to place
    next_pos = 0  # next free position value
    for (t, h, w), pad in zip(grids, pads, strict=True):
        gh, gw = h // merge_size, w // merge_size
        num_tokens = t * gh * gw
        start = _next_image_start(ids, cursor, num_tokens, pad)
        pieces.append(_text_positions(start - cursor, next_pos))
        next_pos += start - cursor
        grid = np.stack(np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij"))
        pieces.append(grid.reshape(3, -1) + next_pos)
        next_pos += max(t, gh, gw)
        cursor = start + num_tokens
    if np.any(np.isin(ids[cursor:], list(set(pads)))):
        raise ValueError("the prompt has more image/video pad tokens than its inputs need")
    pieces.append(_text_positions(len(ids) - cursor, next_pos))
    positions = np.concatenate(pieces, axis=1)
    rope_delta = int(positions.max()) + 1 - len(ids) if len(ids) else 0
    return positions, rope_delta


def _text_positions(length: int, start: int) -> np.ndarray:
    return np.broadcast_to(np.arange(start, start + length, dtype=np.int64), (3, length))


def _next_image_start(ids: np.ndarray, cursor: int, num_tokens: int, pad: int) -> int:
    found = np.flatnonzero(ids[cursor:] == pad)
    if not len(found):
        raise ValueError("the prompt has fewer image/video pad runs than images and videos")
    start = cursor + int(found[0])
    run = ids[start : start + num_tokens]
    if len(run) != num_tokens or np.any(run != pad):
        raise ValueError(f"an image or video needs {num_tokens} consecutive pad tokens")
    return start


def decode_positions(first_index: int, num_tokens: int, rope_delta: int) -> np.ndarray:
    """Positions [3, num_tokens] of tokens at indices first_index.. past the prompt."""
    return _text_positions(num_tokens, first_index + rope_delta)
