"""dhcp: our in-engine client against the Go reference plugin + its daemon, on the same dnsmasq,
the same pod interface and the same client-ID (so dnsmasq hands both the same address)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402
from dhcplab import DNSMASQ, GO_DHCP, Lab  # noqa: E402

pytestmark = pytest.mark.skipif(not (os.path.exists(DNSMASQ) and os.path.exists(GO_DHCP)),
                                reason="dnsmasq or the Go dhcp plugin not installed")


@pytest.fixture
def lab(netns_factory, tmp_path):
    lab = Lab(netns_factory("srv"), netns_factory("pod"), str(tmp_path))
    yield lab
    lab.stop()


@pytest.mark.parametrize("server_opts, ipam", [
    ((), {}),
    (("--dhcp-option=121,10.99.0.0/16,10.77.0.254",), {"request": [{"option": "121"}]}),
    (("--dhcp-option=33,10.88.0.0,10.77.0.253",), {"request": [{"option": "33"}]}),
    (("--dhcp-option=121,10.99.0.0/16,10.77.0.254",), {"request": [{"option": "subnet-mask", "skipDefault": True},
                                                                  {"option": "121"}]}),
], ids=["router", "classless", "static", "skip-default"])
def test_same_lease_same_result_and_both_release(lab, server_opts, ipam):
    lab.start(*server_opts)
    # eth0 up beforehand: Go's daemon brings it up too but then loses its first DISCOVER to the
    # carrier race and waits 2 s to resend (ours waits for the carrier; see test_ipam_dhcp.py).
    cnitest.sh(f"ip -n {lab.pod} link set eth0 up")
    sock = lab.start_go_daemon()
    conf = {"cniVersion": "1.0.0", "name": "dnet", "type": "macvlan",
            "ipam": {"type": "dhcp", "daemonSocketPath": sock, **ipam}}
    kw = {"cid": "pod1", "netns": f"/run/netns/{lab.pod}"}
    results = {}
    for go in (True, False):
        out = cnitest.run("dhcp", "ADD", conf, go=go, **kw)
        assert out.rc == 0, (go, out.stdout, out.stderr)
        results[go] = out.json
        assert list(lab.leased().values()) == [":".join(f"{b:02x}" for b in b"\x00pod1/dnet/eth0")]
        assert cnitest.run("dhcp", "DEL", conf, go=go, **kw).rc == 0
        assert lab.wait_released() == {}
    assert results[True] == results[False]
