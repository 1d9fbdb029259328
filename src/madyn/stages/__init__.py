"""One module per analysis stage (fit, features, predict, report): each reads its inputs,
calls the science modules, and writes its outputs atomically with :mod:`madyn.io`."""
