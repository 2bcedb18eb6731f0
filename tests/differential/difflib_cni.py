"""A small differential harness: the same config + env against the Go reference plugins and ours.

Each side gets its own *world*: a "host" netns standing in for the node (the plugin runs there:
Go's binary via `ip netns exec`, ours in-process unless `inproc=False`) and a container netns, plus
its own data dir (ipam.dataDir is rewritten to it). After each step the harness compares the plugin outcome (rc, error code, result JSON) and the
kernel state (`ip -j -d link/addr/route` of both namespaces, sysctls asked for) and the data-dir
tree, after normalising what is random by design: MACs, veth<8 hex> names, ifindexes, the IPv6
link-local addresses derived from MACs, and the world's own names/paths.

Usage (inside the sandbox, with the `netns_factory` fixture):
    go, ours = make_worlds(netns_factory, tmp_path, setup="ip link add m0 type veth peer name m0p")
    assert_same(step(go, ours, "macvlan", "ADD", conf))
"""
from __future__ import annotations

import copy
import difflib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import cnitest

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
VETH_RE = re.compile(r"veth[0-9a-f]{8}")
LL_RE = re.compile(r"^fe80::[0-9a-f:]+$")
MAC_IN_TEXT_RE = re.compile(r"\b(?!00:00:00:00:00:00|ff:ff:ff:ff:ff:ff)[0-9a-f]{2}(:[0-9a-f]{2}){5}\b")
# kernel bookkeeping that differs between two identical setups
_DROP_KEYS = {"ifindex", "link_index", "link_netnsid", "stats64", "stats", "master_index", "peer_ifindex",
              "preferred_life_time", "valid_life_time", "altnames", "parentbus", "parentdev", "inet6_addr_gen_mode",
              "addr_assign_type", "bcqueuelen", "usedbcqueuelen", "promiscuity",
              # bridge ids embed the MAC; the timers tick
              "bridge_id", "root_id", "designated_root", "designated_bridge", "hello_timer", "tcn_timer",
              "topology_change_timer", "gc_timer", "hold_timer", "message_age_timer", "forward_delay_timer",
              "designated_port", "port_id", "no", "topology_change_detected", "topology_change",
              # carrier of an emptied bridge drops asynchronously (linkwatch), whoever is compared first
              "operstate"}
_DROP_WORDS = {"NO-CARRIER", "linkdown"}


