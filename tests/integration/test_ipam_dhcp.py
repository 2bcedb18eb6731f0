"""dhcp IPAM against a real dnsmasq, both ends inside the sandbox: dnsmasq serves a bridge br0 in a
"server" netns; pods are netns whose eth0 (down, no address) is a veth into that bridge."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402
from cnitest import ip_json, sh  # noqa: E402

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
pytestmark = pytest.mark.skipif(not os.path.exists(DNSMASQ), reason="dnsmasq (dnsmasq-base) not installed")


class Lab:
    def __init__(self, srv, pod, tmp):
        self.srv, self.pod, self.tmp = srv, pod, tmp
        self.leases = os.path.join(tmp, "dnsmasq.leases")
        self.proc = None

    def start(self, *extra):
        self.proc = subprocess.Popen(
            [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root", "--group=root",
             "--interface=br0", "--bind-interfaces", "--no-ping", "--dhcp-range=10.77.0.50,10.77.0.59,255.255.255.0,1h",
             f"--dhcp-leasefile={self.leases}", "--pid-file", "--dhcp-option=option:router,10.77.0.1",
             "--log-dhcp", *extra],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.tmp, "dnsmasq.log"), "w"),
            preexec_fn=lambda: _enter(self.srv))
        deadline = time.time() + 5
        while ":67 " not in sh(f"ip netns exec {self.srv} ss -lunH"):  # ready once bound to bootps
            assert time.time() < deadline and self.proc.poll() is None, "dnsmasq did not start"
            time.sleep(0.02)

    def plug(self, pod, ifname="eth0", port=None):
        port = port or f"p{pod[-6:]}{ifname[-1]}"
        sh(f"ip -n {self.srv} link add {port} type veth peer name {ifname} netns {pod}")
        sh(f"ip -n {self.srv} link set {port} master br0 up")

    def leased(self):
        """{ip: client-id hex} from dnsmasq's lease file."""
        try:
            lines = open(self.leases).read().split("\n")
        except FileNotFoundError:
            return {}
        return {f[2]: f[4] for f in (line.split() for line in lines) if len(f) >= 5}

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def _enter(name):
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    os.setns(fd, os.CLONE_NEWNET)


@pytest.fixture
def lab(netns_factory, tmp_path):
    srv, pod = netns_factory("srv"), netns_factory("pod")
    sh(f"ip -n {srv} link add br0 type bridge && ip -n {srv} addr add 10.77.0.1/24 dev br0 "
       f"&& ip -n {srv} link set br0 up")
    lab = Lab(srv, pod, str(tmp_path))
    lab.plug(pod)
    yield lab
    lab.stop()


def conf(**ipam):
    return {"cniVersion": "1.0.0", "name": "dnet", "type": "macvlan", "ipam": {"type": "dhcp", "timeout": 6, **ipam}}


def run(lab, command, c, cid="pod1", netns=None, **kw):
    return cnitest.run("dhcp", command, c, cid=cid, netns=f"/run/netns/{lab.pod}" if netns is None else netns, **kw)


def client_id_hex(cid, net="dnet", ifname="eth0"):
    return ":".join(f"{b:02x}" for b in b"\x00" + f"{cid}/{net}/{ifname}".encode())


def test_add_gets_lease_with_router_and_del_releases_it(lab):
    lab.start()
    out = run(lab, "ADD", conf())
    assert out.rc == 0, out.stdout + out.stderr
    res = out.json
    ip = res["ips"][0]["address"]
    assert ip.endswith("/24") and ip.startswith("10.77.0.5")
    assert res["ips"][0]["gateway"] == "10.77.0.1"
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}]
    assert lab.leased() == {ip.split("/")[0]: client_id_hex("pod1")}
    assert ip_json("link show eth0", lab.pod)[0]["operstate"] in ("UP", "UNKNOWN")  # brought up like Go
    assert os.path.exists("/run/cni/dhcp/dnet/pod1:eth0.json")
    assert run(lab, "CHECK", conf()).rc == 0
    assert run(lab, "DEL", conf()).rc == 0
    deadline = time.time() + 5
    while lab.leased() and time.time() < deadline:
        time.sleep(0.1)
    assert lab.leased() == {}  # dnsmasq accepted our RELEASE
    assert not os.path.exists("/run/cni/dhcp/dnet/pod1:eth0.json")
    assert run(lab, "DEL", conf()).rc == 0  # lease missing: still OK
    assert run(lab, "CHECK", conf()).rc == 1


def test_classless_routes_requested_win_over_router(lab):
    lab.start("--dhcp-option=121,10.99.0.0/16,10.77.0.254,0.0.0.0/0,10.77.0.1")
    out = run(lab, "ADD", conf(request=[{"option": "121"}]), cid="pod2")
    assert out.rc == 0, out.stdout + out.stderr
    assert out.json["routes"] == [{"dst": "10.99.0.0/16", "gw": "10.77.0.254"}, {"dst": "0.0.0.0/0", "gw": "10.77.0.1"}]
    assert run(lab, "DEL", conf(), cid="pod2").rc == 0


def test_two_pods_get_distinct_leases_and_del_after_netns_gone(lab, netns_factory):
    lab.start()
    other = netns_factory("pod")
    lab.plug(other)
    a = run(lab, "ADD", conf(), cid="pa")
    b = run(lab, "ADD", conf(), cid="pb", netns=f"/run/netns/{other}")
    assert (a.rc, b.rc) == (0, 0), a.stdout + b.stdout
    ips = {a.json["ips"][0]["address"].split("/")[0], b.json["ips"][0]["address"].split("/")[0]}
    assert len(ips) == 2 and set(lab.leased()) == ips
    sh(f"ip netns del {lab.pod}")
    assert run(lab, "DEL", conf(), cid="pa").rc == 0  # netns gone: forget the lease, succeed
    assert not os.path.exists("/run/cni/dhcp/dnet/pa:eth0.json")
    assert run(lab, "DEL", conf(), cid="pb", netns=f"/run/netns/{other}").rc == 0


def test_unserved_link_times_out_cleanly(lab):
    lab.start()
    sh(f"ip -n {lab.pod} link add eth1 type veth peer name lonely0 netns {lab.srv}")
    sh(f"ip -n {lab.srv} link set lonely0 up")
    started = time.monotonic()
    out = run(lab, "ADD", conf(timeout=1.5), cid="pc", ifname="eth1")
    assert (out.rc, out.code) == (1, 999) and "no DHCP reply on eth1 (DHCPOFFER timed out)" in out.json["msg"]
    assert time.monotonic() - started < 4
    assert not os.path.exists("/run/cni/dhcp/dnet/pc:eth1.json")


def test_missing_interface_and_netns_are_errors_on_add(lab):
    out = run(lab, "ADD", conf(), ifname="nope0")
    assert (out.rc, out.code) == (1, 999) and "nope0" in out.json["msg"]
    out = run(lab, "ADD", conf(), netns="/run/netns/does-not-exist")
    assert out.rc == 1 and "does-not-exist" in out.json["msg"]
