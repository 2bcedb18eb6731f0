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
extends_documentation_fragment:
  - cnikit.cni.common
  - cnikit.cni.link
  - cnikit.cni.link.peer
options:
  name:
    description: Name of this end (at most 15 characters).
  bridge:
    description: Make this end a port of this bridge (in the same namespace; it must exist).
    type: str
  peer:
    description:
      - The other end, with the same options as this one (the peer's C(name) is required).
      - Required with O(state=present).
    type: dict
  state:
    description: Whether the pair should exist.
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
