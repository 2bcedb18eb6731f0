"""CNI plugins: main (create the interface) and meta (chained on a prevResult)."""
