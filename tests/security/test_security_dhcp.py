"""Network input never kills the DHCP client or its renewal daemon (issue 13: M2; docs/security.md).

- a reply with option 53 of length 0 (or any truncated / wrongly sized option) is dropped;
- hypothesis feeds the reply parser ≥ 10,000 generated frames (CNIKIT_FUZZ_SCALE multiplies,
  CNIKIT_FUZZ_DERANDOMIZE=1 replays the same ones, as tests/reliability/test_reliability_fuzz.py):
  nothing but a CNI error escapes, and a frame is either dropped or yields a well-formed lease;
- against a hostile server inside the sandbox, ADD fails with a clean CNI error and `cnikit
  dhcp-renew` reports "failed" with the lease record untouched; one lease's unexpected error does
  not stop the renewal of the others.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnitest
from cni.ipam import dhcp
from cni.protocol.spec import CNIError
from dhcplab import DNSMASQ, Lab

SCALE = int(os.environ.get("CNIKIT_FUZZ_SCALE", "1"))
N_FRAMES = 10_000 * SCALE
BATCH = 10  # frames per hypothesis example: the per-example overhead dominates a parse
DERANDOMIZE = os.environ.get("CNIKIT_FUZZ_DERANDOMIZE") == "1"
SETTINGS = dict(deadline=None, database=None, derandomize=DERANDOMIZE, print_blob=True,
                suppress_health_check=list(HealthCheck))

XID, MAC = 0x5EC0DE01, bytes.fromhex("02aabbccddee")
SERVER = bytes([10, 77, 0, 1])


def reply_frame(options: bytes, yiaddr: bytes = bytes([10, 77, 0, 66]), xid: int = XID, mac: bytes = MAC) -> bytes:
    """An IPv4/UDP 67 -> 68 BOOTREPLY carrying `options` (after the magic cookie) verbatim."""
    bootp = bytearray(dhcp.bootp(xid, mac))
    bootp[0] = 2
    bootp[16:20] = yiaddr
    frame = bytearray(dhcp.ip_udp(SERVER, b"\xff" * 4, bytes(bootp) + dhcp.MAGIC + options))
    frame[20:24] = bytes([0, 67, 0, 68])
    return bytes(frame)


def opt(code: int, value: bytes, size: int | None = None) -> bytes:
    return bytes([code, len(value) if size is None else size]) + value


GOOD_ACK = (opt(53, bytes([dhcp.ACK])) + opt(54, SERVER) + opt(1, bytes([255, 255, 255, 0]))
            + opt(3, SERVER) + opt(51, (3600).to_bytes(4, "big")) + b"\xff")


def test_option_53_of_length_zero_is_dropped():
    assert dhcp.parse_reply(reply_frame(GOOD_ACK), XID, MAC) is not None  # the well-formed one is taken
    for bad in (opt(53, b"") + b"\xff",  # the reported crash: IndexError on the message type
                opt(53, bytes([5, 5])) + b"\xff",  # message type of length 2
                opt(53, bytes([5])) + opt(1, bytes([255, 255, 255])) + b"\xff",  # a 3-byte mask
                opt(53, bytes([5])) + opt(3, bytes(6)) + b"\xff",  # router list not a multiple of 4
                opt(53, bytes([5])) + opt(51, bytes(4), size=200),  # truncated: claims 200 bytes
                opt(53, bytes([5])) + bytes([51]),  # a code without its length byte
                opt(1, bytes([255, 255, 255, 0])) + b"\xff"):  # no message type: BOOTP, not DHCP
        assert dhcp.parse_reply(reply_frame(bad), XID, MAC) is None, bad


# --- the fuzz --------------------------------------------------------------------------------

CODES = st.sampled_from([0, 1, 3, 6, 33, 50, 51, 52, 53, 54, 58, 59, 61, 121, 255]) | st.integers(0, 255)
option_lists = st.lists(st.tuples(CODES, st.binary(max_size=12), st.none() | st.integers(0, 255)), max_size=10).map(
    lambda items: b"".join(opt(c, v, n) for c, v, n in items) + b"\xff")


@st.composite
def frames(draw):
    kind = draw(st.sampled_from(["options", "raw-options", "mutated-ack", "garbage", "truncated"]))
    if kind == "options":
        return reply_frame(draw(option_lists), draw(st.binary(min_size=4, max_size=4)))
    if kind == "raw-options":
        return reply_frame(draw(st.binary(max_size=80)))
    if kind == "garbage":
        return draw(st.binary(max_size=400))
    frame = bytearray(reply_frame(GOOD_ACK))
    if kind == "truncated":
        return bytes(frame[:draw(st.integers(0, len(frame)))])
    for _ in range(draw(st.integers(1, 6))):  # mutated-ack: flip bytes anywhere, headers included
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame)


def test_fuzz_dhcp_replies():
    ran, taken = [0], [0]

    class Probe:  # what lease_record reads of the client
        client_id, mac, ifname = b"\0c/n/eth0", MAC, "eth0"

    @settings(max_examples=N_FRAMES // BATCH, **SETTINGS)
    @given(batch=st.lists(frames(), min_size=BATCH, max_size=BATCH))
    def run(batch):
        for frame in batch:
            check(frame)

    def check(frame):
        ran[0] += 1
        reply = dhcp.parse_reply(frame, XID, MAC)  # must never raise
        if reply is None:
            return
        taken[0] += 1
        yiaddr, opts = reply
        assert len(yiaddr) == 4 and len(opts[dhcp.OPT_MSG_TYPE]) == 1
        try:
            result = dhcp.lease_result(yiaddr, opts)
        except CNIError:
            return  # a clean protocol error (no mask, no lease time, a bad mask)
        record = dhcp.lease_record(Probe(), yiaddr, opts, b"\x02" * 6, "/run/netns/x", 0.0, (1, 2))
        json.dumps(record)
        assert 0 <= record["t1"] <= record["t2"] <= record["leaseTime"]
        assert result["ips"][0]["address"].startswith(record["ip"] + "/")

    run()
    assert ran[0] >= N_FRAMES and taken[0] > 0  # the generator does reach the lease code


def test_one_lease_failing_does_not_stop_the_others(tmp_path, monkeypatch):
    netdir = tmp_path / "net1"
    netdir.mkdir()
    for name in ("a:eth0", "b:eth0", "c:eth0"):
        (netdir / f"{name}.json").write_text(json.dumps({"acquired": 0, "t1": 10}))
    seen = []

    def one(path, record, now, timeout=5.0):
        seen.append(os.path.basename(path))
        if path.endswith("a:eth0.json"):
            raise IndexError("a reply nobody expected")
        return "bound"

    monkeypatch.setattr(dhcp, "maintain_one", one)
    states = dhcp.maintain(now=1.0, lease_dir=str(tmp_path))
    assert seen == ["a:eth0.json", "b:eth0.json", "c:eth0.json"]
    assert sorted(states.values()) == ["bound", "bound", "failed"]


# --- against a hostile server in the sandbox ---------------------------------------------------

HOSTILE = textwrap.dedent("""
    import socket, struct, sys
    sys.path.insert(0, sys.argv[1])
    from cni.ipam import dhcp
    bad = [b"\\x35\\x00\\xff", b"\\x35\\x01\\x05\\x01\\x03\\xff\\xff\\xff\\xff", b"\\x35\\x01\\x05\\x33\\xc8\\x00\\x00"]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    s.bind(("br0", 0x0800))
    n = 0
    while True:
        frame, addr = s.recvfrom(65535)
        if addr[2] == 4 or len(frame) < 28 + 240 or frame[22:24] != b"\\x00\\x43":
            continue
        msg = frame[28:]
        boot = bytearray(dhcp.bootp(struct.unpack("!I", msg[4:8])[0], msg[28:34]))
        boot[0], boot[16:20] = 2, bytes([10, 77, 0, 66])
        out = bytearray(dhcp.ip_udp(bytes([10, 77, 0, 1]), b"\\xff" * 4, bytes(boot) + dhcp.MAGIC + bad[n % 3]))
        out[20:24], out[26:28] = bytes([0, 67, 0, 68]), b"\\0\\0"
        s.sendto(bytes(out), ("br0", 0x0800, 0, 0, b"\\xff" * 6))
        n += 1
        print("answered", n, flush=True)
