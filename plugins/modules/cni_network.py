#!/usr/bin/python
# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attach a container network namespace to a CNI network (like cnitool), idempotently."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cni_network
short_description: Attach a network namespace to a CNI network (ADD/CHECK/DEL/GC, like cnitool)
description:
  - Runs a CNI network configuration list - by name from a config directory, or given inline - against
    a container's network namespace through the cnikit runtime (a libcni-compatible chain runner with
    capability args, result cache in libcni's format, in-process built-in plugins, foreign plugins
    exec'd from O(cni_path)).
  - O(state=present) runs ADD, unless a cached result for (network, O(container_id), O(ifname)) exists
    and CHECK still passes - then nothing changes. An attachment that fails CHECK is deleted and added
    again, and RV(reattached) says why. Configs older than 0.4.0 have no CHECK; their cached result is
    trusted.
  - O(state=absent) runs DEL when a cached result exists; with no cached result nothing is known to
    be attached and nothing is done.
  - O(state=checked) runs CHECK only and fails when the attachment does not hold.
  - O(state=gc) runs the spec's GC - every cached attachment of the network not in
    O(valid_attachments) is deleted, then each plugin gets GC (cniVersion 1.1.0 and later) with
    O(valid_attachments) as an explicit list, and frees what the network holds for any attachment
    not in it - also what another runtime attached to the same network name and data directory.
    Only one runtime may GC a network; see docs/runtime.md (the multi-runtime hazard).
version_added: 1.0.0
extends_documentation_fragment:
  - cnikit.cni.common
  - cnikit.cni.common.netlink
attributes:
  check_mode:
    details: CHECK (read-only) runs in check mode, so the prediction of C(changed) is exact.
options:
  name:
    description: Name of a network to load from O(conf_dir) (first C(.conflist), then C(.conf)/C(.json), as libcni).
    type: str
  config:
    description: An inline network configuration list (or a single plugin config, wrapped into a list).
    type: dict
  state:
    description: What to do with the attachment.
    type: str
    choices: [present, absent, checked, gc]
    default: present
  container_id:
    description: The container ID (C(CNI_CONTAINERID)). Required unless O(state=gc).
    type: str
  netns:
    description:
      - The container's network namespace (C(CNI_NETNS)), a name under C(/run/netns) or an absolute path.
      - Required for O(state=present) and O(state=checked); it must exist.
    type: str
  ifname:
    description: Interface name inside the container (C(CNI_IFNAME)).
    type: str
    default: eth0
  args:
    description: C(CNI_ARGS) key/value pairs, e.g. C(IgnoreUnknown=1).
    type: dict
    default: {}
  capability_args:
    description:
      - Capability arguments (C(portMappings), C(mac), C(ips), C(bandwidth), ...) injected as
        C(runtimeConfig) into the plugins that declare the capability.
      - Omitted on DEL/CHECK, the ones cached by ADD are used.
    type: dict
  valid_attachments:
    description:
      - For O(state=gc), the attachments to keep, as dicts with C(container_id) and C(ifname).
      - Always sent as an explicit list; the default V([]) means nothing is valid.
    type: list
    elements: dict
    default: []
  conf_dir:
    description: Directory with network configurations.
    type: path
    default: /etc/cni/net.d
  cni_path:
    description: Directories searched for plugin executables; built-in plugins missing there run in-process.
    type: list
    elements: path
    default: [/opt/cni/bin]
  cache_dir:
    description: The runtime's cache directory (libcni's C(/var/lib/cni); results go in C(results/)).
    type: path
    default: /var/lib/cni
notes:
  - Exactly one of O(name) and O(config) is required.
"""

EXAMPLES = r"""
---
- name: Attach pod netns ns01 to the rendered macvlan network
  cnikit.cni.cni_network:
    name: macvlannet
    container_id: pod-ns01
    netns: ns01
  register: attach

