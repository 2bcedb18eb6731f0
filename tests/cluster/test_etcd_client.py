"""The etcd client (cluster/client.py) against a real 3-member TLS cluster."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time

import pytest

from cni.protocol import spec
from cni.cluster import client as ec
from cni.cluster.client import Client, EtcdConfig

MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "plugins", "module_utils")


def test_config_validation():
    ok = EtcdConfig.from_dict({"endpoints": ["https://10.0.0.1:2379/"], "caFile": "/ca", "certFile": "/c",
                               "keyFile": "/k", "timeout": 2})
    assert ok.endpoints == ("https://10.0.0.1:2379",) and ok.timeout == 2.0 and ok.prefix == "/cnikit"
    assert EtcdConfig.from_dict(ok.to_dict()) == ok
    for bad, word in (({}, "endpoints"), ({"endpoints": []}, "endpoints"),
                      ({"endpoints": ["10.0.0.1:2379"]}, "not http"),
                      ({"endpoints": ["http://a:1"], "certFile": "/c"}, "go together"),
                      ({"endpoints": ["http://a:1"], "timeout": 0}, "timeout"),
                      ({"endpoints": ["http://a:1"], "prefix": "x"}, "prefix")):
        with pytest.raises(spec.CNIError) as err:
            EtcdConfig.from_dict(bad)
        assert err.value.code == spec.ERR_INVALID_CONFIG and word in str(err.value)


def test_no_etcd3gw_on_the_node_is_a_clear_cni_error():
    """A node interpreter without etcd3gw (Debian's /usr/bin/python3, no release path): CNI code 999
    saying where etcd3gw comes from, not an ImportError traceback."""
    node_python = "/usr/bin/python3"
    if not os.access(node_python, os.X_OK):
        pytest.skip(f"no {node_python} (the lab nodes' interpreter) on this machine")
    probe = ("import json, sys; sys.path.insert(0, sys.argv[1])\n"
             "from cni.protocol.spec import CNIError\nfrom cni.cluster.client import Client, EtcdConfig\n"
             "try:\n    Client(EtcdConfig.from_dict({'endpoints': ['http://127.0.0.1:1']}))\n"
             "except CNIError as e:\n    print(json.dumps([e.code, str(e)]))")
    proc = subprocess.run([node_python, "-I", "-S", "-c", probe, MODULE_UTILS], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    code, msg = json.loads(proc.stdout)
    assert code == spec.ERR_INTERNAL and "etcd3gw is not importable" in msg and "cni_plugins_wheel_dir" in msg


def test_prefix_end():
    assert ec.prefix_end("/a/") == b"/a0"
    assert ec.prefix_end(b"a\xff") == b"b"


def test_kv_txn_cas(client):
    p = client.conf.prefix
    assert client.get(p + "/k") is None
    first = client.txn([ec.cmp_absent(p + "/k")], [ec.op_put(p + "/k", "one")])
    second = client.txn([ec.cmp_absent(p + "/k")], [ec.op_put(p + "/k", "two")], [ec.op_get(p + "/k")])
    assert first.succeeded and not second.succeeded
    assert second.kvs(0)[0].value == b"one"
    kv = client.get(p + "/k")
    assert client.txn([ec.cmp_mod_revision(p + "/k", kv.mod_revision)], [ec.op_put(p + "/k", "3")]).succeeded
    assert not client.txn([ec.cmp_mod_revision(p + "/k", kv.mod_revision)], [ec.op_put(p + "/k", "4")]).succeeded
    assert client.get(p + "/k").value == b"3"
    client.put(p + "/z", "z")
    kvs, rev = client.get_prefix(p + "/")
    assert [k.key for k in kvs] == [p + "/k", p + "/z"] and rev >= kv.mod_revision
    assert client.count_prefix(p + "/") == 2
    assert client.delete(p + "/", prefix=True) == 2 and client.count_prefix(p + "/") == 0


def test_lease_ttl_keepalive_expiry(client, etcd):
    p = client.conf.prefix
    lease = client.grant(2)
    client.put(p + "/held", "x", lease=lease)
    ka = ec.KeepAlive(client.conf, lease, 2)
    time.sleep(3.5)  # longer than the TTL: only the keep-alive holds the key
    assert client.get(p + "/held") is not None and ka.refreshed >= 3
    ka.stop()
    deadline = time.monotonic() + 6
    while client.get(p + "/held") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get(p + "/held") is None  # expired with its lease
    assert client.keepalive(lease) == -1 and client.time_to_live(lease) == -1


def test_revoke_deletes_keys(client):
    p = client.conf.prefix
    lease = client.grant(60)
    client.put(p + "/a", "1", lease=lease)
    client.revoke(lease)
    client.revoke(lease)  # twice is fine
    assert client.get(p + "/a") is None


def test_watch_sees_puts_and_deletes(client):
    p = client.conf.prefix
    _, rev = client.get_prefix(p + "/")
    w = client.watch(p + "/", rev + 1)
    try:
        client.put(p + "/w1", "a")
        client.delete(p + "/w1")
        events = []
        deadline = time.monotonic() + 5
        while len(events) < 2 and time.monotonic() < deadline:
            events += w.next(0.5)
        assert [(e.type, e.kv.key) for e in events] == [("PUT", p + "/w1"), ("DELETE", p + "/w1")]
    finally:
        w.cancel()


def test_tls_is_enforced(etcd):
    """Without a client certificate the members refuse; the error is code 11 within the budget."""
    conf = dataclasses.replace(etcd.config(timeout=1.0), cert_file="", key_file="")
    t0 = time.monotonic()
    with Client(conf) as cli, pytest.raises(ec.Unavailable) as err:
        cli.get("/x")
    assert err.value.code == spec.ERR_TRY_AGAIN and time.monotonic() - t0 < 1.5


def test_unreachable_endpoints_fail_fast_with_code_11(etcd):
    conf = dataclasses.replace(etcd.config(timeout=1.0), endpoints=("https://127.0.0.99:1", "https://127.0.0.98:1"))
    t0 = time.monotonic()
    with Client(conf) as cli, pytest.raises(ec.Unavailable) as err:
        cli.put("/x", "1")
    assert err.value.code == spec.ERR_TRY_AGAIN and time.monotonic() - t0 <= 1.2
    assert "127.0.0.99" in str(err.value)


def test_health(etcd):
    with Client(etcd.config()) as cli:
        assert all(cli.health().values()) and len(cli.health()) == 3
