"""Node subnet leases (cluster/subnets.py) on a real 3-member etcd."""
from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from cni.cluster import subnets as sn
from cni.cluster.client import Client, KeepAlive


@pytest.fixture
def mgr(client):
    m = sn.SubnetManager(client)
    assert m.put_config(sn.NetworkConfig.from_dict({"Network": "10.244.0.0/16", "SubnetLen": 24,
                                                     "Backend": {"Type": "vxlan"}}))
    return m


def test_config_rules():
    conf = sn.NetworkConfig.from_dict({"Network": "10.244.0.0/16", "SubnetLen": 24})
    assert [str(s) for s in list(conf.candidates())[:2]] == ["10.244.1.0/24", "10.244.2.0/24"]
    assert len(list(conf.candidates())) == 255
    bounded = sn.NetworkConfig.from_dict({"Network": "10.244.0.0/16", "SubnetLen": 24,
                                          "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.12.0"})
    assert [str(s) for s in bounded.candidates()] == ["10.244.10.0/24", "10.244.11.0/24", "10.244.12.0/24"]
    for bad in ({"Network": "10.244.0.1/16"}, {"Network": "10.244.0.0/16", "SubnetLen": 16},
                {"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}, {}):
        with pytest.raises(sn.SubnetError):
            sn.NetworkConfig.from_dict(bad)


def test_config_written_once(mgr):
    assert not mgr.put_config(sn.NetworkConfig.from_dict({"Network": "10.0.0.0/8"}))
    assert str(mgr.get_config().network) == "10.244.0.0/16"


def test_acquire_record_renew_release(mgr, client):
    a = mgr.acquire("node-a", "192.168.80.100", "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"}, ttl=30)
    assert str(a.subnet) == "10.244.1.0/24" and a.lease_id
    raw = client.get(mgr.key(a.subnet))
    assert raw.key.endswith("/network/subnets/10.244.1.0-24") and raw.lease == a.lease_id
    assert raw.json() == {"Node": "node-a", "PublicIP": "192.168.80.100", "BackendType": "vxlan",
                          "BackendData": {"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"}}
    b = mgr.acquire("node-b", "192.168.80.101", ttl=30)
    assert str(b.subnet) == "10.244.2.0/24"
    assert mgr.renew(a, ttl=30).subnet == a.subnet and client.time_to_live(a.lease_id) > 20
    assert mgr.release(a) and client.get(mgr.key(a.subnet)) is None
    assert client.time_to_live(a.lease_id) == -1
    assert not mgr.release(a)  # twice: nothing left to do
    leases, _ = mgr.list()
    assert [le.node for le in leases] == ["node-b"]


def test_restart_gets_the_same_subnet_back(mgr, client):
    first = mgr.acquire("node-a", "192.168.80.100", "vxlan", {"VtepMAC": "0a:00:00:00:00:01"}, ttl=30)
    mgr.acquire("node-b", "192.168.80.101", ttl=30)
    # the node restarts with a new VTEP MAC: same subnet, fresh record and lease, old lease revoked
    again = mgr.acquire("node-a", "192.168.80.100", "vxlan", {"VtepMAC": "0a:00:00:00:00:02"}, ttl=30)
    assert again.subnet == first.subnet and again.lease_id != first.lease_id
    assert client.get(mgr.key(again.subnet)).json()["BackendData"]["VtepMAC"] == "0a:00:00:00:00:02"
    assert client.time_to_live(first.lease_id) == -1
    assert len(mgr.list()[0]) == 2


def test_expired_lease_comes_back_to_the_preferred_subnet(mgr, client):
    a = mgr.acquire("node-a", "192.168.80.100", ttl=1)
    mgr.acquire("node-b", "192.168.80.101", ttl=30)  # .2
    deadline = time.monotonic() + 8
    while client.get(mgr.key(a.subnet)) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get(mgr.key(a.subnet)) is None  # expired: the key went with the lease
    back = mgr.renew(a, ttl=30)
    assert back.subnet == a.subnet and back.lease_id != a.lease_id


def test_keepalive_holds_a_short_lease(mgr, client):
    a = mgr.acquire("node-a", "192.168.80.100", ttl=2)
    ka = KeepAlive(client.conf, a.lease_id, 2)
    try:
        time.sleep(4)
        assert client.get(mgr.key(a.subnet)) is not None and not ka.lost.is_set()
    finally:
        ka.stop()


def test_parallel_joins_get_distinct_subnets(mgr, client):
    """16 nodes join at the same instant, each with its own client: 16 different subnets."""
    got, errors = {}, []
    barrier = threading.Barrier(16)

    def join(i: int) -> None:
        try:
            with Client(client.conf) as cli:
                m = sn.SubnetManager(cli)
                barrier.wait()
                got[f"n{i}"] = m.acquire(f"n{i}", f"192.168.80.{100 + i}", ttl=60).subnet
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=join, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(got.values())) == 16
    assert {le.node: le.subnet for le in mgr.list()[0]} == got


def test_exhausted_pool_is_a_clear_error(client):
    m = sn.SubnetManager(client)
    m.put_config(sn.NetworkConfig.from_dict({"Network": "10.9.0.0/24", "SubnetLen": 26}))
    for i in range(3):  # .64, .128, .192 (the first subnet stays free, as flannel)
        m.acquire(f"n{i}", "192.168.80.1", ttl=30)
    with pytest.raises(sn.SubnetError, match="no free /26 subnet left in 10.9.0.0/24"):
        m.acquire("n9", "192.168.80.1", ttl=30)


def test_list_and_watch_for_peers(mgr):
    leases, rev = mgr.list()
    changes = mgr.watch(rev)
    a = mgr.acquire("node-a", "192.168.80.100", "vxlan", {"VtepMAC": "0a:00:00:00:00:01"}, ttl=30)
    mgr.release(a)
    seen = []
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        seen += next(changes)
    changes.close()
    assert [(c.kind, str(c.subnet)) for c in seen] == [("added", "10.244.1.0/24"), ("removed", "10.244.1.0/24")]
    assert seen[0].lease.public_ip == "192.168.80.100" and seen[0].lease.backend_data["VtepMAC"] == "0a:00:00:00:00:01"
    assert isinstance(seen[0].subnet, ipaddress.IPv4Network)
