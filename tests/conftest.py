"""pytest fixtures shared by every suite. Networking tests must run inside tools/sandbox.sh."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cnitest  # noqa: E402

_counter = itertools.count()


@pytest.fixture
def sandbox() -> None:
    """Fail loudly (never skip) when a networking test is run outside the private sandbox."""
    if not cnitest.IN_SANDBOX:
        pytest.fail("networking tests must run inside tools/sandbox.sh (use `make test`)")


@pytest.fixture
def netns_factory(sandbox):
    """Create named network namespaces (in the sandbox's private /run/netns); delete them after."""
    made = []

    def make(prefix: str = "t") -> str:
        name = f"{prefix}{os.getpid()}x{next(_counter)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns(netns_factory) -> str:
    return netns_factory()
