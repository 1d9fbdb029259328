"""Registry of the competing curve hypotheses for a per-layer time series.

Every hypothesis is one :class:`Hypothesis` entry in :data:`REGISTRY`; adding one is adding
an entry. Conventions shared by all of them:

* ``func(t, *p)`` -> (n,) curve values; ``jac(t, *p)`` -> (n, k) analytic Jacobian d f / d p.
  The same functional form is used on raw data (t = training step, p in raw units) and on
  normalised data (t_n = step / t_scale with t_scale = last step, y_n = (y - mu) / sd).
  Exception: hypotheses with ``scale_time=False`` (``log_baseline``) see raw steps also
  when fitted, because ``log(1 + t)`` has no exact form in ``t / t_scale``.
* ``bounds``: (lower, upper) in the normalised parameter space.
* ``starts(t, y_n, n)`` -> (S, k) starting points in normalised space, derived from the data
  by variable projection: a grid over the nonlinear parameters, with the parameters that
  enter linearly solved by (vectorised) linear least squares at every grid point at once.
* ``to_raw(p_norm, t_scale, y_mu, y_sd)`` maps normalised parameters to raw ones exactly:
  ``func(t, *to_raw(p)) == mu + sd * func(t / t_scale, *p)``.
* Regularised variants carry ``penalty_ref`` / ``penalty_scale``: the fit adds residuals
  ``sqrt(alpha) * (q(p) - q_ref) / scale`` on the normalised parameters (``alpha`` is a fit
  setting, :class:`madyn.settings.FitSettings`, default 1e-2: a mild pull that only matters where
  the data leave a parameter unidentified, e.g. beta or tau0 running to their bounds).
  ``q`` is the identity, or ``penalty_map``: ``original_reg`` is penalised on its exact
  reparametrisation (A1, A2, beta, tau0, K), with reparam_reg's reference and scales. A ridge
  on the original parameters themselves cannot work: A = A1 exp(lam t0) is exponential in
  lam t0, so a good fit of a saturating rise (lam ~ 150, t0 ~ 1 in normalised units) has
  |A| ~ 1e66, and any linear pull on A forbids the whole region of such curves.
"""

from __future__ import annotations

from madyn.curves import emlog, log_baseline, step_response
from madyn.curves.emlog import (
    EMLOG,
    original_func,
    original_peak,
    original_to_reparam,
    reparam_func,
    reparam_peak,
    reparam_to_original,
)
from madyn.curves.hypothesis import Hypothesis
from madyn.curves.starts import clip_inside

__all__ = ["EMLOG", "REGISTRY", "Hypothesis", "clip_inside", "get", "names", "original_func",
           "original_peak", "original_to_reparam", "reparam_func", "reparam_peak",
           "reparam_to_original", "warm_depth"]

# one module per curve family; the registry is their union, in this order
REGISTRY: dict[str, Hypothesis] = {h.name: h for h in [
    *emlog.HYPOTHESES, *step_response.HYPOTHESES, *log_baseline.HYPOTHESES]}


def get(name: str) -> Hypothesis:
    """The registered hypothesis ``name`` (KeyError lists the known names)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown hypothesis {name!r}; known: {sorted(REGISTRY)}") from None


def names() -> list[str]:
    """Every registered hypothesis name, in registry order."""
    return list(REGISTRY)


def warm_depth(name: str) -> int:
    """Length of the warm-start chain behind ``name`` (0: no warm start): fitting in
    increasing depth fits every warm source before the hypotheses it starts."""
    def depth(n: str, seen: frozenset[str]) -> int:
        if n in seen:
            raise ValueError(f"warm_from cycle through {name!r}")
        return max((1 + depth(src, seen | {n}) for src, _ in get(n).warm_from), default=0)

    return depth(name, frozenset())

