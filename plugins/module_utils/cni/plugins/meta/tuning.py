"""tuning: sysctls and link settings of the container interface (Go plugins/meta/tuning, v1.1.1).

Sysctls are written inside the container netns; every key is validated before anything is
written (Go writes them one by one and stops half-way on a bad key). `IFNAME` in a key is the
container interface, substituted after the dots become slashes so a dotted interface name
(eth0.100) stays one path component. The original mac/mtu/promisc/allmulti are saved to
`<dataDir>/<containerID>_<ifname>.json` (Go's file name and JSON) and restored on DEL.
MAC precedence like Go: CNI_ARGS MAC < runtimeConfig.mac < args.cni.mac.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from ...net import link, ns, rtnl
from ...protocol import fsutil, skel, spec
from ...protocol.spec import CNIError
from ...protocol.plugin import MTU_RANGE, Conf, Result, check_range, conf_field, prev_result
from .. import NetPlugin

DEFAULT_DATA_DIR = "/run/cni/tuning"
ALLOWLIST = "/etc/cni/tuning/allowlist.conf"
IFF_PROMISC = 0x100
IFF_ALLMULTI = 0x200


class Tuning(NetPlugin):
    name = "tuning"

    # --- config -------------------------------------------------------------------------------

    @staticmethod
    def settings(ctx: skel.Context, conf: Conf) -> Dict[str, Any]:
        """Go parseConf: top-level keys, then CNI_ARGS MAC, runtimeConfig.mac, args.cni overrides."""
        sysctl = dict(conf_field(conf, "sysctl", dict, {}, "TuningConf"))
        s: Dict[str, Any] = {"sysctl": sysctl,
                             "mac": conf_field(conf, "mac", str, "", "TuningConf"),
                             "promisc": conf_field(conf, "promisc", bool, False, "TuningConf"),
                             "mtu": conf_field(conf, "mtu", int, 0, "TuningConf", MTU_RANGE),
                             "allmulti": conf_field(conf, "allmulti", bool, None, "TuningConf"),
                             "dataDir": conf_field(conf, "dataDir", str, "", "TuningConf") or DEFAULT_DATA_DIR}
        env_mac = skel.load_args(ctx.args, {"MAC": str}).get("MAC")
        if env_mac:
            s["mac"] = env_mac
        runtime_mac = conf_field(conf, "runtimeConfig", dict, {}, "TuningConf").get("mac")
        if runtime_mac:
            s["mac"] = runtime_mac
        cni_args = (conf_field(conf, "args", dict, {}, "TuningConf") or {}).get("cni")
        if isinstance(cni_args, dict):
            if isinstance(cni_args.get("sysctl"), dict):
                sysctl.update(cni_args["sysctl"])
            for key in ("mac", "promisc", "mtu", "allmulti"):
                if cni_args.get(key) is not None:
                    s[key] = cni_args[key]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in sysctl.items()):
            raise CNIError(spec.ERR_INVALID_CONFIG, "sysctl keys and values must be strings")
        s["mac"] = link.mac_arg(s["mac"], spec.ERR_INVALID_CONFIG) or s["mac"]
        if not isinstance(s["mtu"], int) or isinstance(s["mtu"], bool):
            raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid mtu {s['mtu']!r}")
        check_range("mtu", s["mtu"], MTU_RANGE)  # args.cni may override it past conf_field
        if ".." in s["dataDir"].split("/"):
            raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid dataDir {s['dataDir']!r}")
        return s

    @staticmethod
    def sysctl_files(sysctl: Dict[str, str], ifname: str) -> List[Tuple[str, str, str]]:
        """(key, /proc/sys path, value) for every key, all validated before any is written:
        the path must stay under /proc/sys/net/ and match the allowlist when there is one."""
        allow = _allowlist()
        out = []
        for key, value in sysctl.items():
            parts = [p.replace("IFNAME", ifname, 1) if "IFNAME" in p else p for p in key.replace(".", "/").split("/")]
            path = os.path.normpath(os.path.join("/proc/sys", *[p for p in parts if p]))
            if not path.startswith("/proc/sys/net/") or "\0" in path or "\n" in value:
                raise CNIError(spec.ERR_INVALID_CONFIG, f'invalid net sysctl key: "{key}"')
            if allow is not None and not any(rx.fullmatch(key) for rx in allow):
                raise CNIError(spec.ERR_INVALID_CONFIG, f"sysctl {key!r} is not allowed", f"see {ALLOWLIST}")
            out.append((key, path, value))
        return out

    @staticmethod
    def backup_path(data_dir: str, ctx: skel.Context) -> str:
        return os.path.join(data_dir, f"{ctx.container_id}_{ctx.ifname}.json")

    # --- verbs ----------------------------------------------------------------------------------

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        s = self.settings(ctx, conf)
        if conf.get("prevResult") is None:
            raise CNIError(spec.ERR_INVALID_CONFIG, "Required prevResult missing")
        result = prev_result(conf)
        files = self.sysctl_files(s["sysctl"], ctx.ifname)
        backup = self.backup_path(s["dataDir"], ctx)
        saved = False
        with ns.in_netns(ctx.netns):
            for key, path, _ in files:  # all present before any is written (Go stops half-way)
                if not os.path.isfile(path):
                    raise CNIError(spec.ERR_INTERNAL, f"failed to set sysctl {key}: no such sysctl in the container")
            for key, path, value in files:
                try:
                    with open(path, "w", encoding="ascii") as fh:
                        fh.write(value)
                except OSError as exc:
                    raise CNIError(spec.ERR_INTERNAL, f"failed to set sysctl {key}: {exc.strerror}") from None
            if not (s["mac"] or s["mtu"] or s["promisc"] or s["allmulti"] is not None):
                return result
            with rtnl.iproute() as ipr:
                dev = link.require_link(ipr, ctx.ifname)
                try:
                    _write_backup(backup, _original(ipr, dev, s))
                    saved = True
                    if s["mac"]:
                        link.set_link(ipr, dev["index"], address=s["mac"])
                    if s["promisc"]:
                        link.set_link(ipr, dev["index"], flags=IFF_PROMISC, change=IFF_PROMISC)
                    if s["mtu"]:
                        link.set_link(ipr, dev["index"], mtu=s["mtu"])
                    if s["allmulti"] is not None:
                        link.set_link(ipr, dev["index"], flags=IFF_ALLMULTI if s["allmulti"] else 0,
                                      change=IFF_ALLMULTI)
                except Exception as exc:
                    if saved:  # undo: put back what was there and forget the backup
                        _restore(ipr, dev["index"], backup)
                    if isinstance(exc, CNIError):
                        raise
                    raise rtnl.fail(f"failed to tune {rtnl.json_quote(ctx.ifname)}", exc) from None
        if s["mac"]:
            result = dict(result, interfaces=[dict(i, mac=s["mac"]) if i.get("name") == ctx.ifname else i
                                              for i in result.get("interfaces") or []])
        return result

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        s = self.settings(ctx, conf)
        if conf.get("prevResult") is None:
            raise CNIError(spec.ERR_INVALID_CONFIG, "Required prevResult missing")
        files = self.sysctl_files(s["sysctl"], ctx.ifname)
        with ns.in_netns(ctx.netns):
            for _, path, want in files:
                with open(path, encoding="ascii") as fh:
                    have = fh.read().rstrip("\n")
                if have != want:
                    raise CNIError(spec.ERR_INTERNAL, f"Error: Tuning configured value of {path} is {want}, "
                                                      f"current value is {have}")
            with rtnl.iproute() as ipr:
                dev = link.get_link(ipr, ctx.ifname)
                if dev is None:
                    raise CNIError(spec.ERR_INTERNAL, f"Cannot find container link {ctx.ifname}")
                flags = ipr.get_links(dev["index"])[0]["flags"]
        if s["mac"] and s["mac"] != dev["mac"]:
            raise CNIError(spec.ERR_INTERNAL, f"Error: Tuning configured Ethernet of {ctx.ifname} is {s['mac']}, "
                                              f"current value is {dev['mac']}")
        if bool(s["promisc"]) != dev["promisc"]:
            raise CNIError(spec.ERR_INTERNAL, f"Error: Tuning link {ctx.ifname} configured promisc is "
                                              f"{str(bool(s['promisc'])).lower()}, current value is {int(dev['promisc'])}")
        if s["mtu"] and s["mtu"] != dev["mtu"]:
            raise CNIError(spec.ERR_INTERNAL, f"Error: Tuning configured MTU of {ctx.ifname} is {s['mtu']}, "
                                              f"current value is {dev['mtu']}")
        if s["allmulti"] is not None and s["allmulti"] != bool(flags & IFF_ALLMULTI):
            raise CNIError(spec.ERR_INTERNAL, f"Error: Tuning configured all-multicast mode of {ctx.ifname} is "
                                              f"{str(s['allmulti']).lower()}, current value is "
                                              f"{str(bool(flags & IFF_ALLMULTI)).lower()}")

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        s = self.settings(ctx, conf)
        backup = self.backup_path(s["dataDir"], ctx)
        if not os.path.exists(backup):
            return
        if ctx.netns:
            try:
                with ns.in_netns(ctx.netns):
                    with rtnl.iproute() as ipr:
                        dev = link.get_link(ipr, ctx.ifname)
                        if dev is not None:
                            _restore(ipr, dev["index"], backup)
                            return
            except ns.NetnsNotFound:
                pass
            except CNIError:
                return  # best effort like Go; the backup stays for a retry
        _remove(backup)  # netns or link gone: nothing to restore, and no file left behind (Go leaks it)


def _allowlist() -> Optional[List[re.Pattern]]:
    try:
        with open(ALLOWLIST, encoding="utf-8") as fh:
            lines = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    except FileNotFoundError:
        return None
    try:
        return [re.compile(ln) for ln in lines]
    except re.error as exc:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid regex in {ALLOWLIST}: {exc}") from None


def _original(ipr: Any, dev: Dict[str, Any], s: Dict[str, Any]) -> Dict[str, Any]:
    """Go configToRestore: only the settings this config changes, in Go's field order."""
    flags = ipr.get_links(dev["index"])[0]["flags"]
    out: Dict[str, Any] = {}
    if s["mac"]:
        out["mac"] = dev["mac"]
    if s["promisc"]:
        out["promisc"] = bool(flags & IFF_PROMISC)
    if s["mtu"]:
        out["mtu"] = dev["mtu"]
    if s["allmulti"] is not None:
        out["allmulti"] = bool(flags & IFF_ALLMULTI)
    return out


