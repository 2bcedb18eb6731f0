"""The node side of role cni_plugins: install, activate, roll back and remove engine releases and the
CNI executables, never touching a file we did not write.

Run on the node by its own interpreter (Python >= 3.9, nothing else needed):
    activate.py '{"op": "status" | "activate" | "absent", ...}'
Layout under LIB (cni_plugins_lib_dir):
    releases/<name>/{cni/, pyroute2/, RELEASE.json}   one per release, <name> = <version>-<digest12>
    current -> releases/<name>                         the active one (the modules' pyroute2 comes from it)
    state.json   {"history": [names, oldest first], "files": {name: {"sha256"| "link"}},
                  "backups": {name: path}, "created": [dirs this role created]}
    backup/<name>                                      what we replaced (cni_plugins_replace), restored on absent
The launchers point at one release's directory (not at `current`), so a running call never sees two
releases; `keep` previous releases stay on disk for rollback and for calls still running on them.
Prints one JSON object (what changed, or in check mode would change); exits 1 with {"msg": ...}.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

args = json.loads(sys.argv[1])
LIB, BIN, CHECK = args["lib_dir"].rstrip("/"), args["bin_dir"].rstrip("/"), bool(args.get("check"))
RELEASES, STATE = os.path.join(LIB, "releases"), os.path.join(LIB, "state.json")


def die(msg, **extra):
    print(json.dumps(dict(extra, failed=True, msg=msg)))
    sys.exit(1)


def load_state():
    try:
        with open(STATE, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return {"history": [], "files": {}, "backups": {}, "created": []}


def save_state(state):
    tmp = f"{STATE}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1, sort_keys=True)
    os.replace(tmp, STATE)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def describe(path):
    """What is at `path`, in the form state.json records ours: {"link": target} / {"sha256": hex} / None."""
    if os.path.islink(path):
        return {"link": os.readlink(path)}
    if os.path.isfile(path):
        return {"sha256": sha256(path)}
    return None if not os.path.lexists(path) else {"other": True}


def ours(state, name):
    """The file in BIN is one we wrote and nobody changed since."""
    have = describe(os.path.join(BIN, name))
    return have is not None and state["files"].get(name) == have


def missing_dirs():
    """The directories an install would create (recorded once, removed again by absent when empty)."""
    out = []
    for d in (BIN, RELEASES):
        while d and d != "/" and not os.path.exists(d):
            out.append(d)
            d = os.path.dirname(d)
    return sorted(set(out), key=len)


RELEASE_NAME = re.compile(r"^[0-9A-Za-z.+_-]+-[0-9a-f]{12}$")


def releases():
    """Our releases only: a <version>-<digest12> directory (not a link) holding RELEASE.json. Anything
    else under releases/ - or beside it in the lib dir, a venv, another tool's files - is never pruned."""
    if not os.path.isdir(RELEASES):
        return []
    return sorted(d for d in os.listdir(RELEASES)
                  if RELEASE_NAME.match(d) and not os.path.islink(os.path.join(RELEASES, d))
                  and os.path.isfile(os.path.join(RELEASES, d, "RELEASE.json")))


def current():
    try:
        return os.path.basename(os.readlink(os.path.join(LIB, "current")))
    except OSError:
        return ""


def status():
    state = load_state()
    ok = sys.version_info >= (3, 9)
    return {"python": "%d.%d.%d" % sys.version_info[:3], "python_ok": ok, "current": current(),
            "releases": releases(), "history": state["history"], "missing_dirs": missing_dirs(),
            "systemd": os.path.isdir("/run/systemd/system"),
            "have": bool(args.get("release")) and os.path.exists(os.path.join(RELEASES, args["release"], "RELEASE.json"))}


def resolve(state):
    want = args.get("release") or ""
    if want == "previous":
        cur = current()
        older = [r for r in state["history"] if r != cur and os.path.isdir(os.path.join(RELEASES, r))]
        if not older:
            die(f"no previous release kept on this node to roll back to (current {cur or 'none'}, kept: "
                f"{', '.join(releases()) or 'none'}); cni_plugins_keep_releases decides how many are kept")
        return older[-1]
    if not os.path.isdir(os.path.join(RELEASES, want)) and not args.get("tarball"):
        die(f"release {want} is not on this node (kept: {', '.join(releases()) or 'none'})")
    return want


