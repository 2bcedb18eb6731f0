"""The `cnikit` command line (cnitool-like); see docs/cli.md.

Errors are one line on stderr and exit code 1 (set CNIKIT_DEBUG=1 for the traceback).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import traceback
from typing import Any, Dict, List, Tuple

NET_VERBS = ("add", "check", "del", "gc", "status")


class UsageError(Exception):
    """A user mistake in arguments or environment (reported without a traceback)."""


def container_id_for(netns: str) -> str:
    """cnitool's container ID: `cnitool-` + hex of the first 10 bytes of sha512(abs netns path)."""
    return "cnitool-" + hashlib.sha512(os.path.abspath(netns).encode()).digest()[:10].hex()


def parse_cni_args(raw: str) -> List[Tuple[str, str]]:
    """CNI_ARGS as cnitool parses it: `K=V;K2=V2`, neither side empty."""
    out = []
    for pair in raw.split(";"):
        kv = pair.split("=")
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise UsageError(f"invalid CNI_ARGS pair {pair!r}")
        out.append((kv[0], kv[1]))
    return out


def parse_cap_args(raw: str) -> Dict[str, Any]:
    try:
        caps = json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"CAP_ARGS is not valid JSON: {exc}") from None
    if not isinstance(caps, dict):
        raise UsageError("CAP_ARGS must be a JSON object")
    return caps


def net_command(args: argparse.Namespace, environ: Dict[str, str]) -> int:
    from .. import runtime  # noqa: PLC0415 - keep `cnikit version` free of the runtime
    from ..protocol import spec  # noqa: PLC0415 - keep `cnikit version` free of the runtime

    conf_dir = environ.get("NETCONFPATH") or runtime.DEFAULT_CONF_DIR
    rt_ = runtime.Runtime(conf_dir=conf_dir, cni_path=environ.get("CNI_PATH") or runtime.DEFAULT_CNI_PATH,
                          cache_dir=args.cache_dir or environ.get("CNI_CACHE_DIR") or runtime.DEFAULT_CACHE_DIR,
                          environ=environ)
    net = rt_.load_network(args.network)
    caps = parse_cap_args(environ["CAP_ARGS"]) if environ.get("CAP_ARGS") else None
    cni_args = parse_cni_args(environ["CNI_ARGS"]) if environ.get("CNI_ARGS") else []
    ifname = args.ifname or environ.get("CNI_IFNAME") or "eth0"
    netns = os.path.abspath(args.netns)
    rt = runtime.RuntimeConf(container_id=container_id_for(netns), netns=netns, ifname=ifname,
                             args=cni_args, capability_args=caps)
    if args.verb == "add":
        print(spec.dumps(rt_.add(net, rt)))
    elif args.verb == "check":
        rt_.check(net, rt)
    elif args.verb == "del":
        rt_.delete(net, rt)
    elif args.verb == "gc":
        # an explicit empty list (unlike cnitool, which sends none and so collects nothing in the
        # plugins): every cached attachment of the net is DELed, every plugin reclaims all it holds
        rt_.gc(net, [])
    else:
        rt_.status(net)
    return 0


