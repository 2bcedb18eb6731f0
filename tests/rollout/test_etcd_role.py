"""roles/etcd on a 3-node lab: 3 TLS members inside the lab nodes (one per node, on its lab
address), healthy; idempotent; check mode changes nothing; a killed member is restarted by the
next run; state=stopped / absent."""
from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import lab  # noqa: E402
from lab import play  # noqa: E402

PLAYBOOK = os.path.join(ROOT, "playbooks", "etcd.yml")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return str(tmp_path_factory.mktemp("etcd-pki"))


def run(lab_state, pki, *args):
    # every lab node is a member: the control-plane group has one node, so name all three
    return play.playbook(PLAYBOOK, ["-e", f"etcd_pki_dir={pki}", "-e", "etcd_member_group=k8s_cluster", *args],
                         extra_env={"CNIKIT_LAB_STATE": lab_state})


def health(state, node="k8s-node02"):
    pid = next(n["pid"] for n in state["nodes"] if n["name"] == node)
    d = "/etc/cni/cnikit-etcd"
    return lab.run_in(pid, ["env", "ETCDCTL_API=3", "etcdctl", "--endpoints",
                            "https://192.168.80.100:2379,https://192.168.80.101:2379,https://192.168.80.102:2379",
                            f"--cacert={d}/ca.crt", f"--cert={d}/client.crt", f"--key={d}/client.key",
                            "--command-timeout=2s", "-w", "json", "endpoint", "health"], check=False)


def member_pid(state, node):
    pid = next(n["pid"] for n in state["nodes"] if n["name"] == node)
    out = lab.run_in(pid, ["cat", "/run/cnikit-etcd/etcd.pid"], check=False)
    return int(out.stdout) if out.returncode == 0 else None


def test_check_mode_on_a_fresh_lab_changes_nothing(lab3, lab_state, pki):
    result = run(lab_state, pki, "--check")
    assert result.rc == 0, result.output[-3000:]
    assert os.listdir(pki) == []
    for n in lab3["nodes"]:
        assert lab.run_in(n["pid"], ["test", "-e", "/etc/cni/cnikit-etcd"], check=False).returncode == 1


def test_deploy_healthy_in_the_lab_nodes_and_idempotent(lab3, lab_state, pki):
    result = run(lab_state, pki)
    assert result.rc == 0, result.output[-3000:]
    out = health(lab3)
    assert out.returncode == 0, out.stderr
    assert sorted(h["endpoint"] for h in json.loads(out.stdout) if h["health"]) == [
        "https://192.168.80.100:2379", "https://192.168.80.101:2379", "https://192.168.80.102:2379"]
    # each member runs inside its node's namespaces (same net namespace as the node's holder)
    for n in lab3["nodes"]:
        pid = member_pid(lab3, n["name"])
        assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink(f"/proc/{n['pid']}/ns/net")
    assert sorted(os.listdir(pki)) == sorted(["ca.crt", "ca.key", "client.crt", "client.key"]
                                             + [f"etcd-{n['name']}.{e}" for n in lab3["nodes"] for e in ("crt", "key")])
    again = run(lab_state, pki)
    assert again.rc == 0 and again.changed == 0, again.output[-3000:]


SITE = os.path.join(ROOT, "playbooks", "site.yml")


def etcdctl(state, *args, node="k8s-master"):
    pid = next(n["pid"] for n in state["nodes"] if n["name"] == node)
    d = "/etc/cni/cnikit-etcd"
    return lab.run_in(pid, ["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", "https://192.168.80.100:2379",
                            f"--cacert={d}/ca.crt", f"--cert={d}/client.crt", f"--key={d}/client.key", *args])


