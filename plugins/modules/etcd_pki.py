#!/usr/bin/python
# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TLS material for an etcd cluster (run once, on the controller)."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: etcd_pki
short_description: Make the CA, member and client certificates of an etcd cluster
description:
  - Creates, in O(path), a CA (C(ca.crt), C(ca.key)), one certificate per member (C(<name>.crt),
    C(<name>.key); serving and peer use, with the member's addresses, its name, 127.0.0.1 and
    localhost as subject alternative names) and client certificates (C(<name>.crt), client use only).
  - EC P-256 keys, SHA-256, valid 10 years; keys are written mode 0600.
  - An existing file is never rewritten (idempotent; a member keeps its certificate). Delete a
    member's files to re-issue them.
  - Needs the Python C(cryptography) package where it runs (a dependency of ansible-core, so it is
    there on the controller); meant for C(run_once) + C(delegate_to=localhost).
version_added: 1.0.0
extends_documentation_fragment:
  - cnikit.cni.common
attributes:
  diff_mode:
    support: none
options:
  path:
    description: Directory holding the material (created mode 0700).
    type: path
    required: true
  members:
    description: Member name -> list of its addresses (IPs or DNS names).
    type: dict
    required: true
  clients:
    description: Names of the client certificates to make.
    type: list
    elements: str
    default: [client]
"""

EXAMPLES = r"""
---
- name: The etcd PKI
  cnikit.cni.etcd_pki:
    path: /srv/cnikit/etcd-pki
    members:
      etcd-k8s-master: [192.168.80.100]
      etcd-k8s-node01: [192.168.80.101]
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
made:
  description: The names whose certificate (or the CA, V(ca)) was made by this run.
  returned: success
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.cnikit.cni.plugins.module_utils.cni.cluster import pki


def missing(path: str, names: list) -> list:
    return [n for n in names if not (os.path.exists(os.path.join(path, n + ".crt"))
                                     and os.path.exists(os.path.join(path, n + ".key")))]


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            members=dict(type="dict", required=True),
            clients=dict(type="list", elements="str", default=["client"]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    members = {str(k): [str(a) for a in (v if isinstance(v, list) else [v])] for k, v in p["members"].items()}
    names = ["ca"] + list(members) + list(p["clients"])
    if module.check_mode:
        todo = missing(p["path"], names)
        module.exit_json(changed=bool(todo), made=todo)
    try:
        changed, made = pki.ensure_cluster(p["path"], members, p["clients"])
    except ImportError as exc:
        module.fail_json(msg=f"the Python 'cryptography' package is needed where etcd_pki runs: {exc}")
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot make the etcd PKI in {p['path']}: {exc}")
    module.exit_json(changed=changed, made=made)


if __name__ == "__main__":
    main()
