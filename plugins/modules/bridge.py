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
extends_documentation_fragment:
  - cnikit.cni.common
  - cnikit.cni.link
options:
  state:
    description: Whether the bridge should exist (deleting it releases its ports).
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

from ansible_collections.cnikit.cni.plugins.module_utils.ansible_cni import LINK_OPTIONS, STATE_OPTION, CNIModule
from ansible_collections.cnikit.cni.plugins.module_utils.cni.state import netstate


def main() -> None:
    client = CNIModule(dict(name=dict(type="str", required=True), state=STATE_OPTION, **LINK_OPTIONS))
    attrs = client.link_attrs()
    if client.params["state"] == "absent":
        client.exit_change(client.run(netstate.remove_link, attrs, check_mode=client.check_mode))
    client.exit_change(client.run(netstate.ensure_bridge, attrs, check_mode=client.check_mode))


if __name__ == "__main__":
    main()
