"""Cluster state shared by the nodes (docs/cluster-state.md): the etcd client, node subnet leases on
etcd (subnets.py), the PKI helper, and the overlay's lease model with its directory source (leases.py:
the LeaseSource interface).

Sits below the IPAM layer (ipam/cluster.py uses it) and above the protocol layer (errors are
CNIError); it never imports the runtime, the node agent or the plugins.
"""
