"""podman 4.3 (CNI backend, libcni inside) as a real client of our plugins, and libcni ↔ cnikit
runtime interop on one result cache. Skips only when podman is not installed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

import clientlib
import cnitest
from cni import runtime

pytestmark = pytest.mark.skipif(shutil.which("podman") is None or shutil.which("crun") is None,
                                reason="podman/crun not installed (apt-get install podman)")

SUBNET = "10.89.7"


def podnet(name: str, bridge: str, subnet: str = SUBNET, meta: bool = True) -> dict:
    """bridge + host-local, then portmap + firewall + tuning: the chain podman's default net uses."""
    plugins = [{"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
                "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}],
                         "ranges": [[{"subnet": f"{subnet}.0/24", "gateway": f"{subnet}.1"}]]}}]
    if meta:
        plugins += [{"type": "portmap", "capabilities": {"portMappings": True}},
                    {"type": "firewall"},
                    {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}}]
    return {"cniVersion": "1.0.0", "name": name, "plugins": plugins}


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    return clientlib.build_rootfs(str(tmp_path_factory.mktemp("rootfs")))


@pytest.fixture
def cgroups(sandbox):
    mounted = clientlib.private_cgroup_root()
    yield
    if mounted:
        subprocess.run(["umount", mounted], check=False)


@pytest.fixture
def podman_factory(tmp_path, rootfs, cgroups):
    made = []

    def make(cni_dir: str) -> clientlib.Podman:
        pm = clientlib.Podman(str(tmp_path / f"podman{len(made)}"), cni_dir, rootfs)
        made.append(pm)
        return pm

    yield make
    for pm in made:
        pm("rm", "-af", "-t", "0", check=False)


def test_podman_runs_httpd_on_our_plugins(podman_factory, tmp_path):
    pm = podman_factory(clientlib.our_bin(str(tmp_path / "bin")))
    pm.network("cnikitnet", podnet("cnikitnet", "cnikit-pod0"))
    pm(*pm.run_args("cnikitnet", "-d", "--name", "web", "-p", "8080:80"), "/bin/httpd", "-f", "-p", "80",
       "-h", "/var/www")
    ip = pm("inspect", "web", "--format", '{{(index .NetworkSettings.Networks "cnikitnet").IPAddress}}').stdout.strip()
    assert ip.startswith(SUBNET + ".")
    # the page via the pod IP, via the host port on the bridge gateway and on localhost (route_localnet)
    assert clientlib.fetch(f"http://{ip}/") == clientlib.PAGE
    assert clientlib.fetch(f"http://{SUBNET}.1:8080/") == clientlib.PAGE
    assert clientlib.fetch("http://127.0.0.1:8080/") == clientlib.PAGE
    # tuning ran inside the container's netns
    assert pm("exec", "web", "cat", "/proc/sys/net/core/somaxconn").stdout.strip() == "512"
    assert clientlib.leases("/var/lib/cni/networks", "cnikitnet") == [ip]
    [entry] = clientlib.cache_entries()
    cid = pm("inspect", "web", "--format", "{{.Id}}").stdout.strip()
    assert entry == f"cnikitnet-{cid}-eth0"
    assert ip in clientlib.ruleset_text()
    pm("rm", "-f", "-t", "0", "web")
    # nothing left: no lease, no cache entry, no rule naming the pod IP or container, no veth
    assert clientlib.leases("/var/lib/cni/networks", "cnikitnet") == []
    assert clientlib.cache_entries() == []
    after = clientlib.ruleset_text()
    assert ip not in after and cid[:12] not in after
    links = cnitest.ip_json("link show master cnikit-pod0")
    assert links == [], links
    assert "elements" not in after  # every nft set/map (pod IPs, ports) is empty again
    # steady state: another container with a port mapping comes and goes, the ruleset is the same
    pm(*pm.run_args("cnikitnet", "--rm", "-p", "8081:80"), "/bin/true")
    assert clientlib.ruleset_text() == after
    assert clientlib.leases("/var/lib/cni/networks", "cnikitnet") == [] and clientlib.cache_entries() == []


