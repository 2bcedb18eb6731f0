"""firewall on a live kernel: FORWARD accepts for the pod IPs (traffic under a DROP policy),
same-bridge isolation between two bridges, rules gone after DEL."""
from __future__ import annotations

import pytest

import cnitest
import metautil as mu


@pytest.fixture
def two_nets(netns_factory):
    mu.reset_netfilter()  # start from empty tables, whatever an earlier test left
    a, b = (mu.add_pod(netns_factory(), mu.uid(), isDefaultGateway=True) for _ in range(2))
    yield a, b
    mu.del_pod(a)
    mu.del_pod(b)
    cnitest.sh("iptables -P FORWARD ACCEPT")
    mu.reset_netfilter()


def ping(src, dst_ip) -> bool:
    return cnitest.sh(f"ip netns exec {src.netns} ping -c1 -W0.4 -q {dst_ip} >/dev/null && echo ok", check=False) == "ok\n"


def fw(pod, **keys):
    return mu.chained(pod, {"type": "firewall", **keys})


def test_iptables_accepts_pod_traffic_under_a_drop_policy_and_del_removes_it(two_nets):
    a, b = two_nets
    cnitest.sh("iptables -P FORWARD DROP")
    assert not ping(a, b.ip)
    for pod in two_nets:
        out = mu.run_chain("firewall", "ADD", pod, fw(pod, backend="iptables"))
        assert out.rc == 0, out.stdout + out.stderr
        assert out.json["ips"] == pod.result["ips"]
    assert ping(a, b.ip)
    saved = mu.iptables_save("filter")
    assert f"-A CNI-FORWARD -s {a.ip}/32 -j ACCEPT" in saved
    assert "-A FORWARD -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD" in saved
    assert mu.run_chain("firewall", "CHECK", a, fw(a, backend="iptables")).rc == 0
    assert mu.run_chain("firewall", "DEL", a, fw(a, backend="iptables")).rc == 0
    assert f"{a.ip}/32" not in mu.iptables_save("filter") and f"{b.ip}/32" in mu.iptables_save("filter")
    assert not ping(a, b.ip)
    res = mu.run_chain("firewall", "CHECK", a, fw(a, backend="iptables"))
    assert res.rc == 1 and "not found" in res.json["msg"]
    assert mu.run_chain("firewall", "DEL", a, fw(a, backend="iptables")).rc == 0  # twice


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_same_bridge_isolates_the_two_bridges(two_nets, backend):
    a, b = two_nets
    assert ping(a, b.ip)
    for pod in two_nets:
        out = mu.run_chain("firewall", "ADD", pod, fw(pod, backend=backend, ingressPolicy="same-bridge"))
        assert out.rc == 0, out.stdout + out.stderr
    assert not ping(a, b.ip) and not ping(b, a.ip)
    assert ping(a, a.gateway)  # the host side of its own bridge is still reachable
    if backend == "nftables":
        text = mu.nft_ruleset()
        assert f"{a.ip}" in text and f"\"{a.bridge}\" : jump iso-" in text
        assert mu.run_chain("firewall", "CHECK", a, fw(a, backend=backend)).rc == 0
        assert mu.run_chain("firewall", "DEL", a, fw(a, backend=backend)).rc == 0
        assert a.ip not in mu.nft_ruleset()


def test_errors_before_any_change(two_nets):
    a, _ = two_nets
    out = mu.run_chain("firewall", "ADD", a, fw(a, ingressPolicy="closed"))
    assert out.rc == 1 and out.code == 7 and out.json["msg"] == 'unknown ingress policy: "closed"'
    assert "CNI-FORWARD" not in mu.iptables_save("filter")
    out = mu.run_chain("firewall", "ADD", a, fw(a, backend="firewalld"))
    assert out.rc == 1 and out.code == 7
    old = fw(a)
    old["cniVersion"] = "0.3.1"
    out = mu.run_chain("firewall", "ADD", a, old)
    assert out.rc == 1 and out.code == 1  # firewall speaks 0.4.0 and later only
    noprev = fw(a)
    del noprev["prevResult"]
    out = mu.run_chain("firewall", "ADD", a, noprev)
    assert out.rc == 1 and out.json["msg"] == "missing prevResult from earlier plugin"
