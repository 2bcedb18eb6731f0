"""portmap on a live kernel (sandbox): rules after ADD, traffic through mapped ports, rules gone after DEL.

The pod is wired by the Go bridge plugin (the fixed point portmap chains after); portmap is ours,
exec'd like a runtime does. Traffic is real: busybox httpd in the pod, fetched from the sandbox host.
"""
from __future__ import annotations

import re

import pytest

import cnitest
import metautil as mu

TCP80 = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}


@pytest.fixture
def pod(netns):
    mu.reset_netfilter()  # start from empty tables, whatever an earlier test left
    p = mu.add_pod(netns, mu.uid(), hairpinMode=True)
    yield p
    mu.del_pod(p)
    mu.reset_netfilter()


def pm(pod, backend=None, mappings=(TCP80,), **extra):
    plugin = {"type": "portmap", "capabilities": {"portMappings": True}, **extra}
    if backend:
        plugin["backend"] = backend
    return mu.chained(pod, plugin, runtime={"portMappings": list(mappings)} if mappings is not None else None)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_traffic_through_mapped_port_then_gone_after_del_without_mappings(pod, backend):
    conf = pm(pod, backend, mappings=[TCP80, {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}])
    out = mu.run_chain("portmap", "ADD", pod, conf)
    assert out.rc == 0, out.stdout + out.stderr
    assert out.json["ips"] == pod.result["ips"] and out.json["interfaces"] == pod.result["interfaces"]
    assert cnitest.sh(f"sysctl -n net.ipv4.conf.{pod.bridge}.route_localnet").strip() == "1"
    with mu.http_server(pod.netns, 80, "pod says hi"):
        assert mu.fetch("http://127.0.0.1:8080/") == "pod says hi"          # localhost (output hook + masq)
        assert mu.fetch(f"http://{pod.gateway}:8080/") == "pod says hi"    # a host address
        assert mu.run_chain("portmap", "CHECK", pod, conf).rc == 0
        nodel = {k: v for k, v in conf.items() if k != "runtimeConfig"}   # DEL without portMappings
        assert mu.run_chain("portmap", "DEL", pod, nodel).rc == 0
        assert mu.fetch("http://127.0.0.1:8080/", timeout=1) == ""
    if backend == "nftables":
        rules = mu.nft_ruleset()
        assert "CNI-DN-" not in rules and "CNI-SN-" not in rules and "8080" not in rules
    else:
        assert "CNI-DN-" not in mu.iptables_save()
    assert mu.run_chain("portmap", "DEL", pod, nodel).rc == 0  # DEL twice


def owner(pod):
    return f'comment "net {pod.network} id {pod.cid}"'


def test_nft_layout_data_maps_and_no_chain_per_container(pod):
    out = mu.run_chain("portmap", "ADD", pod, pm(pod, mappings=[TCP80, {**TCP80, "hostPort": 8443, "containerPort": 443}]))
    assert out.rc == 0, out.stdout
    text = mu.nft_ruleset()
    assert f"tcp . 8080 {owner(pod)} : {pod.ip} . 80" in text and f"tcp . 8443 {owner(pod)} : {pod.ip} . 443" in text
    # hairpin: masq4 sends the endpoint to the chain of its prefix length, which checks podnets4
    assert f"{pod.ip} . tcp . 80 {owner(pod)} : jump hairpin4-24" in text
    assert f"{pod.ip} . tcp . 443 {owner(pod)} : jump hairpin4-24" in text
    assert f"{pod.subnet.split('/')[0]} . {pod.ip} {owner(pod)}" in text
    assert "ip saddr & 255.255.255.0 . ip daddr @podnets4 masquerade" in text
    assert "fib daddr type local jump hostports" in text
    chains = text.count("\tchain ")
    prefix = pod.subnet.rsplit(".", 1)[0]
    other = mu.Pod(pod.netns, "second", pod.network, pod.bridge, pod.subnet,
                   dict(pod.result, ips=[dict(pod.result["ips"][0], address=f"{prefix}.77/24")]), pod.conf)
    assert mu.run_chain("portmap", "ADD", other, pm(other, mappings=[{**TCP80, "hostPort": 8081}])).rc == 0
    text = mu.nft_ruleset()
    assert f"tcp . 8081 {owner(other)} : {prefix}.77 . 80" in text
    assert text.count("\tchain ") == chains and "chain CNI-" not in text  # a container adds elements only


