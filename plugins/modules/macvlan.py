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
    description: Interface name (at most 15 characters).
    type: str
    required: true
  master:
    description: The parent interface, in the namespace the module runs in. Required with O(state=present).
    type: str
  mode:
    description: The macvlan mode.
    type: str
    choices: [bridge, private, vepa, passthru, source]
    default: bridge
  netns:
    description: Create the interface in this network namespace (a name under C(/run/netns) or a path); it must exist.
    type: str
  mtu:
    description: MTU; it cannot exceed the master's.
    type: int
  mac:
    description: MAC address (unicast).
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
  state:
    description: Whether the interface should exist.
    type: str
    choices: [present, absent]
    default: present
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

from ansible_collections.cnikit.cni.plugins.module_utils.ansible_cni import CNIModule
from ansible_collections.cnikit.cni.plugins.module_utils.cni import netstate


def main() -> None:
    client = CNIModule(
        dict(
            name=dict(type="str", required=True),
            master=dict(type="str"),
            mode=dict(type="str", choices=list(netstate.MACVLAN_MODES), default="bridge"),
            netns=dict(type="str"),
            mtu=dict(type="int"),
            mac=dict(type="str"),
            addresses=dict(type="list", elements="str"),
            routes=dict(type="list", elements="dict", options=dict(
                dst=dict(type="str", required=True), gw=dict(type="str"), metric=dict(type="int"))),
            up=dict(type="bool", default=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        required_if=[("state", "present", ("master",))],
    )
    p = client.params
    attrs = client.run(netstate.LinkAttrs, p["name"], netns=p["netns"], mtu=p["mtu"], mac=p["mac"],
                       addresses=p["addresses"], routes=p["routes"], up=p["up"], mode=p["mode"])
    if p["state"] == "absent":
        client.exit_change(client.run(netstate.remove_link, attrs, check_mode=client.check_mode))
    client.exit_change(client.run(netstate.ensure_macvlan, attrs, p["master"], check_mode=client.check_mode))


if __name__ == "__main__":
    main()
