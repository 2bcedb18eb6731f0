"""DEL idempotency matrix: whatever state the node is in, DEL exits 0 and releases everything.

Cases: netns gone, netns path left as a plain file (a reboot with a persistent /run/netns), empty CNI_NETNS, master/bridge link gone, container interface gone, no
prevResult, DEL twice, DEL of something never added — for each main plugin that has landed and
for host-local on its own. Go 1.1.1 fails some of these (macvlan with its master gone: plugins#953;
bridge masquerade with the netns gone: plugins#810); ours must not.
"""
from __future__ import annotations

import subprocess
import time

import pytest

import cnitest
import relutil

MASTER = "cnidm0"
BRIDGE = "cnidbr0"
PLUGINS = [p for p in ("macvlan", "bridge", "ptp", "host-local") if p in relutil.importable_plugins()]
CASES = ["netns_gone", "netns_stale_file", "empty_netns", "master_gone", "iface_gone", "no_prev_result", "del_twice", "never_added"]
# which cases apply to which plugin (host-local has no netns or link; ptp has no master)
APPLIES = {"master_gone": {"macvlan", "bridge"}, "iface_gone": {"macvlan", "bridge", "ptp"},
           "netns_gone": {"macvlan", "bridge", "ptp"}, "netns_stale_file": {"macvlan", "bridge", "ptp"}}
MATRIX = [(p, c) for p in PLUGINS for c in CASES if p in APPLIES.get(c, set(PLUGINS))]


def conf_for(ptype: str, datadir: str) -> dict:
    ipam = {"type": "host-local", "dataDir": datadir, "ranges": [[{"subnet": "10.55.0.0/24"}]]}
    conf = {"cniVersion": "1.0.0", "name": "delnet", "type": ptype, "ipam": ipam}
    if ptype == "macvlan":
        conf.update(master=MASTER, mode="bridge")
    elif ptype == "bridge":
        conf.update(bridge=BRIDGE, isGateway=True, ipMasq=True)
    elif ptype == "ptp":
        conf.update(ipMasq=True)
    return conf


def masq_rules() -> str:
    text = relutil.nft_ruleset() + subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return "\n".join(l for l in text.splitlines() if "10.55.0." in l)


@pytest.fixture
def world(netns_factory, tmp_path):
    cnitest.sh(f"ip link add {MASTER} type veth peer name {MASTER}p && ip link set {MASTER} up")
    before = set(relutil.link_names())
    yield netns_factory, str(tmp_path / "data"), before
    cnitest.sh(f"ip link del {MASTER}", check=False)
    cnitest.sh(f"ip link del {BRIDGE}", check=False)


@pytest.mark.parametrize("ptype,case", MATRIX)
def test_del_is_idempotent_and_releases_everything(world, ptype, case):
    netns_factory, datadir, links_before = world
    pod = netns_factory("del")
    path = f"/run/netns/{pod}"
    conf = conf_for(ptype, datadir)
    kw = dict(cid="delctr", netns=path, ifname="eth0")
    if case != "never_added":
        add = cnitest.inproc(ptype, "ADD", conf, **kw)
        assert add.rc == 0, add
        assert len(relutil.lease_files(datadir)) == 1
        conf["prevResult"] = add.json  # as a runtime sends it on DEL (>= 0.4.0)
    if case == "netns_gone":
        cnitest.sh(f"ip netns del {pod}")
    elif case == "netns_stale_file":  # a reboot with a persistent /run/netns: the path is a plain file
        cnitest.sh(f"umount {path}")
    elif case == "empty_netns":
        kw["netns"] = ""
    elif case == "master_gone":
        cnitest.sh(f"ip link del {MASTER if ptype == 'macvlan' else BRIDGE}")
    elif case == "iface_gone":
        cnitest.sh(f"ip -n {pod} link del eth0")
    elif case == "no_prev_result":
        conf.pop("prevResult")
    rounds = 2 if case == "del_twice" else 1
    for i in range(rounds):
        # the second DEL of "del_twice" goes through the real executable
        out = (cnitest.run(ptype, "DEL", conf, **kw) if i else cnitest.inproc(ptype, "DEL", conf, **kw))
        assert (out.rc, out.stdout) == (0, ""), out
    assert relutil.lease_files(datadir) == {}
    assert masq_rules() == ""
    if case == "empty_netns":
        # without a netns path the plugin cannot reach the container side; it goes with the netns
        cnitest.sh(f"ip netns del {pod}")
    elif case not in ("netns_gone", "netns_stale_file"):
        assert relutil.link_names(pod) == ["lo"]
    # no host-side veth or other link left behind; a netns is destroyed asynchronously after
    # `ip netns del`, taking its veth peers with it, so give the kernel a moment
    for _ in range(100):
        leftover = set(relutil.link_names()) - links_before - {BRIDGE}
        if not leftover:
            break
        time.sleep(0.05)
    assert leftover == set(), leftover


def test_matrix_covers_the_landed_plugins():
    """The matrix is not empty, and grows as bridge/ptp land (a check on the test's own reach)."""
    assert {"macvlan", "host-local"} <= set(PLUGINS)
    assert len(MATRIX) >= 10
