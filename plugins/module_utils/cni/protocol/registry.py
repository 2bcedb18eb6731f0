"""Plugin names → implementing classes, imported only when used (VERSION imports nothing)."""
from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple

# type name -> (module relative to the engine package `cni`, class name)
PLUGINS: Dict[str, Tuple[str, str]] = {
    "bridge": ("plugins.main.bridge", "Bridge"),
    "macvlan": ("plugins.main.macvlan", "Macvlan"),
    "ipvlan": ("plugins.main.ipvlan", "Ipvlan"),
    "ptp": ("plugins.main.ptp", "Ptp"),
    "cnikit-routed": ("plugins.main.routed", "Routed"),
    "vlan": ("plugins.main.vlan", "Vlan"),
    "host-device": ("plugins.main.host_device", "HostDevice"),
    "loopback": ("plugins.main.loopback", "Loopback"),
    "dummy": ("plugins.main.dummy", "Dummy"),
    "tap": ("plugins.main.tap", "Tap"),
    "portmap": ("plugins.meta.portmap", "Portmap"),
    "bandwidth": ("plugins.meta.bandwidth", "Bandwidth"),
    "firewall": ("plugins.meta.firewall", "Firewall"),
    "tuning": ("plugins.meta.tuning", "Tuning"),
    "sbr": ("plugins.meta.sbr", "Sbr"),
    "vrf": ("plugins.meta.vrf", "Vrf"),
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
    return getattr(importlib.import_module(".." + module, __package__), cls)
