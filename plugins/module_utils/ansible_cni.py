# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The thin Ansible-side client every cnikit.cni module is built on (like community.docker's
AnsibleDockerClient): it builds the AnsibleModule, checks that pyroute2 is importable, runs the one
engine call, turns engine errors into fail_json with their CNI code, and adds the diff."""

from __future__ import annotations

import os
import sys
import traceback
from typing import TYPE_CHECKING

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.cnikit.cni.plugins.module_utils.cni.protocol.spec import CNIError


# The runtime loads a built-in plugin by its type name (importlib, see cni/protocol/registry.py), which AnsiballZ
# cannot follow. These imports are never executed; they only make AnsiballZ pack every plugin into the
# modules that use this client (an import below module level is optional to AnsiballZ, so a plugin the
# engine does not have is simply not packed). tests/ansible/test_client.py keeps the list = the registry.
if TYPE_CHECKING:
    from ansible_collections.cnikit.cni.plugins.module_utils.cni.plugins.main import (  # noqa: F401 pylint: disable=unused-import
        bridge, dummy, host_device, ipvlan, loopback, macvlan, ptp, routed, tap, vlan)
    from ansible_collections.cnikit.cni.plugins.module_utils.cni.plugins.meta import (  # noqa: F401 pylint: disable=unused-import
        bandwidth, firewall, portmap, sbr, tuning, vrf)
    from ansible_collections.cnikit.cni.plugins.module_utils.cni.ipam import cluster, dhcp, host_local, static  # noqa: F401 pylint: disable=unused-import


# The argument spec of doc fragment cnikit.cni.link: one interface's netns, MTU, MAC, addresses,
# routes and up/down (bridge, macvlan, each end of a veth).
ROUTE_OPTIONS = dict(dst=dict(type="str", required=True), gw=dict(type="str"), metric=dict(type="int"))
LINK_OPTIONS = dict(netns=dict(type="str"), mtu=dict(type="int"), mac=dict(type="str"),
                    addresses=dict(type="list", elements="str"),
                    routes=dict(type="list", elements="dict", options=ROUTE_OPTIONS),
                    up=dict(type="bool", default=True))
STATE_OPTION = dict(type="str", choices=["present", "absent"], default="present")


def release_dir() -> str:
    """The node's active engine release (role cni_plugins: <cni_plugins_lib_dir>/current)."""
    return os.path.join(os.environ.get("CNIKIT_LIB_DIR", "/opt/cni/lib/cnikit"), "current")


def use_release_pyroute2() -> bool:
    """Air-gapped nodes: the interpreter has no pyroute2, the release the role installed carries one
    (pure Python, from the controller). Appended, so an interpreter's own pyroute2 always wins. The
    release's etcd3gw (the cnikit-cluster IPAM's client) becomes importable the same way."""
    path = release_dir()
    if not os.path.isdir(os.path.join(path, "pyroute2")):
        return False
    sys.path.append(path)
    try:
        import pyroute2.iproute.linux  # noqa: F401 pylint: disable=unused-import,import-outside-toplevel
    except ImportError:
        sys.path.remove(path)
        return False
    return True


class CNIModule:
    """An AnsibleModule plus the conventions shared by the collection's modules."""

    def __init__(self, argument_spec: dict, needs_netlink: bool = True, **kwargs) -> None:
        kwargs.setdefault("supports_check_mode", True)
        self.module = AnsibleModule(argument_spec=argument_spec, **kwargs)
        self.params = self.module.params
        if needs_netlink:
            self._require_pyroute2()

    def _require_pyroute2(self) -> None:
        try:
            # the engine imports pyroute2 lazily; probe it here so a missing library is one clear message
            import pyroute2.iproute.linux  # noqa: F401 pylint: disable=unused-import
        except ImportError:
            if not use_release_pyroute2():
                self.module.fail_json(
                    msg=missing_required_lib("pyroute2") + f" It is not importable by {sys.executable} and no cnikit "
                    f"release is active at {release_dir()}: run role cnikit.cni.cni_plugins on this node first (it "
                    "brings pyroute2 from the controller), or set CNIKIT_LIB_DIR to its cni_plugins_lib_dir.",
                    exception=traceback.format_exc())

    @property
    def check_mode(self) -> bool:
        return self.module.check_mode

    def run(self, call, *args, **kwargs):
        """Run one engine call; a CNIError (or anything unexpected) becomes a clean failure."""
        try:
            return call(*args, **kwargs)
        except CNIError as err:
            self.module.fail_json(msg=str(err), cni_code=err.code)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self.module.fail_json(msg=f"unexpected error ({type(exc).__name__}): {exc}",
                                  exception=traceback.format_exc())
        return None  # not reached: fail_json exits

    def link_attrs(self, **extra):
        """netstate.LinkAttrs of the interface named by O(name) and the LINK_OPTIONS parameters."""
        from ansible_collections.cnikit.cni.plugins.module_utils.cni.state import netstate  # pylint: disable=import-outside-toplevel

        p = self.params
        return self.run(netstate.LinkAttrs, p["name"], **{k: p[k] for k in LINK_OPTIONS}, **extra)

    def exit(self, changed: bool, before=None, after=None, header=None, **results) -> None:
        """exit_json with `changed` and, in diff mode, the before/after views (of file `header`)."""
        if self.module._diff and (before is not None or after is not None):  # pylint: disable=protected-access
            results["diff"] = {"before": before, "after": after}
            if header:
                results["diff"].update(before_header=header, after_header=header)
        self.module.exit_json(changed=changed, **results)

    def exit_change(self, change, **results) -> None:
        """exit for a netstate.Change; `state` is the after view."""
        self.exit(change.changed, change.before, change.after, state=change.after, **results)
