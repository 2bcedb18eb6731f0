"""tuning on a live kernel: sysctls written in the pod netns, link settings applied, saved and restored."""
from __future__ import annotations

import json
import os

import pytest

import cnitest
import metautil as mu


@pytest.fixture
def pod(netns, tmp_path):
    p = mu.add_pod(netns, mu.uid())
    p.data_dir = str(tmp_path / "tuning")
    yield p
    mu.del_pod(p)


def tconf(pod, **keys):
    return mu.chained(pod, {"type": "tuning", "dataDir": pod.data_dir, **keys})


def eth0(pod):
    return cnitest.ip_json("-d link show eth0", pod.netns)[0]


def sysctl(pod, key):
    return cnitest.sh(f"ip netns exec {pod.netns} sysctl -n {key}").strip()


def test_settings_applied_saved_and_restored_on_del(pod):
    before = eth0(pod)
    conf = tconf(pod, mtu=1400, mac="02:00:00:00:00:42", promisc=True, allmulti=True,
                 sysctl={"net.ipv4.conf.IFNAME.arp_announce": "2", "net.core.somaxconn": "512"})
    out = mu.run_chain("tuning", "ADD", pod, conf)
    assert out.rc == 0, out.stdout + out.stderr
    assert [i["mac"] for i in out.json["interfaces"] if i["name"] == "eth0"] == ["02:00:00:00:00:42"]
    now = eth0(pod)
    assert now["mtu"] == 1400 and now["address"] == "02:00:00:00:00:42"
    assert "PROMISC" in now["flags"] and "ALLMULTI" in now["flags"]
    assert sysctl(pod, "net.ipv4.conf.eth0.arp_announce") == "2" and sysctl(pod, "net.core.somaxconn") == "512"
    backup = os.path.join(pod.data_dir, f"{pod.cid}_eth0.json")
    with open(backup) as fh:
        assert json.load(fh) == {"mac": before["address"], "promisc": False, "mtu": before["mtu"], "allmulti": False}
    assert mu.run_chain("tuning", "CHECK", pod, dict(conf, prevResult=out.json)).rc == 0
    assert mu.run_chain("tuning", "DEL", pod, conf).rc == 0
    after = eth0(pod)
    assert (after["mtu"], after["address"]) == (before["mtu"], before["address"])
    assert "PROMISC" not in after["flags"] and "ALLMULTI" not in after["flags"]
    assert not os.path.exists(backup)
    assert mu.run_chain("tuning", "DEL", pod, conf).rc == 0


def test_bad_key_rejected_before_anything_is_written(pod):
    conf = tconf(pod, mtu=1300, sysctl={"net.core.somaxconn": "999", "kernel.panic": "1"})
    out = mu.run_chain("tuning", "ADD", pod, conf)
    assert out.rc == 1 and out.code == 7 and out.json["msg"] == 'invalid net sysctl key: "kernel.panic"'
    assert sysctl(pod, "net.core.somaxconn") != "999" and eth0(pod)["mtu"] != 1300
    panic = cnitest.sh("sysctl -n kernel.panic")
    conf = tconf(pod, sysctl={"net.core.somaxconn": "999", "net/../kernel/panic": "7"})  # dots become slashes
    out = mu.run_chain("tuning", "ADD", pod, conf)
    assert out.rc == 1 and "no such sysctl" in out.json["msg"]
    assert cnitest.sh("sysctl -n kernel.panic") == panic and sysctl(pod, "net.core.somaxconn") != "999"


def test_mac_precedence_cni_args_runtime_config_args_cni(pod):
    conf = tconf(pod, mac="02:00:00:00:00:01")
    conf["runtimeConfig"] = {"mac": "02:00:00:00:00:02"}
    out = cnitest.run("tuning", "ADD", conf, cid=pod.cid, netns=pod.path, args="IgnoreUnknown=1;MAC=02:00:00:00:00:03")
    assert out.rc == 0 and eth0(pod)["address"] == "02:00:00:00:00:02"  # runtimeConfig beats CNI_ARGS
    conf["args"] = {"cni": {"mac": "02:00:00:00:00:04"}}
    out = cnitest.run("tuning", "ADD", conf, cid=pod.cid, netns=pod.path)
    assert out.rc == 0 and eth0(pod)["address"] == "02:00:00:00:00:04"  # args.cni beats both


def test_check_fails_on_drift_and_del_without_netns_drops_the_backup(pod, netns_factory):
    conf = tconf(pod, mtu=1400)
    out = mu.run_chain("tuning", "ADD", pod, conf)
    assert out.rc == 0
    cnitest.sh(f"ip -n {pod.netns} link set eth0 mtu 1450")
    res = mu.run_chain("tuning", "CHECK", pod, dict(conf, prevResult=out.json))
    assert res.rc == 1 and "MTU" in res.json["msg"]
    gone = mu.Pod(netns_factory(), pod.cid, pod.network, pod.bridge, pod.subnet, pod.result, pod.conf)
    cnitest.sh(f"ip netns del {gone.netns}")
    assert mu.run_chain("tuning", "DEL", gone, conf).rc == 0
    assert os.listdir(pod.data_dir) == []


def test_failed_add_restores_what_it_changed(pod):
    before = eth0(pod)
    # in range, but below what a veth takes (68): the kernel refuses it after the MAC was set
    out = mu.run_chain("tuning", "ADD", pod, tconf(pod, mac="02:00:00:00:00:42", mtu=60))
    assert out.rc == 1 and out.code == 999
    after = eth0(pod)
    assert (after["address"], after["mtu"]) == (before["address"], before["mtu"])
    assert os.listdir(pod.data_dir) == []
