"""cnikit-routed (calico-style pod plumbing), through its executable, inside the sandbox.

The sandbox stands in for a node: an uplink with a default route (proxy ARP answers for
169.254.1.1 only when the node has a unicast route to it through another interface), pods in
netns. Differential parts run Go's ptp side by side where the two behave the same by design."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from cnitest import ip_json, run, sh

PLUGIN = "cnikit-routed"
HOST_MAC = "ee:ee:ee:ee:ee:ee"


@pytest.fixture
def node(sandbox, tmp_path):
    """The sandbox's own netns as the node: an uplink with a default route (removed after)."""
    sh("ip link set lo up; ip link add rup0 type veth peer name rup1; ip addr add 192.168.77.1/24 dev rup0;"
       " ip link set rup0 up; ip link set rup1 up; ip route replace default via 192.168.77.2")
    yield str(tmp_path / "ipam")
    sh("ip link del rup0", check=False)


def conf(datadir: str, v6: bool = False, **extra):
    ranges = [[{"subnet": "10.244.1.0/26"}]] + ([[{"subnet": "fd00:244:1::/120"}]] if v6 else [])
    out = {"cniVersion": "1.0.0", "name": "routednet", "type": PLUGIN,
           "ipam": {"type": "host-local", "ranges": ranges, "dataDir": datadir}}
    out.update(extra)
    return out


def leases(datadir: str):
    d = os.path.join(datadir, "routednet")
    return sorted(f for f in os.listdir(d) if f[0].isdigit() or ":" in f) if os.path.isdir(d) else []


def host_links():
    return {l["ifname"]: l for l in ip_json("link show") if l["ifname"].startswith("cali")}


def with_prev(c, result):
    return dict(c, prevResult=result)


def test_add_plumbing_dual_stack_and_traffic(node, netns_factory):
    a, b = netns_factory("ra"), netns_factory("rb")
    c = conf(node, v6=True)
    ra = run(PLUGIN, "ADD", c, cid="ca", netns=f"/run/netns/{a}")
    rb = run(PLUGIN, "ADD", c, cid="cb", netns=f"/run/netns/{b}")
    assert ra.rc == 0 and rb.rc == 0, ra.stdout + rb.stdout
    res = ra.json
    host, cont = res["interfaces"]
    assert host["mac"] == HOST_MAC and host["name"].startswith("cali") and len(host["name"]) == 15
    assert cont == {"name": "eth0", "mac": cont["mac"], "sandbox": f"/run/netns/{a}"}
    assert [ip["address"] for ip in res["ips"]] == ["10.244.1.2/32", "fd00:244:1::2/128"]
    assert all(ip["interface"] == 1 for ip in res["ips"])
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                             {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}]
    # pod side: the address alone, on-link next hop, default via it
    addrs = {(x["local"], x["prefixlen"]) for x in ip_json("addr show dev eth0", a)[0]["addr_info"]
             if x["scope"] == "global"}
    assert addrs == {("10.244.1.2", 32), ("fd00:244:1::2", 128)}
    routes4 = {(r["dst"], r.get("gateway"), r.get("scope")) for r in ip_json("-4 route show", a)}
    assert routes4 == {("default", "169.254.1.1", None), ("169.254.1.1", None, "link")}
    assert any(r["dst"] == "default" and r.get("gateway") == "fe80::ecee:eeff:feee:eeee"
               for r in ip_json("-6 route show", a))
    # host side: no address but the MAC's link-local, proxy ARP without delay, one route per pod address
    link = host_links()[host["name"]]
    assert link["address"] == HOST_MAC and link["operstate"] == "UP"
    assert {x["local"] for x in ip_json(f"addr show dev {host['name']}")[0]["addr_info"]} \
        == {"fe80::ecee:eeff:feee:eeee"}
    for key, want in (("net.ipv4.conf.{}.proxy_arp", "1"), ("net.ipv4.neigh.{}.proxy_delay", "0"),
                      ("net.ipv6.conf.{}.accept_dad", "0")):
        assert sh(f"sysctl -n {key.format(host['name'])}").strip() == want
    assert {(r["dst"], r.get("scope")) for r in ip_json(f"-4 route show dev {host['name']}")} \
        == {("10.244.1.2", "link")}
    assert [r["dst"] for r in ip_json(f"-6 route show dev {host['name']}") if r["dst"] != "fe80::/64"] \
        == ["fd00:244:1::2"]
    # traffic: pod -> pod (through the host, ttl 63), host -> pod, both families; first ping is not delayed
    out = sh(f"ip netns exec {a} ping -c1 -W2 10.244.1.3")
    assert "ttl=63" in out and float(out.split("time=")[1].split()[0]) < 100  # proxy_delay 0: no ~600 ms
    sh(f"ip netns exec {a} ping -6 -c1 -W2 fd00:244:1::3")
    sh("ping -c1 -W2 10.244.1.3")
    # the pod resolved its next hop to the host end's MAC by proxy ARP
    neigh = ip_json("neigh show 169.254.1.1", a)
    assert neigh and neigh[0]["lladdr"] == HOST_MAC


