#!/usr/bin/python
# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan the overlay's per-node subnets of the cluster CIDR (run once, on the controller)."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: cni_subnets
short_description: Plan per-node pod subnets of a cluster CIDR (flannel-style leases) from the inventory
description:
  - Cuts O(cluster_cidr) into subnets of O(subnet_len) and gives each node one, in the order of O(nodes),
    starting at O(subnet_min) (default the second subnet, as flannel does).
  - A node keeps its override, else the subnet persisted on it by an earlier run (O(persisted)), so subnets
    are stable when nodes join or leave; every other node gets the lowest free subnet.
  - Fails, changing nothing, on any conflict - overlapping subnets, a subnet outside the cluster CIDR or of
    another size, an exhausted CIDR, two nodes with one IP, a node IP inside the cluster CIDR, and for
    O(backend=host-gw) a node whose IP is not on O(uplink_cidr) (host-gw needs one L2 segment).
  - Returns each node's lease as flannel writes it (key C(<ip>-<len>), document with C(PublicIP),
    C(BackendType), C(BackendData)) and the text of the file each node keeps.
  - Pure computation; meant to run once on the controller before any node is changed.
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
  node_ips:
    description: Per node, its IP on the underlay (the VXLAN endpoint, the host-gw next hop).
    type: dict
    required: true
  network:
    description: Network name the subnets belong to (persisted files for another network are ignored).
    type: str
    required: true
  cluster_cidr:
    description: The cluster's pod network.
    type: str
    default: 10.244.0.0/16
  subnet_len:
    description: Prefix length of each node's subnet.
    type: int
    default: 24
  subnet_min:
    description: First subnet handed out (default the cluster CIDR's second subnet).
    type: str
  subnet_max:
    description: Last subnet handed out (default the last one).
    type: str
  backend:
    description: The backend named in the leases.
    type: str
    choices: [vxlan, host-gw, udp]
    default: vxlan
  vni:
    description: VXLAN network identifier.
    type: int
    default: 1
  uplink_cidr:
    description: With O(backend=host-gw), the one L2 segment every node IP must be on.
    type: str
  overrides:
    description: Explicit subnets per node (e.g. V(10.244.9.0/24)).
    type: dict
    default: {}
  persisted:
    description: Per node, the text of the allocation file read back from it (empty when it has none).
    type: dict
    default: {}
"""

EXAMPLES = r"""
---
- name: Plan the node subnets
  cnikit.cni.cni_subnets:
    nodes: "{{ groups['kube_control_plane'] + groups['kube_node'] }}"
    node_ips: {k8s-master: 192.168.80.100, k8s-node01: 192.168.80.101}
    network: overlay
  run_once: true
  delegate_to: localhost
  register: plan
"""

RETURN = r"""
leases:
  description: Per node, its lease - C(key), C(subnet), C(gateway) (the .1 on cni0), C(vtep_mac), C(text) (the lease file).
  returned: success
  type: dict
  sample: {"k8s-master": {"key": "10.244.1.0-24", "subnet": "10.244.1.0/24", "gateway": "10.244.1.1",
                          "vtep_mac": "0e:c1:0a:f4:01:00", "public_ip": "192.168.80.100", "text": "{...}"}}
persist:
  description: Per node, the text of the allocation file to keep on it.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.cnikit.cni.plugins.module_utils.cni.state import subnets


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            nodes=dict(type="list", elements="str", required=True),
            node_ips=dict(type="dict", required=True),
            network=dict(type="str", required=True),
            cluster_cidr=dict(type="str", default="10.244.0.0/16"),
            subnet_len=dict(type="int", default=24),
            subnet_min=dict(type="str"),
            subnet_max=dict(type="str"),
            backend=dict(type="str", choices=["vxlan", "host-gw", "udp"], default="vxlan"),
            vni=dict(type="int", default=1),
            uplink_cidr=dict(type="str"),
            overrides=dict(type="dict", default={}),
            persisted=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        persisted = {node: subnets.persisted_subnet(text or "", p["network"], p["cluster_cidr"], p["subnet_len"])
                     for node, text in p["persisted"].items()}
        plan = subnets.plan(p["nodes"], p["node_ips"], p["cluster_cidr"], p["subnet_len"], p["subnet_min"],
                            p["subnet_max"], p["backend"], p["vni"], overrides=p["overrides"], persisted=persisted,
                            uplink_cidr=p["uplink_cidr"])
    except subnets.PlanError as exc:
        module.fail_json(msg=f"node subnet plan for network {p['network']!r} rejected, no node changed: {exc}")
    module.exit_json(
        changed=False,
        leases={node: {"key": l.key, "subnet": str(l.subnet), "gateway": str(l.gateway), "vtep_mac": l.vtep_mac,
                       "public_ip": str(l.public_ip), "text": l.text()} for node, l in plan.items()},
        persist={node: subnets.dump_persisted(p["network"], p["cluster_cidr"], node, l) for node, l in plan.items()},
    )


if __name__ == "__main__":
    main()
