"""Fixtures for the rollout tests: a private lab (own state file) per test module."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import lab  # noqa: E402


@pytest.fixture(scope="module")
def lab_state(tmp_path_factory, request):
    """Path of a state file for a lab of this test module alone (labs never share one)."""
    if os.environ.get("CNIKIT_SANDBOX") != "1":
        pytest.fail("rollout tests must run inside tools/sandbox.sh (use `make test`)")
    path = str(tmp_path_factory.mktemp("lab") / "state.json")
    yield path
    lab.down(path)


@pytest.fixture(scope="module")
def lab3(lab_state):
    """A 3-node lab (k8s-master, k8s-node01, k8s-node02), torn down after the module."""
    return lab.up(3, path=lab_state)
