"""Core tests use small tensors: one intra-op thread avoids spin-waiting when the machine is busy.
Restored after each test so that other test directories in the same session are unaffected."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
