"""Persistence: a new process that defines the same rules and builds the same targets runs no rule."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    import nbbuild

    calls = []
    threshold = 2

    def helper(xs):
        return [x for x in xs if x > threshold]

    with nbbuild.Build(sys.argv[1], workers=2) as b:
        @b.rule
        def words(path):
            calls.append("words")
            return open(nbbuild.file(path)).read().split()

        @b.rule
        def lengths(path):
            calls.append("lengths")
            return helper([len(w) for w in words(path)])

        @b.rule
        def summary(paths):
            calls.append("summary")
            return {p: sum(lengths(p)) for p in paths} | {"sets": {"x", "y", "z"}}

        value = summary(tuple(sys.argv[2:]))
        print(json.dumps({"calls": sorted(calls), "value": {k: sorted(v) if isinstance(v, set) else v for k, v in value.items()},
                          "executed": b.report.executed}))
""")


def _run(tmp_path, seed, *files):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "store"), *map(str, files)],
                         capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin",
                              "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]})
    return json.loads(out.stdout)


def test_a_fresh_interpreter_runs_no_rule(tmp_path):
    a, c = tmp_path / "a.txt", tmp_path / "c.txt"
    a.write_text("alpha be gamma")
    c.write_text("delta")
    first = _run(tmp_path, "1", a, c)
    assert first["calls"] == ["lengths", "lengths", "summary", "words", "words"]
    second = _run(tmp_path, "2", a, c)        # another process, another hash seed
    assert second["calls"] == [] and second["executed"] == []
    assert second["value"] == first["value"]
    a.write_text("alpha be gamma!")          # only this file's chain re-runs; summary's input changed
    third = _run(tmp_path, "3", a, c)
    assert third["calls"] == ["lengths", "summary", "words"]
