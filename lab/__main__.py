"""`python -m lab up N [--hairpin off] [--ssh] [--go-plugins] | reboot NODE | down | status | hairpin on|off | exec NODE -- CMD...`"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import lab


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description="the cnikit namespace lab")
    parser.add_argument("--state", help=f"state file (default $CNIKIT_LAB_STATE or {lab.DEFAULT_STATE})")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="create the switch and N nodes")
    p_up.add_argument("count", type=int, nargs="?", default=3)
    p_up.add_argument("--hairpin", choices=("on", "off"), default="on", help="switch ports reflect frames back (on)")
    p_up.add_argument("--ssh", action="store_true", help="an sshd per node, user ops with sudo (lab/ssh.py)")
    p_up.add_argument("--go-plugins", action="store_true", help="pre-install the Go plugins in /opt/cni/bin")
    p_rb = sub.add_parser("reboot", help="power-cycle a node: fresh /run and netns, same disk, then boot")
    p_rb.add_argument("node")
    sub.add_parser("down", help="stop every lab process; namespaces, links and mounts go with them")
    sub.add_parser("status", help="show the nodes; exit 1 when the lab is down or a node is dead")
    p_hp = sub.add_parser("hairpin", help="turn the switch's hairpin (reflective relay) on or off")
    p_hp.add_argument("mode", choices=("on", "off"))
    p_ex = sub.add_parser("exec", help="run a command inside a node's namespaces")
    p_ex.add_argument("node")
    p_ex.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            state = lab.up(args.count, hairpin=args.hairpin == "on", path=args.state, ssh=args.ssh,
                           go_plugins=args.go_plugins)
            for n in state["nodes"]:
                print(f"{n['name']:<12} pid {n['pid']:<8} {lab.UPLINK} {n['ip']}")
            return 0
        if args.cmd == "reboot":
            node = lab.reboot(args.node, args.state)
            print(f"{node['name']} rebooted: pid {node['pid']}")
            return 0
        if args.cmd == "down":
            print(f"stopped {lab.down(args.state)} lab processes")
            return 0
        if args.cmd == "status":
            rows = lab.status(args.state)
            if not rows:
                print("lab is down")
                return 1
            print(f"{'NAME':<13}{'PID':<9}{'ALIVE':<7}{'ADDRESS':<16}{'LINK':<9}HAIRPIN")
            for r in rows:
                print(f"{r['name']:<13}{r['pid']:<9}{'yes' if r['alive'] else 'NO':<7}{r['ip']:<16}{r['link']:<9}{r['hairpin']}")
            return 0 if all(r["alive"] for r in rows) else 1
        if args.cmd == "hairpin":
            lab.set_hairpin(args.mode == "on", args.state)
            return 0
        if args.cmd == "exec":
            argv_ = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            os.execvp("nsenter", lab.nsenter(lab.pid_of(args.node, args.state), argv_ or ["sh"]))
    except lab.LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
