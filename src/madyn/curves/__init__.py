"""The curves of a layer's trajectory: the rival hypotheses (``hypotheses``: the registry;
one module per curve family), fitting them and choosing by AICc (``fit``), and evaluating
fitted parameters as curves (``evaluate``).

Floor 2: may import the foundation and ``madyn.measure``; nothing above.
"""
