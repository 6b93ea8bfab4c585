"""Random DAGs of rules over random input files and environment variables, random edits (an
unrelated variable among them), and after every build:
(a) every target equals its from-scratch evaluation (the shared oracle), and
(b) exactly the minimal set of tasks ran: a task runs iff no earlier run of the same code saw the
    same dependency values (so a code change or a changed dependency value runs it, an unchanged
    or value-preserving change does not, and a revert to an earlier state runs nothing that a
    constructive trace still has).
"""
from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbbuild
from oracle import from_scratch

MOD = 7          # small: different inputs often give equal values, which exercises early cutoff
FORMATS = [
    "    total = {const}\n",
    "    # a comment that does not count\n    total = ({const})\n",
    "\n    total = {const}  # trailing comment\n\n",
    '    """A docstring."""\n    total = {const}\n',
]
ENV = ["NBPROP_E0", "NBPROP_E1"]
UNRELATED = "NBPROP_UNRELATED"      # read by no rule: setting it runs nothing
ENV_VALUES = [None, "0", "1", "2", "01"]      # None: unset; "0", "01" and unset give equal values
ENV_READS = [                       # the ways a body reads a variable by key
    'os.environ.get("{v}", "0")',
    'os.getenv("{v}") or "0"',
    'os.environ["{v}"] if "{v}" in os.environ else "0"',
    '__import__("os").environb.get(b"{v}", b"0").decode()',
]


@dataclass
class Spec:
    files: int
    deps: list[list[int]]          # rule i reads rules deps[i] (all < i)
    reads: list[list[int]]         # rule i reads files reads[i]
    declared: list[bool]           # read through nbbuild.file() rather than a bare open()
    envs: list[list[int]] = field(default_factory=list)   # rule i reads variables ENV[envs[i]]
    env_reads: list[int] = field(default_factory=list)    # how (ENV_READS)


@dataclass
class State:
    contents: list[int]
    consts: list[int]
    formats: list[int]
    texts: list[str] = field(default_factory=list)     # the exact bytes of each input file
    env: list[str | None] = field(default_factory=lambda: [None] * len(ENV))
    history: list[dict] = field(default_factory=list)


def rule_source(i: int, spec: Spec, state: State) -> str:
    lines = [f"@b.rule\ndef r{i}():\n", f'    calls.append("r{i}")\n',
             FORMATS[state.formats[i]].format(const=state.consts[i])]
    if FORMATS[state.formats[i]].startswith('    """'):
        lines[1], lines[2] = lines[2].split("\n", 1)[0] + "\n", lines[1] + lines[2].split("\n", 1)[1]
    for d in spec.deps[i]:
        lines.append(f"    total += r{d}()\n")
    for f in spec.reads[i]:
        opener = f"nbbuild.file(F{f})" if spec.declared[i] else f"F{f}"
        lines.append(f"    with open({opener}) as fh:\n        total += int(fh.read())\n")
    for e in spec.envs[i]:
        lines.append(f"    total += int({ENV_READS[spec.env_reads[i]].format(v=ENV[e])})\n")
    lines.append(f"    return total % {MOD}\n")
    return "".join(lines)


