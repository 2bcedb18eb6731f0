"""cnikit.cni.portmap through ansible-playbook: traffic through the mapped port (nftables), the
iptables backend's Go chains, idempotence via CHECK, check mode, absent, bad mappings."""
from __future__ import annotations

import os
import subprocess

import metautil as mu


def test_portmap_lifecycle(play, tmp_path):
    tag = os.getpid()
    ns = f"pm{tag}"
    pod = {"cnikit.cni.veth": {"name": f"pmh{tag % 100000}", "addresses": ["10.77.0.1/24"],
                               "peer": {"name": "eth0", "netns": ns, "addresses": ["10.77.0.2/24"],
                                        "routes": [{"dst": "default", "gw": "10.77.0.1"}]}}}
    web = [{"host_port": 8080, "container_port": 80}]

    def pm(cid="web1", mappings=None, **kw):
        return {"cnikit.cni.portmap": {"network": "pmnet", "container_id": cid, "container_ip": ["10.77.0.2"],
                                       "mappings": mappings or web, "state_dir": str(tmp_path / "pm"), **kw}}

    def fetch(url):
        return {"uri": {"url": url, "return_content": True, "timeout": 3}, "ignore_errors": True}
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with mu.http_server(ns, 80, "pod says hi"):
            r = play([
                {"name": "pod", **pod},
                {"name": "predict", "check_mode": True, "diff": True, **pm()},
                {"name": "map", **pm()},
                {"name": "map again", **pm()},
                {"name": "via host address", **fetch("http://10.77.0.1:8080/")},
                {"name": "via localhost", **fetch("http://127.0.0.1:8080/")},
                {"name": "grow", **pm(mappings=web + [{"host_port": 8443, "container_port": 80}])},
                {"name": "after grow", **fetch("http://10.77.0.1:8443/")},
                {"name": "shrink", **pm()},
                {"name": "after shrink", **fetch("http://10.77.0.1:8443/")},
                {"name": "iptables", **pm("web2", [{"host_port": 8081, "container_port": 80}], backend="iptables")},
                {"name": "iptables again", **pm("web2", [{"host_port": 8081, "container_port": 80}], backend="iptables")},
                {"name": "iptables rules", "command": "iptables-save -t nat", "changed_when": False},
                {"name": "via iptables mapping", **fetch("http://10.77.0.1:8081/")},
                {"name": "iptables removed", **pm("web2", [{"host_port": 8081, "container_port": 80}],
                                                  backend="iptables", state="absent")},
                {"name": "unmap predicted", "check_mode": True, **pm(state="absent")},
                {"name": "unmap", **pm(state="absent")},
                {"name": "unmap again", **pm(state="absent")},
                {"name": "after unmap", **fetch("http://10.77.0.1:8080/")},
                {"name": "port zero", "ignore_errors": True, **pm(mappings=[{"host_port": 0, "container_port": 80}])},
                {"name": "bad ip", "ignore_errors": True, **pm(container_ip=["10.77.0.999"])},
            ]).ok()
        assert r["predict"]["changed"] is True and r["predict"]["diff"]["before"]["state"] == "absent"
        assert r["map"]["changed"] is True and r["map again"]["changed"] is False
        assert r["via host address"]["content"] == "pod says hi"
        assert r["via localhost"]["content"] == "pod says hi"
        assert r["grow"]["changed"] is True and r["after grow"]["content"] == "pod says hi"
        assert r["shrink"]["changed"] is True
        assert r["after shrink"]["_status"] == "failed"  # the shorter list took 8443 away
        assert r["iptables"]["changed"] is True and r["iptables again"]["changed"] is False
        rules = r["iptables rules"]["stdout"]  # Go's chains: the multiport entry and the container's DNAT
        assert '--comment "dnat name: \\"pmnet\\" id: \\"web2\\"" -m multiport --dports 8081 -j CNI-DN-' in rules
        assert "--dport 8081 -j DNAT --to-destination 10.77.0.2:80" in rules
        assert r["via iptables mapping"]["content"] == "pod says hi"
        assert r["iptables removed"]["changed"] is True and "CNI-DN-" not in mu.iptables_save()
        assert r["unmap predicted"]["changed"] is True
        assert r["unmap"]["changed"] is True and r["unmap again"]["changed"] is False
        assert r["after unmap"]["_status"] == "failed"
        assert "8080" not in mu.nft_ruleset()
        assert "Invalid host port number: 0" in r.failure("port zero")
        assert "invalid container IP '10.77.0.999'" in r.failure("bad ip")
    finally:
        mu.reset_netfilter()
        subprocess.run(["ip", "link", "del", f"pmh{tag % 100000}"], check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)
