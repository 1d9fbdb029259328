"""params.yaml against its JSON schema (``src/madyn/schemas/params.schema.yaml``), as
messages: a Draft 2020-12 validator whose ``integer`` is a Python int, each refusal worded
as one line naming its dotted key (in a model entry generated from a ``design_space``, the
axis that gave the value), and the NaN/inf floats the schema cannot see. Nothing here
raises: :func:`madyn.workflow.params_file.validate` joins the lines into one ConfigError.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any


def _schema() -> dict:
    from madyn.settings import params_schema

    return params_schema()


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def describe(err) -> str:
    """One readable line for a jsonschema error, naming the key."""
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        keys = ", ".join(_key([*err.absolute_path, e]) for e in extra)
        return f"unknown key {keys} (allowed here: {', '.join(allowed) or 'none'})"
    if err.validator == "oneOf" and err.context:
        # pick the branch that got furthest: the deepest error
        best = max(err.context, key=lambda e: len(e.absolute_path))
        return describe(best)
    if err.validator == "type" and err.validator_value == "integer":
        return f"{_key(err.absolute_path)}: {err.instance!r} is not an integer"
    if err.validator == "pattern" and "description" in err.schema:
        return f"{_key(err.absolute_path)}: {err.instance!r} is not {err.schema['description']}"
    return f"{_key(err.absolute_path)}: {err.message}"


def nonfinite(node: Any, path: tuple = ()) -> Iterator[str]:
    """One message per NaN/inf float anywhere in ``node`` (schema comparisons with NaN are
    all false, so the schema alone lets them through)."""
    if isinstance(node, float) and not math.isfinite(node):
        yield f"{_key(path)}: {node!r} is not a finite number"
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from nonfinite(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from nonfinite(v, (*path, i))


def validator():
    """Draft 2020-12 validator whose ``integer`` is a Python int only (not 10.0, not a
    bool): a float step count would pass the schema and fail later inside range()."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("integer", lambda _, inst: type(inst) is int)
    return jsonschema.validators.extend(base, type_checker=checker)(_schema())


def generated_key(cfg: dict, msg: str, path) -> tuple[str, str | None]:
    """``msg`` with ``suites.S.models.I.KEY`` renamed ``suites.S.design_space.axes.KEY``
    when suite S's models are generated from its design space, and that model's name
    (None for any other message)."""
    p = list(path)
    if len(p) >= 4 and p[0] == "suites" and p[2] == "models":
        suite = cfg["suites"].get(p[1], {})
        if isinstance(suite, dict) and ("design_space" in suite
                                        or "design_space_from" in suite):
            name = str(suite["models"][p[3]].get("name", p[3]))
            if "design_space_from" in suite:
                where, key = ".".join(map(str, p[:4])), "design_space_from"
            elif len(p) > 4:
                where, key = ".".join(map(str, p[:5])), f"design_space.axes.{p[4]}"
            else:
                where, key = ".".join(map(str, p[:4])), "design_space"
            return msg.replace(where, f"suites.{p[1]}.{key}", 1), name
    return msg, None
