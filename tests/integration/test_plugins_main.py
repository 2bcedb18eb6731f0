"""The main plugins on the live kernel, inside the sandbox: traffic between pods, link flags,
addresses, routes, sysctls, MTU, and that a failed ADD or a DEL leaves nothing behind.
(Differences from the Go plugins are in tests/differential; ipvlan/vlan/dummy in test_plugins_netlink.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402


def hl(subnet, data, **extra):
    return {"type": "host-local", "subnet": subnet, "dataDir": str(data), **extra}


def links(ns=None):
    return [l["ifname"] for l in cnitest.ip_json("link show", ns)]


def leases(data):
    return [f for _d, _s, files in os.walk(data) for f in files if f[0].isdigit()]


def ping(ns, addr, ok=True):
    proc = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", addr], capture_output=True, check=False)
    assert (proc.returncode == 0) == ok, f"ping {addr} from {ns}: rc={proc.returncode}"


def addrs(ns, ifname, family="inet"):
    return [f"{a['local']}/{a['prefixlen']}" for a in cnitest.ip_json(f"addr show {ifname}", ns)[0]["addr_info"]
            if a["family"] == family and a.get("scope") != "link"]


@pytest.fixture
def master():
    cnitest.sh("ip link add m0 type veth peer name m0p && ip link set m0 up && ip link set m0p up")
    yield "m0"
    cnitest.sh("ip link del m0", check=False)


@pytest.mark.parametrize("mode,reach", [("bridge", True), ("private", False)])
def test_macvlan_pods_ping(netns_factory, tmp_path, master, mode, reach):
    """Two macvlan pods on one veth master: bridge mode switches between them; private does not."""
    conf = {"cniVersion": "1.0.0", "name": "mvp", "type": "macvlan", "master": master, "mode": mode, "mtu": 1400,
            "ipam": hl("10.20.0.0/24", tmp_path)}
    pods = [netns_factory("mv") for _ in range(2)]
    outs = [cnitest.run("macvlan", "ADD", conf, cid=f"c{i}", netns=f"/run/netns/{ns}") for i, ns in enumerate(pods)]
    assert [o.rc for o in outs] == [0, 0], [o.stdout for o in outs]
    assert [o.json["ips"][0]["address"] for o in outs] == ["10.20.0.2/24", "10.20.0.3/24"]
    eth0 = cnitest.ip_json("-d link show eth0", pods[0])[0]
    assert eth0["mtu"] == 1400 and eth0["linkinfo"]["info_data"]["mode"] == mode and "UP" in eth0["flags"]
    assert cnitest.sh(f"ip netns exec {pods[0]} sysctl -n net.ipv4.conf.eth0.arp_notify").strip() == "1"
    ping(pods[0], "10.20.0.3", reach)
    for i, ns in enumerate(pods):
        assert cnitest.run("macvlan", "DEL", conf, cid=f"c{i}", netns=f"/run/netns/{ns}").rc == 0
        assert links(ns) == ["lo"]
    assert leases(tmp_path) == []


def test_bridge_pods_ping_and_gateway(netns_factory, tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "brp", "type": "bridge", "bridge": "cnitest0", "isDefaultGateway": True,
            "hairpinMode": True, "mtu": 1450, "ipam": hl("10.21.0.0/24", tmp_path)}
    pods = [netns_factory("br") for _ in range(2)]
    outs = [cnitest.run("bridge", "ADD", conf, cid=f"c{i}", netns=f"/run/netns/{ns}") for i, ns in enumerate(pods)]
    assert [o.rc for o in outs] == [0, 0], [o.stdout for o in outs]
    host_veths = [o.json["interfaces"][1]["name"] for o in outs]
    br = cnitest.ip_json("-d link show cnitest0")[0]
    assert br["mtu"] == 1450 and addrs(None, "cnitest0") == ["10.21.0.1/24"]
    for veth in host_veths:
        port = cnitest.ip_json(f"-d link show {veth}")[0]
        assert port["master"] == "cnitest0" and port["mtu"] == 1450
        assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert cnitest.sh("sysctl -n net.ipv4.ip_forward").strip() == "1"
    routes = cnitest.ip_json("route show default", pods[0])
    assert routes[0]["gateway"] == "10.21.0.1" and routes[0]["dev"] == "eth0"
    ping(pods[0], "10.21.0.3")
    ping(pods[1], "10.21.0.1")
    for i, ns in enumerate(pods):
        assert cnitest.run("bridge", "DEL", conf, cid=f"c{i}", netns=f"/run/netns/{ns}").rc == 0
        assert links(ns) == ["lo"]
    assert not set(host_veths) & set(links()) and leases(tmp_path) == []
    cnitest.sh("ip link del cnitest0")


def test_bridge_masquerade_nftables(netns_factory, tmp_path):
    """ipMasq with the default (nftables) backend; a DEL after the netns is gone still removes it."""
    conf = {"cniVersion": "1.0.0", "name": "brm", "type": "bridge", "bridge": "cnitest1", "isGateway": True,
            "ipMasq": True, "ipam": hl("10.23.0.0/24", tmp_path)}
    pod = netns_factory("bm")
    out = cnitest.run("bridge", "ADD", conf, cid="m1", netns=f"/run/netns/{pod}")
    assert out.rc == 0, out.stdout
    assert "10.23.0.2" in cnitest.sh("nft list ruleset")
    prev = dict(conf, prevResult=out.json)
    assert cnitest.run("bridge", "CHECK", prev, cid="m1", netns=f"/run/netns/{pod}").rc == 0
    cnitest.sh(f"ip netns del {pod}")
    assert cnitest.run("bridge", "DEL", prev, cid="m1", netns=f"/run/netns/{pod}").rc == 0
    assert "10.23.0.2" not in cnitest.sh("nft list ruleset") and leases(tmp_path) == []
    cnitest.sh("ip link del cnitest1")


def test_ptp_host_reaches_pod(netns, tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "ptpp", "type": "ptp", "mtu": 1400,
            "ipam": hl("10.22.0.0/24", tmp_path, routes=[{"dst": "0.0.0.0/0"}])}
    out = cnitest.run("ptp", "ADD", conf, netns=f"/run/netns/{netns}")
    assert out.rc == 0, out.stdout
    host = out.json["interfaces"][0]["name"]
    assert addrs(None, host) == ["10.22.0.1/32"] and addrs(netns, "eth0") == ["10.22.0.2/24"]
    routes = {r["dst"]: r for r in cnitest.ip_json("route show", netns)}
    assert routes["10.22.0.1"]["scope"] == "link" and routes["10.22.0.0/24"]["gateway"] == "10.22.0.1"
    ping(netns, "10.22.0.1")
    subprocess.run(["ping", "-c1", "-W1", "10.22.0.2"], check=True, capture_output=True)
    assert cnitest.run("ptp", "DEL", conf, netns=f"/run/netns/{netns}").rc == 0
    assert links(netns) == ["lo"] and host not in links() and leases(tmp_path) == []


def test_tap(netns, tmp_path):
    cnitest.sh(f"ip -n {netns} link add brt type bridge")
    conf = {"cniVersion": "1.0.0", "name": "tapn", "type": "tap", "mtu": 1300, "multiQueue": True, "owner": 1234,
            "group": 4321, "bridge": "brt", "runtimeConfig": {"mac": "02:00:00:00:00:77"},
            "ipam": hl("10.24.0.0/24", tmp_path)}
    out = cnitest.run("tap", "ADD", conf, netns=f"/run/netns/{netns}", ifname="tap0")
    assert out.rc == 0, out.stdout
    assert out.json["interfaces"] == [{"name": "tap0", "mac": "02:00:00:00:00:77", "sandbox": f"/run/netns/{netns}"}]
    tap = cnitest.ip_json("-d link show tap0", netns)[0]
    assert tap["linkinfo"]["info_kind"] == "tun" and tap["mtu"] == 1300 and tap["master"] == "brt"
    data = tap["linkinfo"]["info_data"]
    assert data["type"] == "tap" and data["multi_queue"] and str(data["user"]) == "1234" and str(data["group"]) == "4321"
    assert addrs(netns, "tap0") == ["10.24.0.2/24"]
    prev = dict(conf, prevResult=out.json)
    assert cnitest.run("tap", "CHECK", prev, netns=f"/run/netns/{netns}", ifname="tap0").rc == 0
    for _ in range(2):
        assert cnitest.run("tap", "DEL", prev, netns=f"/run/netns/{netns}", ifname="tap0").rc == 0
    assert links(netns) == ["lo", "brt"] and leases(tmp_path) == []


def test_tap_selinux_refused(netns):
    out = cnitest.run("tap", "ADD", {"cniVersion": "1.0.0", "name": "t", "type": "tap", "selinuxContext": "x"},
                      netns=f"/run/netns/{netns}")
    assert out.rc == 1 and out.json["code"] == 2 and links(netns) == ["lo"]


@pytest.fixture
def hostdev():
    cnitest.sh("ip link add hd0 address 02:00:00:00:08:01 type veth peer name hd0p && ip link set hd0p up")
    yield "hd0"
    cnitest.sh("ip link del hd0", check=False)


def test_host_device_kernelpath(netns_factory):
    """kernelpath names the parent device dir; its net/ lists the netdevs and the first one is taken.
    Run in a fresh "node" netns through `ip netns exec` (which mounts that netns's sysfs), so that
    /sys/devices/virtual/net holds exactly hd0, hd0p and lo whatever other tests left elsewhere."""
    node, pod = netns_factory("hn"), netns_factory("hp")
    cnitest.sh(f"ip -n {node} link add hd0 address 02:00:00:00:08:01 type veth peer name hd0p")
    conf = {"cniVersion": "1.0.0", "name": "hd", "type": "host-device", "kernelpath": "/sys/devices/virtual"}

    def run(command):
        env = cnitest.cni_env(command, netns=f"/run/netns/{pod}", ifname="net1", path=cnitest.OUR_BIN)
        proc = subprocess.run(["ip", "netns", "exec", node, os.path.join(cnitest.OUR_BIN, "host-device")],
                              input=json.dumps(conf).encode(), env=env, capture_output=True, check=False)
        return cnitest.Outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    out = run("ADD")
    assert out.rc == 0, out.stdout
    dev = cnitest.ip_json("link show net1", pod)[0]
    assert dev["ifalias"] == "hd0" and dev["address"] == "02:00:00:00:08:01" and "UP" in dev["flags"]
    assert "hd0" not in links(node)
    assert run("DEL").rc == 0
    assert "hd0" in links(node) and links(pod) == ["lo"]


@pytest.mark.parametrize("driver,moved", [("virtio-pci", True), ("vfio-pci", False)])
def test_host_device_pci(netns, hostdev, tmp_path, monkeypatch, driver, moved):
    """pciBusID / runtimeConfig.deviceID against a stand-in /sys/bus/pci/devices (no PCI NICs here):
    a kernel driver's device is moved via its virtio*/net dir; a userspace (DPDK) one is left alone."""
    from cni.plugins.main import host_device

    pci = tmp_path / "pci"
    (pci / "0000:00:05.0" / "virtio3" / "net" / "hd0").mkdir(parents=True)
    (tmp_path / "drivers" / driver).mkdir(parents=True)
    os.symlink(tmp_path / "drivers" / driver, pci / "0000:00:05.0" / "driver")
    monkeypatch.setattr(host_device, "SYS_BUS_PCI", str(pci))
    conf = {"cniVersion": "1.0.0", "name": "hd", "type": "host-device", "runtimeConfig": {"deviceID": "0000:00:05.0"}}
    out = cnitest.inproc("host-device", "ADD", conf, netns=f"/run/netns/{netns}")
    assert out.rc == 0, out.stdout + out.stderr
    assert ("hd0" in links()) is not moved and ("eth0" in links(netns)) is moved
    assert len(out.json.get("interfaces", [])) == (1 if moved else 0)
    assert cnitest.inproc("host-device", "DEL", conf, netns=f"/run/netns/{netns}").rc == 0
    assert "hd0" in links()


def test_host_device_name_clash_keeps_device_on_host(netns, hostdev):
    cnitest.sh(f"ip -n {netns} link add eth0 type veth peer name p0")
    conf = {"cniVersion": "1.0.0", "name": "hd", "type": "host-device", "device": "hd0"}
    out = cnitest.run("host-device", "ADD", conf, netns=f"/run/netns/{netns}")
    assert out.rc == 1 and out.json["msg"] == 'failed to move link: "eth0" already exists in the container'
    assert "hd0" in links() and sorted(links(netns)) == ["eth0", "lo", "p0"]


# --- a failed ADD undoes its own work -------------------------------------------------------

@pytest.mark.parametrize("plugin,extra", [
    # IPAM succeeds, then a route cannot be added (gateway unreachable): link and lease must go
    ("macvlan", {"master": "m0", "ipam": {"routes": [{"dst": "10.99.0.0/16", "gw": "192.0.2.1"}]}}),
    ("tap", {"ipam": {"routes": [{"dst": "10.99.0.0/16", "gw": "192.0.2.1"}]}}),
    # everything up to the masquerade works, then an unknown netfilter backend fails it
    ("bridge", {"bridge": "cnitest2", "isGateway": True, "ipMasq": True, "ipMasqBackend": "bogus"}),
    ("ptp", {"ipMasq": True, "ipMasqBackend": "bogus"}),
])
def test_failed_add_leaves_nothing(netns, tmp_path, master, plugin, extra):
    ipam = hl("10.25.0.0/24", tmp_path)
    ipam.update(extra.pop("ipam", {}))
    conf = {"cniVersion": "1.0.0", "name": "undo", "type": plugin, "ipam": ipam, **extra}
    host_before = [l for l in links() if l.startswith("veth")]
    out = cnitest.run(plugin, "ADD", conf, netns=f"/run/netns/{netns}")
    assert out.rc == 1 and "Traceback" not in out.stdout, out.stdout
    assert links(netns) == ["lo"]
    assert [l for l in links() if l.startswith("veth")] == host_before
    assert leases(tmp_path) == []
    cnitest.sh("ip link del cnitest2", check=False)


def test_bridge_macspoofchk_drops_spoofed_frames(netns_factory, tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "brs", "type": "bridge", "bridge": "cnitest3", "macspoofchk": True,
            "ipam": hl("10.26.0.0/24", tmp_path)}
    pods = [netns_factory("sp") for _ in range(2)]
    for i, ns in enumerate(pods):
        assert cnitest.run("bridge", "ADD", conf, cid=f"s{i}", netns=f"/run/netns/{ns}").rc == 0
    ping(pods[0], "10.26.0.3")
    cnitest.sh(f"ip -n {pods[0]} link set eth0 address 02:00:00:00:66:66")
    cnitest.sh(f"ip -n {pods[1]} neigh flush all")
    ping(pods[0], "10.26.0.3", ok=False)  # the new source MAC is not the container's: dropped
    for i, ns in enumerate(pods):
        assert cnitest.run("bridge", "DEL", conf, cid=f"s{i}", netns=f"/run/netns/{ns}").rc == 0
    assert "cni-br-iface" not in cnitest.sh("nft list table bridge nat")
    cnitest.sh("ip link del cnitest3")
