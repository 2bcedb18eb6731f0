"""Which network would a CRI runtime pick, and does containerd look where we write?

    runtime_check.py CONF_DIR OUR_FILE BIN_DIR CONTAINERD_CONFIG
libcni (containerd's CRI plugin, cri-o) loads the configs of CONF_DIR sorted by file name and uses the
first (*.conf, *.conflist, *.json). Prints {"first", "files", "containerd": [messages], "systemd"}.
Read-only; runs on the node's own interpreter.
"""
import importlib.util
import json
import os
import re
import sys

conf_dir, ours, bin_dir, containerd_config = sys.argv[1:5]
files = sorted(f for f in os.listdir(conf_dir) if f.endswith((".conf", ".conflist", ".json"))) \
    if os.path.isdir(conf_dir) else []
first = sorted(set(files) | {ours})[0]
notes = []
try:
    with open(containerd_config, encoding="utf-8") as fh:
        text = fh.read()
except OSError:
    text = ""
for key, ourval in (("bin_dir", bin_dir), ("bin_dirs", bin_dir), ("conf_dir", conf_dir)):
    for match in re.finditer(r"^\s*%s\s*=\s*(.+)$" % key, text, re.M):
        values = re.findall(r"[\"']([^\"']*)[\"']", match.group(1))
        if values and ourval.rstrip("/") not in [v.rstrip("/") for v in values]:
            notes.append(f"{containerd_config} sets {key} = {match.group(1).strip()}, but this network is in "
                         f"{ourval}: containerd will not use it there (point {key} at {ourval}, or set "
                         "cni_macvlan_conf_dir / cni_plugins_bin_dir to containerd's)")
# can the netlink modules run here yet (the interpreter's pyroute2, or the one of an active release)?
release = os.path.join(os.environ.get("CNIKIT_LIB_DIR", "/opt/cni/lib/cnikit"), "current", "pyroute2")
netlink = importlib.util.find_spec("pyroute2") is not None or os.path.isdir(release)
print(json.dumps({"first": first, "files": files, "containerd": notes, "netlink": netlink,
                  "systemd": os.path.isdir("/run/systemd/system")}))
