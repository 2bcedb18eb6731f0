# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the cnikit.cni modules share, so each module's DOCUMENTATION states only what is its own:
the author and action attributes of every module (DOCUMENTATION), the requirements of those that
talk netlink on the target (NETLINK: ansible_cni.CNIModule with needs_netlink), and the
present/absent state option (STATE: ansible_cni.STATE_OPTION), whose description a module
overrides to say what "it" is."""

from __future__ import annotations


class ModuleDocFragment:  # pylint: disable=too-few-public-methods
    DOCUMENTATION = r"""
author: cnikit maintainers (@cnikit)
options: {}
attributes:
  check_mode:
    description: Can run in check mode and predict exactly whether it would change something, changing nothing.
    support: full
  diff_mode:
    description: Returns the state before and after (or as it would be after, in check mode) when in diff mode.
    support: full
"""

    NETLINK = r"""
options: {}
requirements:
  - pyroute2 >= 0.9.5
  - root on the target
"""

    STATE = r"""
options:
  state:
    description: Whether it should exist.
    type: str
    choices: [present, absent]
    default: present
"""
