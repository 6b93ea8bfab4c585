"""Notebooks as people write them: names bound by many cells, cells that bind nothing, values
changed in place. Every cell a rule gives what plain execution gives (the oracle: the same cells
run as plain Python), re-runs only what plain execution would compute differently, and a restart
runs nothing."""
from __future__ import annotations

import os
import re
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.interactiveshell import InteractiveShell

from shells import fresh_shell

from nbbuild.notebook.graph import label
from oracle import plainly

# cells as people write them: `df` bound three times, a loop variable, a figure-and-axes pair whose
# axes another cell changes in place, a list another cell appends to, cells that bind nothing
CELLS = [
    "rows = [3, 1, -2, 5, 8]",
    "df = [r for r in rows if r > 0]",
    "df = sorted(df)",
    "for i in range(3):\n    total = sum(df) + i",
    "fig = {'title': 'sizes', 'lines': []}\nax = fig['lines']",
    "ax.append(len(df))",
    "lines = list(fig['lines'])",
    "items = []",
    "items.append(total)\nitems.append(i)",
    "print('items:', items)",
    "df = df + [100]",
    "summary = (len(items), lines, df[-1], fig)",
]
NAMES = ("rows", "df", "i", "total", "fig", "ax", "lines", "items", "summary")


@pytest.fixture
def shell(tmp_path, monkeypatch):
    """`shell()`: a fresh IPython with nbbuild loaded on one store: calling it again is a kernel
    restart (a new Build on the same store, nothing in memory)."""
    monkeypatch.chdir(tmp_path)
    made: list = []

    def start() -> InteractiveShell:
        stop()
        ip = fresh_shell()
        ip.run_line_magic("load_ext", "nbbuild")
        made.append(ip)
        return ip

    def stop() -> None:
        if made:
            ip = made.pop()
            ip._nbbuild_state.build.close()
            ip.run_line_magic("unload_ext", "nbbuild")
        InteractiveShell.clear_instance()

    yield start
    stop()


def run_all(ip, cells, ids=None) -> list[str]:
    """Run every cell as a rule, in order (Restart & Run All); the cells whose bodies ran, as the
    report names them."""
    ran: list[str] = []
    for n, cell in enumerate(cells):
        before = ip._nbbuild_state.build.report
        result = ip.run_cell("%%rule\n" + cell, store_history=True, cell_id=ids[n] if ids else None)
        assert result.error_in_exec is None and result.error_before_exec is None, (cell, result)
        report = ip._nbbuild_state.build.report
        if report is not before:
            ran += [label(t) for t in report.executed]
    return ran


def values(ip) -> dict:
    return {n: ip.user_ns[n] for n in NAMES}


def test_every_cell_a_rule_gives_what_plain_execution_gives(shell, capsys):
    ip = shell()
    run_all(ip, CELLS)
    assert values(ip) == plainly(CELLS, NAMES)
    assert values(ip)["summary"] == (2, [4], 100, {"title": "sizes", "lines": [4]})
    assert "items: [19, 2]" in capsys.readouterr().out


def test_run_all_again_and_after_a_restart_runs_nothing_and_gives_the_same(shell, capsys):
    ip = shell()
    first = run_all(ip, CELLS)
    assert len(first) == len(CELLS)                  # each cell ran once, the first time
    capsys.readouterr()
    assert run_all(ip, CELLS) == []
    ip = shell()                                     # a kernel restart
    assert run_all(ip, CELLS) == []
    assert values(ip) == plainly(CELLS, NAMES)
    assert "items: [19, 2]" in capsys.readouterr().out    # what a reused cell printed, shown again


def test_inserting_a_cell_reruns_only_the_cells_whose_versions_changed(shell):
    ip = shell()
    run_all(ip, CELLS)
    cells = CELLS[:3] + ["df = df[1:]"] + CELLS[3:]      # a new version of df before the loop
    ip = shell()
    ran = run_all(ip, cells)
    assert values(ip) == plainly(cells, NAMES)
    # the new cell, then every cell reading what it changed, directly or not; not `rows`, the
    # first two versions of `df`, the figure's cell, or `items = []`
    assert ran == ["df (cell 4)", "total", "ax (cell 7)", "lines", "items (cell 10)", "cell 11", "df (cell 12)", "summary"]


