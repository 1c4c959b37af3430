"""M-RoPE position ids for Qwen2-VL prompts (the semantics of transformers' ``get_rope_index``).

Text tokens get 1-D positions (all three rows equal) continuing from the previous maximum + 1.
An image of (t, h, w) patches becomes t * (h/m) * (w/m) tokens whose (temporal, height, width)
positions are their grid coordinates offset by the position where the image starts; the text after
it resumes at that offset + max(t, h/m, w/m). ``rope_delta`` = max position + 1 - prompt length
(<= 0 with images): the token at index i >= prompt length has position i + rope_delta on all rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mrope_positions(
    token_ids: Sequence[int],
    image_grids: Sequence[tuple[int, int, int]],
    image_token_id: int,
    merge_size: int,
) -> tuple[np.ndarray, int]:
    """Expanded prompt -> (positions [3, len] int64, rope_delta)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    pieces: list[np.ndarray] = []
    cursor = 0  # next token index to place
    next_pos = 0  # next free position value
    for t, h, w in image_grids:
        gh, gw = h // merge_size, w // merge_size
        num_tokens = t * gh * gw
        start = _next_image_start(ids, cursor, num_tokens, image_token_id)
        pieces.append(_text_positions(start - cursor, next_pos))
        next_pos += start - cursor
        grid = np.stack(np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij"))
        pieces.append(grid.reshape(3, -1) + next_pos)
        next_pos += max(t, gh, gw)
        cursor = start + num_tokens
    if np.any(ids[cursor:] == image_token_id):
        raise ValueError("the prompt has more <|image_pad|> tokens than its images need")
    pieces.append(_text_positions(len(ids) - cursor, next_pos))
    positions = np.concatenate(pieces, axis=1)
    rope_delta = int(positions.max()) + 1 - len(ids) if len(ids) else 0
    return positions, rope_delta


def _text_positions(length: int, start: int) -> np.ndarray:
    return np.broadcast_to(np.arange(start, start + length, dtype=np.int64), (3, length))


def _next_image_start(ids: np.ndarray, cursor: int, num_tokens: int, image_token_id: int) -> int:
    found = np.flatnonzero(ids[cursor:] == image_token_id)
    if not len(found):
        raise ValueError("the prompt has fewer <|image_pad|> runs than images")
    start = cursor + int(found[0])
    run = ids[start : start + num_tokens]
    if len(run) != num_tokens or np.any(run != image_token_id):
        raise ValueError(f"an image needs {num_tokens} consecutive <|image_pad|> tokens")
    return start


def decode_positions(first_index: int, num_tokens: int, rope_delta: int) -> np.ndarray:
    """Positions [3, num_tokens] of tokens at indices first_index.. past the prompt."""
    return _text_positions(num_tokens, first_index + rope_delta)
