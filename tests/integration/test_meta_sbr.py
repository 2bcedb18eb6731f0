"""sbr on a live kernel: rule from the pod IP to the first free table >= 100, routes moved there."""
from __future__ import annotations

import pytest

import cnitest
import metautil as mu


@pytest.fixture
def pod(netns):
    p = mu.add_pod(netns, mu.uid(), isDefaultGateway=True)
    yield p
    mu.del_pod(p)


def rules(pod):
    return [r for r in cnitest.ip_json("rule", pod.netns) if r.get("src") not in (None, "all")]


def test_rule_table_and_moved_routes_then_del(pod):
    conf = mu.chained(pod, {"type": "sbr"})
    out = mu.run_chain("sbr", "ADD", pod, conf)
    assert out.rc == 0, out.stdout + out.stderr
    assert out.json["ips"] == pod.result["ips"]
    assert [(r["src"], r["table"], r["priority"]) for r in rules(pod)] == [(pod.ip, "100", 32765)]
    table = cnitest.ip_json("route show table 100", pod.netns)
    assert {"dst": "default", "gateway": pod.gateway, "dev": "eth0", "flags": []} in table
    assert any(r["dst"] == pod.subnet and r.get("prefsrc") == pod.ip for r in table)
    assert [r for r in cnitest.ip_json("route show table main", pod.netns) if r.get("dev") == "eth0"] == []
    ok = cnitest.sh(f"ip netns exec {pod.netns} ping -c1 -W1 -q -I {pod.ip} {pod.gateway} >/dev/null && echo ok", check=False)
    assert ok == "ok\n"  # traffic from the pod IP follows table 100 (main has no route left)
    assert mu.run_chain("sbr", "CHECK", pod, conf).rc == 0
    assert mu.run_chain("sbr", "DEL", pod, conf).rc == 0
    assert rules(pod) == []
    assert mu.run_chain("sbr", "DEL", pod, conf).rc == 0


def test_next_free_table_when_100_is_used(pod):
    cnitest.sh(f"ip -n {pod.netns} rule add from 192.0.2.1 lookup 100")
    cnitest.sh(f"ip -n {pod.netns} route add 192.0.2.0/24 dev lo table 101")
    out = mu.run_chain("sbr", "ADD", pod, mu.chained(pod, {"type": "sbr"}))
    assert out.rc == 0, out.stdout
    assert [r["table"] for r in rules(pod) if r["src"] == pod.ip] == ["102"]


def test_del_without_netns_and_errors(pod):
    conf = mu.chained(pod, {"type": "sbr"})
    out = cnitest.run("sbr", "DEL", conf, cid=pod.cid, netns="/run/netns/does-not-exist")
    assert out.rc == 0
    noprev = dict(conf)
    del noprev["prevResult"]
    out = mu.run_chain("sbr", "ADD", pod, noprev)
    assert out.rc == 1 and out.json["msg"] == "This plugin must be called as chained plugin"
    empty = mu.chained(pod, {"type": "sbr"}, prev={"cniVersion": "1.0.0", "ips": []})
    out = mu.run_chain("sbr", "ADD", pod, empty)
    assert out.rc == 1 and out.json["msg"] == "No IP addresses supplied on interface: eth0"
