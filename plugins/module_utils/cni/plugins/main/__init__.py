"""Main plugins: each creates or moves the container interface."""
