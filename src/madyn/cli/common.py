"""What every command module shares: option types, MODEL=VALUE maps, stderr lines and the
helper that adds a subcommand."""

from __future__ import annotations

import argparse
import json
import sys


def json_arg(text: str | None) -> dict:
    """A JSON option's value (an empty dict when not given)."""
    return json.loads(text) if text else {}


def pick(args: argparse.Namespace, *names: str) -> dict:
    """The parsed options ``names`` as keyword arguments."""
    return {n: getattr(args, n) for n in names}


def model_map(items: list[str], flag: str) -> dict[str, str]:
    """MODEL=VALUE items of option ``flag`` -> {model: value}; ValueError naming a malformed
    or repeated item."""
    out: dict[str, str] = {}
    for item in items:
        model, sep, value = item.partition("=")
        if not sep or not model or not value:
            raise ValueError(f"{flag} {item!r}: expected MODEL=VALUE")
        if model in out:
            raise ValueError(f"{flag}: model {model!r} given twice")
        out[model] = value
    return out


def say(line: str) -> None:
    """One line on stderr."""
    print(line, file=sys.stderr)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return v


def add(sub, name: str, func, help: str | None, description: str | None = None,
        example: str | None = None, **kw) -> argparse.ArgumentParser:
    """Subcommand ``name`` of ``sub`` running ``func``; ``help`` None hides it from the
    listing; ``example`` goes under the options of its own help."""
    extra = {"help": help} if help is not None else {}
    if example:
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kw["epilog"] = f"example:\n  {example}"
    c = sub.add_parser(name, description=description or help, **extra, **kw)
    c.set_defaults(func=func, name=name)
    return c


def outs(c: argparse.ArgumentParser, *flags: str) -> None:
    """Required output options ``flags`` (no help text)."""
    for flag in flags:
        c.add_argument(flag, required=True)
