"""Shared pytest setup: the ``gpu`` marker skips without CUDA; the ``slow`` marker (CPU runs of
many minutes, such as training to an accuracy) skips unless ``--run-slow`` is given; without
CUDA, Triton kernels run in the CPU interpreter (set before anything imports triton); GPU memory
is freed after each GPU test."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run the slow-marked tests too")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: minutes of CPU work (skipped without --run-slow)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA GPU")
    if not config.getoption("--run-slow"):
        skips["slow"] = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
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
