"""The nftables backend's transport (netfilter/nft.py) on a live kernel: libnftables in-process
through the python3-nftables binding, the `nft` executable as fallback with identical effects,
one batch per ADD and per DEL, and a libnftables context per thread, renewed when the thread is in another network namespace."""
from __future__ import annotations

import subprocess
import sys
import threading
import types

import pytest

import cnitest
import metautil as mu
from cni import netfilter
from cni.net import ns
from cni.netfilter import nft
from cni.plugins.meta import firewall, portmap
from cni.protocol.spec import CNIError


@pytest.fixture
def clean(sandbox):
    mu.reset_netfilter()
    yield
    mu.reset_netfilter()


@pytest.fixture
def calls(monkeypatch):
    """Every nft command run (in-process or not), as the text given to nft.command."""
    seen = []
    real = nft.command

    def spy(text, as_json=False):
        seen.append(text)
        return real(text, as_json)

    monkeypatch.setattr(nft, "command", spy)
    return seen


def forbid_nft_process(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"nft process started: {args}")
    monkeypatch.setattr(nft, "subprocess", types.SimpleNamespace(run=refuse))


def use_fallback(monkeypatch, how):
    if how == "env":
        monkeypatch.setenv(nft.FORCE_EXEC_ENV, "1")
    elif how == "no-library":  # the binding loads, libnftables.so.1 does not

        class Binding:
            def __init__(self):
                raise OSError("libnftables.so.1: cannot open shared object file")

        monkeypatch.setattr(nft, "_binding", [Binding])
    else:  # the binding cannot be loaded at all
        monkeypatch.setitem(sys.modules, "nftables", None)
        monkeypatch.setattr(nft, "SYSTEM_BINDING", "/nonexistent/nftables.py")
        monkeypatch.setattr(nft, "_binding", [])
    monkeypatch.setattr(nft, "_local", threading.local())


def pm_settings(cid_ip, mappings, snat=True):
    conf = {"cniVersion": "1.0.0", "name": "pmnet", "type": "portmap", "snat": snat,
            "runtimeConfig": {"portMappings": mappings},
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
                           "ips": [{"address": cid_ip, "interface": 0}]}}
    return portmap.settings(conf, "eth0")


FW_RESULT = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
             "ips": [{"address": "10.61.0.9/24", "interface": 0}, {"address": "fd61::9/64", "interface": 0}]}
TCP = {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}
UDP = {"hostPort": 15353, "containerPort": 53, "protocol": "udp"}


def scenario():
    """ipMasq, portmap and firewall changes, as the plugins make them; returns the ruleset."""
    netfilter.setup_ipmasq("mnet", "c1", ["10.60.0.2/24", "fd60::2/64"])
    netfilter.setup_ipmasq("mnet", "c2", ["10.60.0.3/24"])
    portmap.nft_add(pm_settings("10.62.0.2/24", [TCP, UDP]), "pmnet", "p1")
    firewall.nft_add({"policy": "none"}, FW_RESULT)
    return mu.nft_ruleset()


def teardown():
    netfilter.teardown_ipmasq("mnet", "c1", ["10.60.0.2/24", "fd60::2/64"])
    netfilter.teardown_ipmasq("mnet", "c2", None)
    portmap.nft_del("pmnet", "p1", pm_settings("10.62.0.2/24", [TCP, UDP]))
    firewall.nft_del(FW_RESULT)
    return mu.nft_ruleset()


def test_the_binding_is_used_in_process_without_any_nft_process(clean, monkeypatch):
    assert nft._context() is not None, "python3-nftables/libnftables not loadable (tools/install-deps.sh)"
    forbid_nft_process(monkeypatch)
    text = scenario()
    assert "10.60.0.2 : jump" in text and 'tcp . 18080 comment "net pmnet id p1" : 10.62.0.2 . 80' in text
    assert "10.61.0.9" in text
    netfilter.check_ipmasq("mnet", "c1", ["10.60.0.2/24", "fd60::2/64"])
    text = teardown()
    assert "10.60.0" not in text and "18080" not in text and "10.61.0.9" not in text