@dataclass
class World:
    """One side of a differential run: where the plugin runs, where its container is, its data."""

    label: str
    bindir: str
    host: str
    cont: str
    datadir: str
    names: Dict[str, str] = field(default_factory=dict)  # text to replace when normalising
    inproc: bool = False  # ours: call the engine in-process (see run)

    @property
    def cont_path(self) -> str:
        return f"/run/netns/{self.cont}"

    def sh(self, cmd: str, ns: Optional[str] = None, check: bool = True) -> str:
        """A shell command of the test itself, run in this world's host (or `ns`) netns."""
        return cnitest.sh(f"ip netns exec {ns or self.host} sh -c {shq(cmd)}", check=check)

    def conf(self, conf: Dict[str, Any]) -> Dict[str, Any]:
        """The config as this side runs it: ipam.dataDir points at the world's own store."""
        out = copy.deepcopy(conf)
        for plugin in out.get("plugins", [out]):
            ipam = plugin.get("ipam")
            if isinstance(ipam, dict) and ipam.get("type") == "host-local":
                ipam["dataDir"] = self.datadir
        return out

    def run(self, plugin: str, command: str, conf: Any, netns: Optional[str] = None,
            env: Optional[Dict[str, Optional[str]]] = None, **kw: Any) -> cnitest.Outcome:
        """Run `plugin` in the world's host netns; `env` overrides variables (None = unset).
        Go's binary is exec'd (`ip netns exec`); ours runs in-process through the same skel as its
        executable (the exec path is covered by the matrix and the integration tests), which keeps
        the suite fast."""
        data = self.conf(conf) if isinstance(conf, dict) else conf
        full = cnitest.cni_env(command, netns=self.cont_path if netns is None else netns,
                               path=kw.pop("path", self.bindir), **kw)
        for key, val in (env or {}).items():
            if val is None:
                full.pop(key, None)
            else:
                full[key] = val
        payload = data if isinstance(data, (bytes, str)) else json.dumps(data)
        if isinstance(payload, str):
            payload = payload.encode()
        if self.inproc:
            from cni.net import ns  # noqa: PLC0415
            from cni.protocol import registry, skel  # noqa: PLC0415

            with ns.in_netns(f"/run/netns/{self.host}"):
                rc, out, err = skel.execute(lambda: registry.load(plugin)(), full, payload)
            return cnitest.Outcome(rc, out, err)
        argv = ["ip", "netns", "exec", self.host, os.path.join(self.bindir, plugin)]
        proc = subprocess.run(argv, input=payload, env=full, capture_output=True, timeout=60, check=False)
        return cnitest.Outcome(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def ip(self, what: str, ns: str) -> Any:
        out = self.sh(f"ip -j -d {what}", ns=ns)
        return json.loads(out) if out.strip() else []

    def capture(self, ns: str, sysctls: Tuple[str, ...]) -> Dict[str, Any]:
        """links, addresses, routes (all tables) and `sysctls` of `ns`, in one shell; retried while
        an IPv6 address is still in DAD so that both sides are compared in the same state."""
        sep = "@@SEP@@"
        script = "; ".join(f"ip -n {ns} -j -d {what}; echo {sep}" for what in ("link show", "addr show",
                                                                               "route show table all"))
        script += "; " + "; ".join(f"ip netns exec {ns} sysctl -n {k} 2>/dev/null || echo absent" for k in sysctls)
        deadline = time.monotonic() + 5
        while True:
            link_s, addr_s, route_s, rest = cnitest.sh(script).split(sep + "\n")
            addrs = json.loads(addr_s or "[]")
            tentative = any(a.get("tentative") for i in addrs for a in i.get("addr_info", []))
            if not tentative or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return {"link": json.loads(link_s or "[]"), "addr": addrs, "route": json.loads(route_s or "[]"),
                "sysctl": dict(zip(sysctls, rest.split()))}

    def state(self, sysctls: Tuple[str, ...] = (), nat: bool = False) -> Dict[str, Any]:
        """Kernel state of both namespaces plus the data-dir tree, normalised; with `nat`, the
        host's `iptables-save -t nat` rules too (Go-compatible chain names are deterministic)."""
        st: Dict[str, Any] = {"host": self.capture(self.host, sysctls), "cont": self.capture(self.cont, sysctls),
                              "data": tree(self.datadir)}
        if nat:
            st["nat"] = sorted(ln for ln in self.sh("iptables-save -t nat; ip6tables-save -t nat").splitlines()
                               if ln.startswith("-"))
        out = self.normalise(st)
        for role in ("host", "cont"):  # the kernel lists routes by insertion/ifindex: order is noise
            out[role]["route"].sort(key=lambda r: json.dumps(r, sort_keys=True))
        return out

    def normalise(self, obj: Any) -> Any:
        return normalise(obj, self.names)



def shq(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def tree(root: str) -> Dict[str, str]:
    """Every file under `root` (relative path → content) — the host-local store, compared exactly."""
    out: Dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read().decode(errors="replace")
    return out


def normalise(obj: Any, names: Dict[str, str]) -> Any:
    """Replace the random and world-specific parts of `obj` with stable placeholders."""
    if isinstance(obj, dict):
        return {k: normalise(v, names) for k, v in obj.items() if k not in _DROP_KEYS}
    if isinstance(obj, list):
        # MAC-derived fe80:: addresses (and their DAD state) differ between any two links
        return [normalise(v, names) for v in obj if not (isinstance(v, str) and v in _DROP_WORDS) and
                not (isinstance(v, dict) and (v.get("family") == "inet6" and v.get("scope") == "link"
                                                 or LL_RE.match(str(v.get("dst", "")))))]
    if isinstance(obj, str):
        if MAC_RE.match(obj.lower()) and obj.lower() not in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
            return "<mac>"
        for text, repl in names.items():
            obj = obj.replace(text, repl)
        return MAC_IN_TEXT_RE.sub("<mac>", LL_RE.sub("<ll>", VETH_RE.sub("<veth>", obj)))
    return obj


def make_worlds(netns_factory: Callable[[str], str], tmp_path: Any, setup: str = "",
                inproc: bool = True) -> Tuple[World, World]:
    """Two identical worlds (Go, ours); `setup` is a shell script run in each host netns first."""
    worlds = []
    for label, bindir in (("go", cnitest.GO_BIN), ("ours", cnitest.OUR_BIN)):
        host, cont = netns_factory(f"h{label[0]}"), netns_factory(f"c{label[0]}")
        datadir = str(tmp_path / f"data-{label}")
        os.makedirs(datadir, exist_ok=True)
        w = World(label, bindir, host, cont, datadir, inproc=label == "ours" and inproc,
                  names={f"/run/netns/{cont}": "<cont>", datadir: "<data>", cont: "<contns>", host: "<hostns>"})
        if setup:
            w.sh(setup)
        worlds.append(w)
    return worlds[0], worlds[1]


@dataclass
class Step:
    go: cnitest.Outcome
    ours: cnitest.Outcome
    go_world: World
    our_world: World

    def results(self) -> Tuple[Any, Any]:
        return self.go_world.normalise(self.go.json), self.our_world.normalise(self.ours.json)


def step(go: World, ours: World, plugin: str, command: str, conf: Any, **kw: Any) -> Step:
    return Step(go.run(plugin, command, conf, **kw), ours.run(plugin, command, conf, **kw), go, ours)


def step_after(go: World, ours: World, plugin: str, command: str, conf: Dict[str, Any], add: Step,
               **kw: Any) -> Step:
    """CHECK or DEL after `add`: each side with its own ADD result as prevResult."""
    return Step(go.run(plugin, command, with_prev(conf, add.go), **kw),
                ours.run(plugin, command, with_prev(conf, add.ours), **kw), go, ours)


def assert_same(st: Step, msg: bool = False) -> None:
    """Same rc; same error code (and message when `msg`); same normalised result otherwise."""
    g, o = st.results()
    assert st.go.rc == st.ours.rc, f"rc go={st.go.rc} ours={st.ours.rc}\ngo: {st.go.stdout}\nours: {st.ours.stdout}{st.ours.stderr}"
    if st.go.rc:
        assert st.go.code == st.ours.code, f"code go={st.go.stdout} ours={st.ours.stdout}"
        if msg:
            assert g.get("msg") == o.get("msg"), f"msg go={g.get('msg')!r} ours={o.get('msg')!r}"
        return
    assert g == o, f"results differ\ngo:   {json.dumps(g)}\nours: {json.dumps(o)}"


def assert_same_state(go: World, ours: World, sysctls: Tuple[str, ...] = (), nat: bool = False) -> None:
    g, o = go.state(sysctls, nat), ours.state(sysctls, nat)
    assert g == o, "state differs (- go, + ours):\n" + "\n".join(difflib.unified_diff(
        json.dumps(g, indent=1, sort_keys=True).splitlines(), json.dumps(o, indent=1, sort_keys=True).splitlines(),
        lineterm="", n=2))


def with_prev(conf: Dict[str, Any], outcome: cnitest.Outcome) -> Dict[str, Any]:
    """The config for CHECK/DEL: `prevResult` = this side's own ADD result."""
    out = copy.deepcopy(conf)
    out["prevResult"] = outcome.json
    return out


def lifecycle(go: World, ours: World, plugin: str, conf: Dict[str, Any], sysctls: Tuple[str, ...] = (),
              nat: bool = False, check: bool = True, dels: int = 2, **kw: Any) -> Step:
    """ADD, compare; CHECK, compare; DEL, compare (state back to the start); DEL again."""
    before = ours.state(sysctls)
    add = step(go, ours, plugin, "ADD", conf, **kw)
    assert_same(add, msg=True)
    assert_same_state(go, ours, sysctls, nat)
    if add.go.rc:
        return add
    version = conf.get("cniVersion", "0.1.0")
    if check and version in ("0.4.0", "1.0.0"):
        assert_same(step_after(go, ours, plugin, "CHECK", conf, add, **kw), msg=True)
    for _ in range(dels):
        assert_same(step_after(go, ours, plugin, "DEL", conf, add, **kw), msg=True)
    names = [[link["ifname"] for link in st["cont"]["link"]] for st in (before, ours.state(sysctls))]
    assert names[0] == names[1], "DEL left links behind in the container"
    assert_same_state(go, ours, sysctls, nat)
    return add

