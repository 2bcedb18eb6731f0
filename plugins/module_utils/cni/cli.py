"""The `cnikit` command line (cnitool-like); see docs/cli.md."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="cnikit", description="cnikit CNI toolkit")
    sub = parser.add_subparsers(dest="cmd", required=True)
    inst = sub.add_parser("install-plugins", help="write the CNI executables into a directory")
    inst.add_argument("dest")
    inst.add_argument("--python", default=sys.executable)
    sub.add_parser("version", help="print the supported CNI versions")
    args = parser.parse_args(argv)
    if args.cmd == "install-plugins":
        from .main import write_executables  # noqa: PLC0415

        libdir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for path in write_executables(args.dest, args.python, libdir):
            print(path)
        return 0
    if args.cmd == "version":
        from . import spec  # noqa: PLC0415

        print(spec.dumps(spec.version_info()))
        return 0
    return 2
