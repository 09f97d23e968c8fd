"""Core tests use small tensors: one intra-op thread (the shared fixture in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _one_intra_op_thread(one_intra_op_thread):
    yield