def test_moving_and_deleting_cells_that_nothing_reads_reruns_nothing(shell):
    ip = shell()
    run_all(ip, CELLS)
    cells = [CELLS[0], CELLS[7]] + CELLS[1:7] + CELLS[8:9] + CELLS[10:]   # `items = []` moved up, the print gone
    ip = shell()
    assert run_all(ip, cells) == []
    assert values(ip) == plainly(cells, NAMES)


def test_with_cell_ids_an_edited_cell_reruns_with_what_reads_it_and_cuts_off_equal_values(shell):
    ids = [f"cell-{n}" for n in range(len(CELLS))]
    ip = shell()
    run_all(ip, CELLS, ids)
    edited = list(CELLS)
    edited[1] = "df = [r for r in rows if r >= 1]"       # the same values: early cutoff
    assert run_all(ip, edited, ids) == ["df (cell 14)"]
    edited[1] = "df = [r for r in rows if r > 3]"        # now [5, 8]
    ran = run_all(ip, edited, ids)
    assert ran[:3] == ["df (cell 26)", "df (cell 27)", "total"] and "rows" not in ran
    assert values(ip) == plainly(edited, NAMES)


@pytest.mark.parametrize("cell", ["x = x + 1", "x += 1", "x = [v + 1 for v in [x]][0]"])
def test_a_cell_run_again_reads_the_value_it_bound_as_plain_execution_does(shell, cell):
    ip = shell()
    ip.run_cell("x = 1")
    ids = ["the-cell"]
    for expected in (2, 3, 4):                  # with a cell id: the same rule each time, reading x by value
        ran = run_all(ip, [cell], ids)
        assert ip.user_ns["x"] == expected and ran == ["x"]
    ip = shell()                                # Restart & Run All: x = 1 again, the cell reused
    ip.run_cell("x = 1")
    assert run_all(ip, [cell], ids) == [] and ip.user_ns["x"] == 2
    ip = shell()
    result = ip.run_cell("%%rule\n" + cell, cell_id="the-cell")    # x never bound: it fails, as plainly
    assert "NameError" in str(result.error_in_exec) or "UnboundLocalError" in str(result.error_in_exec)


def test_a_change_in_place_is_a_new_version_and_the_earlier_value_is_kept(shell):
    ip = shell()
    run_all(ip, CELLS)
    state = ip._nbbuild_state
    appends = next(r for r, reads in state.fetches.items() if "ax" in reads)    # `ax.append(len(df))`
    assert state.rule_for("fig").name == state.rule_for("ax").name == appends   # its versions now
    assert state.fetches[state.rule_for("lines").name]["fig"] == appends
    made = state.fetches[appends]["ax"]                 # the cell `fig = {...}; ax = ...` itself
    assert state.build.build(made)[0]["fig"] == {"title": "sizes", "lines": []}
    ip = shell()
    run_all(ip, CELLS)
    assert ip.user_ns["lines"] == [4] and ip.user_ns["fig"]["lines"] == [4]


def test_a_reused_cell_that_changed_a_value_in_place_gives_its_other_names_where_it_now_runs(shell):
    made = "fig = {'title': 'sizes', 'lines': []}\nax = fig['lines']"
    cells = [made, "fig = 'another figure'", "ax.append(1)", "shown = (fig, ax)"]
    ip = shell()
    run_all(ip, cells)                     # ax.append: ax's new version only (fig was bound again)
    cells = [made, "ax.append(1)", "shown = (fig, ax)"]     # without the cell between
    ip = shell()
    ran = run_all(ip, cells)               # ax.append reused, and fig is its version now as well
    assert ip.user_ns["shown"] == plainly(cells, ("shown",))["shown"] == ({"title": "sizes", "lines": [1]}, [1])
    assert ran == ["shown"]