class Model:
    """Which rules must run: a rule runs iff no earlier run had its code and its inputs."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.seen: list[dict[tuple, int]] = [dict() for _ in spec.deps]

    def build(self, targets: list[int], state: State) -> tuple[set[int], dict[int, int]]:
        values: dict[int, int] = {}
        ran: set[int] = set()

        def value(i: int) -> int:
            if i not in values:
                dep_values = tuple(value(d) for d in self.spec.deps[i])
                env = tuple(state.env[e] for e in self.spec.envs[i])
                inputs = (state.consts[i], dep_values, tuple(state.texts[f] for f in self.spec.reads[i]), env)
                if inputs not in self.seen[i]:
                    total = state.consts[i] + sum(dep_values) + sum(state.contents[f] for f in self.spec.reads[i])
                    total += sum(int(v or "0") for v in env)
                    self.seen[i][inputs] = total % MOD
                    ran.add(i)
                values[i] = self.seen[i][inputs]
            return values[i]

        for t in targets:
            value(t)
        return ran, values


@st.composite
def specs(draw):
    n = draw(st.integers(2, 7))
    files = draw(st.integers(1, 3))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)]
    reads = [sorted(draw(st.sets(st.integers(0, files - 1), max_size=2))) for _ in range(n)]
    declared = [draw(st.booleans()) for _ in range(n)]
    envs = [sorted(draw(st.sets(st.integers(0, len(ENV) - 1), max_size=2))) for _ in range(n)]
    env_reads = [draw(st.integers(0, len(ENV_READS) - 1)) for _ in range(n)]
    return Spec(files, deps, reads, declared, envs, env_reads)


EDITS = st.one_of(
    st.tuples(st.just("content"), st.integers(0, 2), st.integers(0, 20)),
    st.tuples(st.just("same_value"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.just("touch"), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("code"), st.integers(0, 6), st.integers(0, 4)),
    st.tuples(st.just("format"), st.integers(0, 6), st.integers(0, len(FORMATS) - 1)),
    st.tuples(st.just("revert"), st.integers(0, 20), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    st.tuples(st.just("env"), st.integers(0, len(ENV) - 1), st.integers(0, len(ENV_VALUES) - 1)),
    st.tuples(st.just("unrelated_env"), st.just(0), st.integers(0, 9)),
)


class Session:
    """A store directory, its input files, and the Build that rules are defined in."""

    def __init__(self, root: str, spec: Spec, state: State, workers: int, env: pytest.MonkeyPatch):
        self.root, self.spec, self.workers, self.env = root, spec, workers, env
        self.paths = [os.path.join(root, f"in{f}.txt") for f in range(spec.files)]
        self.calls: list[str] = []
        self.build = None
        self.open(state)

    def open(self, state: State) -> None:
        if self.build is not None:
            self.build.close()
        self.build = nbbuild.Build(os.path.join(self.root, "store"), workers=self.workers)
        self.ns = {"nbbuild": nbbuild, "os": os, "b": self.build, "calls": self.calls,
                   **{f"F{f}": p for f, p in enumerate(self.paths)}}
        for i in range(len(self.spec.deps)):
            self.define(i, state)

    def define(self, i: int, state: State) -> None:
        exec(compile(rule_source(i, self.spec, state), f"<rule r{i}>", "exec"), self.ns)

    def write(self, f: int, text: str) -> None:
        with open(self.paths[f], "w") as fh:
            fh.write(text)

    def setenv(self, name: str, value: str | None) -> None:
        if value is None:
            self.env.delenv(name, raising=False)
        else:
            self.env.setenv(name, value)


def apply(edit, spec: Spec, state: State, session: Session) -> None:
    kind, a, x = edit
    n = len(spec.deps)
    f = a % spec.files
    if kind == "content":
        state.contents[f], state.texts[f] = x, str(x)
        session.write(f, state.texts[f])
    elif kind == "touch":           # same bytes, new mtime: nothing runs
        session.write(f, state.texts[f])
    elif kind == "same_value":      # other bytes, same value: readers re-run, early cutoff stops there
        state.texts[f] = " " * x + str(state.contents[f]) + "\n" * x
        session.write(f, state.texts[f])
    elif kind == "code":
        state.consts[a % n] = x
        session.define(a % n, state)
    elif kind == "format":
        state.formats[a % n] = x
        session.define(a % n, state)
    elif kind == "env":
        state.env[a] = ENV_VALUES[x]
        session.setenv(ENV[a], state.env[a])
    elif kind == "unrelated_env":
        session.setenv(UNRELATED, str(x))
    elif kind == "revert" and state.history:
        old = state.history[a % len(state.history)]
        state.env[:] = old["env"]
        for e, value in enumerate(state.env):
            session.setenv(ENV[e], value)
        for f, (c, text) in enumerate(zip(old["contents"], old["texts"])):
            if text != state.texts[f]:
                state.contents[f], state.texts[f] = c, text
                session.write(f, text)
        state.consts[:], state.formats[:] = list(old["consts"]), list(old["formats"])
        for i in range(n):
            session.define(i, state)
    elif kind == "reopen":
        session.open(state)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), edits=st.lists(EDITS, min_size=1, max_size=10), seed=st.integers(0, 2**16),
       workers=st.integers(1, 3))
def test_random_dags_rebuild_exactly_the_minimal_set_and_match_from_scratch(spec, edits, seed, workers):
    rnd = random.Random(seed)
    n = len(spec.deps)
    contents = [rnd.randrange(10) for _ in range(spec.files)]
    state = State(contents, [rnd.randrange(5) for _ in range(n)], [0] * n, [str(c) for c in contents])
    model = Model(spec)
    with tempfile.TemporaryDirectory() as root, pytest.MonkeyPatch.context() as env:
        for name in ENV + [UNRELATED]:
            env.delenv(name, raising=False)
        session = Session(root, spec, state, workers, env)
        for f, text in enumerate(state.texts):
            session.write(f, text)
        try:
            for step in [None, *edits]:
                if step is not None:
                    apply(step, spec, state, session)
                targets = sorted(rnd.sample(range(n), rnd.randint(1, n)))
                expected_runs, expected_values = model.build(targets, state)
                session.calls.clear()
                rules = [session.ns[f"r{t}"] for t in targets]
                values = session.build.build(*[r.task() for r in rules])

                ran = sorted(session.calls)
                assert ran == sorted(f"r{i}" for i in expected_runs), (step, spec)
                assert sorted(session.build.report.executed) == sorted(f"r{i}()" for i in expected_runs)
                assert values == [expected_values[t] for t in targets]
                assert values == [from_scratch(r.task()) for r in rules]
                state.history.append({"contents": list(state.contents), "texts": list(state.texts),
                                      "consts": list(state.consts), "formats": list(state.formats),
                                      "env": list(state.env)})
        finally:
            session.build.close()
