"""The `nbbuild` command (cli.py), run as a user runs it: in a subprocess, on a notebook written
here, each `run`, `status`, `why` and `graph` in a fresh kernel (a second or two each).

Rule bodies append their name to `calls.txt`, relative to the kernel's working directory, so the
file says which rules ran, in order, and that the kernel ran in the notebook's folder.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import nbbuild

TIMEOUT = 180
LOG = "def log(name):\n    with open('calls.txt', 'a') as f:\n        f.write(name + '\\n')"
RULES = [
    "%load_ext nbbuild",
    "n = 3\n" + LOG,                                  # the parameter cell
    "%%rule\nlog('raw')\nraw = list(range(n))",
    "%%rule\nlog('clean')\nclean = [x * 2 for x in raw]",
    "%%rule\nlog('other')\nother = sum(raw)",
    "print(clean)",                                   # uses a built value
    "%build clean other",
]


def write(folder: Path, cells: list[str], name: str = "nb.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), str(path))
    return path


def calls(folder: Path) -> list[str]:
    log = folder / "calls.txt"
    return log.read_text().split() if log.exists() else []


def nbbuild_cmd(*args: str, cwd: Path, env: dict | None = None, command: list[str] | None = None):
    """The command in a subprocess. Not under pytest's name: ipykernel then leaves fd 2 alone,
    and the kernel's progress would reach our stderr by another way than it does for a user."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "NBBUILD_VIEW")}
    environ.update(env or {})
    return subprocess.run((command or [sys.executable, "-m", "nbbuild"]) + list(args), cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=TIMEOUT)


def summary(stdout: str) -> tuple[int, int, int]:
    """(ran, reused, failed) of the session line that `run` ends with."""
    found = re.search(r"^nb\.ipynb: \d+ builds?: ran (\d+), reused (\d+), failed (\d+);", stdout, re.M)
    assert found, stdout
    return tuple(int(g) for g in found.groups())


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# ------------------------------------------------------------ run

