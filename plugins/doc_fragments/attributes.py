# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The descriptions of the action attributes every cnikit.cni module declares (support per module)."""

from __future__ import annotations


class ModuleDocFragment:  # pylint: disable=too-few-public-methods
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and predict exactly whether it would change something, changing nothing.
  diff_mode:
    description: Returns the state before and after (or as it would be after, in check mode) when in diff mode.
"""
