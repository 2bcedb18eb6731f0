"""Cluster state on etcd (docs/cluster-state.md): the client, node subnet leases, the PKI helper.

Sits below the IPAM layer (ipam/cluster.py uses it) and above the protocol layer (errors are
CNIError); it never imports the runtime, the node agent or the plugins.
"""