- name: An inline bridge network with a port mapping
  cnikit.cni.cni_network:
    config:
      cniVersion: 1.0.0
      name: web
      plugins:
        - type: bridge
          bridge: cni0
          isGateway: true
          ipMasq: true
          ipam: {type: host-local, subnet: 10.88.0.0/16}
        - type: portmap
          capabilities: {portMappings: true}
    container_id: web1
    netns: /run/netns/web1
    capability_args:
      portMappings: [{hostPort: 8080, containerPort: 80, protocol: tcp}]

- name: Detach
  cnikit.cni.cni_network:
    name: macvlannet
    container_id: pod-ns01
    state: absent

- name: Collect everything of the network but one attachment
  cnikit.cni.cni_network:
    name: macvlannet
    state: gc
    valid_attachments:
      - {container_id: pod-ns01, ifname: eth0}
"""

RETURN = r"""
result:
  description: The CNI result of the attachment (as the config's cniVersion shapes it); absent when detached.
  returned: when attached
  type: dict
  sample: {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mac": "1e:2b:6d:0c:d6:a1", "sandbox": "/run/netns/ns01"}],
           "ips": [{"interface": 0, "address": "192.168.80.120/24", "gateway": "192.168.80.2"}], "dns": {}}
state:
  description: The attachment after the task (predicted in check mode), or for O(state=gc) the network's cached attachments.
  returned: always
  type: dict
  sample: {"network": "macvlannet", "container_id": "pod-ns01", "ifname": "eth0", "state": "attached"}
reattached:
  description: Why an existing attachment was deleted and added again (its CHECK error).
  returned: when a cached attachment failed CHECK
  type: str
"""

from ansible_collections.cnikit.cni.plugins.module_utils.ansible_cni import CNIModule
from ansible_collections.cnikit.cni.plugins.module_utils.cni import runtime
from ansible_collections.cnikit.cni.plugins.module_utils.cni.state import netstate


def main() -> None:
    client = CNIModule(
        dict(
            name=dict(type="str"),
            config=dict(type="dict"),
            state=dict(type="str", choices=["present", "absent", "checked", "gc"], default="present"),
            container_id=dict(type="str"),
            netns=dict(type="str"),
            ifname=dict(type="str", default="eth0"),
            args=dict(type="dict", default={}),
            capability_args=dict(type="dict"),
            valid_attachments=dict(type="list", elements="dict", default=[]),
            conf_dir=dict(type="path", default=runtime.DEFAULT_CONF_DIR),
            cni_path=dict(type="list", elements="path", default=[runtime.DEFAULT_CNI_PATH]),
            cache_dir=dict(type="path", default=runtime.DEFAULT_CACHE_DIR),
        ),
        required_one_of=[("name", "config")],
        mutually_exclusive=[("name", "config")],
        required_if=[("state", "present", ("container_id", "netns")), ("state", "checked", ("container_id", "netns")),
                     ("state", "absent", ("container_id",))],
    )
    p = client.params
    rtm = runtime.Runtime(conf_dir=p["conf_dir"], cni_path=p["cni_path"], cache_dir=p["cache_dir"])
    net = client.run(lambda: rtm.network_from_dict(p["config"]) if p["config"] else rtm.load_network(p["name"]))
    if p["state"] == "gc":
        valid = [{"containerID": str(a.get("container_id", "")), "ifname": str(a.get("ifname", "eth0"))}
                 for a in p["valid_attachments"]]
        client.exit_change(client.run(netstate.gc_network, rtm, net, valid, check_mode=client.check_mode))
    rt = client.run(lambda: runtime.RuntimeConf(
        container_id=p["container_id"], netns=netstate.netns_path(p["netns"]) if p["netns"] else "",
        ifname=p["ifname"], args=[(str(k), str(v)) for k, v in p["args"].items()],
        capability_args=p["capability_args"]))
    change, extra = client.run(netstate.ensure_attachment, rtm, net, rt, p["state"], check_mode=client.check_mode)
    if change.after.get("result") is not None:
        extra["result"] = change.after["result"]
    client.exit_change(change, **extra)


if __name__ == "__main__":
    main()
