"""The Ansible-side client without Ansible running: what AnsiballZ will pack for cni_network."""
from __future__ import annotations

import ast
import os

from ansible_harness import ROOT

from cni.protocol import registry


def test_shipped_plugins_are_exactly_the_registry():
    """The never-executed imports in ansible_cni.py name every built-in plugin module the runtime may
    load by name; a plugin added to the registry but not there would be missing from the AnsiballZ
    payload of cni_network."""
    path = os.path.join(ROOT, "plugins", "module_utils", "ansible_cni.py")
    fn = next(n for n in ast.parse(open(path, encoding="utf-8").read()).body
              if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    shipped = {f"{node.module.split('.module_utils.cni.', 1)[1]}.{alias.name}" for node in ast.walk(fn)
               if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert shipped == {module for module, _cls in registry.PLUGINS.values()}