def test_check_passes_then_detects_drift(node, netns):
    c = conf(node)
    add = run(PLUGIN, "ADD", c, cid="c1", netns=f"/run/netns/{netns}")
    assert add.rc == 0, add.stdout
    hostname = add.json["interfaces"][0]["name"]
    chk = run(PLUGIN, "CHECK", with_prev(c, add.json), cid="c1", netns=f"/run/netns/{netns}")
    assert chk.rc == 0, chk.stdout
    sh(f"sysctl -qw net.ipv4.conf.{hostname}.proxy_arp=0")
    chk = run(PLUGIN, "CHECK", with_prev(c, add.json), cid="c1", netns=f"/run/netns/{netns}")
    assert chk.rc == 1 and chk.json["msg"] == f"cnikit-routed: net/ipv4/conf/{hostname}/proxy_arp is 0, expected 1"
    sh(f"sysctl -qw net.ipv4.conf.{hostname}.proxy_arp=1")
    sh(f"ip route del 10.244.1.2/32 dev {hostname}")
    chk = run(PLUGIN, "CHECK", with_prev(c, add.json), cid="c1", netns=f"/run/netns/{netns}")
    assert chk.rc == 1 and chk.json["msg"] == f"cnikit-routed: host route 10.244.1.2/32 dev {hostname} not found"
    sh(f"ip -n {netns} route del 169.254.1.1")  # takes the default route with it
    chk = run(PLUGIN, "CHECK", with_prev(c, add.json), cid="c1", netns=f"/run/netns/{netns}")
    assert chk.rc == 1 and "169.254.1.1" in chk.json["msg"] and "not found in routing table" in chk.json["msg"]


def test_del_removes_link_route_and_lease_and_is_idempotent(node, netns):
    c = conf(node)
    add = run(PLUGIN, "ADD", c, cid="c1", netns=f"/run/netns/{netns}")
    assert add.rc == 0 and leases(node) == ["10.244.1.2"]
    hostname = add.json["interfaces"][0]["name"]
    assert run(PLUGIN, "DEL", c, cid="c1", netns=f"/run/netns/{netns}").rc == 0
    assert hostname not in host_links() and leases(node) == []
    assert not [r for r in ip_json("-4 route show") if r["dst"] == "10.244.1.2"]
    assert "eth0" not in {l["ifname"] for l in ip_json("link show", netns)}
    # again, and with the netns gone: success, nothing to do
    assert run(PLUGIN, "DEL", c, cid="c1", netns=f"/run/netns/{netns}").rc == 0
    assert run(PLUGIN, "DEL", c, cid="c1", netns="/run/netns/gone-long-ago").rc == 0


def test_gc_without_keep_list_releases_nothing(node, netns_factory):
    c = conf(node)
    for cid in ("k1", "k2"):
        assert run(PLUGIN, "ADD", c, cid=cid, netns=f"/run/netns/{netns_factory()}").rc == 0
    assert len(leases(node)) == 2
    gc = dict(c, cniVersion="1.1.0")
    assert run(PLUGIN, "GC", gc).rc == 0
    assert len(leases(node)) == 2  # no cni.dev/valid-attachments: nothing released
    gc["cni.dev/valid-attachments"] = [{"containerID": "k1", "ifname": "eth0"}]
    assert run(PLUGIN, "GC", gc).rc == 0
    assert leases(node) == ["10.244.1.2"]


@pytest.mark.parametrize("bad, code, msg", [
    ({"vethPrefix": "toolong"}, 7, "vethPrefix 'toolong' must be 1-4 letters or digits (the name has 11 more)"),
    ({"vethPrefix": "a-b"}, 7, "vethPrefix 'a-b' must be 1-4 letters or digits (the name has 11 more)"),
    ({"mtu": -1}, 7, "invalid mtu -1: must be between 0 and 65535"),
    ({"ipam": None}, 7, "IPAM plugin type is missing"),
])
def test_config_errors(node, netns, bad, code, msg):
    c = conf(node)
    c.update(bad)
    if c["ipam"] is None:
        del c["ipam"]
    out = run(PLUGIN, "ADD", c, cid="c1", netns=f"/run/netns/{netns}")
    assert (out.rc, out.code, out.json["msg"]) == (1, code, msg)
    assert not host_links() and leases(node) == []


