"""Issue 14: real third-party notebooks give with nbbuild what they give without it.

The corpus (tests/corpus.py) is sphinx-gallery scripts of pinned sdists from the package index
(matplotlib's and scikit-learn's galleries), fetched and cached at test time, each made a notebook.
Each notebook runs in real kernels (nbclient, this Python's `python3` kernel, the inline
matplotlib backend), each run in a fresh kernel:

  plain           the cells as they are: what every other run is held to
  plain again     the same: the notebook itself is deterministic (else nothing could be compared)
  rules           `%load_ext nbbuild`, then every code cell under `%%rule`, on an empty store
  auto            `%load_ext nbbuild` + `%nbbuild auto`, then the cells as they are, on another store
  restart         the rules run again on the rules' store: no cell body runs (but for a cell
                  drawing from an unseeded global random generator: a fresh kernel's state is
                  another input)
  edited, plain   one middle cell edited (corpus.edit: a float literal that later cells read,
                  times 0.99), plainly
  edited, rules   the same edit as rules on the rules' store: the edited cell runs, with the
                  cells that read what it produced, and no other (see the oracle below)

Per code cell, every run shows what plain execution shows (the edited runs: the edited plain
one): the same stdout, the same text/plain of the cell's result, the same number of figures
(image/png displays), no error and no refusal (a `UsageError` line on stderr). Memory addresses
(`0x7f...`) and timings (`1.23 s`) are normalised; stderr is otherwise not compared (warnings).
With `NBBUILD_VIEW=text` a kernel writes its build lines on its own stderr, not into the cells.

Which cell bodies ran: a probe, installed by a first cell before nbbuild is loaded, logs after
each cell whether the cell made a build (`_nbbuild_state.build.report` is a new report) and the
rule bodies it ran (`report.executed`). In plain runs it logs instead a fingerprint of each
global before the cell (cloudpickle, sha256) and of the random generators' states
(numpy.random's and random's) before and after it.

The edit's oracle, from plain execution (`oracle`): the edited cell must run, and so must each
later cell that plain execution computes differently: a name it reads (statically, corpus.reads,
with the globals of the functions it calls that earlier cells defined), or a random generator it
draws from, holds another fingerprint before it in the edited plain run than in the plain one.
A later cell may run when it reads what the edited cell produced (a name it bound or changed in
place, or a generator it drew from), directly or through cells that may run (an equal value may
still re-run its readers: the issue asks for "only itself and the cells that read what it
produced"), or when what it reads cannot be compared (a value that does not pickle, or pickles
differently in the two plain runs, as a matplotlib Figure does). No other cell may run: the cells
before the edited one, and the later ones that read nothing it produced.

`make test` runs corpus.SUBSET; `make corpus` (`-m corpus`, or NBBUILD_CORPUS=all) runs all of it.

The three plain runs never load nbbuild: what they show depends on the notebook, this test's code,
Python and the packages the kernels imported, not on nbbuild's code. `make test` keeps them, per
notebook, in the corpus cache (corpus.cache_dir(), beside the sdists), with the versions of the
distributions whose modules the plain kernels had loaded (the probe logs them), and executes them
again when any of it changes (`plain_runs`); `make corpus` always executes them (and refreshes what
is kept). The runs with nbbuild are executed every time.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import corpus

CELL_TIMEOUT = 300          # seconds a cell may take (nbclient's deadline on each kernel wait)
STARTUP_TIMEOUT = 120

# Known nbbuild failures, notebook id -> the bugs: xfail(strict=True) until nbbuild fixes them.
# None now: the last two were a reused cell's imports loaded after its Figure (axes_units: the
# order of matplotlib.units.registry) and a scratch folder a last cell removed coming back after a
# restart (feature_agglomeration: joblib.Memory found its old results)
KNOWN: dict[str, str] = {}


def whole_corpus(config) -> bool:
    """`make corpus` (`-m corpus`, or NBBUILD_CORPUS=all): all of the corpus, not the SUBSET."""
    return ("corpus" in (config.getoption("markexpr", "") or "")
            or os.environ.get("NBBUILD_CORPUS", "").lower() == "all")


def pytest_generate_tests(metafunc):
    if "entry" not in metafunc.fixturenames:
        return
    full = whole_corpus(metafunc.config)
    try:
        entries = corpus.corpus() if full else corpus.subset()
    except Exception as e:  # the index unreachable, say: one failing test that says so
        metafunc.parametrize("entry", [pytest.param(e, id="corpus-unavailable", marks=pytest.mark.corpus)])
        return
    params = []
    if full:    # corpus.subset() reads the SUBSET on its own: each must be one of the corpus's
        missing = sorted(set(corpus.SUBSET) - {(e.sdist, e.path) for e in entries})
        if missing:
            params.append(pytest.param(LookupError(f"corpus.SUBSET names notebooks the corpus does not hold: {missing}"),
                                       id="subset-outside-the-corpus", marks=pytest.mark.corpus))
    for e in entries:
        marks = [pytest.mark.corpus]
        if e.id in KNOWN:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[e.id]))
        params.append(pytest.param(e, id=e.id, marks=marks))
    metafunc.parametrize("entry", params)


# ------------------------------------------------------------------ running a notebook

PROBE = r'''
import hashlib, json, os, sys, types
import cloudpickle

ip = get_ipython()
log = open(os.environ["NBBUILD_CORPUS_PROBE"], "a", buffering=1)
values = os.environ["NBBUILD_CORPUS_MODE"] == "values"
HIDDEN = {"In", "Out", "get_ipython", "exit", "quit", "open"}
state = {"report": None, "armed": False, "modules": set()}

def fingerprint(v):
    if isinstance(v, types.ModuleType):
        return "module " + v.__name__
    try:
        return hashlib.sha256(cloudpickle.dumps(v)).hexdigest()
    except Exception:
        return None

def generators():
    out = {}
    if "numpy" in sys.modules:
        out["@numpy.random"] = fingerprint(sys.modules["numpy"].random.get_state())
    out["@random"] = fingerprint(sys.modules["random"].getstate()) if "random" in sys.modules else None
    return out

def pre(info):
    try:
        state["armed"] = True
        if values:
            ns = ip.user_ns
            state["before"] = {k: fingerprint(v) for k, v in list(ns.items())
                               if not k.startswith("_") and k not in HIDDEN}
            state["generators"] = generators()
    except BaseException as e:
        state["error"] = repr(e)

def post(result):
    if not state.pop("armed", False):
        return
    try:
        entry = {"error": state.pop("error", None)}
        if values:
            entry["before"] = state.pop("before", {})
            before, after = state.pop("generators", {}), generators()
            entry["before"].update(before)
            entry["drawn"] = sorted(g for g in after if g in before and before[g] != after[g])
            loaded = {m.partition(".")[0] for m in list(sys.modules)}
            entry["modules"] = sorted(loaded - state["modules"])       # the packages newly imported
            state["modules"] |= loaded
        else:
            nb = getattr(ip, "_nbbuild_state", None)
            report = nb.build.report if nb is not None else None
            entry["executed"] = (list(report.executed) if report is not None and report is not state["report"]
                                 else None)
            state["report"] = report
        log.write(json.dumps(entry) + "\n")
    except BaseException as e:
        log.write(json.dumps({"error": repr(e)}) + "\n")

ip.events.register("pre_run_cell", pre)
ip.events.register("post_run_cell", post)
'''
PROBE_CELL = f"exec(compile({PROBE!r}, '<corpus probe>', 'exec'), {{'get_ipython': get_ipython}})"

WAYS = {
    "plain": ([], lambda code: code),
    "rules": (["%load_ext nbbuild"], lambda code: "%%rule\n" + code),
    "auto": (["%load_ext nbbuild\n%nbbuild auto"], lambda code: code),
}


@dataclass
class Run:
    """One execution: per code cell of the corpus notebook, what it showed and what the probe
    logged."""
    name: str
    shown: list[dict]
    probes: list[dict]
    setup: list[dict] = field(default_factory=list)     # nbbuild's own cells

    def ran(self) -> dict[int, list[str]]:
        """Code cell -> the rule bodies its build ran, for the cells that made a build."""
        return {i: p["executed"] for i, p in enumerate(self.probes) if p.get("executed")}

    def builds(self) -> list[int]:
        return [i for i, p in enumerate(self.probes) if p.get("executed") is not None]


def execute(name: str, code: list[str], way: str, directory: Path, store: Path | None) -> Run:
    setup, wrap = WAYS[way]
    cells = [PROBE_CELL] + setup + [wrap(c) for c in code]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = dict(corpus.KERNELSPEC)
    cwd = directory / name
    cwd.mkdir(parents=True)
    probe = directory / f"{name}.probe.jsonl"
    env = dict(os.environ, NBBUILD_VIEW="text", NBBUILD_CORPUS_PROBE=str(probe),
               NBBUILD_CORPUS_MODE="values" if way == "plain" else "builds")
    env.pop("MPLBACKEND", None)
    if store is not None:
        env["NBBUILD_DIR"] = str(store)
    NotebookClient(nb, timeout=CELL_TIMEOUT, startup_timeout=STARTUP_TIMEOUT, kernel_name="python3",
                   allow_errors=True, shutdown_kernel="immediate",   # as conftest.SHUTDOWN
                   resources={"metadata": {"path": str(cwd)}}).execute(env=env)
    probes = [json.loads(line) for line in probe.read_text().splitlines()] if probe.exists() else []
    assert len(probes) == len(cells) - 1, f"{name}: the probe logged {len(probes)} of {len(cells) - 1} cells"
    first = 1 + len(setup)
    return Run(name, [shown(c) for c in nb.cells[first:]], probes[len(setup):],
               [shown(c) for c in nb.cells[1:first]])


# ------------------------------------------------------------------ the plain runs, kept

def plain_key(code: list[str], edited_code: list[str]) -> str:
    """What names the plain runs of a notebook in the cache: its code and the edited code, this
    Python, and the test's own code (the probe, the normalisation of what cells show)."""
    here = Path(__file__).resolve().parent
    parts = [sys.version, platform.machine(), code, edited_code,
             (here / "test_corpus.py").read_text(encoding="utf-8"), (here / "corpus.py").read_text(encoding="utf-8")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def versions(distributions) -> dict[str, str | None]:
    """Each distribution's installed version (None: not installed)."""
    found = {}
    for name in sorted(distributions):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def loaded(runs) -> dict[str, str | None]:
    """The distributions whose modules the runs' kernels imported (the probe's `modules`), and
    their versions: the installed packages that plain execution depends on (not their paths: a
    fresh virtualenv of the same packages is the same)."""
    modules = {m for run in runs for p in run.probes for m in p.get("modules", ())}
    provides = importlib.metadata.packages_distributions()
    return versions({d for m in modules for d in provides.get(m, ())})


def plain_runs(code: list[str], edited_code: list[str], directory: Path, kept: bool) -> tuple[Run, Run, Run]:
    """(plain, plain again, edited plain): executed, or with `kept` ones the cache holds under
    plain_key whose distributions are installed at the same versions still (one file per set of
    versions: two virtualenvs of other packages do not evict each other's). Executed runs are kept
    there (written whole, then renamed)."""
    folder, key = corpus.cache_dir() / "plain-runs", plain_key(code, edited_code)
    if kept:
        for path in sorted(folder.glob(f"{key}-*.json")):
            held = json.loads(path.read_text())
            if held["distributions"] == versions(held["distributions"]):
                return tuple(Run(**r) for r in held["runs"])
    runs = (execute("plain", code, "plain", directory, None),
            execute("plain again", code, "plain", directory, None),
            execute("edited, plain", edited_code, "plain", directory, None))
    distributions = loaded(runs)
    path = folder / f"{key}-{hashlib.sha256(json.dumps(distributions).encode()).hexdigest()[:16]}.json"
    folder.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}.part")
    part.write_text(json.dumps({"distributions": distributions, "runs": [asdict(r) for r in runs]}))
    part.replace(path)
    return runs


