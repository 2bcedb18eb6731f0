#!/usr/bin/python
# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A macvlan link on a master interface, in the host or in a network namespace."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: macvlan
short_description: Manage a macvlan interface on a master (also the host-side C(macv-host) shim)
description:
  - Creates a macvlan link on O(master) (an interface of the namespace the module runs in), either
    there or directly inside the network namespace O(netns), then brings its MTU, MAC, addresses,
    routes and up/down state to what is asked - changing only what differs.
  - The mode changes in place; a macvlan on another master, or one moving into or out of
    V(passthru), is deleted and created again.
  - A host-side macvlan in V(bridge) mode carrying the node's address - the C(macv-host) shim - lets
    a node reach its own macvlan pods, which a master interface cannot do by itself.
version_added: 1.0.0
extends_documentation_fragment:
  - cnikit.cni.common
  - cnikit.cni.link
options:
  master:
    description: The parent interface, in the namespace the module runs in. Required with O(state=present).
    type: str
  mode:
    description: The macvlan mode.
    type: str
    choices: [bridge, private, vepa, passthru, source]
    default: bridge
"""

EXAMPLES = r"""
---
- name: The macv-host shim, so the node reaches its own macvlan pods
  cnikit.cni.macvlan:
    name: macv-host
    master: ens33
    mode: bridge
    addresses: [192.168.80.151/32]
    routes:
      - dst: 192.168.80.120/29

- name: A macvlan inside a pod namespace
  cnikit.cni.macvlan:
    name: eth0
    master: ens33
    mode: vepa
    netns: pod1
    addresses: [192.168.80.121/24]
    routes:
      - {dst: default, gw: 192.168.80.2}

- name: Remove it
  cnikit.cni.macvlan:
    name: eth0
    netns: pod1
    state: absent
"""

RETURN = r"""
state:
  description: The interface after the task (predicted in check mode).
  returned: always
  type: dict
  sample: {"name": "macv-host", "state": "present", "kind": "macvlan", "mode": "bridge", "master": "ens33",
           "mtu": 1500, "mac": "6e:4a:10:33:9f:02", "up": true, "addresses": ["192.168.80.151/32"],
           "routes": [{"dst": "192.168.80.120/29"}]}
"""

from ansible_collections.cnikit.cni.plugins.module_utils.ansible_cni import LINK_OPTIONS, STATE_OPTION, CNIModule
from ansible_collections.cnikit.cni.plugins.module_utils.cni.state import netstate


def main() -> None:
    client = CNIModule(
        dict(name=dict(type="str", required=True), master=dict(type="str"),
             mode=dict(type="str", choices=list(netstate.MACVLAN_MODES), default="bridge"),
             state=STATE_OPTION, **LINK_OPTIONS),
        required_if=[("state", "present", ("master",))],
    )
    p = client.params
    attrs = client.link_attrs(mode=p["mode"])
    if p["state"] == "absent":
        client.exit_change(client.run(netstate.remove_link, attrs, check_mode=client.check_mode))
    client.exit_change(client.run(netstate.ensure_macvlan, attrs, p["master"], check_mode=client.check_mode))


if __name__ == "__main__":
    main()
