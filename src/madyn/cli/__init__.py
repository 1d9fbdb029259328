"""The ``madyn`` command line (entry point :func:`madyn.cli.main.main`): the commands a user
runs, one module per group (``run``, ``measure``, ``fit``, ``predict``, ``compare``), and
the workflow's own steps under ``madyn step`` (``steps_*``), which Snakemake calls. Each
command parses its options and calls a stage (``madyn.stages``) or the workflow plumbing
(``madyn.workflow``); no logic lives here.

Floor 7 (the top): may import every floor below.
"""
