import os

import pytest

# Tests run with one intra-op thread: the data are tiny and two cores are shared with other work.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
