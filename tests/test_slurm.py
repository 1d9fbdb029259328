"""The smoke suite on a real single-node SLURM cluster (profiles/slurm/local-cluster.sh) through
snakemake-executor-plugin-slurm (profiles/slurm): every job is a SLURM job, the results equal a
local run's, a second run submits nothing, and a failing job is reported as failed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from madyn.workflow.scratch_project import copy_workflow
from tests.helpers import CLUSTER_SH, ROOT, SLURM_STOP_FILE

pytestmark = pytest.mark.slurm

BIN = Path(sys.executable).parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
ENV = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", "")}
METRICS = ("results/smoke/metrics/growth.json", "results/smoke/metrics/fit.json")
SINCE = (datetime.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _say(request: pytest.FixtureRequest, msg: str) -> None:
    """Print to the terminal even when pytest captures output."""
    plugins = request.config.pluginmanager
    capman, reporter = plugins.get_plugin("capturemanager"), plugins.get_plugin("terminalreporter")
    if capman is not None and reporter is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(f"[test_slurm] {msg}")


def _sacct(name: str | None = None) -> list[dict[str, str]]:
    """SLURM jobs (allocations, not steps) since yesterday, optionally only job name ``name``:
    dicts with JobID, JobName, Comment, State."""
    cmd = ["sacct", "-X", "-n", "-P", "-S", SINCE, "-o", "JobID,JobName%100,Comment%300,State"]
    if name:
        cmd += ["--name", name]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"sacct failed: {r.stderr}"
    keys = ("JobID", "JobName", "Comment", "State")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in r.stdout.splitlines()]


def _run_uuid(out: str) -> str:
    """The plugin's run id, which it gives every SLURM job as its name."""
    m = re.search(r"SLURM run ID: (\S+)", out)
    assert m, f"no SLURM run ID in Snakemake's output:\n{out[-3000:]}"
    return m.group(1)


def _rules_run(out: str) -> Counter:
    """Rules of the jobs Snakemake ran remotely ("rule x:"; local rules print "localrule x:")."""
    return Counter(re.findall(r"^rule (\w+):$", out, flags=re.M))


def _rule_of(comment: str) -> str:
    """Rule name from the plugin's job comment "rule_<rule>[_wildcards_<values>]"."""
    return re.sub(r"_wildcards_.*$", "", comment.removeprefix("rule_"))


@pytest.fixture(scope="module", autouse=True)
def module_time(request):
    """Prints this module's wall time."""
    t0 = time.monotonic()
    yield
    _say(request, f"tests/test_slurm.py took {time.monotonic() - t0:.0f} s")


@pytest.fixture(scope="module")
def cluster(request):
    """A running local SLURM cluster; skipped where packages cannot be installed, unless CI.
    A cluster that was not up before is stopped when the test session ends, not after this
    module (a running one is left as is): with the SLURM client installed and no controller,
    every `snakemake` start waits in the executor plugin's `scontrol show config` (2 s with
    local-cluster.sh's MessageTimeout=3, 9 s with SLURM's default), so
    the tests running beside or after these (pytest-xdist) keep it up."""
    was_up = subprocess.run(["bash", str(CLUSTER_SH), "status"], capture_output=True,
                            timeout=60).returncode == 0
    # another SLURM cluster's state left in the shared default StateSaveLocation (its
    # ClusterName differs): the script must use state folders of its own and start anyway
    foreign = Path("/var/lib/slurm/slurmctld/clustername")
    planted = not was_up and not foreign.exists() and os.geteuid() == 0
    if planted:
        foreign.parent.mkdir(parents=True, exist_ok=True)
        foreign.write_text("othercluster\n")
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(CLUSTER_SH), "start"], capture_output=True, text=True,
                       timeout=600)
    under_ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
    if r.returncode == 3 and not under_ci:
        reason = (r.stdout.strip().splitlines() or ["exit 3"])[-1]
        pytest.skip(f"no SLURM cluster here (local-cluster.sh: {reason})")
    try:
        assert r.returncode == 0, \
            f"local-cluster.sh start: exit {r.returncode}\n{r.stdout}{r.stderr}"
        _say(request, f"local-cluster.sh start: {time.monotonic() - t0:.1f} s")
        yield
    finally:
        if not was_up:  # stopped when the whole session ends (tests/conftest.py)
            Path(os.environ[SLURM_STOP_FILE]).write_text("started by tests/test_slurm.py\n")
        if planted:
            foreign.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory, request):
    """The smoke suite through the SLURM profile: (SLURM project, its Snakemake output, its
    run id). Its metrics are compared with the session's local smoke run (``smoke_run``,
    built once for every module; under pytest-xdist usually by the other worker meanwhile)."""
    proj = copy_workflow(ROOT, tmp_path_factory.mktemp("slurm"), suite="smoke")
    t0 = time.monotonic()
    # --quiet host: the job blocks ("rule x:") the workflow profile hides
    r = _run([*SNAKEMAKE, "--profile", "profiles/slurm", "--quiet", "host"], proj)
    _say(request, f"smoke suite through SLURM: {time.monotonic() - t0:.0f} s")
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"SLURM run failed:\n{out[-6000:]}"
    return proj, out, _run_uuid(out)


def _every_job_ran_as_a_slurm_job(runs) -> None:
    proj, out, uuid = runs
    jobs = _sacct(uuid)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    rules = _rules_run(out)
    assert sum(rules.values()) >= 10, rules
    assert len(jobs) == len(submitted) == sum(rules.values()), (len(jobs), len(submitted), rules)
    assert {j["JobID"] for j in jobs} == set(submitted)
    assert Counter(_rule_of(j["Comment"]) for j in jobs) == rules
    assert {j["State"] for j in jobs} == {"COMPLETED"}, jobs
    assert "localrule extract_checkpoint" not in out


def _slurm_results_equal_local_results(runs, local: Path) -> None:
    proj, *_ = runs
    for f in METRICS:
        assert json.loads((proj / f).read_text()) == json.loads((local / f).read_text()), f


def _second_slurm_run_does_nothing(runs) -> None:
    proj, *_ = runs
    before = len(_sacct())
    r = _run([*SNAKEMAKE, "--profile", "profiles/slurm"], proj)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Nothing to be done" in out
    assert "has been submitted" not in out
    assert len(_sacct()) == before


def _failing_job_is_reported_failed(runs, tmp_path: Path) -> None:
    proj, *_ = runs
    (tmp_path / "Snakefile").write_text(
        'rule fail:\n    output: "never.txt"\n'
        '    shell: "echo madyn-deliberate-failure >&2; exit 1"\n')
    r = _run([*SNAKEMAKE, "--profile", str(proj / "profiles/slurm")], tmp_path, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    jobs = _sacct(_run_uuid(out))
    assert [(j["Comment"], j["State"]) for j in jobs] == [("rule_fail", "FAILED")], jobs
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'FAILED'", out), out[-3000:]
    assert not (tmp_path / "never.txt").exists()


def test_smoke_suite_through_slurm(runs, tmp_path, request):
    """One test, so that pytest-xdist runs the whole SLURM check on one worker (its cluster
    and smoke run are built once): every job a SLURM job, the metrics equal the local smoke
    run's (asked for only now, so that the cluster and its run start first), a second run
    submits nothing, a failing job is reported failed."""
    _every_job_ran_as_a_slurm_job(runs)
    local, _ = request.getfixturevalue("smoke_run")
    _slurm_results_equal_local_results(runs, local)
    _second_slurm_run_does_nothing(runs)
    _failing_job_is_reported_failed(runs, tmp_path)
