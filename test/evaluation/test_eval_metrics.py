"""The metrics against values worked out by hand (n-gram precisions, brevity penalty, edit
distances), and the normalisation they document."""

from __future__ import annotations

import math

import pytest

from valora.evaluation.metrics import (
    classification_accuracy,
    corpus_bleu,
    edit_similarity,
    exact_match,
    score_all,
)

HYP = "the cat sat on the mat"
REF = "the cat sat on a mat"


def test_exact_match_strips_and_is_case_sensitive():
    assert exact_match([" red\n", "Blue", "green"], ["red", "blue", "green"]) == pytest.approx(
        2 / 3
    )
    assert exact_match(["Blue"], ["blue"], ignore_case=True) == 1.0
    assert exact_match(["a b"], ["a  b"]) == 0.0  # inner whitespace counts
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])


def test_bleu_of_an_identical_corpus_is_100():
    corpus = ["a red square on a white field", "two cats and one dog"]
    assert corpus_bleu(corpus, corpus) == pytest.approx(100.0)


def test_bleu_of_a_corpus_without_4grams_is_0():
    assert corpus_bleu(["two words", "three short words"], ["two words", "three short words"]) == 0


def test_bleu_from_ngram_precisions():
    # 1..4-gram matches 5/6, 3/5, 2/4, 1/3; equal lengths: no brevity penalty
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert corpus_bleu([HYP], [REF]) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(53.728, abs=1e-3)


def test_bleu_brevity_penalty():
    # every n-gram of the 5-token hypothesis matches; BP = exp(1 - 6/5)
    assert corpus_bleu(["the cat sat on the"], [HYP]) == pytest.approx(100 * math.exp(-0.2))


def test_bleu_is_pooled_over_the_corpus_not_averaged():
    # counts add up over sentences: (5+5)/(6+5), (3+4)/(5+4), (2+3)/(4+3), (1+2)/(3+2);
    # hypothesis length 11, reference length 12
    pooled = (10 / 11 * 7 / 9 * 5 / 7 * 3 / 5) ** 0.25 * math.exp(1 - 12 / 11)
    score = corpus_bleu([HYP, "the cat sat on the"], [REF, HYP])
    assert score == pytest.approx(100 * pooled, abs=1e-6)


def test_edit_similarity():
    assert edit_similarity(["kitten"], ["sitting"]) == pytest.approx(1 - 3 / 7)
    # mean of the pairs: 1 - 3/7, 1 (identical after stripping), 0 (nothing in common)
    pairs = edit_similarity(["kitten", " abc ", "xyz"], ["sitting", "abc", "q"])
    assert pairs == pytest.approx((1 - 3 / 7 + 1 + 0) / 3)


def test_classification_accuracy():
    assert classification_accuracy(["cat", "dog", "cat"], ["cat", "cat", "cat"]) == pytest.approx(
        2 / 3
    )


def test_score_all_names_every_metric():
    scores = score_all(["kitten"], ["sitting"])
    assert set(scores) == {"exact", "bleu", "edit"}
    assert scores["exact"] == 0.0 and scores["edit"] == pytest.approx(4 / 7)
