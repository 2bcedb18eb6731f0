"""Start a real etcd cluster for a test module (inside the sandbox). A module of its own, not conftest:
`from conftest import ...` resolves to whichever conftest.py pytest imported first."""
from __future__ import annotations

import pytest

import cnitest


def make_cluster(tmp_path_factory, name: str, count: int = 3, port: int = 23790):
    if not cnitest.IN_SANDBOX:
        pytest.fail("etcd tests must run inside tools/sandbox.sh (use `make test`)")
    from lab.etcd import Cluster  # noqa: PLC0415

    cluster = Cluster.loopback(count, str(tmp_path_factory.mktemp(name)), base_port=port)
    cluster.start()
    return cluster
