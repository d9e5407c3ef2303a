"""Shared fixtures: the real data folder beside the repository, and a fixed torch set-up."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir():
    """`$VASCULAR_INR_DATA`, else `../shared/data` beside the repository; None when absent."""
    candidates = [os.environ.get("VASCULAR_INR_DATA"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared_data():
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data folder ../shared/data (or $VASCULAR_INR_DATA) is absent")
    return path