@pytest.mark.parametrize("how", ["env", "no-binding", "no-library"])
def test_the_nft_executable_fallback_has_identical_effects(clean, monkeypatch, how):
    in_process = scenario()
    after_in_process = teardown()
    mu.reset_netfilter()
    use_fallback(monkeypatch, how)
    started = []
    monkeypatch.setattr(nft, "subprocess", types.SimpleNamespace(
        run=lambda *a, **kw: started.append(a) or subprocess.run(*a, **kw)))
    assert nft._context() is None
    assert scenario() == in_process
    netfilter.check_ipmasq("mnet", "c1", ["10.60.0.2/24", "fd60::2/64"])  # reads (-j list, get element)
    assert teardown() == after_in_process
    assert started and all(a[0][0] == nft.NFT for a in started)


def test_one_batch_per_add_and_per_del_and_no_listing(clean, calls):
    scenario()  # tables exist: the steady state
    calls.clear()
    netfilter.setup_ipmasq("mnet", "c3", ["10.60.0.4/24"])
    assert len(calls) == 1
    netfilter.teardown_ipmasq("mnet", "c3", ["10.60.0.4/24"])
    assert len(calls) == 2
    s = pm_settings("10.62.0.3/24", [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}])
    portmap.nft_add(s, "pmnet", "p2")
    portmap.nft_del("pmnet", "p2", s)
    assert len(calls) == 4
    fw = {"cniVersion": "1.0.0", "ips": [{"address": "10.61.0.10/24"}]}
    firewall.nft_add({"policy": "none"}, fw)
    firewall.nft_del(fw)
    assert len(calls) == 6
    assert not any(c.startswith(("list", "get")) for c in calls), calls
    text = mu.nft_ruleset()
    for gone in ("10.60.0.4", "18081", "10.61.0.10", netfilter.chain_name("mnet", "c3")):
        assert gone not in text


def test_blind_delete_never_removes_what_another_container_owns(clean):
    netfilter.setup_ipmasq("mnet", "owner", ["10.60.0.7/24"])
    netfilter.teardown_ipmasq("mnet", "intruder", ["10.60.0.7/24"])  # same address, other container
    netfilter.check_ipmasq("mnet", "owner", ["10.60.0.7/24"])
    s = pm_settings("10.62.0.7/24", [TCP])
    portmap.nft_add(s, "pmnet", "owner")
    portmap.nft_del("pmnet", "intruder", pm_settings("10.62.0.8/24", [TCP]))  # same host port
    portmap.nft_check(s, "pmnet", "owner")
    assert 'tcp . 18080 comment "net pmnet id owner" : 10.62.0.7 . 80' in mu.nft_ruleset()


def test_a_del_naming_part_of_what_add_made_still_removes_all(clean):
    netfilter.setup_ipmasq("mnet", "c1", ["10.60.0.2/24", "fd60::2/64"])
    netfilter.teardown_ipmasq("mnet", "c1", ["10.60.0.2/24"])  # the chain also serves fd60::2
    portmap.nft_add(pm_settings("10.62.0.2/24", [TCP, UDP]), "pmnet", "p1")
    portmap.nft_del("pmnet", "p1", pm_settings("10.62.0.2/24", [TCP], snat=False))  # fewer mappings
    text = mu.nft_ruleset()
    for gone in ("10.60.0.2", "fd60::2", "18080", "15353", "10.62.0.2 .", "net pmnet id p1",
                 netfilter.chain_name("mnet", "c1")):
        assert gone not in text


def test_portmap_chains_do_not_grow_with_containers(clean):
    def chains():
        return [ln.split()[1] for ln in mu.nft_ruleset().splitlines() if ln.strip().startswith("chain ")]

    portmap.nft_add(pm_settings("10.64.0.5/24", [TCP]), "pmnet", "a")
    portmap.nft_add(pm_settings("10.64.0.6/16", [{**TCP, "hostPort": 18081}]), "pmnet", "b")
    first = chains()
    assert "hairpin4-24" in first and "hairpin4-16" in first  # one shared chain per prefix length
    for i in range(20):
        portmap.nft_add(pm_settings(f"10.64.1.{i + 2}/24", [{**TCP, "hostPort": 19000 + i}]), "pmnet", f"c{i}")
    assert chains() == first
    text = mu.nft_ruleset()
    # the subnet check is per container: its own subnet address . its own IP, masked by its chain
    assert 'set podnets4' in text and '10.64.0.0 . 10.64.0.5 comment "net pmnet id a"' in text
    assert "ip saddr & 255.255.0.0 . ip daddr @podnets4 masquerade" in text
    portmap.nft_gc("pmnet", {"a"})
    text = mu.nft_ruleset()
    assert "id a" in text and "id b" not in text and "id c" not in text and "19000" not in text