def test_run_builds_every_rule_cell_and_a_second_run_reuses_everything(tmp_path):
    folder = write(tmp_path / "project", RULES).parent
    before = (folder / "nb.ipynb").read_bytes()
    first = nbbuild_cmd("run", "project/nb.ipynb", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert calls(folder) == ["raw", "clean", "other"]
    assert summary(first.stdout) == (3, 5, 0)
    # each build's line on stderr, led by its targets (the live line is there too on a terminal)
    assert "raw: ran 1, reused 0, failed 0" in first.stderr
    assert "clean, other: ran 0, reused 3, failed 0" in first.stderr
    assert (folder / ".nbbuild" / "cache.db").is_file()      # the notebook's own store, beside it
    assert not (tmp_path / ".nbbuild").exists()

    second = nbbuild_cmd("run", "project/nb.ipynb", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert calls(folder) == ["raw", "clean", "other"]        # no rule body ran again
    ran, reused, failed = summary(second.stdout)
    assert (ran, failed) == (0, 0) and reused > 0
    assert (folder / "nb.ipynb").read_bytes() == before      # the notebook is only read


def test_run_target_builds_only_that_target_and_what_it_needs(tmp_path):
    folder = write(tmp_path / "project", RULES).parent
    before = (folder / "nb.ipynb").read_bytes()
    # NBBUILD_DIR overrides the store, relative to where the command runs (not the notebook's folder)
    done = nbbuild_cmd("run", "project/nb.ipynb", "--target", "clean", cwd=tmp_path, env={"NBBUILD_DIR": "elsewhere"})
    assert done.returncode == 0, done.stderr
    assert calls(folder) == ["raw", "clean"]          # not `other`, nor the notebook's own %build
    assert summary(done.stdout) == (2, 0, 0)
    assert (tmp_path / "elsewhere" / "cache.db").is_file()
    assert not (folder / ".nbbuild").exists()
    assert (folder / "nb.ipynb").read_bytes() == before

    again = nbbuild_cmd("run", "project/nb.ipynb", "-t", "other", "-t", "clean", cwd=tmp_path,
                        env={"NBBUILD_DIR": "elsewhere"})
    assert again.returncode == 0, again.stderr
    assert calls(folder) == ["raw", "clean", "other"]
    assert summary(again.stdout)[0] == 1


def test_run_target_keeps_a_plain_cell_whose_names_a_later_rule_reads(tmp_path):
    """`width = len(clean)` reads a built value, and `wide` reads `width`: the cell is run, after
    a build of `clean`, so that `wide` sees the value Run All would give it."""
    cells = RULES[:4] + ["width = len(clean)", "%%rule\nlog('wide')\nwide = [x * width for x in clean]",
                         "print(wide)"]
    folder = write(tmp_path, cells).parent
    done = nbbuild_cmd("run", "nb.ipynb", "--target", "wide", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls(folder) == ["raw", "clean", "wide"]
    everything = nbbuild_cmd("run", "nb.ipynb", cwd=tmp_path)
    assert everything.returncode == 0, everything.stderr
    assert calls(folder) == ["raw", "clean", "wide"]      # Run All agrees: `wide` is up to date


def test_a_failing_rule_exits_1_with_one_line_naming_it(tmp_path):
    cells = RULES[:4] + ["%%rule\nlog('bad')\nbad = clean[0] / 0", "%%rule\nlog('after')\nafter = 1"]
    folder = write(tmp_path, cells).parent
    done = nbbuild_cmd("run", "nb.ipynb", cwd=tmp_path)
    assert done.returncode == 1
    assert calls(folder) == ["raw", "clean", "bad"]            # it stopped at the failing cell
    last = done.stderr.strip().splitlines()[-1]
    assert last == "nbbuild run: bad failed: ZeroDivisionError: division by zero (code cell 5 of nb.ipynb)"
    assert "Traceback" not in done.stderr
    assert summary(done.stdout)[2] == 1                        # the totals still come, with the failure

    target = nbbuild_cmd("run", "nb.ipynb", "--target", "bad", cwd=tmp_path)
    assert target.returncode == 1
    assert target.stderr.strip().splitlines()[-1] == "nbbuild run: bad failed: ZeroDivisionError: division by zero"
    assert calls(folder) == ["raw", "clean", "bad", "bad"]     # raw and clean reused


def test_a_failing_plain_cell_exits_1_naming_the_cell(tmp_path):
    folder = write(tmp_path, RULES[:3] + ["x = {}\nx['missing']", RULES[3]]).parent
    done = nbbuild_cmd("run", "nb.ipynb", cwd=tmp_path)
    assert done.returncode == 1
    assert calls(folder) == ["raw"]
    assert done.stderr.strip().splitlines()[-1] == "nbbuild run: code cell 4 of nb.ipynb failed: KeyError: 'missing'"
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------ status, why, graph

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A notebook whose `clean` (and so `raw`) is built and `other` is not."""
    folder = tmp_path_factory.mktemp("built")
    write(folder, RULES)
    done = nbbuild_cmd("run", "nb.ipynb", "--target", "clean", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert calls(folder) == ["raw", "clean"]
    return folder


def test_status_lists_every_rule_and_builds_nothing(built):
    done = nbbuild_cmd("status", "nb.ipynb", cwd=built)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert list(rows) == ["raw", "clean", "other"]
    assert "up to date" in rows["raw"] and "up to date" in rows["clean"]
    assert "never built" in rows["other"]
    assert calls(built) == ["raw", "clean"]


def test_why_explains_a_target_and_an_unknown_one_is_one_line(built):
    done = nbbuild_cmd("why", "nb.ipynb", "other", cwd=built)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "other is stale: never built"

    unknown = nbbuild_cmd("why", "nb.ipynb", "nosuch", cwd=built)
    assert unknown.returncode == 2
    assert one_line(unknown.stderr) == \
        "nbbuild why: no rule produces 'nosuch' (names produced: clean, other, raw)"
    assert calls(built) == ["raw", "clean"]


def test_graph_writes_an_svg_naming_the_rules(built):
    done = nbbuild_cmd("graph", "nb.ipynb", "-o", "graph.svg", cwd=built)
    assert done.returncode == 0, done.stderr
    svg = (built / "graph.svg").read_text()
    assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    for rule in ("raw", "clean", "other"):
        assert f">{rule}" in svg, rule
    assert calls(built) == ["raw", "clean"]


def test_run_with_an_unknown_target_is_one_line_and_runs_nothing(built):
    done = nbbuild_cmd("run", "nb.ipynb", "--target", "nosuch", cwd=built)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == \
        "nbbuild run: --target: no rule produces 'nosuch' (names produced: clean, other, raw)"
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert calls(built) == ["raw", "clean"]


# ------------------------------------------------------------ store (no kernel)

def a_store(path: Path) -> Path:
    with nbbuild.Build(path, workers=1, progress=False) as b:
        @b.rule
        def numbers():
            return list(range(1000))

        @b.rule
        def total():
            return sum(numbers())

        assert total() == 499500
    return path


def test_store_info_gc_and_clear(tmp_path):
    store = a_store(tmp_path / "store")
    info = nbbuild_cmd("store", "info", "--dir", "store", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert re.search(r"^values   2 \(0 as files\), 2 traces$", info.stdout, re.M), info.stdout
    assert re.search(r"^size     .* of .* \(\d+%\)$", info.stdout, re.M), info.stdout
    assert f"store    {store}" in info.stdout

    gc = nbbuild_cmd("store", "gc", cwd=tmp_path, env={"NBBUILD_DIR": str(store)})    # NBBUILD_DIR: the default
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout.startswith("evicted 0 values")
    assert "values   2 " in gc.stdout

    clear = nbbuild_cmd("store", "clear", "--dir", str(store), cwd=tmp_path)
    assert clear.returncode == 0, clear.stderr
    assert clear.stdout.startswith("store cleared")
    assert "values   0 (0 as files), 0 traces" in clear.stdout


def test_store_refuses_a_folder_that_is_no_store_and_creates_none(tmp_path):
    missing = nbbuild_cmd("store", "info", cwd=tmp_path)          # .nbbuild here: there is none
    assert missing.returncode == 2
    assert one_line(missing.stderr).startswith("nbbuild store: no store at .nbbuild: nothing was built there")
    assert not (tmp_path / ".nbbuild").exists()

    (tmp_path / "plain").mkdir()
    for action in ("info", "gc", "clear"):
        done = nbbuild_cmd("store", action, "--dir", "plain", cwd=tmp_path)
        assert done.returncode == 2
        assert one_line(done.stderr).startswith("nbbuild store: plain is not an nbbuild store")
    assert list((tmp_path / "plain").iterdir()) == []


# ------------------------------------------------------------ arguments

@pytest.mark.parametrize("args, says", [
    ([], "nbbuild: the following arguments are required: COMMAND (see nbbuild --help)"),
    (["frobnicate"], "nbbuild: argument COMMAND: invalid choice: 'frobnicate'"),
    (["run"], "nbbuild run: the following arguments are required: NOTEBOOK (see nbbuild run --help)"),
    (["run", "missing.ipynb"], "nbbuild run: no such notebook: missing.ipynb"),
    (["run", "notes.txt"], "nbbuild run: notes.txt is not a Jupyter notebook (it is not JSON): give a .ipynb file"),
    (["status", "folder"], "nbbuild status: folder is a folder: give a notebook file (NAME.ipynb)"),
    (["why", "plain.ipynb", "x"], "nbbuild why: plain.ipynb never loads nbbuild: add a cell `%load_ext nbbuild`"),
    (["why", "plain.ipynb"], "nbbuild why: the following arguments are required: TARGET"),
    (["run", "plain.ipynb", "--target"], "nbbuild run: argument -t/--target: expected one argument"),
    (["run", "plain.ipynb", "--frobnicate"], "nbbuild: unrecognized arguments: --frobnicate"),
    (["graph", "plain.ipynb", "-o", "nowhere/graph.svg"], "nbbuild graph: -o nowhere/graph.svg: its folder nowhere"),
    (["store", "bogus"], "nbbuild store: argument info|gc|clear|team-key: invalid choice: 'bogus'"),
    (["run", "loads.ipynb", "-p", "1x", "3"], "nbbuild run: -p: '1x' is not a Python name"),
    (["run", "loads.ipynb", "-p", "a", "1", "-p", "a", "2"], "nbbuild run: -p a is given twice: add --sweep"),
    (["run", "loads.ipynb", "-p", "a"], "nbbuild run: argument -p/--parameter: expected 2 arguments"),
    (["run", "loads.ipynb", "-o", "loads.ipynb"], "nbbuild run: -o loads.ipynb: that is the notebook given"),
    (["run", "loads.ipynb", "--sweep", "-p", "a", "1", "-p", "a", "2", "-o", "out.ipynb"],
     "nbbuild run: -o out.ipynb: a sweep writes a notebook per parameter set: give a pattern such as 'out-{a}.ipynb'"),
    (["run", "loads.ipynb", "-f", "notes.txt"], "nbbuild run: -f notes.txt: the file is not a mapping of NAME: VALUE"),
    (["run", "loads.ipynb", "-f", "missing.yaml"], "nbbuild run: -f missing.yaml: cannot read it"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, args, says):
    (tmp_path / "notes.txt").write_text("just notes\n")
    (tmp_path / "folder").mkdir()
    write(tmp_path, ["x = 1"], name="plain.ipynb")
    write(tmp_path, ["%load_ext nbbuild"], name="loads.ipynb")
    done = nbbuild_cmd(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(says)
    assert done.stdout == ""


@pytest.mark.parametrize("command", [[], ["run"], ["status"], ["why"], ["graph"], ["store"]])
def test_help_on_every_command(tmp_path, command):
    done = nbbuild_cmd(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {' '.join(['nbbuild'] + command)} ")
    assert done.stderr == ""


def test_the_installed_script_is_the_same_command(tmp_path):
    script = Path(sys.executable).parent / "nbbuild"
    if not script.exists():
        pytest.skip("no nbbuild script beside this Python (pip install -e . makes it)")
    done = nbbuild_cmd("--help", cwd=tmp_path, command=[str(script)])
    assert done.returncode == 0 and "run" in done.stdout and "store" in done.stdout
    module = nbbuild_cmd("--help", cwd=tmp_path, command=[sys.executable, "-m", "nbbuild.cli"])
    assert module.stdout == done.stdout
