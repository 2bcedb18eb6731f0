"""cnikit.cni.cni_network through ansible-playbook: ADD / CHECK-when-cached / re-attach / DEL / GC,
check mode and diff, with our macvlan + host-local plugins on a veth master inside the sandbox."""
from __future__ import annotations

import json
import os
import subprocess


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=False).stdout


def test_cni_network_lifecycle(play, tmp_path):
    tag = os.getpid()
    master, ns, ns2 = f"cm{tag}", f"cnA{tag}", f"cnB{tag}"
    conf_dir, cache_dir = tmp_path / "net.d", tmp_path / "cache"
    conf_dir.mkdir()
    conflist = {"cniVersion": "1.0.0", "name": "mvnet", "plugins": [
        {"type": "macvlan", "master": master, "mode": "bridge",
         "ipam": {"type": "host-local", "subnet": "10.50.0.0/24", "dataDir": str(tmp_path / "ipam"),
                  "routes": [{"dst": "0.0.0.0/0"}], "gateway": "10.50.0.1"}}]}
    (conf_dir / "10-mvnet.conflist").write_text(json.dumps(conflist))
    common = {"name": "mvnet", "conf_dir": str(conf_dir), "cache_dir": str(cache_dir), "cni_path": [str(tmp_path / "nobin")]}

    def a(**kw):
        return {"cnikit.cni.cni_network": {**common, "container_id": "c1", "netns": ns, **kw}}
    subprocess.run(["ip", "link", "add", master, "type", "veth", "peer", "name", master + "p"], check=True)
    try:
        r = play([
            {"name": "ns", "cnikit.cni.netns": {"name": ns}},
            {"name": "ns2", "cnikit.cni.netns": {"name": ns2}},
            {"name": "predict add", "check_mode": True, "diff": True, **a()},
            {"name": "nothing made", "command": f"ip -n {ns} link show eth0", "register": "x", "failed_when": "x.rc == 0",
             "changed_when": False},
            {"name": "add", "diff": True, **a()},
            {"name": "add again", **a()},
            {"name": "add again predicted", "check_mode": True, **a()},
            {"name": "checked", **a(state="checked")},
            {"name": "break it", "command": f"ip -n {ns} link del eth0"},
            {"name": "repair predicted", "check_mode": True, **a()},
            {"name": "repair", **a()},
            {"name": "second container", **a(container_id="c2", netns=ns2)},
            {"name": "gc predicted", "check_mode": True, **a(state="gc", valid_attachments=[{"container_id": "c1", "ifname": "eth0"}])},
            {"name": "gc", **a(state="gc", valid_attachments=[{"container_id": "c1", "ifname": "eth0"}])},
            {"name": "gc again", **a(state="gc", valid_attachments=[{"container_id": "c1", "ifname": "eth0"}])},
            {"name": "remove predicted", "check_mode": True, **a(state="absent")},
            {"name": "remove", "diff": True, **a(state="absent")},
            {"name": "remove again", **a(state="absent")},
            {"name": "checked after remove", "ignore_errors": True, **a(state="checked")},
            {"name": "missing netns", "ignore_errors": True, **a(netns=f"nope{tag}")},
            {"name": "missing master", "ignore_errors": True, "cnikit.cni.cni_network": {
                "config": {**conflist, "plugins": [{**conflist["plugins"][0], "master": f"nomaster{tag}"}]},
                "cache_dir": str(cache_dir), "container_id": "c9", "netns": ns}},
            {"name": "unknown plugin", "ignore_errors": True, "cnikit.cni.cni_network": {
                "config": {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "no-such-plugin"}]},
                "cache_dir": str(cache_dir), "cni_path": [str(tmp_path)], "container_id": "c9", "netns": ns}},
            {"name": "unknown network", "ignore_errors": True, **a(name="nonet")},
            {"name": "bad container id", "ignore_errors": True, **a(container_id="a/b")},
        ]).ok()
        assert r["predict add"]["changed"] is True
        assert r["predict add"]["diff"]["before"]["state"] == "detached"
        assert r["add"]["changed"] is True
        ips = [ip["address"] for ip in r["add"]["result"]["ips"]]
        assert ips == ["10.50.0.2/24"], r["add"]["result"]
        assert r["add"]["diff"]["after"]["result"] == r["add"]["result"]
        assert r["add again"]["changed"] is False and r["add again"]["result"] == r["add"]["result"]
        assert r["add again predicted"]["changed"] is False
        assert r["checked"]["changed"] is False
        assert r["repair predicted"]["changed"] is True and "reattached" in r["repair predicted"]
        assert r["repair"]["changed"] is True and r["repair"]["reattached"]
        # host-local hands out round-robin: the repair's ADD after its DEL got .3, the next one .4
        assert r["repair"]["result"]["ips"][0]["address"] == "10.50.0.3/24"
        assert r["second container"]["result"]["ips"][0]["address"] == "10.50.0.4/24"
        assert r["gc predicted"]["changed"] is True
        assert r["gc"]["changed"] is True and r["gc"]["state"]["attachments"] == ["c1/eth0"]
        assert r["gc again"]["changed"] is False
        assert "eth0" not in _ip(ns2, "link")  # GC deleted c2's attachment
        assert r["remove predicted"]["changed"] is True
        assert r["remove"]["changed"] is True and r["remove"]["diff"]["after"]["state"] == "detached"
        assert r["remove again"]["changed"] is False
        assert "eth0" not in _ip(ns, "link")
        assert sorted(os.listdir(tmp_path / "ipam" / "mvnet")) in ([], ["lock"], ["last_reserved_ip.0", "lock"])
        assert os.listdir(cache_dir / "results") == []
        assert "nothing to check" in r.failure("checked after remove")
        assert f"network namespace '/run/netns/nope{tag}' not found" in r.failure("missing netns")
        # Go v1.1.1 macvlan's loadConf reports a missing master as a bare "Link not found"
        assert 'plugin type="macvlan" failed (add): Link not found' in r.failure("missing master")
        assert "no-such-plugin" in r.failure("unknown plugin")
        assert 'no net configuration with name "nonet"' in r.failure("unknown network")
        assert "invalid characters in containerID" in r.failure("bad container id")
        assert "eth0" not in _ip(ns, "link")  # the failed ADDs left nothing behind
    finally:
        subprocess.run(["ip", "link", "del", master], check=False)
        for n in (ns, ns2):
            subprocess.run(["ip", "netns", "del", n], check=False)
