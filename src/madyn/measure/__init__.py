"""Measuring checkpoints: loading them safely (``checkpoints``, ``hub``, ``runs``,
``run_checkpoints``, ``released``), what a run was planned as (``run_plan``), the
activation statistics of one forward pass (``statistics``, ``sinks``, ``stats_table``,
``extract``), the per-model series and layer kinds (``series``, ``kinds``) and the live
monitor of a training run (``monitor``, ``monitor_inputs``, ``monitor_figure``,
``monitor_hf``, ``monitor_lightning``); ``gpus`` claims a GPU for a measuring job.

Floor 1: may import the foundation (``madyn.io``, ``madyn.settings``, ``madyn.progress``,
``madyn.architecture``, ``madyn.parallel``) and itself; nothing above.
"""