def test_libcni_cache_is_read_and_collected_by_our_runtime(podman_factory, tmp_path):
    """podman (libcni v1.1) ADDs with the Go plugins; our runtime sees the same attachment in the
    cache, CHECKs it, and its GC DELs it completely. podman's own DEL afterwards is a no-op."""
    pm = podman_factory("/usr/lib/cni")
    conf = podnet("gonet", "cnikit-go0", subnet="10.89.8", meta=False)
    pm.network("gonet", conf)
    pm(*pm.run_args("gonet", "-d", "--name", "web"), "/bin/httpd", "-f", "-p", "80", "-h", "/var/www")
    cid = pm("inspect", "web", "--format", "{{.Id}}").stdout.strip()
    ip = pm("inspect", "web", "--format", '{{(index .NetworkSettings.Networks "gonet").IPAddress}}').stdout.strip()
    assert clientlib.fetch(f"http://{ip}/") == clientlib.PAGE

    rt = runtime.Runtime(cni_path=["/usr/lib/cni"], cache_dir="/var/lib/cni",
                         environ={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    net = rt.network_from_dict(conf)
    [att] = rt.cached_attachments(cid)
    assert (att["networkName"], att["ifName"]) == ("gonet", "eth0")
    assert json.loads(runtime.base64.b64decode(att["config"]))["name"] == "gonet"
    attach = runtime.RuntimeConf(container_id=cid, netns=att["result"]["interfaces"][2]["sandbox"],
                                 args=[tuple(kv) for kv in att["cniArgs"]])
    cached = rt.cached_result(net, attach)
    assert cached["ips"][0]["address"] == f"{ip}/24"
    rt.check(net, attach)  # Go bridge + host-local CHECK against libcni's cached result

    rt.gc(net, [])  # nothing valid: the attachment is DELed from its cached netns/args
    assert clientlib.cache_entries() == []
    assert clientlib.leases("/var/lib/cni/networks", "gonet") == []
    assert ip not in clientlib.ruleset_text()
    with pytest.raises(AssertionError, match="failed"):  # the pod's eth0 is gone
        clientlib.fetch(f"http://{ip}/", timeout=0.5, tries=1)
    pm("rm", "-f", "-t", "0", "web")  # libcni DEL without a cache entry: still fine


def test_podman_sees_our_cache_format(podman_factory, tmp_path):
    """Field for field, our cache entry has the shape libcni wrote for the same network."""
    pm = podman_factory("/usr/lib/cni")
    conf = podnet("fmtnet", "cnikit-fmt0", subnet="10.89.9", meta=False)
    pm.network("fmtnet", conf)
    pm(*pm.run_args("fmtnet", "-d", "--name", "web"), "/bin/httpd", "-f", "-p", "80", "-h", "/var/www")
    cid = pm("inspect", "web", "--format", "{{.Id}}").stdout.strip()
    with open(f"/var/lib/cni/results/fmtnet-{cid}-eth0", encoding="utf-8") as fh:
        theirs = json.load(fh)
    pm("rm", "-f", "-t", "0", "web")

    ns = tmp_path / "nsname"
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        rt = runtime.Runtime(cni_path=["/usr/lib/cni"], cache_dir=str(tmp_path / "cache"),
                             environ={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        net = rt.network_from_dict(conf)
        attach = runtime.RuntimeConf(container_id=cid, netns=f"/run/netns/{ns.name}",
                                     args=[tuple(kv) for kv in theirs["cniArgs"]],
                                     capability_args=theirs["capabilityArgs"])
        rt.add(net, attach)
        with open(rt.cache_path("fmtnet", attach), encoding="utf-8") as fh:
            ours = json.load(fh)
        rt.delete(net, attach)
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)
    # libcni v1.1 (podman 4.3) has no `netns` field yet; newer libcni writes it, as we do
    assert [k for k in ours if k != "netns"] == list(theirs)
    for key in ("kind", "containerId", "ifName", "networkName", "cniArgs", "capabilityArgs"):
        assert ours[key] == theirs[key], key
    assert list(ours["result"]) == list(theirs["result"])  # key-sorted maps in both
    assert [list(i) for i in ours["result"]["interfaces"]] == [list(i) for i in theirs["result"]["interfaces"]]
    assert [list(i) for i in ours["result"]["ips"]] == [list(i) for i in theirs["result"]["ips"]]


def test_podman_dual_stack_network(podman_factory, tmp_path):
    """A dual-stack podman network on our plugins: the pod gets an IPv4 and an IPv6 address from
    host-local, serves its page on both, and DEL frees both leases."""
    pm = podman_factory(clientlib.our_bin(str(tmp_path / "bin")))
    conf = podnet("cnikit6", "cnikit-pod6", subnet="10.89.10", meta=False)  # a subnet no other test's bridge holds
    ipam = conf["plugins"][0]["ipam"]
    ipam["ranges"].append([{"subnet": "fd00:89:7::/64", "gateway": "fd00:89:7::1"}])
    ipam["routes"].append({"dst": "::/0"})
    pm.network("cnikit6", conf)
    pm(*pm.run_args("cnikit6", "-d", "--name", "web6"), "/bin/httpd", "-f", "-p", "80", "-h", "/var/www")
    fmt = '{{(index .NetworkSettings.Networks "cnikit6").%s}}'
    ip4 = pm("inspect", "web6", "--format", fmt % "IPAddress").stdout.strip()
    ip6 = pm("inspect", "web6", "--format", fmt % "GlobalIPv6Address").stdout.strip()
    assert ip4.startswith("10.89.10.") and ip6.startswith("fd00:89:7::"), (ip4, ip6)
    assert clientlib.fetch(f"http://{ip4}/") == clientlib.PAGE
    assert clientlib.fetch(f"http://[{ip6}]/") == clientlib.PAGE
    assert sorted(clientlib.leases("/var/lib/cni/networks", "cnikit6")) == sorted([ip4, ip6])
    pm("rm", "-f", "-t", "0", "web6")
    assert clientlib.leases("/var/lib/cni/networks", "cnikit6") == []