def test_matplotlib_settings_a_reused_cell_changed_are_set_again(shell):
    import matplotlib
    cells = ["import matplotlib\nimport matplotlib.pyplot as plt\nplt.style.use('ggplot')",
             "matplotlib.rcParams['lines.linewidth'] = 7.0",
             "label = 'draws nothing'"]
    try:
        ip = shell()
        assert len(run_all(ip, cells)) == 3
        ran = matplotlib.rcParams["lines.linewidth"], matplotlib.rcParams["axes.facecolor"]
        matplotlib.rcdefaults()                   # a new kernel starts from matplotlib's defaults
        ip = shell()
        assert run_all(ip, cells) == []
        assert (matplotlib.rcParams["lines.linewidth"], matplotlib.rcParams["axes.facecolor"]) == ran == (
            7.0, "#E5E5E5")                       # as plain execution leaves them
    finally:
        matplotlib.rcdefaults()


# a value whose pickle differs each time it is pickled, as a matplotlib Figure's does (pickling
# its CallbackRegistry advances a counter)
RESTLESS = ("class Restless:\n    pickled = 0\n    def __getstate__(self):\n"
            "        Restless.pickled += 1\n        return {'n': Restless.pickled}")


def test_a_cell_reading_one_name_of_a_cell_changes_only_the_names_whose_values_it_changed(shell):
    # the cell after `fig, x` reads x only; fig pickles differently each time, x stays the same
    cells = [RESTLESS, "fig = Restless()\nx = [1.0, 2.0]", "y = sum(x) * 0.5", "n = len(x)"]
    ip = shell()
    run_all(ip, cells)
    state = ip._nbbuild_state
    assert state.rule_for("x").name == state.fetches[state.rule_for("n").name]["x"] != state.rule_for("y").name
    edited = list(cells)
    edited[2] = "y = sum(x) * 0.25"
    ip = shell()
    assert run_all(ip, edited) == ["y"]          # not `n`: it reads nothing the edited cell produced
    assert ip.user_ns["y"] == 0.75 and ip.user_ns["n"] == 2


def test_an_ordinary_cell_that_changes_a_value_in_place_is_what_later_rule_cells_read(shell):
    cells = ["%%rule\ndata = [1, 2]", "data.append(3)", "%%rule\nn = len(data)", "print(n)"]
    ip = shell()
    for cell in cells:
        ip.run_cell(cell, store_history=True)
    assert ip.user_ns["n"] == 3
    assert ip._nbbuild_state.build.build(ip._nbbuild_state.build.rules[
        next(iter(ip._nbbuild_state.build.rules))])[0]["data"] == [1, 2]   # stored as it was made
    ip = shell()
    ip.run_cell(cells[0])
    ip.run_cell(cells[1])
    before = ip._nbbuild_state.build.report
    ip.run_cell(cells[2])
    assert ip.user_ns["n"] == 3 and ip._nbbuild_state.build.report.executed == [] != before


def test_a_cell_that_binds_nothing_is_a_rule_and_shows_its_output_again(shell, capsys):
    ip = shell()
    ip.run_cell("%%rule\nx = 41")
    ip.run_cell("%%rule\nprint('the answer is', x + 1)")
    assert "the answer is 42" in capsys.readouterr().out
    ip = shell()
    ip.run_cell("%%rule\nx = 41")
    ip.run_cell("%%rule\nprint('the answer is', x + 1)")
    assert ip._nbbuild_state.build.report.executed == []
    assert "the answer is 42" in capsys.readouterr().out


def test_build_name_builds_the_latest_version_and_status_names_versions_apart(shell, capsys):
    ip = shell()
    run_all(ip, CELLS)
    capsys.readouterr()
    ip.run_cell("%build df")
    assert ip.user_ns["df"] == [1, 3, 5, 8, 100]
    ip.run_cell("%nbbuild status")
    out = capsys.readouterr().out
    for title in ("df (cell 2)", "df (cell 3)", "df (cell 11)", "total", "cell 6", "summary"):
        assert title in out


def test_a_loop_variable_and_a_file_handle_in_many_cells_are_accepted(shell, tmp_path, capsys):
    cells = ["for f in ['a', 'b']:\n    last = f", "with open('x.txt', 'w') as f:\n    f.write('hi')",
             "with open('x.txt') as f:\n    text = f.read()", "for last in range(2):\n    pass"]
    ip = shell()
    run_all(ip, cells)
    assert ip.user_ns["text"] == "hi" and ip.user_ns["last"] == 1
    assert "Error" not in capsys.readouterr().err


