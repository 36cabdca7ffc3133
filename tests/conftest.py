"""Shared fixtures. Trained runs are cached in one data folder for the whole session (and passed
to notebook kernels through WORKBENCH_DATA), so each configuration trains once."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
_SESSION_DATA = Path(os.environ.get("WORKBENCH_TEST_DATA", Path(__file__).parent / ".data"))
os.environ["WORKBENCH_DATA"] = str(_SESSION_DATA)
_SESSION_DATA.mkdir(parents=True, exist_ok=True)
sys.path.insert(0, str(Path(__file__).parent))

import workbench as wb  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    return wb.load_dataset("digits")


@pytest.fixture(scope="session")
def digits_run(digits):
    """The demo's run: small CNN, 3x3 patch, 5% poisoning, target 0 (about 8 s, then cached)."""
    return wb.train_backdoor(digits, trigger=wb.triggers.Patch(size=3), rate=0.05, target=0,
                             progress=False)


@pytest.fixture(scope="session")
def artifacts():
    p = Path(__file__).resolve().parent.parent / "test-artifacts"
    p.mkdir(exist_ok=True)
    return p
