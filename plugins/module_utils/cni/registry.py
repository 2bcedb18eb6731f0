"""Plugin names → implementing classes, imported only when used (VERSION imports nothing)."""
from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple

# type name -> (module relative to this package, class name)
PLUGINS: Dict[str, Tuple[str, str]] = {
    "bridge": ("plugins.bridge", "Bridge"),
    "macvlan": ("plugins.macvlan", "Macvlan"),
    "ipvlan": ("plugins.ipvlan", "Ipvlan"),
    "ptp": ("plugins.ptp", "Ptp"),
    "vlan": ("plugins.vlan", "Vlan"),
    "host-device": ("plugins.host_device", "HostDevice"),
    "loopback": ("plugins.loopback", "Loopback"),
    "dummy": ("plugins.dummy", "Dummy"),
    "tap": ("plugins.tap", "Tap"),
    "portmap": ("plugins.portmap", "Portmap"),
    "bandwidth": ("plugins.bandwidth", "Bandwidth"),
    "firewall": ("plugins.firewall", "Firewall"),
    "tuning": ("plugins.tuning", "Tuning"),
    "sbr": ("plugins.sbr", "Sbr"),
    "host-local": ("ipam.host_local", "HostLocal"),
    "static": ("ipam.static", "Static"),
    "dhcp": ("ipam.dhcp", "Dhcp"),
    "cnikit-cluster": ("ipam.cluster", "ClusterIpam"),
}


def is_builtin(name: str) -> bool:
    return name in PLUGINS


def load(name: str) -> Any:
    """The plugin class for a type name; KeyError if it is not one of ours."""
    module, cls = PLUGINS[name]
    return getattr(importlib.import_module("." + module, __package__), cls)
