"""bandwidth on a live kernel: tbf on the host veth, IFB + redirect + tbf for egress, gone after DEL."""
from __future__ import annotations

import json

import pytest

import cnitest
import metautil as mu

LIMITS = {"ingressRate": 8_000_000, "ingressBurst": 16_000_000, "egressRate": 1_000_000, "egressBurst": 800_000}


@pytest.fixture
def pod(netns):
    p = mu.add_pod(netns, mu.uid())
    yield p
    mu.del_pod(p)


def qdiscs(dev):
    return json.loads(cnitest.sh(f"tc -j qdisc show dev {dev}"))


def tbf(dev):
    found = [q for q in qdiscs(dev) if q["kind"] == "tbf"]
    assert len(found) == 1, qdiscs(dev)
    return found[0]


def test_ingress_and_egress_limits_then_del(pod):
    conf = mu.chained(pod, {"type": "bandwidth", **LIMITS})
    out = mu.run_chain("bandwidth", "ADD", pod, conf)
    assert out.rc == 0, out.stdout + out.stderr
    ifb = out.json["interfaces"][-1]
    assert ifb["name"].startswith("bwp") and len(ifb["name"]) == 15
    # ingress: tbf 1: on the host veth; tc prints rate/burst in bytes (rate bits / 8)
    q = tbf(pod.host_veth)
    assert (q["handle"], q["root"]) == ("1:", True)
    assert q["options"]["rate"] == 1_000_000 and q["options"]["burst"] == 2_000_000
    assert q["options"]["lat"] == 25000  # limit = rate x 25 ms + burst, as latency
    assert any(x["kind"] == "ingress" for x in qdiscs(pod.host_veth))
    filt = json.loads(cnitest.sh(f"tc -j filter show dev {pod.host_veth} parent ffff:"))
    actions = [a for f in filt for a in f.get("options", {}).get("actions", [])]
    assert [(a["kind"], a["mirred_action"], a["to_dev"]) for a in actions] == [("mirred", "redirect", ifb["name"])]
    eg = tbf(ifb["name"])
    assert eg["options"]["rate"] == 125_000 and eg["options"]["burst"] == 100_000
    link = cnitest.ip_json(f"link show {ifb['name']}")[0]
    assert "UP" in link["flags"] and link["mtu"] == cnitest.ip_json(f"link show {pod.host_veth}")[0]["mtu"]
    check = dict(conf, prevResult=out.json)
    assert mu.run_chain("bandwidth", "CHECK", pod, check).rc == 0
    assert mu.run_chain("bandwidth", "DEL", pod, conf).rc == 0
    assert cnitest.sh(f"ip link show {ifb['name']}", check=False) == ""
    assert mu.run_chain("bandwidth", "DEL", pod, conf).rc == 0  # twice


def test_runtime_config_and_check_detects_a_changed_rate(pod):
    conf = mu.chained(pod, {"type": "bandwidth", "capabilities": {"bandwidth": True}},
                      runtime={"bandwidth": {"ingressRate": 4_000_000, "ingressBurst": 400_000}})
    out = mu.run_chain("bandwidth", "ADD", pod, conf)
    assert out.rc == 0, out.stdout
    assert len(out.json["interfaces"]) == len(pod.result["interfaces"])  # no IFB without egress
    assert tbf(pod.host_veth)["options"]["rate"] == 500_000
    cnitest.sh(f"tc qdisc change dev {pod.host_veth} root handle 1: tbf rate 100kbit burst 50000 latency 25ms")
    res = mu.run_chain("bandwidth", "CHECK", pod, dict(conf, prevResult=out.json))
    assert res.rc == 1 and res.json["msg"] == "Rate doesn't match"


def test_failed_egress_undoes_the_ingress_qdisc(pod):
    conf = mu.chained(pod, {"type": "bandwidth", **LIMITS})
    from cni.plugins.meta.bandwidth import ifb_name  # noqa: PLC0415
    cnitest.sh(f"ip link add {ifb_name(pod.network, pod.cid)} type veth peer name squat0")  # name taken
    try:
        out = mu.run_chain("bandwidth", "ADD", pod, conf)
        assert out.rc == 1 and out.code == 999
        assert [q["kind"] for q in qdiscs(pod.host_veth) if q["kind"] in ("tbf", "ingress")] == []
    finally:
        cnitest.sh("ip link del squat0", check=False)


@pytest.mark.parametrize("limits,msg", [
    ({"ingressRate": 1000}, "if rate is set, burst must also be set"),
    ({"egressBurst": 1000}, "if burst is set, rate must also be set"),
    ({"ingressRate": 1000, "ingressBurst": 8 * 2**32}, "burst cannot be more than 4GB"),
    ({"egressRate": -5, "egressBurst": 10}, "egressRate must be a non-negative integer"),
])
def test_validation_errors(pod, limits, msg):
    out = mu.run_chain("bandwidth", "ADD", pod, mu.chained(pod, {"type": "bandwidth", **limits}))
    assert out.rc == 1 and out.code == 7 and out.json["msg"] == msg
    assert [q["kind"] for q in qdiscs(pod.host_veth) if q["kind"] == "tbf"] == []


def test_zero_limits_pass_through_and_old_versions_refused(pod):
    out = mu.run_chain("bandwidth", "ADD", pod, mu.chained(pod, {"type": "bandwidth"}))
    assert out.rc == 0 and out.json["ips"] == pod.result["ips"]
    conf = mu.chained(pod, {"type": "bandwidth", **LIMITS})
    conf["cniVersion"] = "0.2.0"
    out = mu.run_chain("bandwidth", "ADD", pod, conf)
    assert out.rc == 1 and out.code == 1