def _write_backup(path: str, data: Dict[str, Any]) -> None:
    fsutil.state_dir(os.path.dirname(path), 0o700)
    fsutil.write_atomic(path, json.dumps(data, indent=1).encode(), 0o600)  # Go json.MarshalIndent(config, "", " ")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _restore(ipr: Any, index: int, path: str) -> None:
    """Go restoreBackup: mtu, mac, promisc, allmulti; the file goes once all of them are back."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return
    errors = []
    steps = (("mtu", "MTU", lambda v: {"mtu": v}),
             ("mac", "MAC address", lambda v: {"address": v}),
             ("promisc", "promiscuous mode", lambda v: {"flags": IFF_PROMISC if v else 0, "change": IFF_PROMISC}),
             ("allmulti", "all-multicast mode", lambda v: {"flags": IFF_ALLMULTI if v else 0, "change": IFF_ALLMULTI}))
    for key, what, attrs in steps:
        if key in data:
            try:
                link.set_link(ipr, index, **attrs(data[key]))
            except Exception as exc:  # noqa: BLE001 - collected like Go's errStr
                errors.append(f"failed to restore {what}: {rtnl.errstr(exc)}")
    if errors:
        raise CNIError(spec.ERR_INTERNAL, "; ".join(errors))
    _remove(path)