def test_hairpin_from_another_pod_on_the_bridge(pod, netns_factory):
    other = netns_factory()
    conf2 = dict(pod.conf)
    out = cnitest.run("bridge", "ADD", conf2, go=True, cid="hairpin2", netns=f"/run/netns/{other}")
    assert out.rc == 0, out.stdout
    try:
        assert mu.run_chain("portmap", "ADD", pod, pm(pod)).rc == 0
        with mu.http_server(pod.netns, 80, "hairpin ok"):
            assert mu.fetch(f"http://{pod.gateway}:8080/", netns=other) == "hairpin ok"
    finally:
        cnitest.run("bridge", "DEL", conf2, go=True, cid="hairpin2", netns=f"/run/netns/{other}")


def test_host_ip_limits_the_mapping_and_other_family_is_skipped(pod):
    mappings = [{**TCP80, "hostIP": pod.gateway}, {**TCP80, "hostPort": 9090, "hostIP": "fd00::1"}]
    out = mu.run_chain("portmap", "ADD", pod, pm(pod, mappings=mappings))
    assert out.rc == 0, out.stdout
    text = mu.nft_ruleset()
    assert f"{pod.gateway} . tcp . 8080 {owner(pod)} : {pod.ip} . 80" in text
    assert "9090" not in text  # IPv6 hostIP, IPv4-only pod: skipped like Go
    with mu.http_server(pod.netns, 80, "only via hostIP"):
        assert mu.fetch(f"http://{pod.gateway}:8080/") == "only via hostIP"
        assert mu.fetch("http://127.0.0.1:8080/", timeout=1) == ""


def test_conflicting_host_port_fails_atomically(pod, netns_factory):
    assert mu.run_chain("portmap", "ADD", pod, pm(pod)).rc == 0
    other = mu.Pod(netns_factory(), "intruder", pod.network, pod.bridge, pod.subnet, pod.result, pod.conf)
    conf = mu.chained(other, {"type": "portmap"},
                      runtime={"portMappings": [{**TCP80, "hostPort": 7070}, TCP80]})
    out = mu.run_chain("portmap", "ADD", other, conf)
    assert out.rc == 1 and out.code == 999 and "already mapped" in out.json["msg"]
    assert "7070" not in mu.nft_ruleset()  # nothing of the failed ADD was applied
    assert "traceback" not in out.stdout.lower()


def test_check_detects_a_removed_mapping(pod):
    conf = pm(pod)
    assert mu.run_chain("portmap", "ADD", pod, conf).rc == 0
    assert mu.run_chain("portmap", "CHECK", pod, conf).rc == 0
    cnitest.sh("nft delete element inet cnikit_hostport ports4 '{ tcp . 8080 }'")
    out = mu.run_chain("portmap", "CHECK", pod, conf)
    assert out.rc == 1 and "8080" in out.json["msg"]


def test_repeated_add_replaces_the_mappings(pod):
    assert mu.run_chain("portmap", "ADD", pod, pm(pod)).rc == 0
    assert mu.run_chain("portmap", "ADD", pod, pm(pod, mappings=[{**TCP80, "hostPort": 8181}])).rc == 0
    text = mu.nft_ruleset()
    assert "tcp . 8181" in text and "tcp . 8080" not in text


def test_no_mappings_is_a_pass_through(pod):
    out = mu.run_chain("portmap", "ADD", pod, pm(pod, mappings=None))
    assert out.rc == 0 and out.json["ips"] == pod.result["ips"]
    assert "cnikit_hostport" not in mu.nft_ruleset()


