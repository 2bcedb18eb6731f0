"""The flannel-style overlay pod network: node subnet leases, the vxlan / host-gw datapath and the
node daemon that keeps the datapath equal to the lease set (docs/overlay.md)."""
