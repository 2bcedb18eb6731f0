"""host-device: move an existing host link into the container (Go plugins/main/host-device v1.1.1).

Select the device by one of `device` (name), `hwaddr`, `kernelpath` (/sys/devices/...), `pciBusID`
or runtimeConfig.deviceID (a PCI address; wins over pciBusID). The device keeps its original name
as ifalias and is renamed to CNI_IFNAME; DEL renames it back and returns it to the host.
PCI devices bound to a userspace driver (vfio-pci, uio_pci_generic, igb_uio) are not moved.

Deliberate differences from Go 1.1.1: an existing CNI_IFNAME in the container is refused before
the move (Go moves first and strands the device there when the rename fails); a failed ADD moves
the device back; DEL releases IPAM even without CNI_NETNS (plugins#1196) and succeeds
when the netns or the device is already gone (Go fails, so a second DEL errors).
"""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, Optional

from ... import ipam
from ...net import link, ns, rtnl
from ...protocol import skel, spec
from ...protocol.spec import CNIError
from ...protocol.plugin import Conf, Result, conf_field
from .. import NetPlugin
from .single import check_container, check_prelude

SYS_BUS_PCI = "/sys/bus/pci/devices"
USERSPACE_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio")


def load(conf: Conf) -> Dict[str, Any]:
    n = {k: conf_field(conf, k, str, "") for k in ("device", "hwaddr", "kernelpath", "pciBusID")}
    runtime = conf_field(conf, "runtimeConfig", dict, {})
    if isinstance(runtime.get("deviceID"), str) and runtime["deviceID"]:
        n["pciBusID"] = runtime["deviceID"]
    if not any(n.values()):
        raise rtnl.fail('specify either "device", "hwaddr", "kernelpath" or "pciBusID"')
    n["dpdk"] = False
    if n["pciBusID"]:
        if "/" in n["pciBusID"] or n["pciBusID"] in (".", ".."):
            raise CNIError(spec.ERR_INVALID_CONFIG, "invalid pciBusID", n["pciBusID"])
        try:
            driver = os.path.basename(os.path.realpath(os.path.join(SYS_BUS_PCI, n["pciBusID"], "driver"),
                                                       strict=True))
        except OSError as exc:
            raise rtnl.fail(f"error with host device: lstat {os.path.join(SYS_BUS_PCI, n['pciBusID'])}", exc) \
                from None
        n["dpdk"] = driver in USERSPACE_DRIVERS
    return n


def find_device(ipr: Any, n: Dict[str, Any]) -> link.Iface:
    """Go getLink: by name, MAC, kernel path or PCI address (first match)."""
    if n["device"]:
        found = link.get_link(ipr, n["device"])
        if found is None:
            raise rtnl.fail("failed to find host device: Link not found")
        return found
    names = {i["name"]: i for i in (link.iface_info(m) for m in ipr.get_links())}
    if n["hwaddr"]:
        try:
            mac = link.parse_mac(n["hwaddr"])
        except ValueError as exc:
            raise rtnl.fail(f"failed to find host device: failed to parse MAC address "
                            f"{rtnl.json_quote(n['hwaddr'])}: {exc}") from None
        for iface in names.values():
            if iface["mac"] == mac:
                return iface
    elif n["kernelpath"]:
        path = n["kernelpath"]
        if not os.path.isabs(path) or not path.startswith("/sys/devices/") or ".." in path.split("/"):
            raise rtnl.fail(f"failed to find host device: kernel device path {rtnl.json_quote(path)} must be "
                            "absolute and begin with /sys/devices/")
        net_dir = os.path.join(path, "net")
        try:
            entries = sorted(os.listdir(net_dir))
        except OSError:
            raise rtnl.fail(f"failed to find host device: failed to find network devices at "
                            f"{rtnl.json_quote(net_dir)}") from None
        for entry in entries:
            if entry in names:
                return names[entry]
    elif n["pciBusID"]:
        net_dir = os.path.join(SYS_BUS_PCI, n["pciBusID"], "net")
        if not os.path.lexists(net_dir):
            matches = sorted(glob.glob(os.path.join(SYS_BUS_PCI, glob.escape(n["pciBusID"]), "virtio*", "net")))
            if not matches:
                raise rtnl.fail(f"failed to find host device: no net directory under pci device {n['pciBusID']}")
            net_dir = matches[0]
        entries = sorted(os.listdir(net_dir))
        if not entries:
            raise rtnl.fail(f"failed to find host device: failed to find device name for pci address "
                            f"{n['pciBusID']}")
        found = link.get_link(ipr, entries[0])
        if found is None:
            raise rtnl.fail("failed to find host device: Link not found")
        return found
    raise rtnl.fail("failed to find host device: failed to find physical interface")


