"""tap: a persistent tap device in the container (Go plugins/main/tap, added in plugins v1.3.0; not in
the Go 1.1.1 package here, so it is tested against the kernel only).

Options: mtu, mac (CNI_ARGS MAC < mac < runtimeConfig.mac), multiQueue, owner, group (uid/gid that
may attach), bridge (a bridge *in the container* to enslave the tap to), ipam ({} = L2).
selinuxContext is refused with code 2 (no SELinux support here).
"""
from __future__ import annotations

from typing import Any

from ...net import link, ns, rtnl
from ...protocol import skel, spec
from ...protocol.spec import CNIError
from ...protocol.plugin import MTU_RANGE, Conf, Result, conf_field
from .single import SingleLinkPlugin, check_container, check_prelude


class Tap(SingleLinkPlugin):
    name = "tap"

    def load(self, ctx: skel.Context, conf: Conf) -> dict:
        n = {"mtu": conf_field(conf, "mtu", int, 0, bounds=MTU_RANGE), "mac": conf_field(conf, "mac", str, ""),
             "multiQueue": conf_field(conf, "multiQueue", bool, False), "owner": conf_field(conf, "owner", int),
             "group": conf_field(conf, "group", int), "bridge": conf_field(conf, "bridge", str, "")}
        if conf_field(conf, "selinuxContext", str, ""):
            raise CNIError(spec.ERR_UNSUPPORTED_FIELD, "unsupported field: selinuxContext",
                           "SELinux labels are not supported by this implementation")
        for key in ("owner", "group"):
            if n[key] is not None and not 0 <= n[key] < 2 ** 32:
                raise rtnl.fail(f"failed to load netconf: json: cannot unmarshal number {n[key]} into Go struct "
                                f"field NetConf.{key} of type uint32")
        env = skel.load_args(ctx.args, {"MAC": str})
        if env.get("MAC"):
            n["mac"] = env["MAC"]
        runtime = conf_field(conf, "runtimeConfig", dict, {})
        if isinstance(runtime.get("mac"), str) and runtime["mac"]:
            n["mac"] = runtime["mac"]
        return n

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        n = self.load(ctx, conf)
        mac = link.mac_arg(n["mac"])
        tmp = link.random_veth_name()
        with ns.in_netns(ctx.netns):
            with rtnl.iproute() as cipr:
                try:
                    link.create_tap(tmp, n["multiQueue"], n["owner"], n["group"])
                except OSError as exc:
                    raise rtnl.fail("failed to create tap", exc) from None
                made = link.require_link(cipr, tmp)
                try:
                    attrs: dict[str, Any] = {"ifname": ctx.ifname}
                    if n["mtu"]:
                        attrs["mtu"] = n["mtu"]
                    if mac:
                        attrs["address"] = mac
                    link.set_link(cipr, made["index"], **attrs)
                    if n["bridge"]:
                        br = link.get_link(cipr, n["bridge"])
                        if br is None:
                            raise rtnl.fail(f"failed to get bridge {n['bridge']}: Link not found")
                        link.set_link(cipr, made["index"], master=br["index"])
                    made = link.require_link(cipr, ctx.ifname)
                except BaseException as exc:
                    cipr.link("del", index=made["index"])
                    if isinstance(exc, CNIError):
                        raise
                    raise rtnl.fail(f"failed to set up tap {rtnl.json_quote(ctx.ifname)}", exc) from None
        return self.finish_add(ctx, conf, made)

    def validate_del(self, ctx: skel.Context, conf: Conf) -> None:
        self.load(ctx, conf)

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        self.load(ctx, conf)
        result, cont = check_prelude(ctx, conf)
        check_container(ctx, result, cont, "tun", "tap")
