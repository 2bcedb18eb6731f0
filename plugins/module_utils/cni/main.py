"""The multi-call entry point: plugin mode when argv[0] is a plugin name, `cnikit` CLI otherwise."""
from __future__ import annotations

import os
import sys
from typing import List, Optional

from . import registry, skel


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


LAUNCHER = """#!{python} -I
import sys
sys.path.insert(0, {libdir!r})
from cni.main import main
sys.exit(main())
"""


def write_executables(dest: str, python: str, libdir: str, names: Optional[List[str]] = None) -> List[str]:
    """Write one launcher per plugin name (and `cnikit`) into `dest`, atomically; return the paths."""
    os.makedirs(dest, exist_ok=True)
    text = LAUNCHER.format(python=python, libdir=libdir)
    written = []
    for name in (names or list(registry.PLUGINS)) + ["cnikit"]:
        path = os.path.join(dest, name)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


if __name__ == "__main__":
    sys.exit(main())