def release_info() -> dict:
    """{"release": RELEASE.json} when this engine runs from a release the role cni_plugins installed
    (the file sits next to the `cni` package); {} in a source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    for _ in range(3):  # the package root, wherever this module sits inside it
        here = os.path.dirname(here)
        path = os.path.join(here, "RELEASE.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                return {"release": json.load(fh)}
    return {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnikit", description="cnikit CNI toolkit")
    sub = parser.add_subparsers(dest="cmd", required=True)
    inst = sub.add_parser("install-plugins", help="write the CNI executables into a directory")
    inst.add_argument("dest")
    inst.add_argument("--python", default=sys.executable)
    inst.add_argument("--agent-socket", default=None, help="the node agent's socket the plugins use when it is up")
    inst.add_argument("--cc", default=None, help="C compiler for the compiled plugin executables (default $CC or cc; "
                                                 "'' writes the dash + Python launchers)")
    agent = sub.add_parser("agent", help="run the node agent (engine kept warm; the plugins hand it their calls)")
    agent.add_argument("--socket", default=None, help="unix socket to listen on (default /run/cni/cnikit.sock)")
    agent.add_argument("--cni-path", default=None,
                       help="the only dirs foreign plugins are exec'd from, ':'-separated (default: the dir of "
                            "this cnikit executable, else /opt/cni/bin); see docs/security.md")
    sub.add_parser("version", help="print the supported CNI versions and the installed release")
    from .reclaim import add_parser as add_reclaim_parser  # noqa: PLC0415 - stdlib-only module

    add_reclaim_parser(sub)  # `cnikit reclaim` (alias gc): node-level leak reclaim (docs/reliability.md)
    from .overlay.daemon import add_parser as add_overlayd_parser  # noqa: PLC0415 - no pyroute2 at import

    add_overlayd_parser(sub)  # `cnikit overlayd`: the overlay node daemon (docs/overlay.md)
    cip = sub.add_parser("cluster-ipam", help="list / reclaim the cnikit-cluster IPAM's leases in etcd "
                                              "(docs/cluster-state.md)")
    cip.add_argument("action", choices=("list", "reclaim"))
    cip.add_argument("--conf", required=True, help="a network config or conflist using ipam type cnikit-cluster")
    cip.add_argument("--node", default="", help="reclaim: the node that is gone (required)")
    renew = sub.add_parser("dhcp-renew", help="renew the dhcp IPAM plugin's leases (the Go dhcp daemon's role)")
    renew.add_argument("--once", action="store_true", help="one pass; print each lease's state")
    renew.add_argument("--interval", type=float, default=30.0, help="longest sleep between passes (s)")
    net = sub.add_parser("net", help="run a network configuration list against a netns (like cnitool)",
                         description="Env: CNI_PATH, NETCONFPATH (default /etc/cni/net.d), CNI_ARGS, "
                                     "CAP_ARGS (JSON), CNI_IFNAME (default eth0), CNI_CACHE_DIR "
                                     "(default /var/lib/cni).")
    net.add_argument("verb", choices=NET_VERBS)
    net.add_argument("network", help="network name (the conflist's `name`)")
    net.add_argument("netns", help="network namespace path, e.g. /run/netns/blue")
    net.add_argument("-i", "--ifname", default="", help="interface name (default: $CNI_IFNAME or eth0)")
    net.add_argument("--cache-dir", default="", help="libcni cache dir (default: $CNI_CACHE_DIR or /var/lib/cni)")
    return parser


def main(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "install-plugins":
        from .installer import write_executables  # noqa: PLC0415

        libdir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        for path in write_executables(args.dest, args.python, libdir, socket=args.agent_socket, cc=args.cc):
            print(path)
        return 0
    if args.cmd == "agent":
        from . import agent  # noqa: PLC0415

        dirs = args.cni_path.split(os.pathsep) if args.cni_path else [
            os.path.dirname(os.path.abspath(sys.argv[0])) if os.path.basename(sys.argv[0]) == "cnikit" else "/opt/cni/bin"]
        return agent.serve(args.socket or agent.DEFAULT_SOCKET, [d for d in dirs if d])
    if args.cmd == "version":
        from ..protocol import spec  # noqa: PLC0415

        print(spec.dumps(dict(spec.version_info(), **release_info())))
        return 0
    try:
        if args.cmd in ("reclaim", "gc"):
            return args.func(args)
        if args.cmd == "overlayd":
            from .overlay import daemon  # noqa: PLC0415

            return daemon.main(args)
        if args.cmd == "cluster-ipam":
            from ..ipam import cluster  # noqa: PLC0415 - loads etcd3gw only when used

            return cluster.cli_main(args)
        if args.cmd == "dhcp-renew":
            from ..ipam import dhcp  # noqa: PLC0415 - docs/ipam.md

            return dhcp.renew_main(args.once, args.interval)
        return net_command(args, dict(os.environ))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it does not crash
        if os.environ.get("CNIKIT_DEBUG"):
            traceback.print_exc()
        code = getattr(exc, "code", None)
        prefix = f"cnikit: error (code {code}): " if isinstance(code, int) else "cnikit: error: "
        sys.stderr.write(prefix + str(exc).replace("\n", " ") + "\n")
        return 1
