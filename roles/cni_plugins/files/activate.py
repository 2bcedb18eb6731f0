"""Point the CNI launchers at one installed engine version, prune the other versions, and check
that every executable in the directory answers VERSION.

Run on the node by the executables' interpreter:
    activate.py LIBDIR PYTHON DEST NAMES EXCLUDE [--check]
LIBDIR is <lib dir>/<digest> holding the `cni` package; NAMES and EXCLUDE are comma-separated
("" NAMES = every plugin the engine registers; EXCLUDE = names left to the Go plugins). The
launchers are written by the engine's own write_executables, and only when one differs from
what it would write. Prints
{"stale": [...], "pruned": [...], "not_answering_version": [...]} - what was (or in check mode
would be) changed, so the role reports changed exactly then - and exits 1 if any executable is silent.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

libdir, python, dest, names, exclude = sys.argv[1:6]
check = "--check" in sys.argv[6:]
sys.path.insert(0, libdir)
from cni.node import installer  # noqa: E402
from cni.protocol import registry  # noqa: E402

wanted = [n for n in (names.split(",") if names else registry.PLUGINS) if n and n not in exclude.split(",")]


def same(a, b):
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read() and os.access(b, os.X_OK) and not os.path.islink(b)
    except OSError:
        return False


# what write_executables would write, compared byte for byte with what is there
with tempfile.TemporaryDirectory() as scratch:
    installer.write_executables(scratch, python, libdir, wanted)
    stale = [n for n in wanted + ["cnikit"] if not same(os.path.join(scratch, n), os.path.join(dest, n))]
if stale and not check:
    installer.write_executables(dest, python, libdir, wanted)
# older versions: no launcher points at them any more (the swap above is atomic per file)
top, mine = os.path.split(libdir.rstrip("/"))
pruned = sorted(os.path.join(top, d) for d in os.listdir(top) if d != mine and os.path.isdir(os.path.join(top, d)))
if not check:
    for path in pruned:
        shutil.rmtree(path)
# every executable in the directory (ours and any Go ones) must speak the CNI protocol
silent = []
for name in sorted(os.listdir(dest)) if os.path.isdir(dest) else []:
    path = os.path.join(dest, name)
    if name == "cnikit" or not os.access(path, os.X_OK) or os.path.isdir(path):
        continue
    try:
        proc = subprocess.run([path], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)
        ok = proc.returncode == 0 and "supportedVersions" in json.loads(proc.stdout or b"{}")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        silent.append(path)
print(json.dumps({"stale": stale, "pruned": pruned, "not_answering_version": silent}))
sys.exit(1 if silent else 0)
