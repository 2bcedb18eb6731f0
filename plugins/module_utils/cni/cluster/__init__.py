"""Cluster state shared by the nodes: node subnet leases (leases.py: the model and the LeaseSource
interface with its directory source; an etcd source plugs in behind it)."""
