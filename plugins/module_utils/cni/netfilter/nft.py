"""nftables backend: one atomic batch per change, in-process through libnftables.

The official binding (Debian `python3-nftables`, module `nftables`: ctypes over libnftables.so.1)
is used when it loads; it is a pure-Python file, so when the running interpreter cannot import it
(our venv is another Python than the system's) it is loaded from the system's dist-packages by
path. Without the binding or the library every command goes to the `nft` executable instead, with
the same text and the same effects (`CNIKIT_NFT_EXEC=1` forces that path). A libnftables context
holds a netlink socket bound to the network namespace it was made in, so each thread keeps its
own context (the agent serves requests in threads) and makes a new one when it is found in
another namespace (a thread may move by setns).

ipMasq lives in one table, `inet cnikit_masq`: a postrouting chain does one verdict-map lookup
on the source address (`src4`/`src6`: ip -> jump <per-container chain>), and each (network,
container) owns a chain named like the Go iptables one (CNI-<hash>) whose rules carry the
source address. So a packet costs one hash lookup whatever the number of pods, and teardown
reads only its own chain to know which map elements to remove — even when the caller no
longer knows the addresses (DEL after the netns is gone).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import threading
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..protocol import spec
from ..protocol.spec import CNIError
from . import chain_name, owner_comment, parse_owner

NFT = "nft"
FORCE_EXEC_ENV = "CNIKIT_NFT_EXEC"
SYSTEM_BINDING = "/usr/lib/python3/dist-packages/nftables/nftables.py"
MASQ_TABLE = "cnikit_masq"
EINTR_TRIES = 5
MCAST = {4: "224.0.0.0/4", 6: "ff00::/8"}

_binding: List[Any] = []  # [Nftables class or None], filled on first use
_binding_lock = threading.Lock()
_local = threading.local()


def _nftables_class() -> Any:
    """The binding's Nftables class, None when neither it nor libnftables can be loaded."""
    with _binding_lock:
        if not _binding:
            _binding.append(_load_binding())
        return _binding[0]


def _load_binding() -> Any:
    try:
        from nftables import Nftables  # noqa: PLC0415 - lazy: only when nftables is used
        return Nftables
    except ImportError:
        pass
    try:
        found = importlib.util.spec_from_file_location("cnikit_system_nftables", SYSTEM_BINDING)
        if found is None or found.loader is None:
            return None
        module = importlib.util.module_from_spec(found)
        found.loader.exec_module(module)
        return module.Nftables
    except (OSError, ImportError, SyntaxError):
        return None


def _context() -> Any:
    """This thread's libnftables context for the namespace it is in now; None = use `nft`."""
    if os.environ.get(FORCE_EXEC_ENV):
        return None
    cls = _nftables_class()
    if cls is None:
        return None
    st = os.stat("/proc/thread-self/ns/net")
    key = (st.st_dev, st.st_ino, os.getpid())  # a forked child must not share the parent's socket
    if getattr(_local, "key", None) != key:
        try:
            with _binding_lock:  # contexts are made one at a time: the library's set-up is not documented thread-safe
                ctx = cls()
        except (OSError, AttributeError):  # the binding is there but libnftables.so.1 is not (or too old)
            with _binding_lock:
                _binding[:] = [None]
            return None
        ctx.set_json_output(False)
        _local.ctx, _local.key = ctx, key
    return _local.ctx


def command(text: str, as_json: bool = False) -> Tuple[int, str, str]:
    """Run nft commands (one line or a whole batch, applied as one transaction): (rc, stdout, stderr).
    `as_json` is for one read command (list ...)."""
    for _ in range(EINTR_TRIES):
        rc, out, err = _command_once(text, as_json)
        # a netlink dump (`get element`, a listing) that a concurrent change interrupted; nft
        # retries its own cache fills but not these, and a batch that failed applied nothing
        if rc == 0 or "Interrupted system call" not in err:
            break
    return rc, out, err


