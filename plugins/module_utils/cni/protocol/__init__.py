"""The CNI protocol: spec types and errors, the skel (exec protocol), the plugin base and registry."""
