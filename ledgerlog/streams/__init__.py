"""The runtime: reads the log, decodes, folds projections, commits state + positions together."""
