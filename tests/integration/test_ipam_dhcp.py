"""dhcp IPAM against a real dnsmasq, both ends inside the sandbox (see tests/dhcplab.py)."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402
from cnitest import ip_json, sh  # noqa: E402
from dhcplab import DNSMASQ, Lab  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(DNSMASQ), reason="dnsmasq (dnsmasq-base) not installed")


@pytest.fixture
def lab(netns_factory, tmp_path):
    lab = Lab(netns_factory("srv"), netns_factory("pod"), str(tmp_path))
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
    assert lab.wait_released() == {}  # dnsmasq accepted our RELEASE
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
    assert time.monotonic() - started < 6.5  # bounded by ipam.timeout (plus process start under load)
    assert not os.path.exists("/run/cni/dhcp/dnet/pc:eth1.json")


def test_bad_timeout_is_a_config_error(lab):
    out = run(lab, "ADD", conf(timeout="soon"))
    assert (out.rc, out.code) == (1, 7)


def test_missing_interface_and_netns_are_errors_on_add(lab):
    out = run(lab, "ADD", conf(), ifname="nope0")
    assert (out.rc, out.code) == (1, 999) and "nope0" in out.json["msg"]
    out = run(lab, "ADD", conf(), netns="/run/netns/does-not-exist")
    assert out.rc == 1 and "does-not-exist" in out.json["msg"]


def test_renew_after_t1_rebind_after_t2_and_link_down_at_expiry(lab):
    from cni.ipam import dhcp as engine  # noqa: PLC0415

    lab.start()
    assert run(lab, "ADD", conf(), cid="pr").rc == 0
    path = "/run/cni/dhcp/dnet/pr:eth0.json"
    rec = json.load(open(path))
    assert (rec["leaseTime"], rec["t1"], rec["t2"]) == (3600, 1800, 3150)  # dnsmasq's 1h, T1 30m, T2 52m30s
    ip = rec["ip"]
    before = lab.expiries()[ip]
    time.sleep(1.1)  # dnsmasq's expiry has one-second resolution
    assert engine.maintain(now=rec["acquired"] + 60)[path] == "bound"
    assert engine.maintain(now=rec["acquired"] + 1801)[path] == "renewed"  # unicast to dnsmasq
    renewed = json.load(open(path))
    assert renewed["acquired"] > rec["acquired"] and renewed["ip"] == ip
    assert lab.expiries()[ip] > before
    time.sleep(1.1)
    assert engine.maintain(now=renewed["acquired"] + 3200)[path] == "rebound"  # broadcast
    assert lab.expiries()[ip] > before + 1
    assert engine.maintain(now=time.time() + 3601)[path] == "expired"
    assert "UP" not in ip_json("link show eth0", lab.pod)[0]["flags"]  # as Go's daemon does
    sh(f"ip netns del {lab.pod}")
    assert engine.maintain(now=time.time() + 1801)[path] == "gone"
    assert not os.path.exists(path)  # nothing left to renew or release
    assert run(lab, "DEL", conf(), cid="pr").rc == 0
    assert path not in engine.maintain()


# --- packet-level pieces (no network) -------------------------------------------------------

from cni.ipam import dhcp  # noqa: E402


def test_client_id_is_go_format_truncated_to_254():
    assert dhcp.client_id("c", "n", "eth0") == b"\x00c/n/eth0"
    long = dhcp.client_id("x" * 300, "n", "eth0")
    assert len(long) == 255 and long[0] == 0


def test_route_options_like_go():
    router = {dhcp.OPT_ROUTER: bytes([10, 0, 0, 1])}
    static = {dhcp.OPT_STATIC_ROUTES: bytes([10, 1, 2, 3, 10, 0, 0, 9, 172, 16, 5, 0, 10, 0, 0, 8])}
    assert dhcp.lease_routes({**router, **static}) == [
        {"dst": "10.1.2.3/8", "gw": "10.0.0.9"}, {"dst": "172.16.5.0/16", "gw": "10.0.0.8"},
        {"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]
    classless = {dhcp.OPT_CLASSLESS: bytes([16, 10, 99, 10, 0, 0, 254, 0, 10, 0, 0, 1])}
    assert dhcp.lease_routes({**router, **static, **classless}) == [
        {"dst": "10.99.0.0/16", "gw": "10.0.0.254"}, {"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]
    broken = {dhcp.OPT_CLASSLESS: bytes([33, 1, 2, 3, 4, 5, 6, 7, 8])}  # width > 32: Go ignores option 121
    assert dhcp.lease_routes({**router, **broken}) == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]


def test_lease_result_needs_mask_and_lease_time():
    opts = {dhcp.OPT_MASK: bytes([255, 255, 255, 0]), dhcp.OPT_LEASE_TIME: (3600).to_bytes(4, "big")}
    res = dhcp.lease_result(bytes([10, 0, 0, 7]), opts)
    assert res["ips"] == [{"address": "10.0.0.7/24"}] and res["routes"] == []
    with pytest.raises(dhcp.CNIError, match="Subnet Mask not found"):
        dhcp.lease_result(bytes(4), {dhcp.OPT_LEASE_TIME: bytes(4)})
    with pytest.raises(dhcp.CNIError, match="LeaseTime"):
        dhcp.lease_result(bytes(4), {dhcp.OPT_MASK: bytes([255, 255, 255, 0])})


def test_packet_roundtrip_and_checksums():
    mac = bytes.fromhex("020000000001")
    payload = dhcp.bootp(0x1234, mac) + dhcp.encode_options([(dhcp.OPT_MSG_TYPE, bytes([dhcp.DISCOVER]))])
    pkt = dhcp.ip_udp(bytes(4), b"\xff" * 4, payload)
    assert dhcp._checksum(pkt[:20]) == 0  # a correct IPv4 header checksums to zero
    pseudo = pkt[12:20] + bytes([0, 17]) + pkt[24:26]
    assert dhcp._checksum(pseudo + pkt[20:]) == 0
    reply = bytearray(pkt)
    reply[20:24] = bytes([0, 67, 0, 68])  # server -> client ports
    reply[28] = 2  # BOOTREPLY
    assert dhcp.parse_reply(bytes(reply), 0x1234, mac)[1] == {dhcp.OPT_MSG_TYPE: bytes([1])}
    assert dhcp.parse_reply(bytes(reply), 0x9999, mac) is None  # other transaction
    assert dhcp.parse_reply(b"\x45" + bytes(40), 0x1234, mac) is None  # garbage never raises


def test_prepare_options_like_go():
    req, prov = dhcp.prepare_options({"ipam": {"request": [{"option": "121"}],
                                               "provide": [{"option": "host-name", "fromArg": "K8S_POD_NAME"}]}},
                                     "IgnoreUnknown=1;K8S_POD_NAME=web-1")
    assert req == [121, 3, 1] and prov == {12: b"web-1"}
    req, _ = dhcp.prepare_options({"ipam": {"request": [{"option": "subnet-mask", "skipDefault": True}]}}, "")
    assert req == [1]
    with pytest.raises(dhcp.CNIError, match="Can not parse option"):
        dhcp.prepare_options({"ipam": {"request": [{"option": "nope"}]}}, "")


def test_failed_add_after_the_ack_gives_the_lease_back(lab):
    lab.start()
    sh("mkdir -p /run/cni/dhcp && mount -t tmpfs -o ro tmpfs /run/cni/dhcp")  # the record cannot be written
    try:
        out = run(lab, "ADD", conf(), cid="pz")
    finally:
        sh("umount /run/cni/dhcp")
    assert (out.rc, out.code) == (1, 999) and "failed to record DHCP lease" in out.json["msg"]
    assert lab.wait_released() == {}
    log = open(os.path.join(lab.tmp, "dnsmasq.log")).read()
    assert "DHCPACK(br0)" in log and "DHCPRELEASE(br0)" in log  # it had the lease, and gave it back


def test_gc_releases_unlisted_leases_and_status(lab, netns_factory):
    lab.start()
    other = netns_factory("pod")
    lab.plug(other)
    c = dict(conf(), cniVersion="1.1.0")
    assert run(lab, "ADD", c, cid="keep").rc == 0
    assert run(lab, "ADD", c, cid="drop", netns=f"/run/netns/{other}").rc == 0
    assert len(lab.leased()) == 2
    assert cnitest.run("dhcp", "STATUS", c).rc == 0

    def gc_until(count, **keep):
        out = cnitest.run("dhcp", "GC", dict(c, **keep))
        assert (out.rc, out.stdout) == (0, "")
        deadline = time.time() + 5
        while len(lab.leased()) != count and time.time() < deadline:
            time.sleep(0.05)
        return out

    out = gc_until(1)  # no list (what cnitool sends): nothing released, stderr says why
    assert "nothing collected" in out.stderr and len(lab.leased()) == 2
    assert sorted(os.listdir("/run/cni/dhcp/dnet")) == ["drop:eth0.json", "keep:eth0.json"]
    gc_until(1, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert list(lab.leased().values()) == [client_id_hex("keep")]
    assert sorted(os.listdir("/run/cni/dhcp/dnet")) == ["keep:eth0.json"]
    gc_until(0, **{"cni.dev/valid-attachments": []})  # explicit empty: nothing is valid
    assert lab.leased() == {} and os.listdir("/run/cni/dhcp/dnet") == []
    assert run(lab, "DEL", c, cid="keep").rc == 0  # DEL after GC is still clean


def test_macvlan_with_dhcp_end_to_end(lab):
    """Our macvlan delegating in-process to our dhcp: the pod's macvlan gets dnsmasq's lease
    configured, and DEL releases it before removing the link (IPAM DEL first, plugins#791)."""
    lab.start()
    master = f"up{os.getpid() % 100000}"
    sh(f"ip link add {master} type veth peer name m{master} netns {lab.srv}")
    sh(f"ip -n {lab.srv} link set m{master} master br0 up && ip link set {master} up")
    try:
        c = {"cniVersion": "1.0.0", "name": "dnet", "type": "macvlan", "master": master,
             "ipam": {"type": "dhcp", "timeout": 6}}
        pod = f"/run/netns/{lab.pod}"
        sh(f"ip -n {lab.pod} link del eth0")  # the lab's veth; macvlan makes its own eth0
        out = cnitest.run("macvlan", "ADD", c, cid="mv1", netns=pod)
        assert out.rc == 0, out.stdout + out.stderr
        addr = out.json["ips"][0]["address"]
        assert addr.startswith("10.77.0.5")
        inet = [f"{a['local']}/{a['prefixlen']}" for a in ip_json("addr show eth0", lab.pod)[0]["addr_info"]
                if a["family"] == "inet"]
        assert inet == [addr]
        assert any(r.get("dst") == "default" and r.get("gateway") == "10.77.0.1"
                   for r in ip_json("route show", lab.pod))
        assert list(lab.leased()) == [addr.split("/")[0]]
        assert cnitest.run("macvlan", "DEL", c, cid="mv1", netns=pod).rc == 0
        assert lab.wait_released() == {}
        assert ip_json("link show", lab.pod) and not [link for link in ip_json("link show", lab.pod)
                                                       if link["ifname"] == "eth0"]
    finally:
        sh(f"ip link del {master}", check=False)