@pytest.mark.parametrize("mapping,needle", [
    ({"hostPort": 0, "containerPort": 80, "protocol": "tcp"}, "Invalid host port number: 0"),
    ({"hostPort": 80, "containerPort": 70000, "protocol": "tcp"}, "Invalid container port number: 70000"),
    ({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}, "Invalid protocol"),
    ({"hostPort": 80, "containerPort": 80, "protocol": "tcp", "hostIP": "nope"}, "Invalid host IP"),
])
def test_bad_mappings_are_config_errors(pod, mapping, needle):
    out = mu.run_chain("portmap", "ADD", pod, pm(pod, mappings=[mapping]))
    assert out.rc == 1 and out.code == 7 and needle in out.json["msg"]
    assert "cnikit_hostport" not in mu.nft_ruleset()


def test_missing_prev_result_and_bad_backend(pod):
    conf = pm(pod)
    del conf["prevResult"]
    out = mu.run_chain("portmap", "ADD", pod, conf)
    assert out.rc == 1 and "chained" in out.json["msg"]
    out = mu.run_chain("portmap", "ADD", pod, pm(pod, backend="pf"))
    assert out.rc == 1 and out.code == 7 and "backend" in out.json["msg"]


def test_stale_udp_conntrack_entries_are_flushed_on_add(pod):
    import socket  # noqa: PLC0415
    from pyroute2.conntrack import Conntrack, NFCTAttrTuple  # noqa: PLC0415

    def entries():
        with Conntrack() as ct:
            return list(ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP, dport=5353)))

    cnitest.sh("nft add table ip ctprobe && nft add chain ip ctprobe out '{ type filter hook output priority 0; }' "
               "&& nft add rule ip ctprobe out ct state new accept")  # make conntrack track local UDP
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"early", ("127.0.0.1", 5353))  # before the mapping exists
        assert len(entries()) == 1
        out = mu.run_chain("portmap", "ADD", pod, pm(pod, mappings=[{"hostPort": 5353, "containerPort": 53,
                                                                     "protocol": "udp"}]))
        assert out.rc == 0, out.stdout
        assert entries() == []
    finally:
        cnitest.sh("nft delete table ip ctprobe", check=False)


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_gc_removes_only_invalid_containers_of_this_network(pod, netns_factory, backend):
    for n, (cid, network) in enumerate((("keep", pod.network), ("stale", pod.network), ("foreign", "othernet"))):
        prefix = pod.subnet.rsplit(".", 1)[0]
        result = dict(pod.result, ips=[dict(pod.result["ips"][0], address=f"{prefix}.{50 + n}/24")])
        other = mu.Pod(pod.netns, cid, network, pod.bridge, pod.subnet, result, dict(pod.conf, name=network))
        port = 9001 + n
        out = mu.run_chain("portmap", "ADD", other, pm(other, backend, mappings=[{**TCP80, "hostPort": port}]))
        assert out.rc == 0, out.stdout
    conf = {"cniVersion": "1.1.0", "name": pod.network, "type": "portmap", "backend": backend}

    def gc(**keep):
        out = cnitest.run("portmap", "GC", dict(conf, **keep), cid="", ifname="")
        assert (out.rc, out.stdout) == (0, ""), out.stdout + out.stderr
        state = mu.nft_ruleset() + mu.iptables_save()
        return out, [port for port in ("9001", "9002", "9003") if port in state]

    for keep in ({}, {"cni.dev/valid-attachments": None}, {"cni.dev/attachments": {"containerID": "keep"}}):
        out, ports = gc(**keep)  # no usable list (cnitool sends none): nothing collected, stderr says why
        assert "nothing collected" in out.stderr and ports == ["9001", "9002", "9003"]
    assert gc(**{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})[1] == ["9001", "9003"]
    assert gc(**{"cni.dev/valid-attachments": []})[1] == ["9003"]  # explicit empty: all of this network's go


