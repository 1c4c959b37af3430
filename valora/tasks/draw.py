"""Shape masks on a pixel grid and the colour palette used by the shape tasks.

A shape is centred at (cx, cy) with "radius" r (half its width and height), in pixel units where
pixel (row, col) covers [col, col + 1) x [row, row + 1); a pixel belongs to the shape when its
centre does. The triangle points up: apex at the top centre, base along the bottom edge.
"""

from __future__ import annotations

import numpy as np

PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
}
SHAPES = ("circle", "square", "triangle")


def shape_mask(shape: str, height: int, width: int, cx: float, cy: float, r: float) -> np.ndarray:
    """bool [height, width]: the pixels whose centres fall inside the shape."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":
        depth = dy + r  # 0 at the apex, 2r at the base
        return (depth >= 0) & (depth <= 2 * r) & (np.abs(dx) <= depth / 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) pixel-edge bounding box of a non-empty mask; x2, y2 exclusive."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("empty mask has no bounding box")
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def place_apart(
    rng: np.random.Generator,
    radii: list[float],
    height: int,
    width: int,
    gap: float,
    tries: int = 200,
) -> list[tuple[float, float]]:
    """Centres for squares of half-size ``radii`` inside the image, their boxes at least ``gap``
    apart (Chebyshev distance); raises ``RuntimeError`` when random placement keeps failing."""
    for _ in range(tries):
        centres: list[tuple[float, float]] = []
        for r in radii:
            cx = rng.uniform(r + 1, width - r - 1)
            cy = rng.uniform(r + 1, height - r - 1)
            if all(
                max(abs(cx - ox), abs(cy - oy)) >= r + orad + gap
                for (ox, oy), orad in zip(centres, radii)
            ):
                centres.append((cx, cy))
            else:
                break
        if len(centres) == len(radii):
            return centres
    raise RuntimeError(f"could not place {len(radii)} shapes apart in {height}x{width}")


def paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Set the masked pixels of a float image [H, W, 3] to ``colour`` [3], in place."""
    image[mask] = colour
