"""`cnikit overlayd` config for the etcd lease source: accepted shape and the refusals (no etcd needed)."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "plugins", "module_utils"))
from cni.cluster.etcd_leases import EtcdLeaseSource  # noqa: E402
from cni.node.overlay import daemon  # noqa: E402

BASE = {"node": "n1", "cluster_cidr": "10.244.0.0/16", "backend": {"type": "vxlan"}}
ETCD = {"endpoints": ["https://192.168.80.100:2379"]}


def load(tmp_path, doc):
    path = tmp_path / "overlay.json"
    path.write_text(json.dumps(doc))
    return daemon.Config.load(str(path))


def test_etcd_config_is_accepted_and_builds_the_etcd_source(tmp_path):
    cfg = load(tmp_path, dict(BASE, lease_source="etcd", etcd=ETCD, public_ip="192.168.80.101", lease_ttl=60))
    assert (cfg.lease_source, cfg.public_ip, cfg.lease_ttl, cfg.subnet_len) == ("etcd", "192.168.80.101", 60, 24)
    d = daemon.build(cfg, check=True)  # --check: reads only, holds no lease
    assert isinstance(d.source, EtcdLeaseSource) and d.own_subnet is None
    d.shutdown()
    assert load(tmp_path, dict(BASE, lease_dir="/x")).lease_source == "dir"


@pytest.mark.parametrize("extra, msg", [
    ({"lease_source": "consul"}, "lease_source 'consul' is not dir or etcd"),
    ({"lease_source": "etcd", "public_ip": "192.168.80.101"}, "lease_source etcd needs 'etcd'"),
    ({"lease_source": "etcd", "etcd": ETCD}, "lease_source etcd needs 'public_ip'"),
    ({"lease_source": "etcd", "public_ip": "1.2.3.4", "etcd": {"endpoints": ["ftp://x"]}}, "is not http(s)://HOST:PORT"),
    ({}, "lease_dir"),
])
def test_bad_configs_are_refused_naming_the_key(tmp_path, extra, msg):
    with pytest.raises(SystemExit) as exc:
        load(tmp_path, dict(BASE, **extra))
    assert msg in str(exc.value) and "overlayd: cannot use config" in str(exc.value)
