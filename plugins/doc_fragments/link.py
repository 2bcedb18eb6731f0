# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The options of one network interface, shared by the modules that manage a link (bridge,
macvlan, veth); their argument spec is ansible_cni.LINK_OPTIONS."""

from __future__ import annotations


class ModuleDocFragment:  # pylint: disable=too-few-public-methods
    DOCUMENTATION = r"""
options:
  netns:
    description:
      - Network namespace of the interface (a name under C(/run/netns) or a path; it must exist).
        Omitted - the namespace the module runs in.
    type: str
  mtu:
    description: MTU of the interface.
    type: int
  mac:
    description: MAC address of the interface (unicast).
    type: str
  addresses:
    description:
      - Addresses in CIDR form; exclusive - other addresses on the interface are removed (the kernel's
        IPv6 link-local address is kept). Omitted leaves addresses alone.
    type: list
    elements: str
  routes:
    description: Routes through the interface, added when missing (others are left alone).
    type: list
    elements: dict
    suboptions:
      dst:
        description: Destination network, or V(default).
        type: str
        required: true
      gw:
        description: Gateway.
        type: str
      metric:
        description: Route metric; omitted matches an existing route of any metric.
        type: int
  up:
    description: Whether the interface is up.
    type: bool
    default: true
"""