def test_auto_makes_every_code_cell_a_rule_without_rule_lines(shell, capsys):
    ip = shell()
    ip.run_cell("%nbbuild auto", store_history=True)
    for cell in CELLS:
        assert ip.run_cell(cell, store_history=True).error_in_exec is None
    assert values(ip) == plainly(CELLS, NAMES)
    assert len(ip._nbbuild_state.build.rules) == len(CELLS)
    ip = shell()
    ip.run_cell("%nbbuild auto", store_history=True)
    executed = []
    for cell in CELLS:
        before = ip._nbbuild_state.build.report
        ip.run_cell(cell, store_history=True)
        assert ip._nbbuild_state.build.report is not before      # each cell was a build
        executed += ip._nbbuild_state.build.report.executed
    assert executed == [] and values(ip) == plainly(CELLS, NAMES)
    assert "items: [19, 2]" in capsys.readouterr().out


@pytest.mark.parametrize("cell", [
    "%matplotlib inline",
    "%time x = 1",
    "files = !echo hi",
    "!echo hi",
    "%%time\nx = 1",
    "# just a comment",
    "# nbbuild: off\nx = 1",
    "from math import *",
    "await_ = 1\nimport asyncio\nawait asyncio.sleep(0)",
    "x = (1 +",
    "len?",
])
def test_under_auto_a_cell_that_cannot_or_should_not_be_a_rule_runs_as_an_ordinary_cell(shell, cell):
    ip = shell()
    ip.run_cell("%nbbuild auto")
    ip.run_cell(cell)
    assert ip._nbbuild_state.build.rules == {}


def test_under_auto_the_modulo_operator_on_a_continuation_line_is_no_magic(shell):
    ip = shell()
    ip.run_cell("%nbbuild auto")
    ip.run_cell('n = 3\ntext = (\n    "%d items"\n    % n\n)')
    assert len(ip._nbbuild_state.build.rules) == 1 and ip.user_ns["text"] == "3 items"


def test_auto_off_stops_it_and_rule_cells_still_work(shell):
    ip = shell()
    ip.run_cell("%nbbuild auto on")
    ip.run_cell("a = 1")
    ip.run_cell("%nbbuild auto off")
    ip.run_cell("b = a + 1")
    ip.run_cell("%%rule\nc = b + 1")
    assert len(ip._nbbuild_state.build.rules) == 2 and ip.user_ns["c"] == 3
    assert ip.run_cell("%nbbuild auto sideways").error_in_exec is not None


RANDOM_CELLS = [
    "import random\nimport numpy as np\nrandom.seed(1)\nnp.random.seed(2)",
    "a = random.random()\nx = np.random.rand(3)",
    "label = 'no draws here'",
    "b = random.random()\ny = np.random.rand(2)",
]


def test_cells_that_draw_leave_the_generators_where_plain_execution_would(shell):
    names = ("a", "b", "x", "y", "label")
    ip = shell()
    assert run_all(ip, RANDOM_CELLS) != []
    first = {n: ip.user_ns[n] for n in names}
    ip = shell()
    assert run_all(ip, RANDOM_CELLS) == []                # reused, each leaving the state it left
    again = {n: ip.user_ns[n] for n in names}
    assert again["a"] == first["a"] and again["b"] == first["b"] and list(again["y"]) == list(first["y"])
    plain = plainly(RANDOM_CELLS, names)
    assert (again["a"], again["b"], list(again["x"]), list(again["y"])) == (
        plain["a"], plain["b"], list(plain["x"]), list(plain["y"]))


def test_a_cell_that_draws_runs_again_when_an_earlier_cell_draws_differently(shell, capsys):
    ip = shell()
    run_all(ip, RANDOM_CELLS)
    cells = list(RANDOM_CELLS)
    cells[1] = "a = random.random()\nx = np.random.rand(4)"     # one more draw of numpy's
    ip = shell()
    ran = run_all(ip, cells)
    assert ran == ["a", "b"]                   # not the seeding cell, nor the one that draws nothing
    assert list(ip.user_ns["y"]) == list(plainly(cells, ("y",))["y"])
    capsys.readouterr()
    ip.run_cell("%nbbuild why b")     # run again now, b would start where it left the generators
    assert "b is stale: the state of random's global generator changed" in capsys.readouterr().out