def _command_once(text: str, as_json: bool) -> Tuple[int, str, str]:
    ctx = _context()
    if ctx is not None:
        ctx.set_json_output(as_json)
        rc, out, err = ctx.cmd(text)
        return (0 if rc == 0 else 1), out, err
    try:
        # `nft -j -f -` prints no listing (nft 1.0.6), so a JSON read goes on the command line
        args = ["-j", *text.split()] if as_json else ["-f", "-"]
        proc = subprocess.run([NFT, *args], input=None if as_json else text,
                              capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CNIError(spec.ERR_INTERNAL, f"cannot run {NFT}: {exc.strerror}") from None
    return proc.returncode, proc.stdout, proc.stderr


def run(lines: Iterable[str]) -> None:
    """Apply one atomic batch; raise CNIError with nft's message on failure."""
    err = try_run(lines)
    if err is not None:
        raise CNIError(spec.ERR_INTERNAL, "nftables batch failed", err)


def try_run(lines: Iterable[str]) -> Optional[str]:
    """Apply one atomic batch; return nft's error text, None on success."""
    rc, _, err = command("\n".join(lines) + "\n")
    return None if rc == 0 else err.strip()


def try_destroy(table: str, chains: List[str], elements: List[Tuple[str, str, Optional[str]]]) -> bool:
    """Remove `chains` and the `elements` ((set or map, key, the key's data: "jump <chain>", a
    value; None for a set)) in one batch, whether or not they exist; False (nothing changed) when
    that cannot be done blind: the table is missing, a key maps to other data, or a chain is still
    referenced by an element not named. nft 1.0.6 has no `destroy`, so each object is added and
    deleted in the same transaction: the add is a no-op for an identical object and fails
    (EEXIST) for a key whose data differs."""
    lines = [f"add chain {table} {c}" for c in chains]
    lines += [f"add element {table} {m} {{ {k}{f' : {d}' if d else ''} }}" for m, k, d in elements]
    lines += [f"delete element {table} {m} {{ {k} }}" for m, k, _ in elements]
    lines += [f"delete chain {table} {c}" for c in chains]
    return try_run(lines) is None


def list_json(*what: str) -> Optional[List[Dict[str, Any]]]:
    """`nft -j list <what>` as a list of objects; None when the object does not exist."""
    rc, out, err = command("list " + " ".join(what), as_json=True)
    if rc != 0:
        if "No such file or directory" in err:
            return None
        raise CNIError(spec.ERR_INTERNAL, f"nft list {' '.join(what)} failed", err.strip())
    return json.loads(out).get("nftables", []) if out.strip() else []


def element_target(table: str, map_name: str, key: str) -> Optional[str]:
    """The chain a verdict-map element jumps to, None if there is no such element. (`nft -j get
    element` prints plain text in nft 1.0.6, so the text form is read.)"""
    rc, out, _ = command(f"get element {table} {map_name} {{ {key} }}")
    found = re.search(r":\s*(?:jump|goto)\s+([\w.-]+)", out) if rc == 0 else None
    return found.group(1) if found else None


def chain_owners(table: str) -> Dict[str, tuple]:
    """chain name -> (network, container ID) from the chain comments of `table` ("inet name").
    Read from the text listing: nft 1.0.6's JSON leaves chain comments out."""
    family, name = table.split()
    rc, listing, _ = command(f"list chains {family}")
    out: Dict[str, tuple] = {}
    current = None
    for line in listing.splitlines() if rc == 0 else []:
        words = line.split()
        if words[:1] == ["table"]:
            current = words[2] if len(words) > 2 else None
        elif current == name and words[:1] == ["chain"] and len(words) > 1:
            chain = words[1]
        elif current == name and words[:1] == ["comment"]:
            owner = parse_owner(line.strip()[len("comment "):].strip('"'))
            if owner:
                out[chain] = owner
    return out


def has_element(table: str, set_name: str, key: str) -> bool:
    return command(f"get element {table} {set_name} {{ {key} }}")[0] == 0


def rules(objs: Optional[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    return [o["rule"] for o in objs or [] if "rule" in o]


def match_values(rule: Dict[str, Any], field: str) -> List[Any]:
    """The right-hand sides of `== <payload field>` matches in a rule (e.g. field "saddr")."""
    out = []
    for expr in rule.get("expr", []):
        match = expr.get("match")
        if match and match.get("op") == "==" and match.get("left", {}).get("payload", {}).get("field") == field:
            out.append(match["right"])
    return out


def fam(iface: Any) -> str:
    return "ip" if iface.version == 4 else "ip6"


def quote(text: str) -> str:
    """An nft string literal; nft has no escape for a double quote, so it is dropped."""
    return '"' + text.replace('"', "") + '"'


# --- ipMasq -------------------------------------------------------------------------------

def _masq_base() -> List[str]:
    t = f"inet {MASQ_TABLE}"
    return [f"add table {t}",
            f"add map {t} src4 {{ type ipv4_addr : verdict; }}",
            f"add map {t} src6 {{ type ipv6_addr : verdict; }}",
            f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
            # flush + re-add in the same transaction keeps the lookups unique without a listing
            f"flush chain {t} postrouting",
            f"add rule {t} postrouting ip saddr vmap @src4",
            f"add rule {t} postrouting ip6 saddr vmap @src6"]


def setup_masq(network: str, container_id: str, ifaces: List[Any]) -> None:
    t, chain = f"inet {MASQ_TABLE}", chain_name(network, container_id)
    lines = _masq_base() + [
        f"add chain {t} {chain} {{ comment {quote(owner_comment(network, container_id))}; }}",
        f"flush chain {t} {chain}"]
    for iface in ifaces:
        f, ip = fam(iface), iface.ip
        lines += [f"add rule {t} {chain} {f} saddr {ip} {f} daddr {iface.network} accept",
                  f"add rule {t} {chain} {f} saddr {ip} {f} daddr != {MCAST[iface.version]} masquerade",
                  f"add element {t} src{iface.version} {{ {ip} : jump {chain} }}"]
    err = try_run(lines)
    if err is not None:
        hint = " (another container's masquerade owns this address)" if "File exists" in err else ""
        raise CNIError(spec.ERR_INTERNAL, f"failed to set up IP masquerade{hint}", err)


def _masq_sources(chain: str) -> Optional[List[str]]:
    objs = list_json("chain", "inet", MASQ_TABLE, chain)
    if objs is None:
        return None
    return sorted({str(v) for r in rules(objs) for v in match_values(r, "saddr")})


def teardown_masq(network: str, container_id: str, ifaces: Optional[List[Any]]) -> None:
    t, chain = f"inet {MASQ_TABLE}", chain_name(network, container_id)
    if ifaces and try_destroy(t, [chain], [(f"src{i.version}", str(i.ip), f"jump {chain}") for i in ifaces]):
        return
    # addresses unknown, or the chain serves more than them: its own rules say which it serves
    for _ in range(3):  # a concurrent teardown may win the race; re-read and retry
        sources = _masq_sources(chain)
        if sources is None:
            return
        lines = [f"delete element {t} src{6 if ':' in ip else 4} {{ {ip} }}" for ip in sources]
        err = try_run(lines + [f"delete chain {t} {chain}"])
        if err is None:
            return
    raise CNIError(spec.ERR_INTERNAL, "failed to tear down IP masquerade", err)


def masq_owners() -> List[tuple]:
    return list(chain_owners(f"inet {MASQ_TABLE}").values())


def check_masq(network: str, container_id: str, ifaces: List[Any]) -> None:
    chain = chain_name(network, container_id)
    sources = _masq_sources(chain)
    if sources is None:
        raise CNIError(spec.ERR_INTERNAL, f"masquerade chain {chain} not found in table inet {MASQ_TABLE}")
    for iface in ifaces:
        if str(iface.ip) not in sources:
            raise CNIError(spec.ERR_INTERNAL, f"no masquerade rule for {iface.ip} in chain {chain}")
        if element_target(f"inet {MASQ_TABLE}", f"src{iface.version}", str(iface.ip)) != chain:
            raise CNIError(spec.ERR_INTERNAL, f"masquerade map has no entry {iface.ip} -> {chain}")
