"""The ``latex_ocr`` task: a short formula from a small grammar, rasterised with matplotlib's
mathtext (``MathTextParser("agg")``, the engine behind ``fig.text("$...$")``, without a figure)
and placed at a random spot on light paper; the answer is the LaTeX source. Mathtext's parser
dominates the cost (about 10 ms a formula).

The grammar writes canonical source: every argument braced, no spaces, a command never directly
followed by a letter, so a formula has exactly one spelling.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from valora.tasks.common import TaskSpec, to_uint8

LATEX_SIZE = (56, 168)  # (height, width)
DPI = 56  # font sizes below are in points at this resolution
FONT_SIZES = (20, 26)  # inclusive point-size range; shrunk when a formula would not fit
LETTERS = tuple("abcknmpqtxyz")
GREEK = (r"\alpha", r"\beta", r"\theta", r"\pi", r"\lambda", r"\mu")
FRAC, DFRAC = r"\frac", r"\dfrac"
TEMPLATES = ("frac", "power", "sqrt", "sum", "subscript", "sigma")


def _atom(rng: np.random.Generator) -> str:
    """A letter (60%), a digit 1-9 (25%) or a Greek letter (15%)."""
    kind = rng.uniform()
    if kind < 0.6:
        return LETTERS[rng.integers(len(LETTERS))]
    if kind < 0.85:
        return str(rng.integers(1, 10))
    return GREEK[rng.integers(len(GREEK))]


def _term(rng: np.random.Generator) -> str:
    """An atom, or two atoms joined by + or - (half the time each)."""
    if rng.uniform() < 0.5:
        return _atom(rng)
    return f"{_atom(rng)}{'+-'[rng.integers(2)]}{_atom(rng)}"


def formula(rng: np.random.Generator, template: str) -> str:
    """One formula of the named template (one of ``TEMPLATES``)."""
    a, b, c = _atom(rng), _atom(rng), _atom(rng)
    if template == "frac":
        return rf"\frac{{{_term(rng)}}}{{{_term(rng)}}}"
    if template == "power":
        exponent = str(rng.integers(2, 10)) if rng.uniform() < 0.7 else "n"
        return f"{a}^{{{exponent}}}{'+-'[rng.integers(2)]}{b}"
    if template == "sqrt":
        root = rf"\sqrt{{{_term(rng)}}}"
        return root if rng.uniform() < 0.5 else f"{root}+{a}"
    if template == "sum":
        ops = [("+", "-")[i] for i in rng.integers(2, size=2)]
        return f"{a}{ops[0]}{b}{ops[1]}{c}"
    if template == "subscript":
        i, j = (LETTERS[k] for k in rng.integers(len(LETTERS), size=2))
        return f"{a}_{{{i}}}{'+-='[rng.integers(3)]}{b}_{{{j}}}"
    if template == "sigma":
        index = "ijk"[rng.integers(3)]
        upper = ("n", "m", "N", "10")[rng.integers(4)]
        term = LETTERS[rng.integers(len(LETTERS))]
        return rf"\sum_{{{index}=1}}^{{{upper}}}{term}_{{{index}}}"
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


@lru_cache(maxsize=1)
def _parser():
    """One mathtext rasteriser (Agg), reused for every formula; no figure or pyplot state."""
    from matplotlib.mathtext import MathTextParser

    return MathTextParser("agg")


def _sample(rng: np.random.Generator, stratum: str) -> tuple[str, dict]:
    expr = formula(rng, stratum)
    params = {
        "expr": expr,
        "font_size": int(rng.integers(FONT_SIZES[0], FONT_SIZES[1] + 1)),
        "place": rng.uniform(size=2),  # where the ink goes within the slack, as fractions
    }
    return expr, params


def _ink(expr: str, font_size: int) -> np.ndarray:
    """float32 [h, w] ink coverage (0..1) of ``expr``, cropped to its ink; the font shrinks until
    the formula fits the image with a 2-pixel margin. Fractions are drawn as ``\\dfrac``
    (mathtext's inline fractions are too small to read at this resolution)."""
    from matplotlib.font_manager import FontProperties

    height, width = LATEX_SIZE
    source = f"${expr.replace(FRAC, DFRAC)}$"
    for size in range(font_size, 5, -1):
        prop = FontProperties(size=size, math_fontfamily="dejavusans")
        ink = np.asarray(_parser().parse(source, dpi=DPI, prop=prop)[5], np.float32) / 255
        rows, cols = np.nonzero(ink > 0.02)
        if rows.size == 0:
            raise ValueError(f"formula {expr!r} renders no ink")
        crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        if crop.shape[0] <= height - 4 and crop.shape[1] <= width - 4:
            return crop
    raise ValueError(f"formula {expr!r} does not fit a {height}x{width} image")


def _render(params: dict, rng: np.random.Generator) -> np.ndarray:
    """Dark formula on light paper at a random place that keeps it whole, plus light noise."""
    height, width = LATEX_SIZE
    crop = _ink(params["expr"], params["font_size"])
    paper, ink_colour = rng.uniform(215, 255), rng.uniform(0, 70, 3)
    top = 2 + round(params["place"][0] * (height - 4 - crop.shape[0]))
    left = 2 + round(params["place"][1] * (width - 4 - crop.shape[1]))
    cover = np.zeros((height, width, 1), np.float32)
    cover[top : top + crop.shape[0], left : left + crop.shape[1], 0] = crop
    image = paper * (1 - cover) + ink_colour * cover
    return to_uint8(image + rng.normal(0, 3, image.shape))


def _caption(params: dict) -> str:
    """Only that it is a formula: the captions never carry LaTeX source."""
    return "a typeset formula"


LATEX_OCR = TaskSpec(
    name="latex_ocr",
    metric="bleu",
    modality="image",
    question="Write the LaTeX for this formula.",
    description="A short formula (fraction, power, root, sum of symbols, subscripts, sigma sum) "
    "rendered with matplotlib mathtext; answer its canonical LaTeX source (no $). Val formulas "
    "never occur in train.",
    strata=TEMPLATES,
    sample=_sample,
    render=_render,
    caption=_caption,
    disjoint_answers=True,
    manifest_extra={"secondary_metrics": ["edit"]},
)