# ---------------------------------------------------------------- the property test

_TEMPLATES = [
    "{x} = [{k}]",
    "{x} = {y} + [{k}]",
    "{x}.append({k})",
    "{x}.append(len({y}))",
    "{x} = sorted({y}, reverse=True)",
    "print('{x}', len({x}))",
    "{x}.append(random.randint(0, 99))",
    "for item in {y}:\n    {x} = [item + {k}]",
    "random.seed({k})\n{x} = [random.random()]",
    "{x} = {y} + [p]",                                     # the ordinary parameter cell's p
    "with open('{x}.txt', 'w') as f:\n    f.write(str({y}))",   # a file written...
    "{x} = [open('{y}.txt').read()]",                      # ...and read by a later cell
]
_NAMES3 = ("a", "b", "c")
_FIRST = "import random\nrandom.seed(7)\na, b, c = [1], [2], [3]\nfor n in 'abc':\n    open(n + '.txt', 'w').write(n)"
_PARAM = "p = {k}"      # an ordinary cell (no %%rule), the second of every notebook: a parameter
_FILE_READ = re.compile(r"open\('(\w)\.txt'\)")

cell_strategy = st.builds(lambda t, x, y, k: _TEMPLATES[t].format(x=x, y=y, k=k),
                          st.integers(0, len(_TEMPLATES) - 1), st.sampled_from(_NAMES3),
                          st.sampled_from(_NAMES3), st.integers(0, 3))
edit_strategy = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 20), cell_strategy),
    st.tuples(st.just("insert"), st.integers(0, 20), cell_strategy),
    st.tuples(st.just("delete"), st.integers(0, 20), st.just("")),
    st.tuples(st.just("swap"), st.integers(0, 20), st.just("")),
    st.tuples(st.just("param"), st.integers(0, 3), st.just("")),
)


class Model:
    """What a minimal incremental run of the cells runs: a rule cell runs when its source, the
    versions of the names it reads (who bound them last, and with which inputs; an ordinary
    cell's names by value), the bytes of the files it reads or, if it draws, the generator's
    state it starts from were never seen before; a name it binds or changes in place is then its
    version (the other names of the cell that bound a changed value stay that cell's: the
    templates share no object between names, so none of them changed too). It runs the cells
    plainly in its own directory, which outlives the rounds as the notebook's does."""

    def __init__(self, directory: str) -> None:
        self.seen: set[str] = set()
        self.directory = directory

    def run(self, cells: list[str]) -> tuple[list[int], dict, dict]:
        import copy
        import random
        from nbbuild.notebook.cells import analyse
        here = os.getcwd()
        os.chdir(self.directory)
        try:
            ns: dict = {}
            binder: dict[str, str] = {}
            ran = []
            for n, src in enumerate(cells):
                names = analyse(src)
                if n == 1:                                     # the ordinary cell: read by value
                    exec(compile(src, "<cell 1>", "exec"), ns)
                    continue
                reads = sorted(set(names.inputs) & set(binder))
                plain = [(r, repr(ns[r])) for r in names.inputs if r == "p"]
                files = [(f, open(f"{f}.txt").read()) for f in _FILE_READ.findall(src)]
                before = {r: copy.deepcopy(ns[r]) for r in reads}
                rng = repr(random.getstate())
                exec(compile(src, f"<cell {n}>", "exec"), ns)
                draws = repr(random.getstate()) != rng
                seeds_first = "random.seed(" in src        # (the templates seed before they draw)
                key = repr((src, [(r, binder[r]) for r in reads], plain, files,
                            rng if draws and not seeds_first else None))
                if key not in self.seen:
                    ran.append(n)
                    self.seen.add(key)
                changed = {r for r in reads if ns.get(r) != before[r] and r not in names.outputs}
                for m in changed | {o for o in names.outputs if o in _NAMES3 or o == "item"}:
                    binder[m] = key
            return ran, {k: ns[k] for k in _NAMES3}, _files()
        finally:
            os.chdir(here)


def _files() -> dict[str, str]:
    return {n: open(f"{n}.txt").read() for n in _NAMES3}


