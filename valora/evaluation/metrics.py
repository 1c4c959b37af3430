"""Task metrics over a list of predictions and their reference answers, computed by the usual
libraries (sacrebleu, rapidfuzz) so that scores compare with published ones.

Normalisation, the same for every metric: leading and trailing whitespace is stripped from both
prediction and reference; nothing else (case, punctuation, inner whitespace) is changed unless
the function says so. An empty list scores 0.0.

- ``exact_match``: share of predictions equal to their reference (case-sensitive by default), 0-1.
- ``corpus_bleu``: sacrebleu's corpus BLEU-4 (13a tokenisation, n-gram counts and brevity penalty
  pooled over the corpus, sacrebleu's defaults), 0-100. As in every BLEU-4, a corpus with no
  4-gram at all (every answer under four tokens) scores 0: such tasks want ``exact`` or ``edit``.
- ``edit_similarity``: mean normalised Levenshtein similarity ``1 - distance / max(len)``, 0-1.
- ``classification_accuracy``: share of predicted labels equal to the answer (labels compared
  exactly after stripping), 0-1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sacrebleu
from rapidfuzz.distance import Levenshtein

METRICS = ("exact", "bleu", "edit")  # the metric names a dataset example may name


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def exact_match(
    predictions: Sequence[str], references: Sequence[str], ignore_case: bool = False
) -> float:
    """Share of stripped predictions equal to their stripped reference (0-1)."""
    _check(predictions, references)
    if not predictions:
        return 0.0

    def norm(text: str) -> str:
        return text.strip().casefold() if ignore_case else text.strip()

    hits = sum(norm(p) == norm(r) for p, r in zip(predictions, references))
    return hits / len(predictions)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (``sacrebleu.corpus_bleu``, one reference per prediction), 0-100."""
    _check(predictions, references)
    if not predictions:
        return 0.0
    hyps = [p.strip() for p in predictions]
    refs = [[r.strip() for r in references]]
    return float(sacrebleu.corpus_bleu(hyps, refs).score)


def edit_similarity(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ``Levenshtein.normalized_similarity`` of each stripped pair (0-1; 1 = identical)."""
    _check(predictions, references)
    if not predictions:
        return 0.0
    total = sum(
        Levenshtein.normalized_similarity(p.strip(), r.strip())
        for p, r in zip(predictions, references)
    )
    return total / len(predictions)


def classification_accuracy(labels: Sequence[str], answers: Sequence[str]) -> float:
    """Share of task-head labels equal to the answer (0-1)."""
    _check(labels, answers)
    if not labels:
        return 0.0
    return sum(str(p).strip() == a.strip() for p, a in zip(labels, answers)) / len(labels)


SCORERS: dict[str, Callable[[Sequence[str], Sequence[str]], float]] = {
    "exact": exact_match,
    "bleu": corpus_bleu,
    "edit": edit_similarity,
    "classify": classification_accuracy,
}


def score_all(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{"exact", "bleu", "edit"} of one set of predictions."""
    return {name: SCORERS[name](predictions, references) for name in METRICS}
