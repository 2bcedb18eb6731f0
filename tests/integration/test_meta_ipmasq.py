"""The ipMasq API (netfilter.setup/teardown/check_ipmasq) that bridge and ptp call, on a live kernel:
a pod reaches a network that has no route back to it only while masquerade is in place."""
from __future__ import annotations

import pytest

import cnitest
import metautil as mu
from cni import netfilter
from cni.protocol.spec import CNIError


@pytest.fixture
def world(netns_factory):
    mu.reset_netfilter()  # start from empty tables, whatever an earlier test left
    pod = mu.add_pod(netns_factory(), mu.uid(), isDefaultGateway=True)
    ext = netns_factory()
    n = mu.uid() % 200
    host_if, ext_if = f"ux{n}", f"uy{n}"
    cnitest.sh(f"ip link add {host_if} type veth peer name {ext_if} && ip link set {ext_if} netns {ext}")
    cnitest.sh(f"ip addr add 198.51.{n}.1/24 dev {host_if} && ip link set {host_if} up")
    cnitest.sh(f"ip -n {ext} addr add 198.51.{n}.2/24 dev {ext_if} && ip -n {ext} link set {ext_if} up")
    yield pod, f"198.51.{n}.2"  # ext has no route to the pod subnet: replies need masquerade
    cnitest.sh(f"ip link del {host_if}", check=False)
    mu.del_pod(pod)
    mu.reset_netfilter()


def reach(pod, ip) -> bool:
    return cnitest.sh(f"ip netns exec {pod.netns} ping -c1 -W1 -q {ip} >/dev/null && echo ok", check=False) == "ok\n"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_masquerade_makes_the_outside_reachable_and_teardown_without_addresses(world, backend):
    pod, outside = world
    addr = pod.result["ips"][0]["address"]
    assert not reach(pod, outside)
    netfilter.setup_ipmasq(pod.network, pod.cid, [addr], backend)
    netfilter.check_ipmasq(pod.network, pod.cid, [addr], backend)
    assert reach(pod, outside)
    netfilter.teardown_ipmasq(pod.network, pod.cid, None, backend)  # addresses unknown (netns gone)
    assert not reach(pod, outside)
    with pytest.raises(CNIError):
        netfilter.check_ipmasq(pod.network, pod.cid, [addr], backend)
    netfilter.teardown_ipmasq(pod.network, pod.cid, [addr], backend)  # idempotent
    chain = netfilter.chain_name(pod.network, pod.cid)
    assert chain not in mu.nft_ruleset() and chain not in mu.iptables_save()


def test_nft_layout_and_two_containers_are_independent(world):
    pod, _ = world
    netfilter.setup_ipmasq("n1", "c1", ["10.1.0.2/24", "fd00::2/64"])
    netfilter.setup_ipmasq("n1", "c2", ["10.1.0.3/24"])
    netfilter.setup_ipmasq("n1", "c1", ["10.1.0.2/24", "fd00::2/64"])  # repeated: no duplicates
    text = mu.nft_ruleset()
    c1 = netfilter.chain_name("n1", "c1")
    assert text.count("ip saddr vmap @src4") == 1
    assert f"10.1.0.2 : jump {c1}" in text and f"fd00::2 : jump {c1}" in text
    assert text.count("ip saddr 10.1.0.2 ip daddr != 224.0.0.0/4 masquerade") == 1
    assert "ip6 saddr fd00::2 ip6 daddr != ff00::/8 masquerade" in text
    netfilter.teardown_ipmasq("n1", "c1", None)
    text = mu.nft_ruleset()
    assert c1 not in text and "10.1.0.3 : jump" in text
    with pytest.raises(CNIError) as err:  # an address owned by another container
        netfilter.setup_ipmasq("n2", "c9", ["10.1.0.3/24"])
    assert "another container" in err.value.msg
    assert netfilter.chain_name("n2", "c9") not in mu.nft_ruleset()  # the failed batch left nothing


def test_bad_input():
    with pytest.raises(CNIError) as err:
        netfilter.setup_ipmasq("n", "c", ["10.0.0.300/24"])
    assert err.value.code == 7
    with pytest.raises(CNIError) as err:
        netfilter.setup_ipmasq("n", "c", ["10.0.0.3/24"], backend="ipfw")
    assert err.value.code == 7


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_gc_removes_the_masquerade_of_invalid_containers_only(sandbox, backend):
    try:
        netfilter.setup_ipmasq("gcnet", "live", ["10.7.0.2/24"], backend)
        netfilter.setup_ipmasq("gcnet", "dead", ["10.7.0.3/24", "fd07::3/64"], backend)
        netfilter.setup_ipmasq("othernet", "dead", ["10.8.0.3/24"], backend)
        assert netfilter.gc_ipmasq("gcnet", ["live"], backend) == ["dead"]
        netfilter.check_ipmasq("gcnet", "live", ["10.7.0.2/24"], backend)
        netfilter.check_ipmasq("othernet", "dead", ["10.8.0.3/24"], backend)
        with pytest.raises(CNIError):
            netfilter.check_ipmasq("gcnet", "dead", ["10.7.0.3/24"], backend)
        assert "10.7.0.3" not in mu.nft_ruleset() and "fd07::3" not in mu.nft_ruleset()
        assert netfilter.gc_ipmasq("gcnet", ["live"], backend) == []
    finally:
        mu.reset_netfilter()
