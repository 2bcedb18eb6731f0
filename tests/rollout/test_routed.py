"""The routed pod network on a 3-node lab, rolled out by site.yml with cni_pod_network=routed:
BGP sessions with BIRD, each node's block in every kernel, a cross-node ping matrix over plain
routing, BIRD killed / hung / restarted, a pod deleted, a node added, route reflectors, reset.

Figures (convergence, withdrawal) are printed (`pytest -s`) and quoted in docs/routed.md.
ipip (the seed's calico mode for nodes on different subnets) is not built: this kernel has no
ipip module, so it could not be shown here; nodes of the lab share one L2 segment."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time

import pytest

import lab
from lab import grow, play

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE = os.path.join(ROOT, "playbooks", "site.yml")
CONF = "/etc/cni/net.d/10-routednet.conf"
CTL = "/run/bird/bird.ctl"
HOLD = 3  # the lab's hold time (inventory/lab/group_vars)
# Two more site.yml runs (~1 min each here): in `make test-routed`, not in `make test`.
full = pytest.mark.skipif(os.environ.get("CNIKIT_ROUTED_FULL") != "1",
                          reason="slow rollout (node added, route reflectors): make test-routed")


def site(lab_state, *args, inventory=play.INVENTORY):
    return play.playbook(SITE, ["-e", "cni_pod_network=routed", *args], inventory=inventory,
                         extra_env={"CNIKIT_LAB_STATE": lab_state})


def node(state, name):
    return next(n for n in lab.load(state)["nodes"] if n["name"] == name)


def sh(state, name, cmd, check=True):
    return lab.run_in(node(state, name)["pid"], ["sh", "-c", cmd], check=check)


def bird_routes(state, name):
    """The node's kernel routes BIRD installed: {dst: gateway or type}."""
    out = json.loads(sh(state, name, "ip -4 -j route show proto bird").stdout or "[]")
    return {r["dst"]: r.get("gateway", r.get("type")) for r in out}


def established(state, name):
    out = sh(state, name, f"birdc -s {CTL} show protocols").stdout
    return sorted(line.split()[0] for line in out.splitlines() if "Established" in line)


def wait(pred, timeout, step=0.05):
    """Seconds until pred() is true; AssertionError after `timeout`."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - t0


def add_pod(state, name, pod, conf_path=CONF):
    sh(state, name, f"ip netns add {pod} && ip -n {pod} link set lo up")
    out = sh(state, name, f"CNI_COMMAND=ADD CNI_CONTAINERID={pod} CNI_NETNS=/run/netns/{pod} CNI_IFNAME=eth0 "
                          f"CNI_PATH=/opt/cni/bin /opt/cni/bin/cnikit-routed < {conf_path}")
    return json.loads(out.stdout)["ips"][0]["address"].split("/")[0]


def del_pod(state, name, pod, conf_path=CONF):
    sh(state, name, f"CNI_COMMAND=DEL CNI_CONTAINERID={pod} CNI_NETNS=/run/netns/{pod} CNI_IFNAME=eth0 "
                    f"CNI_PATH=/opt/cni/bin /opt/cni/bin/cnikit-routed < {conf_path} && ip netns del {pod}")


def ping(state, name, pod, dst):
    return sh(state, name, f"ip netns exec {pod} ping -c1 -W2 {dst}", check=False)


BLOCKS = {"k8s-master": "10.244.0.0/26", "k8s-node01": "10.244.0.64/26", "k8s-node02": "10.244.0.128/26"}
GROWN: dict = {}  # the inventory once test_node_added_routes_everywhere has added k8s-node03
ADDRS = {"k8s-master": "192.168.80.100", "k8s-node01": "192.168.80.101", "k8s-node02": "192.168.80.102"}


@pytest.fixture(scope="module")
def routed(lab3, lab_state):
    result = site(lab_state)
    assert result.rc == 0, result.output[-4000:]
    for name in BLOCKS:
        wait(lambda name=name: len(established(lab_state, name)) == 2, 15)
    return lab_state


def test_unknown_pod_network_fails_the_plan(lab3, lab_state):
    result = site(lab_state, "-e", "cni_pod_network=flannel")
    assert result.rc != 0
    assert "cni_pod_network must be macvlan, overlay or routed, not flannel" in result.output
    assert "Install the CNI plugins" not in result.output


def _node_state(state):
    """What a routed rollout could touch on each node: its CNI and BIRD files, routes, BIRD's socket."""
    out = {}
    for n in lab.load(state)["nodes"]:
        out[n["name"]] = sh(state, n["name"], "find /etc/cni /opt/cni /var/lib/cni /run/cnikit-bird /run/bird "
                                              "2>/dev/null | sort; ip route; ip link", check=False).stdout
    return out


