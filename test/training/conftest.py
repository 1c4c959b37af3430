"""Shared fixtures of the SFT tests: the tiny random checkpoint, the dataset of
``sft_fixture`` and one adapter trained on it (session-scoped: several modules use it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hf_reference import make_hf_model, save_checkpoint
from sft_fixture import TRAINED, write_dataset

from valora.training.sft import train_lora


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> str:
    hf = make_hf_model(tie_word_embeddings=False)
    return str(save_checkpoint(hf, tmp_path_factory.mktemp("ckpt"), "original-flat-single"))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def trained(checkpoint, dataset, tmp_path_factory):
    """(SFTResult, output dir) of one ``TRAINED`` run."""
    out = tmp_path_factory.mktemp("adapter")
    return train_lora(checkpoint, dataset, out, TRAINED), out
