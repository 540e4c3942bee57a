"""Shared fixtures of the model tests (torch-free): the stored tiny checkpoint and its
reference outputs from transformers (``fixtures/make_fixtures.py``)."""

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return FIXTURES / "tiny"


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from model import load_pretrained

    return load_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "tiny_reference.npz") as f:
        return dict(f)
