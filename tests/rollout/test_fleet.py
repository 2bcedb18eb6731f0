"""The rollout as a fleet operator runs it: three lab nodes reached over real SSH (user ops, sudo),
each with only Debian's /usr/bin/python3 (no pyroute2) and no package index, the Go plugins already
in /opt/cni/bin. Install (air-gapped: everything from the controller), coexist (foreign executables
kept unless named, replaced ones backed up), runtime-order check, pods over SSH, reset back to the
exact snapshot. Upgrade under load, rollback and reboot: tests/fleet (make test-fleet)."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from fleet import CONF, DEMO, RESET, SITE, expect_ok, lab, node, play, run, sh, snapshot, summary, version

BEFORE = {}


@pytest.fixture(scope="module")
def engine():
    path = play.engine_snapshot()
    yield path
    import shutil  # noqa: PLC0415

    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(lab_state):
    state = lab.up(3, path=lab_state, ssh=True, go_plugins=True)
    state["_path"] = lab_state
    for n in state["nodes"]:  # containerd looking where we install (Debian's default config says /usr/lib/cni)
        sh(n, "mkdir -p /etc/containerd && printf '[plugins.\"io.containerd.grpc.v1.cri\".cni]\\n"
              "  bin_dir = \"/opt/cni/bin\"\\n  conf_dir = \"/etc/cni/net.d\"\\n' > /etc/containerd/config.toml")
    BEFORE.update(snapshot(state))
    return state


def _sha(n, path):
    return sh(n, f"sha256sum {path}").split()[0]


def test_nodes_are_air_gapped_ssh_hosts_with_go_plugins(fleet, lab_state):
    from lab import ssh  # noqa: PLC0415

    for n in fleet["nodes"]:
        assert ssh.reachable(n, fleet, lab_state), n["name"]  # ops@node, key auth, sudo -n
        assert lab.run_in(n["pid"], ["/usr/bin/python3", "-c", "import pyroute2"], check=False).returncode != 0
        assert _sha(n, "/opt/cni/bin/macvlan") == hashlib.sha256(open("/usr/lib/cni/macvlan", "rb").read()).hexdigest()
    # the switch has no way out: no default route, so no package index is reachable from a node
    assert "default" not in lab.run_in(fleet["underlay"]["pid"], ["ip", "route"]).stdout


def test_a_config_a_runtime_would_pick_first_stops_the_rollout(fleet, lab_state, engine):
    n2 = node(fleet, "k8s-node02")
    sh(n2, "echo '{\"cniVersion\":\"1.0.0\",\"name\":\"podman\",\"plugins\":[]}' > /etc/cni/net.d/05-podman.conflist")
    try:
        result = run(lab_state, SITE, engine=engine)
    finally:
        sh(n2, "rm /etc/cni/net.d/05-podman.conflist")
    assert result.rc != 0
    assert ("k8s-node02: /etc/cni/net.d/05-podman.conflist sorts before 10-macvlannet.conf"
            in " ".join(result.output.split())), result.output[-3000:]
    assert "Install the CNI plugins" not in result.output
    assert snapshot(fleet) == BEFORE


def test_install_over_ssh_keeps_foreign_plugins_and_backs_up_replaced_ones(fleet, lab_state, engine):
    n1 = node(fleet, "k8s-node01")
    sh(n1, "mkdir -p /etc/containerd && printf '[plugins.\"io.containerd.grpc.v1.cri\".cni]\\n"
           "  conf_dir = \"/etc/cni/other.d\"\\n' > /etc/containerd/config.toml")
    result = expect_ok(run(lab_state, SITE, "-e", "cni_plugins_agent=systemd",
                           "-e", '{"cni_plugins_replace": ["macvlan", "host-local"]}', engine=engine))
    lines = summary(result)
    assert len(lines) == 3, result.output[-3000:]
    release = version(n1)["release"]
    assert release["name"].startswith("1.1.0-") and release["pyroute2"]
    for n, rng in zip(fleet["nodes"], ("120-192.168.80.129", "130-192.168.80.139", "140-192.168.80.149")):
        n = node(fleet, n["name"])
        line = next(x for x in lines if x.startswith(n["name"] + ":"))
        assert f"range 192.168.80.{rng}, engine {release['name']}" in line, line
        assert "kept foreign: bandwidth,bridge," in line and "replaced+backed up: host-local,macvlan" in line, line
        assert version(n)["release"]["name"] == release["name"]
        # Go's bridge untouched; macvlan ours now, Go's kept in the backup
        go = {p: hashlib.sha256(open(f"/usr/lib/cni/{p}", "rb").read()).hexdigest() for p in ("bridge", "macvlan")}
        assert _sha(n, "/opt/cni/bin/bridge") == go["bridge"]
        assert _sha(n, "/opt/cni/bin/macvlan") != go["macvlan"]
        assert _sha(n, "/opt/cni/lib/cnikit/backup/macvlan") == go["macvlan"]
        assert "1.1.0" in json.loads(sh(n, "CNI_COMMAND=VERSION /opt/cni/bin/macvlan"))["supportedVersions"]
        assert sh(n, "test -S /run/cni/cnikit.sock && readlink /etc/systemd/system/multi-user.target.wants/"
                     "cnikit-agent.service").strip() == "/etc/systemd/system/cnikit-agent.service"
    assert "conf_dir = \"/etc/cni/other.d\", but this network is in /etc/cni/net.d" in next(
        x for x in lines if x.startswith("k8s-node01:"))
    again = expect_ok(run(lab_state, SITE, "-e", "cni_plugins_agent=systemd",
                          "-e", '{"cni_plugins_replace": ["macvlan", "host-local"]}', engine=engine))
    assert again.changed == 0, again.output[-4000:]


def test_pods_over_ssh(fleet, lab_state):
    expect_ok(run(lab_state, DEMO))
    pods = {}
    for n in fleet["nodes"]:
        n = node(fleet, n["name"])
        out = json.loads(sh(n, f"ip -n busybox-{n['name']} -j -4 addr show dev eth0"))
        pods[n["name"]] = (n, out[0]["addr_info"][0]["local"])
    for src, (n, _) in pods.items():
        for dst, (_, ip) in pods.items():
            if src != dst:
                assert lab.run_in(n["pid"], ["ip", "netns", "exec", f"busybox-{src}", "busybox", "ping", "-c", "1",
                                             "-W", "2", ip], check=False).returncode == 0, (src, dst)
    expect_ok(run(lab_state, DEMO, "-e", "demo_state=absent"))


def test_reset_restores_the_snapshot(fleet, lab_state):
    result = expect_ok(run(lab_state, RESET))
    assert all("range removed, engine removed" in line for line in summary(result)), summary(result)
    after = snapshot(fleet)
    for name, text in BEFORE.items():
        assert after[name] == text, name
    assert CONF
