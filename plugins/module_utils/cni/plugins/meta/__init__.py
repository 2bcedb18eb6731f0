"""Meta plugins: chained after a main plugin, they act on its prevResult."""
