"""A suite's answer: what a finished run prints last (``madyn run``, Snakemake's
``onsuccess``, the DVC report stage) and the report's front page. A single-run suite's is
its run summary (``report/run_summary.txt``); a study's, its headline
(``metrics/headline.json``) as a few lines. Imports nothing heavy: the Snakefile reads it
at every parse."""

from __future__ import annotations

import json
from pathlib import Path

RUN_SUMMARY = "report/run_summary.txt"  # under results/<suite>
HEADLINE = "metrics/headline.json"


def headline_lines(metrics: dict) -> list[str]:
    """The headline as a few readable lines, one per section:
    ``growth: ratio_mid_mean 3.368, ...``."""
    return [f"  {section}: " + ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else
                                         f"{k} {v}" for k, v in values.items())
            for section, values in metrics.items() if isinstance(values, dict) and values]


def answer_lines(results: str, since: float | None = None) -> list[str]:
    """The answer of the suite whose outputs are under ``results``: the run summary, else
    the headline. ``since``: only a file written at or after this time (seconds since the
    epoch) counts. Empty when there is none."""
    root = Path(results)
    for rel in (RUN_SUMMARY, HEADLINE):
        f = root / rel
        if f.is_file() and (since is None or f.stat().st_mtime >= since):
            if rel == RUN_SUMMARY:
                return [f"run summary ({f}):", *f.read_text().splitlines()]
            return [f"headline ({f}):", *headline_lines(json.loads(f.read_text()))]
    return []


def front_page(results: str) -> str:
    """The report's front page (reStructuredText): :func:`answer_lines` as a literal block
    under a title, or a line saying the suite has not finished."""
    lines = answer_lines(results)
    if not lines:
        return "The suite has not finished: no run summary or headline yet.\n"
    title = "Run summary" if lines[0].startswith("run summary") else "Headline"
    body = "\n".join(f"    {line}" for line in lines[1:])
    return f"{title}\n{'=' * len(title)}\n\n::\n\n{body}\n"


def against_committed(root: Path, results: str) -> str | None:
    """One line comparing the suite's headline under ``results`` with the one committed in
    git (HEAD) at the same path, with the cross-machine tolerance in mind
    (:data:`madyn.report.headline.MACHINE_TOLERANCE`); None where either is missing (not a
    git checkout, a suite with no committed headline)."""
    import subprocess

    f = Path(results) / HEADLINE
    if not (root / f).is_file():
        return None
    try:
        r = subprocess.run(["git", "show", f"HEAD:{f.as_posix()}"], cwd=root,
                           capture_output=True, text=True, timeout=30)
        committed = json.loads(r.stdout) if r.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        committed = None
    if not isinstance(committed, dict):
        return None
    from madyn.report.headline import outside_tolerance

    ours = json.loads((root / f).read_text())
    if ours == committed:
        return "against the committed headline (git HEAD): identical"
    bad = outside_tolerance(committed, ours)
    if not bad:
        return ("against the committed headline (git HEAD): every metric within the "
                "tolerance between machines (docs/reproducibility.md)")
    return (f"against the committed headline (git HEAD): {len(bad)} beyond the tolerance "
            "between machines (a changed configuration or code; docs/reproducibility.md): "
            + "; ".join(bad))
