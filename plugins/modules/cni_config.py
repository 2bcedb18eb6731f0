#!/usr/bin/python
# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render, validate and write a CNI network configuration file."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cni_config
short_description: Render, validate and write a CNI network configuration (conf or conflist)
description:
  - Renders O(config) as JSON, validates it with the cnikit engine - parsed the way libcni loads a
    list, each plugin config the way a plugin reads it, every plugin type built in or found on
    O(cni_path) and speaking the list's C(cniVersion) - and only then writes it atomically into
    O(conf_dir). A config that fails validation fails the task before anything is written.
  - The file is rewritten only when its content or mode differs; diff mode shows the text change.
  - Warns when another file in O(conf_dir) that libcni reads first defines the same network name
    (that file would win).
version_added: 1.0.0
extends_documentation_fragment:
  - cnikit.cni.common
  - cnikit.cni.common.state
options:
  name:
    description: The network name; put into O(config) when it has none, and it must match when it has one.
    type: str
    required: true
  config:
    description:
      - The configuration - a list with C(plugins), or a single plugin config (written as a C(.conf)).
      - Required with O(state=present).
    type: dict
  filename:
    description: File name in O(conf_dir); defaults to C(<priority>-<name>.conflist) (C(.conf) for a single plugin).
    type: str
  priority:
    description: Two-digit prefix of the default file name, which orders the files as libcni reads them.
    type: int
    default: 10
  conf_dir:
    description: The CNI configuration directory.
    type: path
    default: /etc/cni/net.d
  mode:
    description: File mode (0600 - CIS Kubernetes benchmark 1.1.9/1.1.10 for CNI files).
    type: raw
    default: '0600'
  validate_plugins:
    description: Also require every plugin type to be built in or found on O(cni_path), speaking the config's version.
    type: bool
    default: true
  cni_path:
    description: Directories searched for plugin executables when validating.
    type: list
    elements: path
    default: [/opt/cni/bin]
  state:
    description: Whether the file should exist.
"""

EXAMPLES = r"""
---
- name: The node's macvlan network (the seed's layout)
  cnikit.cni.cni_config:
    name: macvlannet
    config:
      cniVersion: 0.3.1
      plugins:
        - type: macvlan
          master: ens33
          mode: bridge
          ipam:
            type: host-local
            ranges:
              - - subnet: 192.168.80.0/24
                  rangeStart: 192.168.80.120
                  rangeEnd: 192.168.80.129
                  gateway: 192.168.80.2
            routes:
              - dst: 0.0.0.0/0

- name: Remove it
  cnikit.cni.cni_config:
    name: macvlannet
    state: absent
"""

RETURN = r"""
path:
  description: The configuration file.
  returned: always
  type: str
  sample: /etc/cni/net.d/10-macvlannet.conflist
content:
  description: The rendered file (empty when absent).
  returned: always
  type: str
"""

from ansible_collections.cnikit.cni.plugins.module_utils.ansible_cni import CNIModule
from ansible_collections.cnikit.cni.plugins.module_utils.cni import runtime
from ansible_collections.cnikit.cni.plugins.module_utils.cni.state import netstate


def main() -> None:
    client = CNIModule(
        dict(
            name=dict(type="str", required=True),
            config=dict(type="dict"),
            filename=dict(type="str"),
            priority=dict(type="int", default=10),
            conf_dir=dict(type="path", default=runtime.DEFAULT_CONF_DIR),
            mode=dict(type="raw", default="0600"),
            validate_plugins=dict(type="bool", default=True),
            cni_path=dict(type="list", elements="path", default=[runtime.DEFAULT_CNI_PATH]),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        needs_netlink=False,
        required_if=[("state", "present", ("config",))],
    )
    p = client.params
    present = p["state"] == "present"
    mode = client.run(netstate.file_mode, p["mode"])
    text = client.run(netstate.render_config, p["name"], p["config"], p["cni_path"], p["validate_plugins"]) \
        if present else None
    filename = client.run(netstate.config_filename, p["name"], p["config"], p["priority"], p["filename"])
    path = f"{p['conf_dir'].rstrip('/')}/{filename}"
    change = client.run(netstate.ensure_config_file, path, text, mode, check_mode=client.check_mode)
    winner = next((f for n, f in runtime.list_networks(p["conf_dir"]) if n == p["name"]), path)
    if present and winner != path:
        client.module.warn(f"{winner} defines network {p['name']!r} too and libcni reads it first: it wins over {path}")
    client.exit(change.changed, change.before["content"], change.after["content"], header=path,
                path=path, content=change.after["content"])


if __name__ == "__main__":
    main()
