"""Node plumbing: the cnikit CLI and multi-call entry point, executables installer, exec relay, node agent, leak reclaim."""