def test_dual_stack_pod_ipv6_mapping_traffic(netns):
    n = mu.uid()
    conf = {"cniVersion": "1.0.0", "name": f"v6net{n}", "type": "bridge", "bridge": f"c6{n}", "isGateway": True,
            "ipam": {"type": "static", "addresses": [{"address": f"10.126.{n % 250}.5/24", "gateway": f"10.126.{n % 250}.1"},
                                                    {"address": f"fd00:126:{n}::5/64", "gateway": f"fd00:126:{n}::1"}]}}
    out = cnitest.run("bridge", "ADD", conf, go=True, cid="v6pod", netns=f"/run/netns/{netns}")
    assert out.rc == 0, out.stdout
    pod = mu.Pod(netns, "v6pod", conf["name"], conf["bridge"], "", out.json, conf)
    try:
        assert mu.run_chain("portmap", "ADD", pod, pm(pod)).rc == 0
        text = mu.nft_ruleset()
        assert f"tcp . 8080 {owner(pod)} : fd00:126:{n}::5 . 80" in text
        assert f"tcp . 8080 {owner(pod)} : 10.126.{n % 250}.5 . 80" in text
        assert f"fd00:126:{n}::5 . tcp . 80 {owner(pod)} : jump hairpin6-64" in text  # v6 hairpin entry
        assert f"fd00:126:{n}:: . fd00:126:{n}::5 {owner(pod)}" in text
        assert "ip6 saddr & ffff:ffff:ffff:ffff:: . ip6 daddr @podnets6 masquerade" in text
        for _ in range(100):  # the bridge's IPv6 address must finish DAD before it can be used
            if not cnitest.sh(f"ip -6 addr show dev {pod.bridge} tentative").strip():
                break
            __import__("time").sleep(0.05)
        with mu.http_server(netns, 80, "v6 ok"):
            assert mu.fetch(f"http://[fd00:126:{n}::1]:8080/") == "v6 ok"
    finally:
        mu.del_pod(pod)
        mu.reset_netfilter()


def test_nft_snat_variants_and_conditions(pod):
    out = mu.run_chain("portmap", "ADD", pod, pm(pod, masqAll=True, conditionsV4=["ip saddr != 192.0.2.0/24"]))
    assert out.rc == 0, out.stdout
    text = mu.nft_ruleset()
    # the port passes a chain shared by every mapping with these conditions; it returns on a match
    assert re.search(r"tcp . 8080 comment \"[^\"]+\" : jump CNI-CD-", text)
    assert "ip saddr != 192.0.2.0/24 return" in text
    assert re.search(rf"set masqall4 {{[^}}]*{pod.ip} . tcp . 80 comment", text)  # masqAll: every DNATed source
    assert not re.search(rf"map masq4 {{[^}}]*{pod.ip}", text)
    with mu.http_server(pod.netns, 80, "conditions hold"):
        assert mu.fetch(f"http://{pod.gateway}:8080/") == "conditions hold"
    out = mu.run_chain("portmap", "ADD", pod, pm(pod, conditionsV4=["ip saddr 192.0.2.0/24"]))
    assert out.rc == 0, out.stdout  # repeated ADD: conditions that the host's own address fails
    with mu.http_server(pod.netns, 80, "not reached"):
        assert mu.fetch(f"http://{pod.gateway}:8080/", timeout=1) == ""
    assert mu.run_chain("portmap", "ADD", pod, pm(pod, snat=False)).rc == 0  # repeated ADD, no SNAT
    text = mu.nft_ruleset()
    assert f"{pod.ip} . tcp . 80" not in text and ": jump CNI-CD-" not in text
    assert f"tcp . 8080 {owner(pod)} : {pod.ip} . 80" in text
    out = mu.run_chain("portmap", "ADD", pod, pm(pod, conditionsV4=['ip saddr 1.2.3.4; flush ruleset']))
    assert out.rc == 1 and out.code == 7  # nft syntax is checked, no injection into the batch
