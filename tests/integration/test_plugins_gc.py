"""Spec 1.1 GC on the main plugins with ipMasq: masquerade rules and leases of containers that are
not valid attachments go, those of valid ones stay; a GC without a list collects nothing (issue 19)
(Go 1.1.1 has no GC: plugins#1013/#1014)."""
from __future__ import annotations

import os

import pytest

import cnitest
from cni import netfilter
from cni.protocol import spec


@pytest.mark.parametrize("plugin,backend", [("bridge", None), ("ptp", None), ("bridge", "iptables")])
def test_gc_drops_masquerade_and_leases_of_gone_containers(netns_factory, tmp_path, plugin, backend):
    net = f"gc{plugin}{backend or 'nft'}"
    conf = {"cniVersion": "1.1.0", "name": net, "type": plugin, "ipMasq": True,
            "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": str(tmp_path)}}
    if plugin == "bridge":
        conf.update(bridge=f"br{os.getpid() % 10000}", isGateway=True)
    if backend:
        conf["ipMasqBackend"] = backend
    ips = {}
    for cid in ("keep1", "gone1"):
        ns = netns_factory()
        out = cnitest.run(plugin, "ADD", conf, cid=cid, netns=f"/run/netns/{ns}")
        assert out.rc == 0, out.stdout
        ips[cid] = [ip["address"] for ip in out.json["ips"]]

    def gc(**keep):
        out = cnitest.exec_plugin(os.path.join(cnitest.OUR_BIN, plugin), {
            "CNI_COMMAND": "GC", "CNI_PATH": cnitest.OUR_BIN, "PATH": "/usr/sbin:/usr/bin"}, dict(conf, **keep))
        assert (out.rc, out.stdout) == (0, ""), out.stdout
        return out

    def leases():
        return sorted(f for f in os.listdir(tmp_path / net) if f[0].isdigit())

    # no list (what cnitool sends), or one of the wrong type: nothing is collected, stderr says why
    for keep in ({}, {"cni.dev/valid-attachments": None}, {"cni.dev/valid-attachments": "keep1"}):
        assert "nothing collected" in gc(**keep).stderr
        for cid in ("keep1", "gone1"):
            netfilter.check_ipmasq(net, cid, ips[cid], backend)
        assert len(leases()) == 2
    gc(**{"cni.dev/valid-attachments": [{"containerID": "keep1", "ifname": "eth0"}]})
    netfilter.check_ipmasq(net, "keep1", ips["keep1"], backend)
    with pytest.raises(spec.CNIError):
        netfilter.check_ipmasq(net, "gone1", ips["gone1"], backend)
    assert leases() == [ips["keep1"][0].split("/")[0]]
    gc(**{"cni.dev/valid-attachments": []})  # an explicit empty list: nothing is valid
    with pytest.raises(spec.CNIError):
        netfilter.check_ipmasq(net, "keep1", ips["keep1"], backend)
    assert leases() == []
    for cid in ("keep1", "gone1"):  # DEL after GC is still clean
        assert cnitest.run(plugin, "DEL", conf, cid=cid).rc == 0
