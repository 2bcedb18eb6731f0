"""The rollout on a 3-node lab: conflicts stop the play before any node changes, check mode
changes nothing and reads persisted ranges back, and the lab's switch behaves as DESIGN.md says."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import lab  # noqa: E402
from lab import play  # noqa: E402

SITE = os.path.join(ROOT, "playbooks", "site.yml")
MACVLAN = os.path.join(ROOT, "build", "bin", "macvlan")


def snapshot(state):
    """Everything a rollout could touch on each node: its CNI dirs and its links."""
    out = {}
    for n in state["nodes"]:
        files = lab.run_in(n["pid"], ["sh", "-c", "find /etc/cni /opt/cni /var/lib/cni -exec stat -c '%n %s %Y' {} + | sort"]).stdout
        links = lab.run_in(n["pid"], ["ip", "-br", "link"]).stdout
        out[n["name"]] = (files, links)
    return out


def site(lab_state, *args):
    return play.playbook(SITE, list(args), extra_env={"CNIKIT_LAB_STATE": lab_state})


CONFLICTS = [
    (["-e", "cni_macvlan_range=192.168.80.120-192.168.80.125"],
     "ranges overlap: k8s-master (override) 192.168.80.120-192.168.80.125 and k8s-node01 (override) 192.168.80.120-192.168.80.125"),
    (["-e", "cni_macvlan_pool_end=192.168.80.139"],
     "pool exhausted: no free 10-address slot in 192.168.80.120-192.168.80.139 for k8s-node02"),
    (["-e", "cni_macvlan_gateway=192.168.80.135"],
     "gateway 192.168.80.135 lies inside k8s-node01's computed range 192.168.80.130-192.168.80.139"),
    (["-e", "cni_macvlan_range=192.168.81.10-192.168.81.19"],
     "k8s-master: override range 192.168.81.10-192.168.81.19 is outside subnet 192.168.80.0/24"),
]


@pytest.mark.parametrize("args,message", CONFLICTS, ids=["overlap", "pool-exhausted", "gateway-inside", "outside-subnet"])
def test_conflict_fails_the_play_before_any_node_changes(lab3, lab_state, args, message):
    before = snapshot(lab3)
    result = site(lab_state, *args)
    assert result.rc != 0
    assert f"pod range plan for network 'macvlannet' rejected, no node changed: {message}" in " ".join(result.output.split())
    assert "Install the CNI plugins" not in result.output  # the second play never started
    assert snapshot(lab3) == before


def test_check_mode_changes_nothing_and_reads_persisted_ranges_back(lab3, lab_state):
    # node02 keeps a range from an earlier run (.200-.209): the plan must read it back and keep it,
    # and node01 then gets the next free slot after the master
    node02 = next(n for n in lab3["nodes"] if n["name"] == "k8s-node02")
    persisted = {"format": "cnikit.ranges/v1", "network": "macvlannet", "subnet": "192.168.80.0/24",
                 "node": "k8s-node02", "rangeStart": "192.168.80.200", "rangeEnd": "192.168.80.209"}
    subprocess.run(lab.nsenter(node02["pid"], ["sh", "-c", "mkdir -p /var/lib/cni/cnikit && "
                                               "cat > /var/lib/cni/cnikit/macvlannet.range.json"]),
                   input=json.dumps(persisted), text=True, check=True)
    before = snapshot(lab3)
    result = site(lab_state, "--check", "--diff")
    assert result.rc == 0, result.output[-4000:]
    assert result.changed > 0  # it predicts the rollout
    assert snapshot(lab3) == before  # and does none of it
    # the predicted configs (the template task's diffs, each printed before its host's "changed:")
    block = result.output.split("Render the macvlan network config (validated by the engine before it is written)]", 1)[1].split("\nTASK [", 1)[0]
    parts = block.split("changed: [")
    diffs = {parts[i].split("]", 1)[0]: parts[i - 1] for i in range(1, len(parts))}
    for host, start in (("k8s-master", "192.168.80.120"), ("k8s-node01", "192.168.80.130"), ("k8s-node02", "192.168.80.200")):
        assert f"{start}" in diffs[host], (host, diffs.get(host))


def _pod(pid, name, mode, cid):
    """A pod netns on a node, attached by our macvlan executable (host-local in-process)."""
    lab.run_in(pid, ["ip", "netns", "add", name])
    conf = {"cniVersion": "1.0.0", "name": "switchtest", "type": "macvlan", "master": "ens33", "mode": mode,
            "ipam": {"type": "host-local", "subnet": "192.168.80.0/24", "rangeStart": "192.168.80.160",
                     "rangeEnd": "192.168.80.169"}}
    env = ["env", "CNI_COMMAND=ADD", f"CNI_CONTAINERID={cid}", f"CNI_NETNS=/run/netns/{name}", "CNI_IFNAME=eth0",
           f"CNI_PATH={os.path.dirname(MACVLAN)}"]
    proc = subprocess.run(lab.nsenter(pid, env + [MACVLAN]), input=json.dumps(conf), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)["ips"][0]["address"].split("/")[0]


def _ping(pid, dst, pod=None):
    argv = (["ip", "netns", "exec", pod] if pod else []) + ["ping", "-c", "1", "-W", "1", dst]
    return lab.run_in(pid, argv, check=False).returncode == 0


def test_switch_hairpin_and_the_shim(lab_state):
    """DESIGN.md's switch facts, on a lab of its own: vepa pods on one node talk only through a
    hairpin switch port; with a plain switch a node cannot reach its own bridge-mode pods through
    ens33, and a macv-host shim fixes that."""
    state_path = lab_state + ".switch"
    try:
        state = lab.up(1, path=state_path)
        pid = state["nodes"][0]["pid"]
        a, b = _pod(pid, "vepa-a", "vepa", "a"), _pod(pid, "vepa-b", "vepa", "b")
        assert _ping(pid, b, "vepa-a")  # hairpin on: reflected by the switch
        lab.set_hairpin(False, state_path)
        assert not _ping(pid, b, "vepa-a")  # plain switch: vepa siblings are cut off
        c = _pod(pid, "bridge-c", "bridge", "c")
        assert not _ping(pid, c)  # the node cannot reach its own macvlan pod through ens33
        for argv in (["ip", "link", "add", "macv-host", "link", "ens33", "type", "macvlan", "mode", "bridge"],
                     ["ip", "addr", "add", "192.168.80.90/32", "dev", "macv-host"],
                     ["ip", "link", "set", "macv-host", "up"],
                     ["ip", "route", "add", "192.168.80.160/29", "dev", "macv-host"]):
            lab.run_in(pid, argv)
        assert _ping(pid, c)  # through the shim
        assert _ping(pid, "192.168.80.90", "bridge-c")
        assert a and _ping(pid, "192.168.80.2", "vepa-a")  # the underlay gateway answers either way
    finally:
        lab.down(state_path)


def test_lab_status_and_down_leave_nothing(lab_state):
    state_path = lab_state + ".status"
    state = lab.up(2, path=state_path)
    rows = lab.status(state_path)
    assert [r["name"] for r in rows] == ["lab-underlay", "k8s-master", "k8s-node01"]
    assert all(r["alive"] and r["link"] == "UP" for r in rows)
    hostnames = [lab.run_in(n["pid"], ["hostname"]).stdout.strip() for n in state["nodes"]]
    assert hostnames == ["k8s-master", "k8s-node01"]
    # a process started inside a node (like a pod's busybox) goes down with the lab
    pid = state["nodes"][1]["pid"]
    lab.run_in(pid, ["ip", "netns", "add", "p"])
    subprocess.Popen(lab.nsenter(pid, ["ip", "netns", "exec", "p", "sleep", "300"]), start_new_session=True)
    deadline = time.monotonic() + 20
    pod = []
    while not pod and time.monotonic() < deadline:  # wait until it really runs in the pod
        pod = lab.run_in(pid, ["ip", "netns", "pids", "p"], check=False).stdout.split()
        time.sleep(0.05)
    assert pod, "the pod process never started"
    lab.down(state_path)
    assert lab.status(state_path) == []
    assert all(not os.path.exists(f"/proc/{n['pid']}") for n in state["nodes"])
    assert not os.path.exists(f"/proc/{pod[0]}") or _zombie(pod[0])


def _zombie(pid):
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_misspelt_choice_fails_before_any_node_changes(lab3, lab_state):
    """meta/argument_specs.yml: a wrong choice stops the run in the plan play, before any change."""
    before = snapshot(lab3)
    result = site(lab_state, "-e", "cni_plugins_agent=sytemd")
    assert result.rc != 0
    text = " ".join(result.output.split())
    assert "value of cni_plugins_agent must be one of: systemd, process, none, , got: sytemd" in text, text[-3000:]
    assert "Install the CNI plugins" not in text
    assert snapshot(lab3) == before


def _served(pid, at_least=0, deadline=20.0):
    """The agent's request count: SIGUSR1 makes it log `served N requests` (a worker counts just
    after its reply, so ask again until the count reaches `at_least`)."""
    end = time.monotonic() + deadline
    while True:
        lab.run_in(pid, ["sh", "-c", "read -r p v < /run/cni/cnikit-agent.pid && kill -USR1 $p"])
        time.sleep(0.2)
        log = lab.run_in(pid, ["cat", "/run/cni/cnikit-agent.log"]).stdout
        counts = [int(line.split("served ", 1)[1].split()[0]) for line in log.splitlines() if " served " in line]
        if counts and counts[-1] >= at_least:
            return counts[-1]
        assert time.monotonic() < end, log[-2000:]


def test_default_rollout_answers_an_add_through_the_agent(lab3, lab_state):
    """issue 14: with no extra variables a node runs the agent (the lab has no systemd: the socket
    unit pair is written and enabled, the role supervises the agent as a process), and a plugin
    call is served by it - counted by the agent itself, not inferred from a successful ADD."""
    result = site(lab_state)
    assert result.rc == 0, result.output[-4000:]
    pid = lab3["nodes"][1]["pid"]
    units = lab.run_in(pid, ["sh", "-c", "readlink /etc/systemd/system/sockets.target.wants/cnikit-agent.socket "
                                         "/etc/systemd/system/multi-user.target.wants/cnikit-agent.service; "
                                         "grep ListenStream= /etc/systemd/system/cnikit-agent.socket; "
                                         "test -S /run/cni/cnikit.sock && echo socket"]).stdout.split()
    assert units == ["/etc/systemd/system/cnikit-agent.socket", "/etc/systemd/system/cnikit-agent.service",
                     "ListenStream=/run/cni/cnikit.sock", "socket"], units
    before = _served(pid)
    lab.run_in(pid, ["ip", "netns", "add", "agentpod"])
    conf = json.dumps({"cniVersion": "1.0.0", "name": "agenttest", "type": "macvlan", "master": "ens33",
                       "ipam": {"type": "host-local", "subnet": "192.168.80.0/24", "rangeStart": "192.168.80.170",
                                "rangeEnd": "192.168.80.179"}})
    env = ["env", "CNI_CONTAINERID=agentpod", "CNI_NETNS=/run/netns/agentpod", "CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"]
    add = subprocess.run(lab.nsenter(pid, env + ["CNI_COMMAND=ADD", "/opt/cni/bin/macvlan"]), input=conf, text=True,
                         capture_output=True, check=False)
    assert add.returncode == 0, add.stdout + add.stderr
    assert json.loads(add.stdout)["ips"][0]["address"].startswith("192.168.80.17")
    # at least macvlan's request (its host-local delegation may come back through the agent as a second one)
    assert _served(pid, before + 1) >= before + 1
    delete = subprocess.run(lab.nsenter(pid, env + ["CNI_COMMAND=DEL", "/opt/cni/bin/macvlan"]), input=conf, text=True,
                            capture_output=True, check=False)
    assert delete.returncode == 0, delete.stdout + delete.stderr
    lab.run_in(pid, ["ip", "netns", "del", "agentpod"])


def _render_agent_units(dest):
    """The role's two agent unit templates rendered with its defaults and vars, into `dest`."""
    import jinja2  # noqa: PLC0415 - ansible-core's own dependency

    role = os.path.join(ROOT, "roles", "cni_plugins")
    with open(os.path.join(role, "defaults", "main.yml"), encoding="utf-8") as fh:
        context = yaml.safe_load(fh)
    with open(os.path.join(role, "vars", "main.yml"), encoding="utf-8") as fh:
        context.update(yaml.safe_load(fh))
    context["_cni_plugins_activate"] = {"release": "1.1.0-0123456789ab"}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(role, "templates")),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    for unit in ("cnikit-agent.socket", "cnikit-agent.service"):
        with open(os.path.join(dest, unit), "w", encoding="utf-8") as fh:
            fh.write(env.get_template(unit + ".j2").render(context))


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed here")
def test_agent_units_pass_systemd_analyze_verify(tmp_path):
    """The socket unit and the service it activates, as the role writes them (systemd-analyze verify
    needs no systemd as PID 1)."""
    _render_agent_units(str(tmp_path))
    pair = subprocess.run(["systemd-analyze", "verify", "./cnikit-agent.socket", "./cnikit-agent.service"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert pair.returncode == 0 and "cnikit-agent" not in pair.stdout + pair.stderr, pair.stdout + pair.stderr
    # and verify does look: the socket without its service is an error
    os.unlink(tmp_path / "cnikit-agent.service")
    alone = subprocess.run(["systemd-analyze", "verify", "./cnikit-agent.socket"], cwd=tmp_path,
                           capture_output=True, text=True, check=False)
    assert alone.returncode != 0 and "cnikit-agent.service not loaded" in alone.stdout + alone.stderr
    socket_unit = (tmp_path / "cnikit-agent.socket").read_text()
    assert "ListenStream=/run/cni/cnikit.sock" in socket_unit and "SocketMode=0600" in socket_unit
