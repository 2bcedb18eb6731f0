"""netstate (the engine side of the modules) in-process, for the cases a playbook shows poorly:
replacement rules, undo of a half-done create, check mode leaving the kernel untouched."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from cni.state import netstate as ns
from cni.protocol.spec import CNIError


def _links(netns: str = "") -> list:
    cmd = ["ip", "-j"] + (["-n", netns] if netns else []) + ["-d", "addr"]
    data = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return sorted((d["ifname"], d.get("mtu"), d.get("address"), tuple(d.get("flags", ())),
                   tuple(sorted(a["local"] for a in d.get("addr_info", []) if a.get("scope") != "link")))
                  for d in data)


@pytest.fixture
def names():
    tag = os.getpid() % 10000
    made = []
    yield lambda base: made.append(f"{base}{tag}") or made[-1]
    for name in made:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def test_veth_paired_elsewhere_is_replaced(names, netns):
    a, b, other = names("ra"), names("rb"), names("ro")
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", other], check=True)
    change = ns.ensure_veth(ns.LinkAttrs(a), ns.LinkAttrs(b, netns=netns))
    assert change.changed and change.before["end"]["state"] == "present"
    assert subprocess.run(["ip", "link", "show", other], capture_output=True, check=False).returncode != 0
    assert ns.ensure_veth(ns.LinkAttrs(a), ns.LinkAttrs(b, netns=netns)).changed is False


def test_failed_step_undoes_the_new_link(names, netns):
    """A route that cannot be added (gateway not on any subnet) fails the task and leaves no link."""
    a, b = names("ua"), names("ub")
    bad = ns.LinkAttrs(b, netns=netns, addresses=["10.91.0.2/24"], routes=[{"dst": "10.92.0.0/16", "gw": "10.99.0.1"}])
    with pytest.raises(CNIError, match="failed to add route"):
        ns.ensure_veth(ns.LinkAttrs(a), bad)
    assert subprocess.run(["ip", "link", "show", a], capture_output=True, check=False).returncode != 0
    master = names("um")
    subprocess.run(["ip", "link", "add", master, "type", "veth", "peer", "name", master + "p"], check=True)
    with pytest.raises(CNIError, match="failed to add route"):
        ns.ensure_macvlan(ns.LinkAttrs("mv0", netns=netns, routes=[{"dst": "10.92.0.0/16", "gw": "10.99.0.1"}]), master)
    assert "mv0" not in [link[0] for link in _links(netns)]


def test_macvlan_on_another_master_is_recreated(names):
    m1, m2, mv = names("ma"), names("mb"), names("mv")
    for m in (m1, m2):
        subprocess.run(["ip", "link", "add", m, "type", "veth", "peer", "name", m + "p"], check=True)
    ns.ensure_macvlan(ns.LinkAttrs(mv, mode="vepa"), m1)
    change = ns.ensure_macvlan(ns.LinkAttrs(mv, mode="vepa"), m2)
    assert change.changed and change.before["master"] == "ifindex %d" % int(
        open(f"/sys/class/net/{m1}/ifindex", encoding="ascii").read()) and change.after["master"] == m2
    assert f"@{m2}:" in subprocess.run(["ip", "-o", "link", "show", mv], capture_output=True, text=True, check=True).stdout


def test_check_mode_changes_nothing(names, netns, tmp_path):
    m, a, b, br = names("ca"), names("cb"), names("cc"), names("cd")
    subprocess.run(["ip", "link", "add", m, "type", "veth", "peer", "name", m + "p"], check=True)
    ns.ensure_macvlan(ns.LinkAttrs(names("ce"), mtu=1400, addresses=["10.93.0.1/24"]), m)
    host, pod = _links(), _links(netns)
    predictions = [
        ns.ensure_macvlan(ns.LinkAttrs(names("ce"), mtu=1300, mode="private", addresses=["10.93.0.2/24"]), m, True),
        ns.ensure_macvlan(ns.LinkAttrs("eth0", netns=netns), m, check_mode=True),
        ns.ensure_veth(ns.LinkAttrs(a, bridge=br), ns.LinkAttrs(b, netns=netns), check_mode=True),
        ns.ensure_bridge(ns.LinkAttrs(br, addresses=["10.94.0.1/24"]), check_mode=True),
        ns.remove_link(ns.LinkAttrs(m), check_mode=True),
        ns.ensure_netns("cm" + netns, check_mode=True),
        ns.ensure_netns(netns, present=False, check_mode=True),
        ns.ensure_config_file(str(tmp_path / "x.conflist"), "{}\n", check_mode=True),
    ]
    assert all(c.changed for c in predictions)
    assert _links() == host and _links(netns) == pod
    assert not os.path.exists(tmp_path / "x.conflist") and not os.path.exists("/run/netns/cm" + netns)


def test_config_file_mode_is_managed(tmp_path):
    path = str(tmp_path / "10-x.conflist")
    assert ns.ensure_config_file(path, "{}\n", 0o644).changed
    assert not ns.ensure_config_file(path, "{}\n", 0o644).changed
    assert ns.ensure_config_file(path, "{}\n", 0o600).changed and os.stat(path).st_mode & 0o777 == 0o600
    assert ns.ensure_config_file(path, None).changed and not os.path.exists(path)
    with pytest.raises(CNIError, match="invalid file mode 'rw'"):
        ns.file_mode("rw")
    assert ns.file_mode("0640") == 0o640 and ns.file_mode(420) == 0o644