def test_check_mode_on_a_fresh_cluster_changes_nothing(lab3, lab_state):
    before = _node_state(lab_state)
    result = site(lab_state, "--check")
    assert result.rc == 0, result.output[-4000:]
    assert result.changed > 0  # it predicts the rollout
    assert _node_state(lab_state) == before  # and does none of it


def test_rollout_sessions_and_routes_then_idempotent(routed):
    for name, block in BLOCKS.items():
        assert len(established(routed, name)) == 2
        want = {b: ADDRS[n] for n, b in BLOCKS.items() if n != name}
        want[block] = "blackhole"  # its own block: announced whole, unused addresses dropped here
        assert bird_routes(routed, name) == want
        cfg = json.loads(sh(routed, name, f"cat {CONF}").stdout)
        assert cfg["type"] == "cnikit-routed" and cfg["ipam"]["ranges"] == [[{"subnet": block}]]
    again = site(routed)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]


def test_cross_node_ping_matrix_over_plain_routing(routed):
    netns = {name: "pm-" + name for name in BLOCKS}
    pods = {name: add_pod(routed, name, netns[name]) for name in BLOCKS}
    try:
        for name, ip in pods.items():  # each pod's address from its node's block
            assert ipaddress.ip_address(ip) in ipaddress.ip_network(BLOCKS[name])
        for src, sip in pods.items():
            for dst, dip in pods.items():
                if src == dst:
                    continue
                out = ping(routed, src, netns[src], dip)
                assert out.returncode == 0, f"{src} {sip} -> {dst} {dip}: {out.stdout}{out.stderr}"
                assert "ttl=62" in out.stdout  # two routers (source node, destination node), no tunnel
        # on the wire: the pods' own addresses between the nodes' MACs, no encapsulation
        sw = lab.load(routed)["underlay"]["pid"]
        cap = subprocess.Popen(lab.nsenter(sw, ["tcpdump", "-nn", "-c1", "-i", "br0", "-l",
                                                f"icmp and src host {pods['k8s-master']} and dst host {pods['k8s-node02']}"]),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.5)
        assert ping(routed, "k8s-master", netns["k8s-master"], pods["k8s-node02"]).returncode == 0
        line = cap.communicate(timeout=10)[0]
        assert f"IP {pods['k8s-master']} > {pods['k8s-node02']}: ICMP echo request" in line
        for name in BLOCKS:
            assert sh(routed, name, "ip -d link show type ipip; ip -d link show type vxlan").stdout == ""
    finally:
        for name in BLOCKS:
            del_pod(routed, name, netns[name])


def _bird_pid(state, name):
    return int(sh(state, name, "cat /run/cnikit-bird/bird.pid").stdout)


def test_bird_hung_killed_and_restarted(routed):
    block = BLOCKS["k8s-node02"]
    peers = ("k8s-master", "k8s-node01")
    # hung (SIGSTOP): the peers hold its routes until the hold timer expires
    pid = _bird_pid(routed, "k8s-node02")
    os.kill(pid, signal.SIGSTOP)
    try:
        gone = wait(lambda: all(block not in bird_routes(routed, p) for p in peers), HOLD + 3)
    finally:
        os.kill(pid, signal.SIGCONT)
    back = wait(lambda: all(block in bird_routes(routed, p) for p in peers), 15)
    print(f"\nhung BIRD: peers withdrew its block after {gone:.2f} s (hold {HOLD} s); back {back:.2f} s after SIGCONT")
    assert gone > 1.0  # not before the hold timer (keepalives stopped, TCP still up)
    # killed (SIGKILL): the TCP session closes, the peers withdraw at once; the supervisor restarts it
    os.kill(_bird_pid(routed, "k8s-node02"), signal.SIGKILL)
    gone = wait(lambda: all(block not in bird_routes(routed, p) for p in peers), HOLD + 3, step=0.005)
    back = wait(lambda: all(block in bird_routes(routed, p) for p in peers), 20)
    print(f"killed BIRD: peers withdrew its block after {gone * 1000:.0f} ms; back {back:.2f} s later (supervisor restart)")
    assert gone < HOLD
    assert _bird_pid(routed, "k8s-node02") != pid


