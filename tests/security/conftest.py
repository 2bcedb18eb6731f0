"""Fixtures of the security tests: a safe work dir under /run and real node agents in it."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from agentutil import Agent


@pytest.fixture
def work(sandbox):
    path = tempfile.mkdtemp(prefix="sec", dir="/run")  # root-owned 0700: a safe plugin dir
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agents(work):
    started = []

    def start(**kw) -> Agent:
        a = Agent(os.path.join(work, "agent.sock"), **kw)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()
