"""iptables backend, compatible with the Go plugins' chains (go-iptables always passes --wait).

Changes go through `apply()`: one `iptables-save` read and one `iptables-restore --noflush -w`
batch per family instead of an exec per rule, under a lock of our own; a batch is applied
atomically or not at all, so a failed ADD leaves nothing half-made, and a lost race is rebuilt.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence

from ..protocol import spec
from ..protocol.spec import CNIError
from . import chain_name, go_comment, parse_owner

Rule = Sequence[str]  # iptables arguments after "-A <chain>", e.g. ("-d", "10.0.0.0/24", "-j", "ACCEPT")
MCAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
LOCK = "/run/lock/cnikit-iptables.lock"


def _cmd(version: int, tool: str = "") -> str:
    return ("iptables" if version == 4 else "ip6tables") + tool


def _exec(argv: List[str], data: Optional[str] = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=data, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CNIError(spec.ERR_INTERNAL, f"cannot run {argv[0]}: {exc.strerror}") from None


def quote(arg: str) -> str:
    """Quote one argument the way iptables-save prints it and iptables-restore reads it."""
    if arg and not re.search(r'[\s"\\]', arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line(op: str, chain: str, rule: Rule) -> str:
    return " ".join([op, chain, *(quote(a) for a in rule)])


def try_restore(version: int, table: str, lines: Iterable[str]) -> Optional[str]:
    """Apply `lines` to `table` in one atomic batch; return the error text, None on success."""
    data = f"*{table}\n" + "".join(ln + "\n" for ln in lines) + "COMMIT\n"
    proc = _exec([_cmd(version, "-restore"), "--noflush", "-w"], data)
    return None if proc.returncode == 0 else proc.stderr.strip()


def save(version: int, table: str) -> str:
    proc = _exec([_cmd(version, "-save"), "-t", table])
    if proc.returncode != 0:
        raise CNIError(spec.ERR_INTERNAL, f"{_cmd(version, '-save')} failed", proc.stderr.strip())
    return proc.stdout


def exists(version: int, table: str, chain: str, rule: Rule) -> bool:
    """`iptables -C`: does the rule exist (False too when the chain does not)."""
    return _exec([_cmd(version), "-w", "-t", table, "-C", chain, *rule]).returncode == 0


def has_chain(saved: str, chain: str) -> bool:
    return f"\n:{chain} " in saved


def rules_jumping_to(saved: str, parent: str, chain: str) -> List[str]:
    """The `-A <parent> ... -j <chain>` lines of an iptables-save listing, verbatim."""
    return [ln for ln in saved.splitlines()
            if ln.startswith(f"-A {parent} ") and (ln.endswith(f" -j {chain}") or f" -j {chain} " in ln)]


class Batch:
    """An iptables-restore batch built against one iptables-save listing: chains are created and
    the shared rules inserted only when missing (Go EnsureChain / InsertUnique / AppendUnique), so
    a whole ADD is one read and one atomic write. `rule` arguments must be written in the order
    iptables-save prints them (matches before -j) for the existence test to see them."""

    def __init__(self, version: int, table: str) -> None:
        self.version, self.table = version, table
        self.saved = save(version, table)
        self.have = set(self.saved.splitlines())
        self.lines: List[str] = []

    def has_chain(self, chain: str) -> bool:
        return has_chain(self.saved, chain) or f"-N {chain}" in self.lines

    def ensure_chain(self, chain: str) -> None:
        if not self.has_chain(chain):
            self.lines.append(f"-N {chain}")

    def exists(self, chain: str, rule: Rule) -> bool:
        text = line("-A", chain, rule)
        return text in self.have or text in self.lines or line("-I", f"{chain} 1", rule) in self.lines

    def insert_unique(self, chain: str, rule: Rule, prepend: bool = False) -> None:
        if not self.exists(chain, rule):
            self.lines.append(line("-I", f"{chain} 1", rule) if prepend else line("-A", chain, rule))

    def append(self, chain: str, rule: Rule) -> None:
        self.lines.append(line("-A", chain, rule))

    def delete_existing(self, chain: str, rule: Rule) -> None:
        if line("-A", chain, rule) in self.have:
            self.lines.append(line("-D", chain, rule))

    def remove_jumps(self, parent: str, chain: str) -> None:
        """Delete every `-A <parent> ... -j <chain>` rule of the listing, whatever its matches."""
        self.lines += ["-D" + ln[2:] for ln in rules_jumping_to(self.saved, parent, chain)]

    def remove_chain(self, parent: str, chain: str) -> None:
        self.remove_jumps(parent, chain)
        if has_chain(self.saved, chain):
            self.lines += [f"-F {chain}", f"-X {chain}"]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Our own read-modify-write lock: iptables-nft takes no lock, and two ADDs racing between
    iptables-save and iptables-restore would otherwise both create the shared chains."""
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def apply(version: int, table: str, build: Callable[[Batch], None], attempts: int = 3) -> None:
    """Read the table, let `build` fill a Batch, write it atomically — under our lock. A process
    outside the lock (a Go plugin) may still change the table in between; the batch then fails
    as a whole and is rebuilt from a fresh listing."""
    err = ""
    with _locked():
        for _ in range(attempts):
            b = Batch(version, table)
            build(b)
            if not b.lines:
                return
            err = try_restore(version, table, b.lines) or ""
            if not err:
                return
    raise CNIError(spec.ERR_INTERNAL, f"{_cmd(version, '-restore')} failed", err)