def test_pod_deleted_host_route_gone_and_out_of_block_pod_announced_then_withdrawn(routed):
    ip = add_pod(routed, "k8s-node01", "pd1")
    assert json.loads(sh(routed, "k8s-node01", f"ip -j route show {ip}").stdout)[0]["scope"] == "link"
    # an address inside the block is not announced by itself
    time.sleep(1)
    assert f"{ip}" not in bird_routes(routed, "k8s-master")
    del_pod(routed, "k8s-node01", "pd1")
    assert json.loads(sh(routed, "k8s-node01", f"ip -j route show {ip}").stdout or "[]") == []
    # a pod whose address lies outside the node's block: its /32 goes to the peers, and away with it
    static = {"cniVersion": "1.0.0", "name": "routednet", "type": "cnikit-routed",
              "ipam": {"type": "static", "addresses": [{"address": "10.250.0.7/32"}]}}
    sh(routed, "k8s-node02", f"cat > /run/static.conf <<'EOF'\n{json.dumps(static)}\nEOF")
    assert add_pod(routed, "k8s-node02", "pd2", "/run/static.conf") == "10.250.0.7"
    t = wait(lambda: bird_routes(routed, "k8s-master").get("10.250.0.7") == ADDRS["k8s-node02"], 10)
    print(f"\nout-of-block pod /32 announced to the peers in {t:.2f} s")
    pm = add_pod(routed, "k8s-master", "pd0")
    assert ping(routed, "k8s-master", "pd0", "10.250.0.7").returncode == 0  # routed by its /32 alone
    del_pod(routed, "k8s-master", "pd0")
    assert ipaddress.ip_address(pm) in ipaddress.ip_network(BLOCKS["k8s-master"])
    del_pod(routed, "k8s-node02", "pd2", "/run/static.conf")
    t = wait(lambda: "10.250.0.7" not in bird_routes(routed, "k8s-master"), 10)
    print(f"out-of-block pod /32 withdrawn {t:.2f} s after DEL")


@full
def test_node_added_routes_everywhere(routed, tmp_path):
    new = grow.add_node(routed)
    assert new["name"] == "k8s-node03"
    inv = tmp_path / "inventory"
    inv.mkdir()
    hosts = {"all": {"children": {"k8s_cluster": {
        "vars": {"ansible_connection": "cnikit.cni.nsenter"},
        "children": {"kube_control_plane": {"hosts": {"k8s-master": {}}},
                     "kube_node": {"hosts": {"k8s-node01": {}, "k8s-node02": {}, "k8s-node03": {}}}}}}}}
    (inv / "hosts.yml").write_text(json.dumps(hosts))
    os.symlink(os.path.join(ROOT, "inventory", "lab", "group_vars"), inv / "group_vars")
    result = site(routed, inventory=str(inv / "hosts.yml"))
    assert result.rc == 0, result.output[-4000:]
    new_block = "10.244.0.192/26"
    for name in BLOCKS:  # the old nodes kept their blocks and learned the new one
        wait(lambda name=name: bird_routes(routed, name).get(new_block) == new["ip"], 15)
        assert bird_routes(routed, name)[BLOCKS[name]] == "blackhole"
    wait(lambda: len(bird_routes(routed, "k8s-node03")) == 4, 15)
    a = add_pod(routed, "k8s-node03", "nn3")
    b = add_pod(routed, "k8s-master", "nn0")
    try:
        assert ipaddress.ip_address(a) in ipaddress.ip_network(new_block)
        assert ping(routed, "k8s-master", "nn0", a).returncode == 0
    finally:
        del_pod(routed, "k8s-node03", "nn3")
        del_pod(routed, "k8s-master", "nn0")
    GROWN["inventory"] = str(inv / "hosts.yml")  # the later tests run on the grown cluster


