"""Shared pytest setup: the ``gpu`` marker skips without CUDA; without CUDA, Triton kernels run
in the CPU interpreter (set before anything imports triton); GPU memory is freed after each GPU
test."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _free_gpu_memory(request: pytest.FixtureRequest):
    """After a GPU test, collect its engines (reference cycles hold them) and return their
    cached blocks, so the next test's KV cache sizing sees the whole GPU."""
    yield
    if "gpu" in request.keywords and torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()
