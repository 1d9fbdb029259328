"""One module per workflow phase (suite, extract, fit, features, predict, report): each
reads its inputs, calls the science modules below it, and writes its outputs atomically
with :mod:`madyn.io`."""