@full
def test_route_reflector_option(routed):
    inv = GROWN.get("inventory", play.INVENTORY)
    result = site(routed, "-e", '{"cni_routed_route_reflectors": ["k8s-master"]}', inventory=inv)
    assert result.rc == 0, result.output[-4000:]
    nodes = [n["name"] for n in lab.load(routed)["nodes"]]
    others = [n for n in nodes if n != "k8s-master"]
    wait(lambda: len(established(routed, "k8s-master")) == len(others), 15)
    for name in others:  # clients peer only with the reflector, and still learn every block through it
        wait(lambda name=name: established(routed, name) == ["k8s_master"], 15)
        wait(lambda name=name: len(bird_routes(routed, name)) == len(nodes), 15)
    conf = sh(routed, "k8s-master", "cat /var/lib/cni/cnikit/bird/bird.conf").stdout
    assert conf.count("rr client;") == len(others)


def _rtt_avg(out):
    return float(out.split("rtt min/avg/max/mdev = ")[1].split("/")[1])


def test_pod_to_pod_latency_routed_vs_macvlan(routed):
    """Cross-node pod-to-pod RTT, routed vs macvlan (our plugin, bridge mode on ens33), interleaved
    rounds in one run on the same nodes; printed for docs/routed.md."""
    macvlan = {"cniVersion": "1.0.0", "name": "mvlat", "type": "macvlan", "master": "ens33", "mode": "bridge",
               "ipam": {"type": "static", "addresses": [{"address": "192.168.80.15X/24"}]}}
    rpods, mpods = {}, {}
    for i, name in enumerate(("k8s-master", "k8s-node02")):
        rpods[name] = add_pod(routed, name, "lat-r")
        conf = json.dumps(macvlan).replace("15X", str(150 + i))
        sh(routed, name, f"cat > /run/mvlat.conf <<'EOF'\n{conf}\nEOF")
        sh(routed, name, "ip netns add lat-m && CNI_COMMAND=ADD CNI_CONTAINERID=lat-m CNI_NETNS=/run/netns/lat-m "
                         "CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin /opt/cni/bin/macvlan < /run/mvlat.conf")
        mpods[name] = f"192.168.80.{150 + i}"
    try:
        cmd = "ip netns exec {ns} ping -q -c 200 -i 0.002 -W1 {dst}"
        routed_rtt, macvlan_rtt = [], []
        for _ in range(3):
            routed_rtt.append(_rtt_avg(sh(routed, "k8s-master", cmd.format(ns="lat-r", dst=rpods["k8s-node02"])).stdout))
            macvlan_rtt.append(_rtt_avg(sh(routed, "k8s-master", cmd.format(ns="lat-m", dst=mpods["k8s-node02"])).stdout))
        r, m = sorted(routed_rtt)[1], sorted(macvlan_rtt)[1]
        print(f"\npod->pod across nodes, median of 3 x 200 pings: routed {r * 1000:.1f} us, macvlan {m * 1000:.1f} us,"
              f" routed/macvlan {r / m:.2f}")
        assert r > 0 and m > 0
    finally:
        for name in ("k8s-master", "k8s-node02"):
            del_pod(routed, name, "lat-r")
            sh(routed, name, "CNI_COMMAND=DEL CNI_CONTAINERID=lat-m CNI_NETNS=/run/netns/lat-m CNI_IFNAME=eth0 "
                             "CNI_PATH=/opt/cni/bin /opt/cni/bin/macvlan < /run/mvlat.conf; ip netns del lat-m")


def test_reset_removes_bird_routes_and_files(routed):
    inv = GROWN.get("inventory", play.INVENTORY)
    result = site(routed, "-e", "cni_routed_state=absent", inventory=inv)
    assert result.rc == 0, result.output[-4000:]
    for n in lab.load(routed)["nodes"]:
        name = n["name"]
        assert bird_routes(routed, name) == {}
        assert sh(routed, name, f"birdc -s {CTL} show status", check=False).returncode != 0
        assert sh(routed, name, f"ls {CONF} /var/lib/cni/cnikit/bird/bird.conf "
                                "/var/lib/cni/cnikit/routednet.block.json", check=False).returncode != 0
    again = site(routed, "-e", "cni_routed_state=absent", inventory=inv)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]