def test_failed_add_leaves_nothing(node, netns_factory):
    c = conf(node)
    a = netns_factory()
    # the netns is missing: fails before IPAM
    out = run(PLUGIN, "ADD", c, cid="c1", netns="/run/netns/not-there")
    assert out.rc == 1 and "failed to open netns" in out.json["msg"] and leases(node) == []
    # the host end's name is taken (a leftover of the same attachment): the lease and the pod end go again
    from cni.plugins.main.routed import host_veth_name  # noqa: PLC0415
    taken = host_veth_name("cali", "c1", "eth0")
    sh(f"ip link add {taken} type dummy 2>/dev/null || ip link add {taken} type veth peer name zzpeer0")
    out = run(PLUGIN, "ADD", c, cid="c1", netns=f"/run/netns/{a}")
    assert out.rc == 1 and out.json["msg"] == f"host veth name {taken} already exists"
    assert leases(node) == [] and "eth0" not in {l["ifname"] for l in ip_json("link show", a)}
    sh(f"ip link del {taken}")
    # IPAM exhausted: nothing made
    small = conf(node)
    small["ipam"]["ranges"] = [[{"subnet": "10.244.1.0/26", "rangeStart": "10.244.1.5", "rangeEnd": "10.244.1.5"}]]
    assert run(PLUGIN, "ADD", small, cid="c2", netns=f"/run/netns/{a}").rc == 0
    b = netns_factory()
    out = run(PLUGIN, "ADD", small, cid="c3", netns=f"/run/netns/{b}")
    assert out.rc == 1 and "no IP addresses available" in out.json["msg"]
    assert leases(node) == ["10.244.1.5"] and len(host_links()) == 1
    assert "eth0" not in {l["ifname"] for l in ip_json("link show", b)}


# --- side by side with Go's ptp where the behaviour is the same by design --------------------

def _ptp_and_routed(datadir: str, tmp: str, **extra):
    """The same IPAM under both plugins, each with its own store."""
    go = conf(os.path.join(tmp, "go"), **extra)
    go["type"] = "ptp"
    return go, conf(datadir, **extra)


@pytest.mark.parametrize("case", ["ifname-exists", "exhausted", "bad-mtu-type", "del-gone-netns",
                                  "check-no-prev"])
def test_same_as_go_ptp(node, netns_factory, tmp_path, case):
    go_conf, our_conf = _ptp_and_routed(node, str(tmp_path), mtu="x" if case == "bad-mtu-type" else None)
    outs = []
    for go, c in ((True, go_conf), (False, our_conf)):
        ns = netns_factory()
        path = f"/run/netns/{ns}"
        if case == "ifname-exists":
            sh(f"ip -n {ns} link add eth0 type veth peer name other0")
            out = run(c["type"], "ADD", c, go=go, cid="c1", netns=path)
        elif case == "exhausted":
            one = "10.244.1.9" if go else "10.244.1.10"  # both sides share the node's routing table
            c["ipam"]["ranges"] = [[{"subnet": "10.244.1.0/26", "rangeStart": one, "rangeEnd": one}]]
            assert run(c["type"], "ADD", c, go=go, cid="c0", netns=path).rc == 0
            out = run(c["type"], "ADD", c, go=go, cid="c1", netns=f"/run/netns/{netns_factory()}")
        elif case == "del-gone-netns":
            out = run(c["type"], "DEL", c, go=go, cid="c1", netns="/run/netns/gone")
        elif case == "check-no-prev":
            out = run(c["type"], "CHECK", c, go=go, cid="c1", netns=path)
        else:
            out = run(c["type"], "ADD", c, go=go, cid="c1", netns=path)
        outs.append(out)
    g, o = outs
    assert g.rc == o.rc and g.code == o.code
    if g.rc:
        # Go ptp prefixes its own name where we prefix ours
        assert g.json["msg"].replace("ptp: ", "cnikit-routed: ").replace(".9", ".10") == o.json["msg"]
    # whatever failed left no lease beyond what the case made on purpose, on either side
    if case in ("ifname-exists", "bad-mtu-type"):
        assert leases(node) == [] and leases(os.path.join(str(tmp_path), "go")) == []


# --- policy-lite: per-pod ingress allow-lists (netfilter/ingress.py) --------------------------

LISTEN = ("import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('0.0.0.0', {port})); s.listen(8); print('up', flush=True)\n"
          "while True:\n    c, _ = s.accept(); c.close()\n")
CONNECT = "import socket, sys\ntry:\n    socket.create_connection(('{dst}', {port}), timeout=1).close()\nexcept OSError:\n    sys.exit(1)\n"


def tcp_ok(ns, dst, port):
    return subprocess.run(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", CONNECT.format(dst=dst, port=port)],
                          check=False).returncode == 0


def ping_ok(ns, dst):
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", dst], capture_output=True,
                          check=False).returncode == 0


def with_policy(c, allow):
    return dict(c, capabilities={"ingressAllow": True}, runtimeConfig={"ingressAllow": allow})


