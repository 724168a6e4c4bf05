"""Shared settings of the order tests.

The order studies step small tensors thousands of times.  On a machine whose cores are shared,
torch's intra-op threads only contend: measured here, ``torch.cos`` on 1000 float64 numbers took
12 ms with two threads on a loaded two-core machine and 7 us with one.  Each test module in this
folder therefore runs with one intra-op thread and restores the setting afterwards.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