def test_macvlan_role_on_the_cluster_ipam(lab3, lab_state, pki):
    """site.yml with cni_macvlan_ipam=cluster: one pod per node gets an address from the one pool
    in etcd (.120 on), the pods ping each other across nodes, DEL leaves no key."""
    result = play.playbook(SITE, ["-e", f"etcd_pki_dir={pki}", "-e", "etcd_member_group=k8s_cluster",
                                  "-e", "cni_macvlan_ipam=cluster", "-e", "cni_macvlan_shim=false",
                                  "-e", f"cni_plugins_engine_src={play.engine_snapshot()}"],
                           extra_env={"CNIKIT_LAB_STATE": lab_state})
    assert result.rc == 0, result.output[-3000:]
    ips = {}
    for n in lab3["nodes"]:
        # the node's interpreter (/usr/bin/python3, like a real host) has no etcd3gw: the IPAM's client
        # comes from the release the cni_plugins role shipped from the controller
        assert lab.run_in(n["pid"], ["/usr/bin/python3", "-I", "-c", "import etcd3gw"], check=False).returncode == 1
        assert "/usr/bin/python3 -I" in lab.run_in(n["pid"], ["head", "-1", "/opt/cni/bin/cnikit"]).stdout
        release = json.loads(lab.run_in(n["pid"], ["cat", "/opt/cni/lib/cnikit/current/RELEASE.json"]).stdout)
        assert release["etcd3gw"]
        conf = json.loads(lab.run_in(n["pid"], ["cat", "/etc/cni/net.d/10-macvlannet.conf"]).stdout)
        assert conf["ipam"]["type"] == "cnikit-cluster" and conf["ipam"]["node"] == n["name"]
        lab.run_in(n["pid"], ["ip", "netns", "add", "pod"])
        out = lab.run_in(n["pid"], ["env", "CNI_PATH=/opt/cni/bin", "/opt/cni/bin/cnikit", "net", "add",
                                    "macvlannet", "/run/netns/pod"])
        ips[n["name"]] = json.loads(out.stdout)["ips"][0]["address"].split("/")[0]
    assert len(set(ips.values())) == 3 and all(int(ip.rsplit(".", 1)[1]) >= 120 for ip in ips.values())
    keys = etcdctl(lab3, "get", "/cnikit/ipam/macvlannet/owners/", "--prefix", "--keys-only").stdout.split()
    assert sorted(k.split("/")[5] for k in keys) == sorted(ips)
    for n in lab3["nodes"]:
        for other, ip in ips.items():
            if other != n["name"]:
                lab.run_in(n["pid"], ["ip", "netns", "exec", "pod", "ping", "-c1", "-W2", ip])
    for n in lab3["nodes"]:
        lab.run_in(n["pid"], ["env", "CNI_PATH=/opt/cni/bin", "/opt/cni/bin/cnikit", "net", "del",
                              "macvlannet", "/run/netns/pod"])
        lab.run_in(n["pid"], ["ip", "netns", "del", "pod"])
    assert etcdctl(lab3, "get", "/cnikit/ipam/", "--prefix", "--keys-only").stdout.strip() == ""


def test_a_killed_member_is_restarted(lab3, lab_state, pki):
    pid = member_pid(lab3, "k8s-node01")
    os.kill(pid, 9)
    result = run(lab_state, pki)
    assert result.rc == 0 and result.changed == 1, result.output[-3000:]
    assert member_pid(lab3, "k8s-node01") != pid and health(lab3).returncode == 0


def test_stopped_then_absent(lab3, lab_state, pki):
    result = run(lab_state, pki, "-e", "etcd_state=stopped")
    assert result.rc == 0 and result.changed == 3, result.output[-3000:]
    assert health(lab3).returncode != 0
    for n in lab3["nodes"]:  # data kept
        assert lab.run_in(n["pid"], ["test", "-d", "/var/lib/cni/etcd/member"], check=False).returncode == 0
    result = run(lab_state, pki, "-e", "etcd_state=absent")
    assert result.rc == 0, result.output[-3000:]
    for n in lab3["nodes"]:
        for d in ("/var/lib/cni/etcd", "/etc/cni/cnikit-etcd", "/run/cnikit-etcd"):
            assert lab.run_in(n["pid"], ["test", "-e", d], check=False).returncode == 1
    assert run(lab_state, pki, "-e", "etcd_state=absent").changed == 0
