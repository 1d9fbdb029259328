"""Figures and the headline: the figure helper (``figures``), one ``plots_*`` module per
phase, and the few numbers DVC compares (``headline``).

Floor 4: may import the foundation, ``madyn.measure``, ``madyn.curves`` and
``madyn.predict``; nothing above.
"""