""")


@pytest.fixture
def lab(netns_factory, tmp_path):
    if not os.path.exists(DNSMASQ):
        pytest.skip("dnsmasq (dnsmasq-base) not installed")
    lab = Lab(netns_factory("srv"), netns_factory("pod"), str(tmp_path))
    yield lab
    lab.stop()


def hostile_server(lab) -> subprocess.Popen:
    log = open(os.path.join(lab.tmp, "hostile.log"), "w")
    proc = subprocess.Popen(["ip", "netns", "exec", lab.srv, sys.executable, "-c", HOSTILE, cnitest.LIB],
                            stdout=log, stderr=subprocess.STDOUT)
    lab.procs.append(proc)
    time.sleep(0.3)
    return proc


def conf(timeout: int = 2) -> dict:
    return {"cniVersion": "1.0.0", "name": "dnet", "type": "macvlan", "ipam": {"type": "dhcp", "timeout": timeout}}


def test_hostile_server_add_fails_cleanly(lab):
    hostile_server(lab)
    out = cnitest.run("dhcp", "ADD", conf(), cid="hx", netns=f"/run/netns/{lab.pod}")
    assert out.rc == 1 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert "no DHCP reply" in json.loads(out.stdout)["msg"]
    assert not os.path.exists("/run/cni/dhcp/dnet/hx:eth0.json")
    with open(os.path.join(lab.tmp, "hostile.log")) as fh:
        assert "answered" in fh.read()  # it did send its malformed replies


def test_hostile_server_does_not_kill_renewal(lab):
    lab.start()
    assert cnitest.run("dhcp", "ADD", conf(6), cid="hr", netns=f"/run/netns/{lab.pod}").rc == 0
    path = "/run/cni/dhcp/dnet/hr:eth0.json"
    with open(path, "rb") as fh:
        before = fh.read()
    lab.stop()  # dnsmasq goes; a hostile server takes its place
    lab.procs.clear()
    hostile_server(lab)
    record = json.loads(before)
    states = dhcp.maintain(now=record["acquired"] + record["t1"] + 1)
    assert states[path] == "failed"
    with open(path, "rb") as fh:
        assert fh.read() == before  # the lease state is intact, retried on the next pass
    assert cnitest.run("dhcp", "DEL", conf(), cid="hr", netns=f"/run/netns/{lab.pod}").rc == 0


# --- expiry acts only on the lease's own netns and interface (L3) ------------------------------

@pytest.mark.parametrize("swap", ["netns-recreated", "interface-replaced"])
def test_expiry_never_downs_someone_elses_interface(lab, swap):
    lab.start()
    assert cnitest.run("dhcp", "ADD", conf(6), cid="ex", netns=f"/run/netns/{lab.pod}").rc == 0
    path = "/run/cni/dhcp/dnet/ex:eth0.json"
    with open(path) as fh:
        record = json.load(fh)
    if swap == "netns-recreated":  # the pod is gone; a new netns got its path and an eth0 of its own
        cnitest.sh(f"ip netns del {lab.pod} && ip netns add {lab.pod}")
    else:  # same netns, the name now belongs to another interface
        cnitest.sh(f"ip -n {lab.pod} link del eth0")
    cnitest.sh(f"ip -n {lab.pod} link add eth0 type veth peer name other0 && ip -n {lab.pod} link set eth0 up")
    assert dhcp.maintain(now=record["acquired"] + record["leaseTime"] + 1)[path] == "gone"
    assert "UP" in cnitest.ip_json("link show eth0", lab.pod)[0]["flags"]  # left alone
    assert not os.path.exists(path)
