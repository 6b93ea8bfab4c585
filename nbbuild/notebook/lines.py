"""The words of a magic's line: `%%rule [NAME] [options]`, `%%rule NAME(params) [options]`, and the
targets of `%build`. Every mistake is one UsageError line that says what to write instead.

Contract:
- `parse_rule_line(line)` -> (name or None, --lazy, policy, the parameter text of `NAME(...)` or
  None, {"executor": str, "timeout": float, "retries": int} as given). Values are checked for
  their form here; the Rule checks what they mean (an unknown executor, a timeout of 0).
- `split_targets(line)` -> the words of a `%build` line, a call such as `model(alpha = 0.1)`
  being one word.
- `parse(magic, words, usage)`: the words parsed by the parser `magic_arguments` made from the
  magic's declared options (options and positional words in any order); a bad option is one
  UsageError line naming the magic, what is wrong and `usage`.
- `workers(text)`: the type of `%build -j N`: a whole number of at least 1.
"""
from __future__ import annotations

import argparse
import re
import shlex
from typing import Any, Callable

from IPython.core.error import UsageError

from ..engine.rule import POLICIES

__all__ = ["parse_rule_line", "split_targets", "parse", "workers", "BUILD_USAGE", "NBBUILD_USAGE", "STORE_USAGE"]

_SIGNATURE = re.compile(r"^\s*([^\s(]+)\s*\((.*)\)(.*)$", re.S)


BUILD_USAGE = "%build TARGET [TARGET ...] [--force] [--dry-run] [-j N] [--graph]"
NBBUILD_USAGE = ("%nbbuild status | why TARGET | graph [TARGET] | store [--quota SIZE] [gc [--foreign] | clear]"
                 " | metrics | auto [on|off] | dashboard [TARGET] (%nbbuild? for help)")
STORE_USAGE = ("%nbbuild store [--quota SIZE] [--min-free SIZE] [--eviction gdsf|lru] "
               "[--shared URL [--shared-readonly]] [gc [--foreign] | clear]")
_RULE_USAGE = ("usage: %%rule [NAME] [--lazy] [--policy P] [--executor E] [--timeout S] [--retries N]")


def parse_rule_line(line: str) -> tuple[str | None, bool, str, str | None, dict[str, Any]]:
    """(name, --lazy, policy, parameter text or None, the Rule's executor/timeout/retries)."""
    params = None
    m = _SIGNATURE.match(line)
    if not m and "(" in line:
        raise UsageError(f"%%rule: unbalanced brackets in {line.strip()!r}; usage: %%rule NAME(param, other=default)")
    if m:
        if not m.group(1).isidentifier():
            raise UsageError(f"%%rule: rule name {m.group(1)!r} is not a Python identifier")
        params, line = m.group(2), m.group(1) + " " + m.group(3)
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise UsageError(f"%%rule: {e}") from None
    name, lazy, policy, options = None, False, "persist", {}
    it = iter(words)
    for w in it:
        option, _, given = w.partition("=")
        if w == "--lazy":
            lazy = True
        elif option in ("--policy", "--executor", "--timeout", "--retries"):
            value = given if "=" in w else next(it, "")
            if not value:
                raise UsageError(f"%%rule: {option} needs a value; {_RULE_USAGE}")
            if option == "--policy":
                if value not in POLICIES:
                    raise UsageError(f"%%rule: --policy takes one of {', '.join(POLICIES)}, not {value!r}")
                policy = value
            else:
                options[option[2:]] = _option(option, value)
        elif w.startswith("-"):
            raise UsageError(f"%%rule: unknown option {w!r}; {_RULE_USAGE}")
        elif name is None:
            if not w.isidentifier():
                raise UsageError(f"%%rule: rule name {w!r} is not a Python identifier")
            name = w
        else:
            raise UsageError(f"%%rule: one rule name only, got {name!r} and {w!r}")
    return name, lazy, policy, params, options


def _option(option: str, value: str) -> Any:
    if option == "--executor":
        return value           # a name in the namespace (a Client) is looked up when the rule is made
    try:
        number = float(value) if option == "--timeout" else int(value)
    except ValueError:
        what = "seconds" if option == "--timeout" else "a whole number"
        raise UsageError(f"%%rule: {option} takes {what}, not {value!r}") from None
    return number


def split_targets(line: str) -> list[str]:
    """Words of a %build line; a parametric call such as `model(alpha = 0.1)` is one word."""
    words, depth, current = [], 0, ""
    for ch in line:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch.isspace() and depth <= 0:
            if current:
                words.append(current)
            current, depth = "", 0
        else:
            current += ch
    if depth > 0:
        raise UsageError(f"%build: unbalanced brackets in {line.strip()!r}")
    return words + ([current] if current else [])


def parse(magic: Callable, words: list[str], usage: str) -> argparse.Namespace:
    """The options `magic` declares (IPython's magic_arguments), read from `words`."""
    try:
        return magic.parser.parse_intermixed_args(words)     # type: ignore[attr-defined]
    except UsageError as e:    # what argparse says (MagicArgumentParser.error), in one line
        raise UsageError(f"%{magic.__name__}: {e}; usage: {usage}") from None


def workers(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"-j takes a whole number of at least 1, not {text!r}")
    return int(text)