def unpack(name):
    """Extract the pushed tarball into releases/<name> (atomically: a temp dir renamed into place)."""
    os.makedirs(RELEASES, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=RELEASES)
    try:
        with tarfile.open(args["tarball"], "r:*") as tar:
            for member in tar.getmembers():
                if not member.isfile() or member.name.startswith("/") or ".." in member.name.split("/"):
                    die(f"unexpected member {member.name!r} in {args['tarball']}")
            tar.extractall(tmp)  # noqa: S202 - members checked above
        with open(os.path.join(tmp, "RELEASE.json"), encoding="utf-8") as fh:
            if json.load(fh)["name"] != name:
                die(f"{args['tarball']} does not hold release {name}")
        os.chmod(tmp, 0o755)
        os.rename(tmp, os.path.join(RELEASES, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.unlink(args["tarball"])


def place(src, name):
    """Copy scratch file `src` into BIN as `name`, atomically."""
    dest = os.path.join(BIN, name)
    tmp = f"{dest}.cnikit-tmp{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, dest)


def back_up(state, name):
    """Keep the foreign file we are about to replace (once: the first one is what restore brings back)."""
    if name in state["backups"]:
        return
    os.makedirs(os.path.join(LIB, "backup"), exist_ok=True)
    src, dst = os.path.join(BIN, name), os.path.join(LIB, "backup", name)
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst)
    state["backups"][name] = dst


def remove_ours(state, name):
    """Remove our file `name` from BIN and put back what it replaced."""
    path = os.path.join(BIN, name)
    if ours(state, name):
        os.unlink(path)
    state["files"].pop(name, None)
    backup = state["backups"].pop(name, None)
    if backup and os.path.lexists(backup) and not os.path.lexists(path):
        os.rename(backup, path)


def answers_version(path):
    try:
        proc = subprocess.run([path], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)
        return proc.returncode == 0 and "supportedVersions" in json.loads(proc.stdout or b"{}")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False


def activate():
    state = load_state()
    if not state["history"] and not state["files"]:
        state["created"] = args.get("missing_dirs") or missing_dirs()
    name = resolve(state)
    reldir = os.path.join(RELEASES, name)
    installed = not os.path.isdir(reldir)
    if installed and CHECK:  # nothing to ask a release that is not there yet
        return {"release": name, "installed": True, "stale": [], "backed_up": [], "kept_foreign": [],
                "removed": [], "pruned": [], "not_answering_version": [], "switched": current() != name}
    if installed:
        unpack(name)
    sys.path.insert(0, reldir)
    try:  # the release's own engine writes its launchers (layout of issue 11, then the flat one before)
        from cni.node.installer import write_executables  # noqa: E402
        from cni.protocol import registry  # noqa: E402
    except ImportError:
        from cni.main import write_executables  # noqa: E402
        from cni import registry  # noqa: E402

    go = [n for n in args.get("go_reference") or [] if n]
    wanted = [n for n in (args.get("names") or registry.PLUGINS) if n and n not in go] + ["cnikit"]
    replace = set(args.get("replace") or [])
    python = args["python"]
    stale, backed_up, kept_foreign = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        write_executables(scratch, python, reldir, wanted[:-1])
        for n in go:  # the Go reference plugins for mixed setups: links, same ownership rules
            os.symlink(os.path.join(args["go_dir"], n), os.path.join(scratch, n))
        for n in wanted + go:
            dest, new = os.path.join(BIN, n), os.path.join(scratch, n)
            if describe(dest) == describe(new):
                state["files"][n] = describe(dest)  # e.g. written by an interrupted run
                continue
            if os.path.lexists(dest) and not ours(state, n):
                if n not in replace and "*" not in replace:
                    kept_foreign.append(n)
                    continue
                backed_up.append(n)
            stale.append(n)
        if not CHECK:
            os.makedirs(BIN, exist_ok=True)
            for n in stale:
                if n in backed_up:
                    back_up(state, n)
                if n in go:
                    tmp = os.path.join(BIN, f".{n}.cnikit-tmp{os.getpid()}")
                    os.symlink(os.readlink(os.path.join(scratch, n)), tmp)
                    os.replace(tmp, os.path.join(BIN, n))
                else:
                    place(os.path.join(scratch, n), n)
                state["files"][n] = describe(os.path.join(BIN, n))
    # ours before, not wanted now (a shorter cni_plugins_names, a name handed to Go): remove, restore
    removed = sorted(n for n in state["files"] if n not in wanted + go)
    switched = current() != name
    pruned = []
    if not CHECK:
        for n in removed:
            remove_ours(state, n)
        link = os.path.join(LIB, f".current.tmp{os.getpid()}")
        os.symlink(os.path.join("releases", name), link)
        os.replace(link, os.path.join(LIB, "current"))
        state["history"] = [r for r in state["history"] if r != name] + [name]
    history = state["history"] if not CHECK else [r for r in state["history"] if r != name] + [name]
    keep = set(history[-(int(args.get("keep", 2)) + 1):])
    pruned = [r for r in releases() if r not in keep]
    if not CHECK:
        for r in pruned:
            shutil.rmtree(os.path.join(RELEASES, r))
        state["history"] = [r for r in state["history"] if r in keep]
        save_state(state)
    silent = [n for n in wanted + go if os.path.exists(os.path.join(BIN, n)) and n != "cnikit"
              and n not in kept_foreign and not answers_version(os.path.join(BIN, n))]
    return {"release": name, "installed": installed, "stale": stale, "backed_up": sorted(backed_up),
            "kept_foreign": sorted(kept_foreign), "removed": removed, "pruned": pruned, "switched": switched,
            "not_answering_version": silent}


def absent():
    state = load_state()
    removed = sorted(n for n in state["files"] if ours(state, n))
    left = sorted(n for n in state["files"] if n not in removed and os.path.lexists(os.path.join(BIN, n)))
    restored = sorted(state["backups"])
    exists = os.path.lexists(LIB)
    if not CHECK:
        for n in list(state["files"]):
            remove_ours(state, n)
        shutil.rmtree(LIB, ignore_errors=True)
        for d in sorted(state.get("created", []), key=len, reverse=True):
            try:
                os.rmdir(d)
            except OSError:
                pass  # not empty: something else lives there now
    return {"removed": removed, "restored": restored, "modified_since": left, "lib_dir_removed": exists}


op = args["op"]
result = status() if op == "status" else activate() if op == "activate" else absent()
print(json.dumps(result))
sys.exit(1 if result.get("not_answering_version") else 0)
