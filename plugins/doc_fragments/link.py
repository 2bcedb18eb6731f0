# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the modules that manage one network interface (bridge, macvlan, veth) share: netlink's
requirements, the interface's name and state, and its options (ansible_cni.LINK_OPTIONS; the
name and the link options are what CNIModule.link_attrs reads). A module overrides a description
where it has more to say. PEER is the veth's other end: the same options one level down, as
suboptions of O(peer), plus its name and bridge."""

from __future__ import annotations

import textwrap


class ModuleDocFragment:  # pylint: disable=too-few-public-methods
    DOCUMENTATION = r"""
requirements:
  - pyroute2 >= 0.9.5
  - root on the target
options:
  name:
    description: Name of the interface (at most 15 characters).
    type: str
    required: true
  state:
    description: Whether the interface should exist.
    type: str
    choices: [present, absent]
    default: present
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


_PEER_OWN = r"""
      name:
        description: Name of the peer end (at most 15 characters).
        type: str
        required: true
      bridge:
        description: Make the peer end a port of this bridge (in the peer's namespace; it must exist).
        type: str
"""


def _peer(link: str) -> str:
    """The link options (all but name and state) moved under O(peer)'s suboptions; the veth module
    gives O(peer) its description."""
    options = link[link.index("\n  netns:\n") + 1:]
    return "\noptions:\n  peer:\n    suboptions:" + _PEER_OWN + textwrap.indent(options, "    ")


# Built from DOCUMENTATION so the two cannot drift apart; assigned outside the class body because
# ansible-test's yamllint reads every assignment in a doc fragment's class as a string literal.
ModuleDocFragment.PEER = _peer(ModuleDocFragment.DOCUMENTATION)  # type: ignore[attr-defined]
