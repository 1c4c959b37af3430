"""Task-accuracy evaluation of the base model and its adapters: dataset loading, metrics
(exact match, corpus BLEU, edit similarity, task-head accuracy), an offline and a server
runner, and the results file ``python -m valora.eval`` writes."""

from __future__ import annotations

from valora.evaluation.dataset import load_examples, load_split
from valora.evaluation.evaluate import BASE, EvalResult, evaluate, plan
from valora.evaluation.metrics import (
    classification_accuracy,
    corpus_bleu,
    edit_similarity,
    exact_match,
)
from valora.evaluation.report import format_table, results_record, write_results

__all__ = [
    "BASE",
    "EvalResult",
    "classification_accuracy",
    "corpus_bleu",
    "edit_similarity",
    "evaluate",
    "exact_match",
    "format_table",
    "load_examples",
    "load_split",
    "plan",
    "results_record",
    "write_results",
]
