"""The workflow's plumbing: params.yaml read and validated (``params_file``; its schema's
refusals worded: ``schema_errors``), the plain values read from it (``params_values``), the
DVC stages' outs and code dependencies (``dvc_stages``), job resources (``resources``),
released-layout references (``reference``), scratch copies of the project
(``scratch_project``) and the main job, ``madyn run`` (``run``).

Floor 5: may import every floor below (foundation, ``train``, ``measure``, ``curves``,
``predict``, ``report``); only ``madyn.stages`` and ``madyn.cli`` import it.
"""
