"""The multi-call entry point: plugin mode when argv[0] is a plugin name, `cnikit` CLI otherwise."""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from ..protocol import registry, skel


def plugin_main(name: str) -> int:
    """Speak the CNI exec protocol for plugin `name` on this process's env/stdin/stdout."""
    command = os.environ.get("CNI_COMMAND", "")
    # Like the Go skel, VERSION does not read stdin (a runtime may leave it open).
    stdin = b"" if command in ("", "VERSION") else sys.stdin.buffer.read()
    code, out, err = skel.execute(lambda: registry.load(name)(), os.environ, stdin)
    if err:
        sys.stderr.write(err)
    if out:
        sys.stdout.write(out)
        sys.stdout.flush()
    return code


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    name = os.path.basename(argv[0]) if argv else ""
    if registry.is_builtin(name):
        return plugin_main(name)
    from .cli import main as cli_main  # noqa: PLC0415 - the CLI is not needed in plugin mode

    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