# ------------------------------------------------------------------ what a cell shows

ADDRESS = re.compile(r"0x[0-9a-fA-F]{4,}")
TIMING = re.compile(r"\b\d+(\.\d+)?\s?(ms|s|sec|secs|seconds|min)\b")


def normal(text: str) -> str:
    return TIMING.sub("<time>", ADDRESS.sub("0x?", text))


def shown(cell) -> dict:
    out = {"stdout": "", "results": [], "figures": 0, "errors": [], "refusals": []}
    for o in cell.get("outputs", []):
        kind = o["output_type"]
        if kind == "stream" and o["name"] == "stdout":
            out["stdout"] += o["text"]
        elif kind == "stream":
            out["refusals"] += [line for line in o["text"].splitlines() if line.startswith("UsageError")]
        elif kind in ("display_data", "execute_result"):
            out["figures"] += "image/png" in o["data"]
            if kind == "execute_result":
                out["results"].append(normal(o["data"].get("text/plain", "")))
        elif kind == "error":
            out["errors"].append(normal(f"{o['ename']}: {o['evalue']}"))
    out["stdout"] = normal(out["stdout"])
    return out


def differences(run: Run, expected: Run, code: list[str]) -> list[str]:
    problems = []
    for i, (got, want) in enumerate(zip(run.shown, expected.shown)):
        for what in want:
            if got[what] != want[what]:
                problems.append(f"{run.name}, code cell {i} ({first_line(code[i])}): {what} "
                                f"{clip(got[what])} where {expected.name} shows {clip(want[what])}")
    for s in run.setup:
        if s["errors"] or s["refusals"] or s["stdout"]:
            problems.append(f"{run.name}: nbbuild's own cells show {s}")
    return problems


