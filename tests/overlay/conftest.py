"""Fixtures for the overlay lab tests: a private lab (own state file) per test module."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import lab  # noqa: E402


@pytest.fixture(scope="module")
def lab_state(tmp_path_factory):
    if os.environ.get("CNIKIT_SANDBOX") != "1":
        pytest.fail("overlay lab tests must run inside tools/sandbox.sh (use `make test`)")
    path = str(tmp_path_factory.mktemp("lab") / "state.json")
    yield path
    lab.down(path)
