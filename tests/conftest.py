"""Shared test set-up: one thread, the `slow` marker, golden files and the real dataset.

* ``slow`` marks end-to-end tests (real training, several processes); the default ``pytest``
  runs them, ``pytest --fast`` skips them with a reason.  A test that uses one of the
  module-scoped end-to-end fixtures in :data:`END_TO_END_FIXTURES` is marked automatically.
* ``pytest --update-golden`` rewrites the golden files under ``tests/golden`` instead of
  comparing against them (see ``tests/test_help.py``).
* ``fashion_mnist_dir``: Debian's Fashion-MNIST folder, or a skip that says how to install it.
"""

import os
from pathlib import Path

import pytest

# Tests run with one intra-op thread: the data are tiny and two cores are shared with other work.
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: Fixtures that train or build whole studies (seconds each): their tests are end-to-end.
END_TO_END_FIXTURES = frozenset({"smoke", "study"})

#: Where `apt-get install dataset-fashion-mnist` puts the real dataset.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", help="skip the end-to-end tests marked slow")
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/* from the current output instead of comparing",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    fast = config.getoption("--fast")
    for item in items:
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if fast and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.skip(reason="end-to-end test marked slow (--fast)"))


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True under ``pytest --update-golden``."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def fashion_mnist_dir() -> Path:
    """The real Fashion-MNIST folder; the test is skipped, with the reason, when it is absent."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"real Fashion-MNIST not found in {FASHION_MNIST_DIR}; install it with "
            "`apt-get install dataset-fashion-mnist` (scripts/setup.sh does)"
        )
    return FASHION_MNIST_DIR


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
