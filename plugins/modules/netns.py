#!/usr/bin/python
# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named network namespaces, like `ip netns add/del`."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: netns
short_description: Manage named network namespaces (like C(ip netns add))
description:
  - Creates or deletes a named network namespace under C(/run/netns), the way C(ip netns add NAME) and
    C(ip netns del NAME) do, so C(ip netns exec) and every CNI runtime see it.
  - Optionally sets the namespace's loopback interface up (a new namespace has it down).
  - A file left under C(/run/netns) by a failed create (not a mounted namespace) is replaced on
    O(state=present) and removed on O(state=absent).
version_added: 1.0.0
extends_documentation_fragment:
  - cnikit.cni.common
  - cnikit.cni.common.netlink
  - cnikit.cni.common.state
options:
  name:
    description: Name of the namespace, a plain file name (no C(/)).
    type: str
    required: true
  state:
    description: Whether the namespace should exist.
  loopback_up:
    description:
      - V(true) sets C(lo) up, V(false) sets it down.
      - Only used with O(state=present).
    type: bool
    default: true
notes:
  - Deleting a namespace only unmounts its name; processes still inside keep it alive.
"""

EXAMPLES = r"""
---
- name: A pod namespace with loopback up
  cnikit.cni.netns:
    name: ns01

- name: Remove it
  cnikit.cni.netns:
    name: ns01
    state: absent
"""

RETURN = r"""
state:
  description: The namespace after the task (predicted in check mode).
  returned: always
  type: dict
  sample: {"name": "ns01", "state": "present", "path": "/run/netns/ns01", "loopback": "up"}
path:
  description: Path of the namespace, to pass as C(netns) to other modules or as C(CNI_NETNS).
  returned: always
  type: str
  sample: /run/netns/ns01
"""

from ansible_collections.cnikit.cni.plugins.module_utils.ansible_cni import CNIModule
from ansible_collections.cnikit.cni.plugins.module_utils.cni.state import netstate


def main() -> None:
    client = CNIModule(dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        loopback_up=dict(type="bool", default=True),
    ))
    p = client.params
    change = client.run(netstate.ensure_netns, p["name"], present=p["state"] == "present",
                        loopback_up=p["loopback_up"], check_mode=client.check_mode)
    client.exit_change(change, path=netstate.netns_path(p["name"]))


if __name__ == "__main__":
    main()