def first_line(source: str) -> str:
    return clip(source.strip().splitlines()[0], 60)


def clip(value, n: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


# ------------------------------------------------------------------ the edit's oracle

def oracle(code: list[str], e: corpus.Edit, plain: Run, again: Run, edited: Run) -> tuple[set[int], set[int]]:
    """(must, may): the code cells that must run after the edit, and those that may besides.

    must: the edited cell, and each later cell that plain execution computes differently: a name
    it reads, or a random generator it draws from, holds another value before it in the edited
    plain run than in the plain one.
    may: each later cell that reads what the edited cell produced (a name it bound, or changed in
    place, or a generator it drew from), directly or through cells that may run themselves; and
    a cell whose reads cannot be compared (a value that does not pickle, or pickles differently in
    two plain runs, as a matplotlib Figure does)."""
    edited_code = list(code)
    edited_code[e.index] = e.source
    must, downstream, unknown = {e.index}, {e.index}, set()
    latest: dict[str, int] = {}          # name -> the cell that produced its latest version
    for i in range(len(code)):
        names = corpus.reads_through(edited_code, i) | set(plain.probes[i]["drawn"]) | set(edited.probes[i]["drawn"])
        if i > e.index:
            for n in sorted(names):
                a, a2, b = (r.probes[i]["before"].get(n, "absent") for r in (plain, again, edited))
                if a is None or b is None or a != a2:
                    unknown.add(i)
                elif a != b:
                    must.add(i)
            if any(latest.get(n) in downstream for n in names):
                downstream.add(i)
        for n in produced(edited_code, i, plain) | produced(edited_code, i, edited):
            latest[n] = i
    return must, (downstream | unknown) - must


def produced(code: list[str], i: int, run: Run) -> set[str]:
    """The names code cell i bound, those whose value it changed in place, and the generators it
    drew from, in that run."""
    before = run.probes[i]["before"]
    after = run.probes[i + 1]["before"] if i + 1 < len(run.probes) else {}
    changed = {n for n in before if n in after and after[n] != before[n]}
    return corpus.bindings(code[i]) | changed | set(run.probes[i]["drawn"])


def drawing_unseeded(plain: Run, again: Run) -> set[int]:
    """The code cells that draw from a global random generator whose state before them differs
    between two plain runs (nothing seeded it): what they draw is an input that a fresh kernel
    changes, so they may run again after a restart, as plain execution would compute anew."""
    return {i for i, (p, q) in enumerate(zip(plain.probes, again.probes))
            if any(p["before"].get(g) != q["before"].get(g) for g in set(p["drawn"]) | set(q["drawn"]))}


def every_cell_ran_once(run: Run, code: list[str]) -> list[str]:
    ran, n = run.ran(), len(code)
    problems = [f"{run.name}: code cell {i} made no build" for i in range(n) if i not in run.builds()]
    problems += [f"{run.name}: code cell {i}'s body did not run" for i in range(n)
                 if i in run.builds() and i not in ran and code[i] not in code[:i]]   # a repeated cell is the same rule
    problems += [f"{run.name}: code cell {i}'s build ran {bodies}" for i, bodies in ran.items() if len(bodies) != 1]
    return problems


# ------------------------------------------------------------------ the test

@pytest.mark.timeout(3600)
def test_a_real_notebook_gives_with_nbbuild_what_it_gives_without(entry, tmp_path, request):
    if isinstance(entry, Exception):
        raise entry
    code = entry.code
    e = corpus.edit(code)
    edited_code = list(code)
    edited_code[e.index] = e.source

    plain, again, edited_plain = plain_runs(code, edited_code, tmp_path, kept=not whole_corpus(request.config))
    # what the corpus promises: plain execution runs without errors and gives the same each time
    assert not [s["errors"] for s in plain.shown + edited_plain.shown if s["errors"]], "plain execution fails"
    assert differences(again, plain, code) == [], "plain execution is not deterministic"

    problems: list[str] = []
    rules = execute("rules", code, "rules", tmp_path, tmp_path / "store")
    problems += differences(rules, plain, code) + every_cell_ran_once(rules, code)
    auto = execute("auto", code, "auto", tmp_path, tmp_path / "store-auto")
    problems += differences(auto, plain, code) + every_cell_ran_once(auto, code)
    restart = execute("restart", code, "rules", tmp_path, tmp_path / "store")
    problems += differences(restart, plain, code)
    unseeded = drawing_unseeded(plain, again)
    problems += [f"restart: code cell {i} ran {bodies}" for i, bodies in restart.ran().items() if i not in unseeded]
    edited = execute("edited, rules", edited_code, "rules", tmp_path, tmp_path / "store")
    problems += differences(edited, edited_plain, edited_code)
    must, may = oracle(code, e, plain, again, edited_plain)
    ran = set(edited.ran())
    if not must <= ran <= must | may:
        problems.append(f"edited ({e.what}): cells {sorted(ran)} ran; must run {sorted(must)}"
                        + (f", may run {sorted(may)}" if may else "")
                        + f"; bodies: {edited.ran()}")
    if os.environ.get("NBBUILD_CORPUS_REPORT"):      # a log of every notebook's problems, for triage
        with open(os.environ["NBBUILD_CORPUS_REPORT"], "a") as f:
            f.write(json.dumps({"id": entry.id, "problems": problems}) + "\n")
    assert problems == [], "\n".join(problems)