def test_ingress_allow_list_filters_forwarded_traffic_and_goes_with_the_pod(node, netns_factory):
    a, b, x = netns_factory("pa"), netns_factory("pb"), netns_factory("px")
    c = conf(node)
    ip_a = run(PLUGIN, "ADD", c, cid="ca", netns=f"/run/netns/{a}").json["ips"][0]["address"].split("/")[0]
    allow = [{"cidr": f"{ip_a}/32", "protocol": "tcp", "port": 8080}]
    add_b = run(PLUGIN, "ADD", with_policy(c, allow), cid="cb", netns=f"/run/netns/{b}")
    assert add_b.rc == 0, add_b.stdout
    ip_b = add_b.json["ips"][0]["address"].split("/")[0]
    ip_x = run(PLUGIN, "ADD", c, cid="cx", netns=f"/run/netns/{x}").json["ips"][0]["address"].split("/")[0]
    server = subprocess.Popen(["ip", "netns", "exec", b, "/usr/bin/python3", "-c", LISTEN.format(port=8080)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "up"
        assert tcp_ok(a, ip_b, 8080)          # the allowed source and port
        assert not tcp_ok(x, ip_b, 8080)      # another pod
        assert not ping_ok(a, ip_b)           # the allowed source, another protocol
        assert ping_ok(b, ip_a) and ping_ok(b, ip_x)  # the pod's own connections: replies come back
        assert ping_ok(a, ip_x)               # a pod without a list takes everything
    finally:
        server.kill()
        server.wait()
    hostname = add_b.json["interfaces"][0]["name"]
    chk = run(PLUGIN, "CHECK", with_prev(with_policy(c, allow), add_b.json), cid="cb", netns=f"/run/netns/{b}")
    assert chk.rc == 0, chk.stdout
    sh(f"nft flush chain inet cnikit_ingress pod-{hostname}")
    chk = run(PLUGIN, "CHECK", with_prev(with_policy(c, allow), add_b.json), cid="cb", netns=f"/run/netns/{b}")
    assert chk.rc == 1 and chk.json["msg"] == f"cnikit-routed: ingress chain pod-{hostname} does not hold the pod's allow-list"
    assert run(PLUGIN, "DEL", with_policy(c, allow), cid="cb", netns=f"/run/netns/{b}").rc == 0
    listing = sh("nft list table inet cnikit_ingress")
    assert f"pod-{hostname}" not in listing and hostname not in listing


def test_ingress_errors_and_gc(node, netns_factory):
    c = conf(node)
    ns = netns_factory()
    for bad, msg in (("x", "ingressAllow must be a list of {cidr, protocol, port}"),
                     ([{"cidr": "10.0.0.0/8", "port": 80}], "ingressAllow[0].port needs protocol tcp, udp or sctp"),
                     ([{"cidr": "nope"}], "ingressAllow[0].cidr 'nope' is not a CIDR"),
                     ([{"cidr": "10.0.0.0/8", "protocol": "gre"}], "ingressAllow[0].protocol must be one of tcp, udp, sctp, icmp")):
        out = run(PLUGIN, "ADD", with_policy(c, bad), cid="c1", netns=f"/run/netns/{ns}")
        assert (out.rc, out.code, out.json["msg"]) == (1, 7, msg)
        assert not host_links() and leases(node) == []
    # a failed ADD after the policy was made takes it away again (the host veth name is taken)
    from cni.plugins.main.routed import host_veth_name  # noqa: PLC0415
    taken = host_veth_name("cali", "c9", "eth0")
    sh(f"ip link add {taken} type veth peer name zzpeer9")
    out = run(PLUGIN, "ADD", with_policy(c, [{"cidr": "10.0.0.0/8"}]), cid="c9", netns=f"/run/netns/{ns}")
    assert out.rc == 1 and f"pod-{taken}" not in sh("nft list ruleset")
    sh(f"ip link del {taken}")
    # GC: only with a keep-list, and only the chains of pods not on it
    names = {}
    for cid in ("g1", "g2"):
        r = run(PLUGIN, "ADD", with_policy(c, [{"cidr": "10.0.0.0/8", "protocol": "icmp"}]), cid=cid,
                netns=f"/run/netns/{netns_factory()}")
        assert r.rc == 0, r.stdout
        names[cid] = r.json["interfaces"][0]["name"]
    gc = dict(with_policy(c, None), cniVersion="1.1.0")
    del gc["runtimeConfig"]
    assert run(PLUGIN, "GC", gc).rc == 0
    assert all(f"pod-{n}" in sh("nft list table inet cnikit_ingress") for n in names.values())
    gc["cni.dev/valid-attachments"] = [{"containerID": "g1", "ifname": "eth0"}]
    assert run(PLUGIN, "GC", gc).rc == 0
    listing = sh("nft list table inet cnikit_ingress")
    assert f"pod-{names['g1']}" in listing and f"pod-{names['g2']}" not in listing
