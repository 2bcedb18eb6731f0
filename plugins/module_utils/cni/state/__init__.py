"""Ansible-side state: what the modules read, compare and change (netstate) and the range planner."""
