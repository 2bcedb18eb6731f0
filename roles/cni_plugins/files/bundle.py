"""Pack one engine release on the controller, for nodes that fetch nothing themselves.

    python3 bundle.py '{"engine_src": DIR, "collection_root": DIR, "wheel_dir": DIR or "", "out_dir": DIR}'

The release is: the engine package (`cni/`, with node/relay.c - the relay's source, compiled on the node
when it has a C compiler), pyroute2, etcd3gw (the cnikit-cluster IPAM's etcd client) with its
dependency closure (requests, urllib3, idna, charset_normalizer, certifi, futurist, debtcollector,
wrapt, pbr), all pure Python, and RELEASE.json. They come from the wheels in `wheel_dir` when given
(pure-Python wheels only, e.g. `pip download --only-binary=:all: --platform any pyroute2 etcd3gw -d DIR`),
else from the controller's own installed distributions (their RECORDs list the files; compiled parts
are left out, each of these packages falls back to Python). pyroute2 is required, etcd3gw optional
(a release without it serves every IPAM but cnikit-cluster). The tarball is built with Python's
tarfile - no GNU tar on the controller - with sorted names, zero mtimes and owners, so the same
content always gives the same bytes; its content digest names the release:
`<collection version>-<digest[:12]>`. Prints {"name", "version", "digest", "tarball", "pyroute2",
"etcd3gw", "packages", "source"}; exits 1 with a message saying what to do when pyroute2 cannot be found.
"""
import gzip
import hashlib
import importlib.metadata as md
import io
import json
import os
import re
import sys
import tarfile
import zipfile

SKIP = re.compile(r"(^|/)__pycache__(/|$)|\.py[co]$")
PURE_WHEEL = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(-\d[^-]*)?-(py2\.)?py3(\.py\d+)?-none-any\.whl$")


# What the release carries besides the engine: pyroute2 (netlink, always) and etcd3gw (the
# cnikit-cluster IPAM's etcd client, when the controller has it), each with the closure of its
# unconditional requirements. setuptools is pbr's build-time requirement only: etcd3gw imports
# pbr.version, which reads dist-info metadata and needs no setuptools.
ROOTS = ("pyroute2", "etcd3gw")
NOT_RUNTIME = {"setuptools"}
# Compiled parts are left out (the node's Python may not be the controller's): every package here has a
# pure-Python fallback (charset_normalizer's md.py/cd.py, wrapt's wrappers.py).
COMPILED = re.compile(r"\.(so|pyd|dylib|c|h)$")
INSTALL_TIME = ("/RECORD", "/INSTALLER", "/REQUESTED", "/direct_url.json")


def dist_key(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def fail(msg):
    print(json.dumps({"failed": True, "msg": msg}))
    sys.exit(1)


def collection_version(root):
    manifest = os.path.join(root, "MANIFEST.json")
    if os.path.exists(manifest):  # an installed collection
        with open(manifest, encoding="utf-8") as fh:
            return json.load(fh)["collection_info"]["version"]
    with open(os.path.join(root, "galaxy.yml"), encoding="utf-8") as fh:  # a checkout
        match = re.search(r"^version:\s*['\"]?([^'\"\s]+)", fh.read(), re.M)
    return match.group(1) if match else "0.0.0"


def engine_files(src):
    out = {}
    for top, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = os.path.join(top, name)
            rel = "cni/" + os.path.relpath(path, src).replace(os.sep, "/")
            if not SKIP.search(rel):
                with open(path, "rb") as fh:
                    out[rel] = fh.read()
    return out


def wheel_files(wheel_dir):
    out, versions = {}, {}
    wheels = sorted(f for f in os.listdir(wheel_dir) if f.endswith(".whl"))
    for wheel in wheels:
        match = PURE_WHEEL.match(wheel)
        if not match:
            fail(f"{wheel} in cni_plugins_wheel_dir {wheel_dir} is not a pure-Python (py3-none-any) wheel: the "
                 "release must run on every node's interpreter")
        key = dist_key(match.group("name"))
        if key in NOT_RUNTIME:  # `pip download etcd3gw` brings pbr's setuptools along
            continue
        versions[key] = match.group("version")
        with zipfile.ZipFile(os.path.join(wheel_dir, wheel)) as zf:
            for info in zf.infolist():
                name = info.filename
                if not info.is_dir() and not SKIP.search(name) and not COMPILED.search(name) and ".data/" not in name:
                    out[info.filename] = zf.read(info)
    if "pyroute2" not in versions:
        fail(f"no pyroute2 wheel in cni_plugins_wheel_dir {wheel_dir} ({len(wheels)} wheels): run "
             f"`pip download 'pyroute2>=0.9.5,<0.10' --no-deps -d {wheel_dir}` on a machine with an index")
    return out, versions


def requirement_name(req):
    return re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1)


