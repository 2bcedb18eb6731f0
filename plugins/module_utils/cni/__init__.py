"""cnikit CNI engine: the CNI protocol, plugins, IPAM and a libcni-like runtime on pyroute2."""
