#!/usr/bin/python
# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host port -> container port mappings through the engine's portmap plugin."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: portmap
short_description: Forward host ports to a container (the CNI portmap plugin, as a task)
description:
  - Installs or removes the host-port to container-port mappings of one container with the cnikit
    portmap plugin (the same code the C(portmap) CNI executable runs), nftables by default or the
    Go-compatible iptables chains with O(backend=iptables).
  - The mappings belong to (O(network), O(container_id)) as a set. The plugin's CHECK tells whether
    the listed mappings are installed but not whether others are too, so the set last applied is
    recorded in O(state_dir). With O(state=present) nothing changes when CHECK passes and the record
    equals the wanted set; otherwise the recorded set and the wanted one are deleted and the wanted one
    added (so a shorter list removes the mappings it no longer has). With O(state=absent) the set is
    deleted when CHECK finds it installed or a record exists.
version_added: 1.0.0
extends_documentation_fragment:
  - cnikit.cni.common
  - cnikit.cni.common.state
requirements:
  - nft (nftables backend) or iptables-restore (iptables backend) on the target
  - root on the target
options:
  network:
    description: The CNI network name the mappings belong to (it names the chains, as in the plugin).
    type: str
    required: true
  container_id:
    description: The container the mappings belong to.
    type: str
    required: true
  container_ip:
    description: The container's addresses (one IPv4 and/or one IPv6 is used, as the plugin does).
    type: list
    elements: str
    required: true
    aliases: [container_ips]
  mappings:
    description: The port mappings.
    type: list
    elements: dict
    required: true
    suboptions:
      host_port:
        description: Port on the host.
        type: int
        required: true
      container_port:
        description: Port in the container.
        type: int
        required: true
      protocol:
        description: Protocol.
        type: str
        choices: [tcp, udp, sctp]
        default: tcp
      host_ip:
        description: Only forward traffic to this host address.
        type: str
  backend:
    description: Packet-filter backend.
    type: str
    choices: [nftables, iptables]
    default: nftables
  snat:
    description: Masquerade hairpin and localhost traffic to the mapped ports (the plugin's C(snat)).
    type: bool
    default: true
  state_dir:
    description: Where the applied set of each (network, container) is recorded.
    type: path
    default: /var/lib/cni/cnikit/portmap
  ifname:
    description: The container's interface name (only for the plugin's address selection).
    type: str
    default: eth0
  state:
    description: Whether the mappings should be installed.
"""

EXAMPLES = r"""
---
- name: Publish the pod's web server on host port 8080
  cnikit.cni.portmap:
    network: web
    container_id: web1
    container_ip: [10.88.0.5]
    mappings:
      - {host_port: 8080, container_port: 80}

- name: DNS over UDP on one host address only, in the iptables chains Go's portmap uses
  cnikit.cni.portmap:
    network: dns
    container_id: dns1
    container_ip: [10.88.0.6]
    backend: iptables
    mappings:
      - {host_port: 53, container_port: 53, protocol: udp, host_ip: 192.0.2.10}

- name: Withdraw a pod's mappings when it goes (the same keys as when they were published)
  cnikit.cni.portmap:
    network: web
    container_id: "{{ pod_id }}"
    container_ip: "{{ pod_ips }}"
    mappings: "{{ pod_ports }}"
    state: absent
"""

RETURN = r"""
state:
  description: The mappings after the task (predicted in check mode).
  returned: always
  type: dict
  sample: {"network": "web", "container_id": "web1", "state": "present", "backend": "nftables", "snat": true,
           "container_ips": ["10.88.0.5/32"], "mappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
"""

from ansible_collections.cnikit.cni.plugins.module_utils.ansible_cni import CNIModule
from ansible_collections.cnikit.cni.plugins.module_utils.cni.state import netstate


def main() -> None:
    client = CNIModule(
        dict(
            network=dict(type="str", required=True),
            container_id=dict(type="str", required=True),
            container_ip=dict(type="list", elements="str", required=True, aliases=["container_ips"]),
            mappings=dict(type="list", elements="dict", required=True, options=dict(
                host_port=dict(type="int", required=True), container_port=dict(type="int", required=True),
                protocol=dict(type="str", choices=["tcp", "udp", "sctp"], default="tcp"), host_ip=dict(type="str"))),
            backend=dict(type="str", choices=["nftables", "iptables"], default="nftables"),
            snat=dict(type="bool", default=True),
            ifname=dict(type="str", default="eth0"),
            state_dir=dict(type="path", default=netstate.PORTMAP_STATE_DIR),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        needs_netlink=False,
    )
    p = client.params
    # the plugin's runtimeConfig.portMappings shape
    mappings = [{"hostPort": m["host_port"], "containerPort": m["container_port"], "protocol": m["protocol"],
                 **({"hostIP": m["host_ip"]} if m["host_ip"] else {})} for m in p["mappings"]]
    change = client.run(netstate.ensure_portmap, p["network"], p["container_id"], p["container_ip"], mappings,
                        present=p["state"] == "present", backend=p["backend"], snat=p["snat"], ifname=p["ifname"],
                        state_dir=p["state_dir"], check_mode=client.check_mode)
    client.exit_change(change)


if __name__ == "__main__":
    main()