def test_portmap_add_on_a_table_of_the_older_layout_says_so(clean):
    cnitest.sh(f"nft add table inet {portmap.NFT_TABLE} && nft add map inet {portmap.NFT_TABLE} ports4 "
               f"'{{ type inet_proto . inet_service : verdict; }}' && nft add map inet {portmap.NFT_TABLE} post4 "
               f"'{{ type ipv4_addr : verdict; }}'")
    with pytest.raises(CNIError) as err:
        portmap.nft_add(pm_settings("10.62.0.2/24", [TCP]), "pmnet", "p1")
    assert "older cnikit" in err.value.msg and "already mapped" not in err.value.msg
    assert "18080" not in mu.nft_ruleset()


def test_dels_before_any_table_exists_are_quiet_no_ops(clean):
    netfilter.teardown_ipmasq("mnet", "c1", ["10.60.0.2/24"])
    portmap.nft_del("pmnet", "p1", pm_settings("10.62.0.2/24", [TCP]))
    firewall.nft_del(FW_RESULT)
    assert "cnikit" not in mu.nft_ruleset()  # and nothing was created on the way


def test_changes_by_another_process_and_a_flushed_ruleset_are_seen(clean):
    netfilter.setup_ipmasq("mnet", "c1", ["10.60.0.2/24"])
    cnitest.sh(f"nft delete element inet {nft.MASQ_TABLE} src4 '{{ 10.60.0.2 }}'")
    with pytest.raises(CNIError):  # the context's cache is not stale
        netfilter.check_ipmasq("mnet", "c1", ["10.60.0.2/24"])
    cnitest.sh("nft flush ruleset")  # e.g. a firewall reload: the next ADD rebuilds the tables
    netfilter.setup_ipmasq("mnet", "c2", ["10.60.0.3/24"])
    netfilter.check_ipmasq("mnet", "c2", ["10.60.0.3/24"])
    assert "ip saddr vmap @src4" in mu.nft_ruleset()


def test_one_context_per_thread_and_network_namespace(clean, netns):
    main_ctx = nft._context()
    seen = {}

    def worker():
        seen["own"] = nft._context()
        with ns.in_netns(f"/run/netns/{netns}"):
            seen["inner"] = nft._context()
            nft.run(["add table inet cnikit_probe"])  # lands in the namespace the thread is in

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["own"] is not main_ctx and seen["inner"] is not seen["own"]
    assert "cnikit_probe" in cnitest.sh(f"ip netns exec {netns} nft list tables")
    assert "cnikit_probe" not in cnitest.sh("nft list tables")
    nft.run(["add table inet cnikit_probe", "delete table inet cnikit_probe"])  # main thread: root netns
    assert nft._context() is main_ctx


def test_threads_changing_rules_at_once_each_get_exactly_their_own(clean):
    errors = []

    def worker(t):
        try:
            for i in range(15):
                cid, addr = f"t{t}c{i}", f"10.63.{t}.{i + 2}/24"
                netfilter.setup_ipmasq("mnet", cid, [addr])
                netfilter.check_ipmasq("mnet", cid, [addr])
                s = pm_settings(addr, [{"hostPort": 20000 + t * 100 + i, "containerPort": 80, "protocol": "tcp"}])
                portmap.nft_add(s, "pmnet", cid)
                portmap.nft_check(s, "pmnet", cid)
                if i % 2:  # half are removed again, half stay
                    portmap.nft_del("pmnet", cid, s)
                    netfilter.teardown_ipmasq("mnet", cid, [addr])
        except Exception as exc:  # noqa: BLE001 - reported below with the thread
            errors.append((t, exc))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    text = mu.nft_ruleset()
    for t in range(4):
        for i in range(15):
            assert (f"10.63.{t}.{i + 2} : jump" in text) == (i % 2 == 0)
            assert (f"tcp . {20000 + t * 100 + i} comment" in text) == (i % 2 == 0)