def _edit(cells: list[str], edit: tuple) -> list[str]:
    kind, at, src = edit
    if kind == "param":
        return [cells[0], _PARAM.format(k=at)] + cells[2:]
    body = cells[2:]
    at = at % (len(body) + (kind == "insert")) if body or kind == "insert" else 0
    if kind == "replace" and body:
        body[at] = src
    elif kind == "insert":
        body.insert(at, src)
    elif kind == "delete" and len(body) > 1:
        del body[at]
    elif kind == "swap" and len(body) > 1:
        j = (at + 1) % len(body)
        body[at], body[j] = body[j], body[at]
    return cells[:2] + body


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(cell_strategy, min_size=2, max_size=6), st.lists(edit_strategy, min_size=1, max_size=3))
def test_after_any_edits_the_values_are_plain_executions_and_only_what_changed_runs(shell, cells, edits):
    cells = [_FIRST, _PARAM.format(k=0)] + cells
    here = os.getcwd()
    model = Model(tempfile.mkdtemp(prefix="nbbuild-model-"))
    os.chdir(tempfile.mkdtemp(prefix="nbbuild-property-"))    # each example its own store
    try:
        _rounds(shell, model, cells, edits)
    finally:
        os.chdir(here)


def _rounds(shell, model, cells, edits) -> None:
    for round_cells in [cells] + [cells := _edit(cells, e) for e in edits]:   # noqa: B020
        expected_ran, expected, expected_files = model.run(round_cells)
        ip = shell()                                   # each round: Restart & Run All
        ran = []
        for n, cell in enumerate(round_cells):
            before = ip._nbbuild_state.build.report
            result = ip.run_cell(cell if n == 1 else "%%rule\n" + cell, store_history=True)
            assert result.error_in_exec is None, (cell, result.error_in_exec)
            if ip._nbbuild_state.build.report is not before and ip._nbbuild_state.build.report.executed:
                ran.append(n)
        assert {k: ip.user_ns[k] for k in _NAMES3} == expected, round_cells
        assert _files() == expected_files, round_cells
        assert ran == expected_ran, round_cells


def test_an_ordinary_cell_reading_a_name_changes_only_the_names_whose_values_it_changed(shell):
    """`fig` pickles differently each time: an ordinary cell that only reads `x` beside it leaves
    `x` the rule's version (`%build x` builds it), and a later cell reading `x` reuses."""
    ip = shell()
    ip.run_cell(RESTLESS)
    cells = ["%%rule\nfig = Restless()\nx = [1.0, 2.0]", "print(len(x))", "%%rule\ny = sum(x)"]
    for cell in cells:
        assert ip.run_cell(cell, store_history=True).success
    state = ip._nbbuild_state
    maker = state.rule_for("x").name
    assert state.versions.producer("x") == maker == state.fetches[state.rule_for("y").name]["x"]
    assert ip.run_cell("%build x").success
    ip.run_cell("x.append(3.0)")                  # an ordinary cell that does change it: its version now
    assert state.versions.producer("x") is None


GLOBALS = ["x = 1", "def bump():\n    global x\n    x += 1", "bump()", "y = x * 10",
           "def setup():\n    global config\n    config = {'k': y}\nsetup()", "z = config['k'] + x"]


@pytest.mark.parametrize("ordinary", [None, 2], ids=["every cell a rule", "the call an ordinary cell"])
def test_a_function_that_rebinds_a_global_makes_a_version_where_it_is_called(shell, ordinary):
    """`global x` in a function binds x when the function runs, not where it is defined: the
    cell that calls it makes the version later cells read, also when reused after a restart."""
    expected = plainly(GLOBALS, ["x", "y", "config", "z"])
    assert expected == {"x": 2, "y": 20, "config": {"k": 20}, "z": 22}
    for restart in (False, True):
        ip = shell()
        for i, cell in enumerate(GLOBALS):
            result = ip.run_cell(cell if i == ordinary else "%%rule\n" + cell, store_history=True)
            assert result.success, (restart, cell, result.error_in_exec)
        assert {n: ip.user_ns[n] for n in expected} == expected, restart
    assert ip._nbbuild_state.build.metrics().session.ran == 0
