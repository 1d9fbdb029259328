"""Predicting curves from the design: the (model, layer) feature table (``features``), the
regressors and their evaluation (``regressors``, ``evaluation``), a new architecture's
curves (``prediction``), a run's forecast from its first steps (``forecast``) and the
effects of design interventions (``effects``).

Floor 3: may import the foundation, ``madyn.measure`` and ``madyn.curves``; nothing above.
"""
