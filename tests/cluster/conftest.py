"""Real etcd clusters for the cluster-state tests (docs/cluster-state.md), inside the sandbox."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "plugins", "module_utils"))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402


from etcdlab import make_cluster  # noqa: E402  (tests/cluster is on sys.path: the test's own dir)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """A healthy 3-member TLS cluster on 127.0.0.11-13 for one test module."""
    cluster = make_cluster(tmp_path_factory, "etcd")
    yield cluster
    cluster.stop()


@pytest.fixture
def client(etcd, request):
    """A client under a fresh key prefix per test (tests never see each other's keys)."""
    import dataclasses  # noqa: PLC0415

    from cni.cluster.client import Client  # noqa: PLC0415

    conf = dataclasses.replace(etcd.config(), prefix="/t/" + request.node.name.replace("[", "_").replace("]", ""))
    with Client(conf) as cli:
        yield cli
