"""One module per workflow phase: each owns its file I/O and calls the science below it."""
