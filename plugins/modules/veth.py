#!/usr/bin/python
# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A veth pair, each end optionally in a network namespace."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: veth
short_description: Manage a veth pair, each end optionally in a network namespace
description:
  - Creates the veth pair O(name) <-> O(peer.name) with each end in its namespace, then brings each
    end's MTU, MAC, addresses, routes and up/down state to what is asked, changing only what differs.
  - A veth named like either end but paired with something else is replaced; another kind of
    interface with one of the names is an error (the module does not delete what is not a veth).
  - O(state=absent) deletes the pair by this end, or by the peer when given and this end is missing
    (deleting one end deletes both).
version_added: 1.0.0
author: cnikit maintainers (@cnikit)
extends_documentation_fragment:
  - cnikit.cni.attributes
  - cnikit.cni.link
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
    description: Name of this end (at most 15 characters).
    type: str
    required: true
  bridge:
    description: Make this end a port of this bridge (in the same namespace; it must exist).
    type: str
  peer:
    description: The other end, with the same properties as this one. Required with O(state=present).
    type: dict
    suboptions:
      name:
        description: Name of the peer end.
        type: str
        required: true
      netns:
        description: Namespace of the peer end.
        type: str
      mtu:
        description: MTU of the peer end.
        type: int
      mac:
        description: MAC address of the peer end.
        type: str
      addresses:
        description: Addresses of the peer end (exclusive).
        type: list
        elements: str
      routes:
        description: Routes through the peer end, added when missing.
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
            description: Route metric.
            type: int
      bridge:
        description: Make the peer end a port of this bridge.
        type: str
      up:
        description: Whether the peer end is up.
        type: bool
        default: true
  state:
    description: Whether the pair should exist.
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
---
- name: ns01 on the lab bridge (the seed's manual lab)
  cnikit.cni.veth:
    name: veth01
    bridge: br01
    peer:
      name: eth0
      netns: ns01
      addresses: [10.40.80.11/24]
      routes:
        - {dst: default, gw: 10.40.80.1}

- name: Remove the pair
  cnikit.cni.veth:
    name: veth01
    state: absent
"""

RETURN = r"""
state:
  description: Both ends after the task (predicted in check mode), as C(end) and C(peer).
  returned: always
  type: dict
  sample: {"end": {"name": "veth01", "state": "present", "kind": "veth", "mtu": 1500, "up": true, "addresses": []},
           "peer": {"name": "eth0", "netns": "ns01", "state": "present", "kind": "veth", "mtu": 1500, "up": true,
                    "addresses": ["10.40.80.11/24"]}}
"""

from ansible_collections.cnikit.cni.plugins.module_utils.ansible_cni import LINK_OPTIONS, STATE_OPTION, CNIModule
from ansible_collections.cnikit.cni.plugins.module_utils.cni.state import netstate

END = dict(bridge=dict(type="str"), **LINK_OPTIONS)


def main() -> None:
    client = CNIModule(
        dict(name=dict(type="str", required=True),
             peer=dict(type="dict", options=dict(name=dict(type="str", required=True), **END)),
             state=STATE_OPTION, **END),
        required_if=[("state", "present", ("peer",))],
    )
    p = client.params
    end = client.link_attrs(bridge=p["bridge"])
    peer = client.run(netstate.LinkAttrs, **p["peer"]) if p["peer"] else None
    if p["state"] == "absent":
        client.exit_change(client.run(netstate.remove_veth, end, peer, check_mode=client.check_mode))
    client.exit_change(client.run(netstate.ensure_veth, end, peer, check_mode=client.check_mode))


if __name__ == "__main__":
    main()
