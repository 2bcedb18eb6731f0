#!/usr/bin/python
# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Linux bridge with its addresses, like `ip link add NAME type bridge`."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bridge
short_description: Manage a Linux bridge interface
description:
  - Creates a Linux bridge (in the current namespace or in O(netns)) and brings its MTU, MAC,
    addresses, routes and up/down state to what is asked, changing only what differs.
  - Ports are added from the port's side, e.g. O(cnikit.cni.veth#module:bridge).
version_added: 1.0.0
author: cnikit maintainers (@cnikit)
extends_documentation_fragment:
  - cnikit.cni.attributes
requirements:
  - pyroute2 >= 0.9.5
  - root on the target
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  name:
    description: Bridge name (at most 15 characters).
    type: str
    required: true
  netns:
    description: Namespace of the bridge (a name under C(/run/netns) or a path; it must exist).
    type: str
  mtu:
    description: MTU.
    type: int
  mac:
    description: MAC address.
    type: str
  addresses:
    description: Addresses in CIDR form; exclusive (others are removed, the IPv6 link-local kept).
    type: list
    elements: str
  routes:
    description: Routes through the bridge, added when missing.
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
    description: Whether the bridge is up.
    type: bool
    default: true
  state:
    description: Whether the bridge should exist (deleting it releases its ports).
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
---
- name: The seed lab's bridge
  cnikit.cni.bridge:
    name: br01
    addresses: [10.40.80.1/24]
"""

RETURN = r"""
state:
  description: The bridge after the task (predicted in check mode).
  returned: always
  type: dict
  sample: {"name": "br01", "state": "present", "kind": "bridge", "mtu": 1500, "mac": "16:c7:91:fc:d9:d7",
           "up": true, "addresses": ["10.40.80.1/24"]}
"""

from ansible_collections.cnikit.cni.plugins.module_utils.ansible_cni import CNIModule
from ansible_collections.cnikit.cni.plugins.module_utils.cni import netstate


def main() -> None:
    client = CNIModule(dict(
        name=dict(type="str", required=True),
        netns=dict(type="str"),
        mtu=dict(type="int"),
        mac=dict(type="str"),
        addresses=dict(type="list", elements="str"),
        routes=dict(type="list", elements="dict", options=dict(
            dst=dict(type="str", required=True), gw=dict(type="str"), metric=dict(type="int"))),
        up=dict(type="bool", default=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
    ))
    p = client.params
    attrs = client.run(netstate.LinkAttrs, p["name"], netns=p["netns"], mtu=p["mtu"], mac=p["mac"],
                       addresses=p["addresses"], routes=p["routes"], up=p["up"])
    if p["state"] == "absent":
        client.exit_change(client.run(netstate.remove_link, attrs, check_mode=client.check_mode))
    client.exit_change(client.run(netstate.ensure_bridge, attrs, check_mode=client.check_mode))


if __name__ == "__main__":
    main()
