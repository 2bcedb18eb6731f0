#!/usr/bin/python
# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan disjoint per-node host-local ranges from one pool (run once, on the controller)."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: cni_ranges
short_description: Plan disjoint per-node host-local ranges from one address pool
description:
  - Cuts one address pool into equal slots and gives each node one slot, in the order of O(nodes)
    (the C(cnikit.cni.cni_macvlan) role passes control-plane nodes first, then workers, in inventory order).
  - A node keeps its explicit override, else the range persisted on it by an earlier run (O(persisted)),
    so ranges are stable when nodes join or leave; every other node gets the lowest free slot.
  - Fails, changing nothing, on any conflict - overlapping ranges, a range outside the subnet,
    the gateway or a reserved address inside a range, or an exhausted pool.
  - Pure computation; meant to run once on the controller (C(run_once), C(delegate_to=localhost))
    before any node is changed.
version_added: 1.0.0
extends_documentation_fragment:
  - cnikit.cni.common
attributes:
  diff_mode:
    support: none
options:
  nodes:
    description: Node names in planning order.
    type: list
    elements: str
    required: true
  network:
    description: CNI network name the ranges belong to (persisted files for another network are ignored).
    type: str
    required: true
  subnet:
    description: The subnet every range must lie in, e.g. V(192.168.80.0/24).
    type: str
    required: true
  pool_start:
    description: First address of the pool (the first slot starts here).
    type: str
    required: true
  pool_end:
    description: Last address of the pool; defaults to the subnet's last usable address.
    type: str
  size:
    description: Addresses per node.
    type: int
    required: true
  gateway:
    description: The pods' gateway; it must not lie inside any range.
    type: str
  reserved:
    description: Other addresses (label -> address, e.g. shim addresses) that must not lie inside any range.
    type: dict
    default: {}
  shim_addresses:
    description:
      - Per node, the address of its C(macv-host) shim (with or without a prefix length; empty for none).
      - Each must lie outside every range, like O(reserved).
    type: dict
    default: {}
  overrides:
    description: Explicit ranges per node, V(START-END) or a dict with C(rangeStart)/C(rangeEnd).
    type: dict
    default: {}
  persisted:
    description: Per node, the text of the allocation file read back from it (empty when it has none).
    type: dict
    default: {}
"""

EXAMPLES = r"""
---
- name: Plan the pod ranges
  cnikit.cni.cni_ranges:
    nodes: "{{ groups['kube_control_plane'] + groups['kube_node'] }}"
    network: macvlannet
    subnet: 192.168.80.0/24
    pool_start: 192.168.80.120
    size: 10
    gateway: 192.168.80.2
  run_once: true
  delegate_to: localhost
  register: plan
"""

RETURN = r"""
ranges:
  description:
    - Per node, its range, where it came from (V(override), V(persisted) or V(computed)),
      the range as the fewest CIDRs (C(cidrs)) and as routes (C(routes), what the shim routes).
  returned: success
  type: dict
  sample: {"k8s-master": {"rangeStart": "192.168.80.120", "rangeEnd": "192.168.80.129", "source": "computed",
                          "cidrs": ["192.168.80.120/29", "192.168.80.128/31"]}}
persist:
  description: Per node, the text of the allocation file to keep on it.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.cnikit.cni.plugins.module_utils.cni.state import ranges as planner


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            nodes=dict(type="list", elements="str", required=True),
            network=dict(type="str", required=True),
            subnet=dict(type="str", required=True),
            pool_start=dict(type="str", required=True),
            pool_end=dict(type="str"),
            size=dict(type="int", required=True),
            gateway=dict(type="str"),
            reserved=dict(type="dict", default={}),
            shim_addresses=dict(type="dict", default={}),
            overrides=dict(type="dict", default={}),
            persisted=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    p = module.params
    persisted = {
        node: planner.load_persisted(text or "", p["network"], p["subnet"]) for node, text in p["persisted"].items()
    }
    reserved = dict(p["reserved"])
    for node, addr in p["shim_addresses"].items():
        if addr:
            reserved[f"macv-host address of {node}"] = str(addr).split("/", 1)[0]
    try:
        plan = planner.plan(
            p["nodes"], p["subnet"], p["pool_start"], p["size"], pool_end=p["pool_end"], gateway=p["gateway"],
            reserved=reserved, overrides=p["overrides"], persisted=persisted,
        )
    except planner.PlanError as exc:
        module.fail_json(msg=f"pod range plan for network {p['network']!r} rejected, no node changed: {exc}")
    module.exit_json(
        changed=False,
        ranges={node: dict(rng.to_dict(), routes=[{"dst": c} for c in rng.cidrs()]) for node, rng in plan.items()},
        persist={node: planner.dump_persisted(p["network"], p["subnet"], rng) for node, rng in plan.items()},
    )


if __name__ == "__main__":
    main()
