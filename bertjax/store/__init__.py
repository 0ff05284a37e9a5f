"""Where things are kept: all-or-nothing file writes, the workdir lease, and the workdir and checkpoint contract."""