def installed_closure():
    """{dist key: Distribution} for ROOTS and their unconditional requirements (markers - extras,
    platform conditions - are not followed); etcd3gw and its closure only when installed."""
    try:
        md.distribution("pyroute2")
    except md.PackageNotFoundError:
        fail(f"pyroute2 is not installed in the controller's Python ({sys.executable}), and "
             "cni_plugins_wheel_dir is not set: install it there (`pip install 'pyroute2>=0.9.5,<0.10'`) or "
             "set cni_plugins_wheel_dir to a directory with its wheel (`pip download pyroute2 --no-deps -d DIR`)")
    found, todo = {}, [(r, r == "pyroute2") for r in ROOTS]
    while todo:
        name, needed = todo.pop()
        key = dist_key(name)
        if key in found or key in NOT_RUNTIME:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            if needed:
                fail(f"{name} is required by the release but not installed in the controller's Python "
                     f"({sys.executable}): install it, or use cni_plugins_wheel_dir with all wheels")
            continue  # etcd3gw itself is optional: no cluster IPAM on these nodes then
        found[key] = dist
        todo.extend((requirement_name(r), True) for r in dist.requires or [] if ";" not in r)
    return found


def installed_files():
    out, versions = {}, {}
    for key, dist in sorted(installed_closure().items()):
        versions[key] = dist.version
        for f in dist.files or []:
            rel = str(f).replace(os.sep, "/")
            if rel.startswith("..") or SKIP.search(rel) or COMPILED.search(rel) or rel.endswith(INSTALL_TIME):
                continue
            with open(dist.locate_file(f), "rb") as fh:
                out[rel] = fh.read()
    return out, versions


def main():
    args = json.loads(sys.argv[1])
    files = engine_files(args["engine_src"])
    if "cni/node/main.py" not in files and "cni/main.py" not in files:
        fail(f"cni_plugins_engine_src {args['engine_src']} is not the engine package (no main.py)")
    if args.get("wheel_dir"):
        deps, versions = wheel_files(args["wheel_dir"])
        source = f"wheels in {args['wheel_dir']}"
    else:
        deps, versions = installed_files()
        source = f"the controller's installed pyroute2 and etcd3gw ({sys.executable})"
    files.update(deps)
    listing = "".join(f"{name}\0{hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(files.items()))
    digest = hashlib.sha256(listing.encode()).hexdigest()
    version = collection_version(args["collection_root"])
    name = f"{version}-{digest[:12]}"
    release = {"name": name, "collection_version": version, "digest": digest, "pyroute2": versions["pyroute2"],
               "etcd3gw": versions.get("etcd3gw"), "packages": dict(sorted(versions.items())),
               "python_requires": ">=3.9"}
    files["RELEASE.json"] = (json.dumps(release, indent=1, sort_keys=True) + "\n").encode()
    os.makedirs(args["out_dir"], exist_ok=True)
    tarball = os.path.join(args["out_dir"], f"cnikit-{name}.tar.gz")
    if not os.path.exists(tarball):
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w",
                                                                                format=tarfile.PAX_FORMAT) as tar:
            for rel, data in sorted(files.items()):
                info = tarfile.TarInfo(rel)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
        tmp = f"{tarball}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, tarball)
    print(json.dumps(dict(release, tarball=tarball, source=source)))


main()