class HostDevice(NetPlugin):
    name = "host-device"

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        n = load(conf)
        fd = ns.open_netns(ctx.netns)
        result = spec.new_result()
        moved = False
        try:
            if not n["dpdk"]:
                with rtnl.iproute() as ipr:
                    dev = find_device(ipr, n)
                    with ns.in_netns(ctx.netns):
                        with rtnl.iproute() as cipr:
                            # refused up front: a rename failing after the move would strand the device
                            if link.get_link(cipr, ctx.ifname) is not None:
                                raise rtnl.fail(f"failed to move link: {rtnl.json_quote(ctx.ifname)} already "
                                                "exists in the container")
                    try:
                        link.move_link(ipr, dev["index"], fd, ctx.ifname)
                    except Exception as exc:  # noqa: BLE001
                        raise rtnl.fail("failed to move link", exc) from None
                moved = True
                with ns.in_netns(ctx.netns):
                    with rtnl.iproute() as cipr:
                        cont = link.require_link(cipr, ctx.ifname)
                        link.set_link(cipr, cont["index"], ifalias=dev["name"])
                        link.set_link(cipr, cont["index"], state="up")
                        cont = link.require_link(cipr, ctx.ifname)
                result["interfaces"] = [{"name": ctx.ifname, "mac": cont["mac"], "sandbox": ctx.netns}]
            if not ipam.ipam_type(conf):
                return result
            got = ipam.delegate("ADD", ctx, conf)
            try:
                if not got["ips"]:
                    raise rtnl.fail("IPAM plugin returned missing IP config")
                result["ips"] = [dict(ip, interface=0) for ip in got["ips"]]
                result["routes"] = got["routes"]
                if not n["dpdk"]:
                    with ns.in_netns(ctx.netns):
                        with rtnl.iproute() as cipr:
                            link.configure_iface(cipr, ctx.ifname, result)
            except BaseException:
                try:
                    ipam.delegate("DEL", ctx, conf)
                except CNIError:
                    pass
                raise
            result["dns"] = spec.new_result(dns=conf.get("dns"))["dns"]
            return result
        except BaseException:
            if moved:
                try:
                    move_out(ctx.netns, ctx.ifname, flush=True)
                except CNIError:
                    pass
            raise
        finally:
            os.close(fd)

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        n = load(conf)
        if ipam.ipam_type(conf):
            ipam.delegate("DEL", ctx, conf)
        if not ctx.netns or n["dpdk"]:
            return
        try:
            move_out(ctx.netns, ctx.ifname)
        except ns.NetnsNotFound:
            return  # the netns is gone: a physical device is back on the host already

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        n = load(conf)
        # a userspace-driver device is no netdev: Go checks nothing past the prevResult
        result, cont = check_prelude(ctx, conf, match=not n["dpdk"])
        if n["dpdk"]:
            return
        check_container(ctx, result, cont)


def move_out(netns: str, ifname: str, flush: bool = False) -> None:
    """Go moveLinkOut: down, back to its original name (the ifalias), into the host netns; a
    missing device is fine (DEL is idempotent). `flush` drops addresses an undone ADD put on it."""
    host_fd = ns.current_netns_fd()
    try:
        with ns.in_netns(netns):
            with rtnl.iproute() as cipr:
                dev = link.get_link(cipr, ifname)
                if dev is None:
                    return
                if flush:
                    cipr.flush_addr(index=dev["index"])
                name: Optional[str] = dev["alias"] or None
                try:
                    link.move_link(cipr, dev["index"], host_fd, name)
                except Exception as exc:  # noqa: BLE001
                    raise rtnl.fail(f"failed to move {rtnl.json_quote(name or ifname)} to host netns", exc) from None
    finally:
        os.close(host_fd)