# --- ipMasq (Go pkg/ip/ipmasq_linux.go) ---------------------------------------------------

def _masq_rules(network: str, container_id: str, ifaces: List[Any], version: int) -> List[tuple]:
    """Go's rule sequence: per address AppendUnique(ACCEPT subnet), (MASQUERADE), (POSTROUTING jump)."""
    chain, comment = chain_name(network, container_id), go_comment(network, container_id)
    tag = ("-m", "comment", "--comment", comment)
    rules = []
    for iface in (i for i in ifaces if i.version == version):
        rules += [(chain, ("-d", str(iface.network), *tag, "-j", "ACCEPT")),
                  (chain, ("!", "-d", MCAST[version], *tag, "-j", "MASQUERADE")),
                  ("POSTROUTING", ("-s", f"{iface.ip}/{iface.max_prefixlen}", *tag, "-j", chain))]
    return rules  # duplicates (two addresses, one subnet) are dropped by Batch.insert_unique


def setup_masq(network: str, container_id: str, ifaces: List[Any]) -> None:
    chain = chain_name(network, container_id)
    for version in sorted({i.version for i in ifaces}):
        def build(b: Batch, version: int = version) -> None:
            b.ensure_chain(chain)
            for parent, rule in _masq_rules(network, container_id, ifaces, version):
                b.insert_unique(parent, rule)

        apply(version, "nat", build)


def teardown_masq(network: str, container_id: str, ifaces: Optional[List[Any]]) -> None:
    chain = chain_name(network, container_id)
    versions = sorted({i.version for i in ifaces}) if ifaces is not None else [4, 6]
    for version in versions:
        if ifaces is not None:  # fast path: the exact rules, no listing
            jumps = [line("-D", c, r) for c, r in _masq_rules(network, container_id, ifaces, version)
                     if c == "POSTROUTING"]
            if try_restore(version, "nat", jumps + [f"-F {chain}", f"-X {chain}"]) is None:
                continue
        # addresses unknown or partly gone: find what is left
        apply(version, "nat", lambda b: b.remove_chain("POSTROUTING", chain))


def comment_owners(saved: str, parent: str) -> List[tuple]:
    """(network, container ID) of the Go-style comments on the `-A <parent>` lines of a listing."""
    out = []
    for ln in saved.splitlines():
        if ln.startswith(f"-A {parent} "):
            found = re.search(r'--comment "((?:[^"\\]|\\.)*)"', ln)
            owner = parse_owner(found.group(1).replace('\\"', '"')) if found else None
            if owner and owner not in out:
                out.append(owner)
    return out


def masq_owners() -> List[tuple]:
    return [o for v in (4, 6) for o in comment_owners(save(v, "nat"), "POSTROUTING")]


def check_masq(network: str, container_id: str, ifaces: List[Any]) -> None:
    for version in sorted({i.version for i in ifaces}):
        for chain, rule in _masq_rules(network, container_id, ifaces, version):
            if not exists(version, "nat", chain, rule):
                raise CNIError(spec.ERR_INTERNAL, f"masquerade rule missing in {chain}", " ".join(rule))
