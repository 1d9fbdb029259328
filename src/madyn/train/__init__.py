"""Training the suites madyn trains itself: the offline corpus (``corpus``), synthetic
corpora (``synthetic``) and the tiny-model trainer (``training``).

Floor 1: may import the foundation (``madyn.io``, ``madyn.settings``, ``madyn.progress``,
``madyn.architecture``, ``madyn.parallel``) and itself; nothing above.
"""
