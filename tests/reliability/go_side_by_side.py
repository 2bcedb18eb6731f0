"""The DEL idempotency matrix against the Go reference plugins, for docs/reliability.md (not a test:
it records what Go 1.1.1 does where ours must succeed). Run inside tools/sandbox.sh:
    .venv/bin/python tests/reliability/go_side_by_side.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import cnitest  # noqa: E402
import relutil  # noqa: E402
import test_reliability_del_matrix as m  # noqa: E402


def one(ptype: str, case: str, go: bool) -> str:
    cnitest.sh(f"ip link add {m.MASTER} type veth peer name {m.MASTER}p && ip link set {m.MASTER} up")
    cnitest.sh("ip netns add gosbs && ip -n gosbs link set lo up")
    datadir = tempfile.mkdtemp()
    conf = m.conf_for(ptype, datadir)
    kw = dict(cid="delctr", netns="/run/netns/gosbs", ifname="eth0", go=go)
    try:
        if case != "never_added":
            add = cnitest.run(ptype, "ADD", conf, **kw)
            if add.rc:
                return f"ADD failed {add.code}"
            conf["prevResult"] = add.json
        if case == "netns_gone":
            cnitest.sh("ip netns del gosbs")
        elif case == "netns_stale_file":
            cnitest.sh("umount /run/netns/gosbs")
        elif case == "empty_netns":
            kw["netns"] = ""
        elif case == "master_gone":
            cnitest.sh(f"ip link del {m.MASTER if ptype == 'macvlan' else m.BRIDGE}")
        elif case == "iface_gone":
            cnitest.sh("ip -n gosbs link del eth0")
        elif case == "no_prev_result":
            conf.pop("prevResult")
        outs = [cnitest.run(ptype, "DEL", conf, **kw) for _ in range(2 if case == "del_twice" else 1)]
        bad = [o for o in outs if o.rc]
        leaks = []
        if relutil.lease_files(datadir):
            leaks.append("lease")
        if m.masq_rules():
            leaks.append("masquerade rule")
        res = "exit 0" if not bad else f"exit 1 ({bad[0].json.get('msg', '')[:60]})"
        return res + (f", leaks {' + '.join(leaks)}" if leaks else "")
    finally:
        subprocess.run("ip netns del gosbs; rm -f /run/netns/gosbs; ip link del cnidm0; ip link del cnidbr0; iptables -t nat -F; "
                       "iptables -t nat -X; nft flush ruleset", shell=True, capture_output=True)


if __name__ == "__main__":
    print("| plugin | case | Go 1.1.1 | ours |\n|---|---|---|---|")
    for ptype, case in m.MATRIX:
        if sys.argv[1:] and case not in sys.argv[1:]:
            continue
        print(f"| {ptype} | {case} | {one(ptype, case, True)} | {one(ptype, case, False)} |")
