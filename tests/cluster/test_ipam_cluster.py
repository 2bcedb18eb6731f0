"""The cnikit-cluster IPAM plugin (ipam/cluster.py) on a real 3-member etcd."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading

import pytest

from cni.protocol import registry, spec
from cni.cluster.client import cmp_absent, op_put
from ipamutil import call, ips_of, netconf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def keys(client, net="podnet"):
    kvs, _ = client.get_prefix(f"{client.conf.prefix}/ipam/{net}/")
    return {kv.key.split(f"/ipam/{net}/", 1)[1]: kv.json() for kv in kvs}


def test_registered_as_a_builtin():
    assert registry.load("cnikit-cluster").__name__ == "ClusterIpam"


def test_add_check_del(client, tmp_path):
    conf = netconf(client.conf, "node-a", data_dir=str(tmp_path))
    rc, res = call("ADD", conf, "c1")
    assert rc == 0, res
    [addr] = ips_of(res)
    ip = addr.split("/")[0]
    assert addr.endswith("/24") and res["ips"][0]["gateway"] == "10.50.0.1" and ip != "10.50.0.1"
    assert res["routes"] == [{"dst": "0.0.0.0/0"}]
    assert keys(client) == {f"ips/{ip}": {"node": "node-a", "containerID": "c1", "ifname": "eth0"},
                            "owners/node-a/c1/eth0": [ip]}
    assert call("CHECK", dict(conf, prevResult=res), "c1") == (0, None)
    rc, err = call("CHECK", conf, "c2")
    assert rc == 1 and "Failed to find address added by container c2" in err["msg"]
    rc, err = call("ADD", conf, "c1")  # same attachment twice
    assert rc == 1 and "duplicate allocation" in err["msg"]
    assert call("DEL", conf, "c1") == (0, None)
    assert keys(client) == {}
    assert call("DEL", conf, "c1") == (0, None)  # DEL of nothing


def test_check_detects_a_stolen_address(client, tmp_path):
    conf = netconf(client.conf, "node-a", data_dir=str(tmp_path))
    rc, res = call("ADD", conf, "c1")
    ip = ips_of(res)[0].split("/")[0]
    client.put(f"{client.conf.prefix}/ipam/podnet/ips/{ip}", json.dumps({"node": "node-b", "containerID": "x", "ifname": "eth0"}))
    rc, err = call("CHECK", conf, "c1")
    assert rc == 1 and "not owned by it" in err["msg"]
    call("DEL", conf, "c1")  # releases its owner key, leaves node-b's address alone
    assert list(keys(client)) == [f"ips/{ip}"]


def test_one_pool_for_all_nodes_and_exhaustion(client, tmp_path):
    """A /29 has 5 usable addresses besides the gateway: 5 pods over 3 nodes, then code 999."""
    got = []
    for i in range(5):
        rc, res = call("ADD", netconf(client.conf, f"node-{i % 3}", subnet="10.51.0.0/29", data_dir=str(tmp_path)), f"c{i}")
        assert rc == 0, res
        got.append(ips_of(res)[0])
    assert sorted(got) == [f"10.51.0.{i}/29" for i in range(2, 7)]
    rc, err = call("ADD", netconf(client.conf, "node-1", subnet="10.51.0.0/29", data_dir=str(tmp_path)), "c9")
    assert rc == 1 and err["code"] == 999 and "no IP addresses available in range set: 10.51.0.1-10.51.0.6" in err["msg"]
    rc, err = call("STATUS", netconf(client.conf, "node-1", subnet="10.51.0.0/29", data_dir=str(tmp_path)))
    assert rc == 1 and err["code"] == spec.ERR_NOT_AVAILABLE


def test_requested_ip_and_conflict(client, tmp_path):
    conf = netconf(client.conf, "node-a", data_dir=str(tmp_path))
    rc, res = call("ADD", conf, "c1", args="IP=10.50.0.77")
    assert rc == 0 and ips_of(res) == ["10.50.0.77/24"]
    rc, err = call("ADD", netconf(client.conf, "node-b", data_dir=str(tmp_path)), "c2", args="IP=10.50.0.77")
    assert rc == 1 and "10.50.0.77 is not available" in err["msg"]
    assert list(keys(client)) == ["ips/10.50.0.77", "owners/node-a/c1/eth0"]


def test_dual_stack_in_one_transaction(client, tmp_path):
    conf = netconf(client.conf, "node-a", data_dir=str(tmp_path))
    del conf["ipam"]["subnet"]
    conf["ipam"]["ranges"] = [[{"subnet": "10.52.0.0/24"}], [{"subnet": "fd52::/120"}]]
    rc, res = call("ADD", conf, "c1")
    assert rc == 0 and [a.split("/")[1] for a in ips_of(res)] == ["24", "120"]
    assert len(keys(client)) == 3
    call("DEL", conf, "c1")
    assert keys(client) == {}


def test_bad_config_is_code_7(client, tmp_path):
    conf = netconf(client.conf, "node-a", data_dir=str(tmp_path))
    conf["ipam"]["etcd"] = {"endpoints": "not-a-url"}
    rc, err = call("ADD", conf, "c1")
    assert rc == 1 and err["code"] == spec.ERR_INVALID_CONFIG and "ipam.etcd" in err["msg"]


def test_gc_releases_only_this_nodes_stale_attachments(client, tmp_path):
    a = netconf(client.conf, "node-a", data_dir=str(tmp_path))
    b = netconf(client.conf, "node-b", data_dir=str(tmp_path))
    for cid in ("keep", "stale"):
        assert call("ADD", a, cid)[0] == 0
    assert call("ADD", b, "other")[0] == 0
    # no list at all: nothing is released (issue 19)
    assert call("GC", a) == (0, None) and len(keys(client)) == 6
    gc = dict(a, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert call("GC", gc) == (0, None)
    owners = sorted(k for k in keys(client) if k.startswith("owners/"))
    assert owners == ["owners/node-a/keep/eth0", "owners/node-b/other/eth0"] and len(keys(client)) == 4


def test_parallel_adds_from_three_nodes_are_distinct(client, tmp_path):
    """60 ADDs at once from 3 nodes on a /26 (61 usable): all distinct, then all released."""
    results, errors = {}, []

    def add(i: int) -> None:
        rc, res = call("ADD", netconf(client.conf, f"node-{i % 3}", subnet="10.53.0.0/26", data_dir=str(tmp_path)), f"p{i}")
        (results.__setitem__(i, ips_of(res)[0]) if rc == 0 else errors.append(res))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results.values())) == 60
    assert len([k for k in keys(client) if k.startswith("ips/")]) == 60
    for i in range(60):
        assert call("DEL", netconf(client.conf, f"node-{i % 3}", subnet="10.53.0.0/26", data_dir=str(tmp_path)), f"p{i}")[0] == 0
    assert keys(client) == {}


def test_reclaim_command_releases_a_gone_node(client, tmp_path):
    for i in range(3):
        assert call("ADD", netconf(client.conf, "gone", data_dir=str(tmp_path)), f"g{i}")[0] == 0
    assert call("ADD", netconf(client.conf, "alive", data_dir=str(tmp_path)), "a1")[0] == 0
    conffile = tmp_path / "net.conflist"
    plugin = netconf(client.conf, "ignored", data_dir=str(tmp_path))
    conffile.write_text(json.dumps({"cniVersion": "1.0.0", "name": "podnet", "plugins": [plugin]}))
    cmd = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from cni.node.main import main; "
           "sys.exit(main(['cnikit'] + sys.argv[2:]))", os.path.join(ROOT, "plugins", "module_utils")]
    out = subprocess.run(cmd + ["cluster-ipam", "reclaim", "--conf", str(conffile), "--node", "gone"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "reclaimed 3 addresses of 3 attachments of node gone" in out.stdout
    assert [k for k in keys(client) if k.startswith("owners/")] == ["owners/alive/a1/eth0"]
    listed = subprocess.run(cmd + ["cluster-ipam", "list", "--conf", str(conffile)], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and listed.stdout.count("\talive\ta1\teth0") == 1 and "gone" not in listed.stdout
    bad = subprocess.run(cmd + ["cluster-ipam", "reclaim", "--conf", str(conffile)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--node" in bad.stderr


def test_txn_collision_is_retried(client, tmp_path, monkeypatch):
    """An address taken between ADD's read and its transaction: the compare fails, ADD re-reads
    and takes another one."""
    from cni.cluster.client import Client

    conf = netconf(client.conf, "node-a", subnet="10.54.0.0/29", data_dir=str(tmp_path))
    orig_txn = Client.txn
    stolen = []

    def racing_txn(self, compare, ops, failure=()):
        if compare and not stolen:  # the first commit: another node commits the picked address first
            key = base64.b64decode(compare[0]["key"]).decode()
            orig_txn(client, [cmp_absent(key)], [op_put(key, json.dumps({"node": "x", "containerID": "y", "ifname": "eth0"}))])
            stolen.append(key.rsplit("/", 1)[1])
        return orig_txn(self, compare, ops, failure)

    monkeypatch.setattr(Client, "txn", racing_txn)
    rc, res = call("ADD", conf, "c1")
    assert rc == 0 and stolen and ips_of(res)[0].split("/")[0] != stolen[0]
    assert sorted(k for k in keys(client) if k.startswith("ips/")) == sorted(["ips/" + stolen[0], "ips/" + ips_of(res)[0].split("/")[0]])
