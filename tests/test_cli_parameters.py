"""`nbbuild run` with parameters, as papermill users give them (cli/parameters.py), on the
notebooks in notebooks/: `-p NAME VALUE` sets a value after the cell tagged `parameters`, `-o`
writes the executed notebook and never the input, `-f` reads YAML, and a sweep runs every set on
one kernel, reusing what the sets share, with a table of the runs.

The tests of -p and -f share one copy of the notebook, and so its store (`warm`): each reads only
the notebooks it writes, and what a run shows does not depend on what the store held before it;
the sweep's test counts what runs, on a copy of its own."""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from test_cli import nbbuild_cmd

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture
def quickstart(tmp_path) -> Path:
    """notebooks/quickstart.ipynb in a folder of its own (it writes data/ beside itself)."""
    shutil.copy(NOTEBOOKS / "quickstart.ipynb", tmp_path)
    return tmp_path / "quickstart.ipynb"


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """notebooks/quickstart.ipynb in a folder the module's tests share, with the store they build
    up there, each run reusing what the runs before it built."""
    folder = tmp_path_factory.mktemp("warm")
    shutil.copy(NOTEBOOKS / "quickstart.ipynb", folder)
    return folder / "quickstart.ipynb"


def clean_rows(nb) -> str:
    """The text of what the `clean` rule cell showed: the table of rows above the threshold."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%rule\nclean ="))
    return "".join(o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def injected(nb) -> tuple[int, str]:
    at = next(i for i, c in enumerate(nb.cells) if "injected-parameters" in c.metadata.get("tags", []))
    assert "parameters" in nb.cells[at - 1].metadata.get("tags", [])      # right after the defaults
    return at, nb.cells[at].source


def test_p_sets_a_value_after_the_parameters_cell_and_o_writes_the_executed_notebook(warm):
    quickstart = warm
    before = quickstart.read_bytes()
    done = nbbuild_cmd("run", quickstart.name, "-p", "threshold", "15.0", "-o", "out.ipynb", cwd=quickstart.parent)
    assert done.returncode == 0, done.stderr
    assert quickstart.read_bytes() == before                              # the input is never written
    out = nbformat.read(str(quickstart.parent / "out.ipynb"), as_version=4)
    assert injected(out)[1] == "# Parameters\nthreshold = 15.0\n"
    rows = clean_rows(out)
    assert "15.5" in rows and "18.1" in rows and "12.0" not in rows and "14.2" not in rows
    assert all(c.execution_count for c in out.cells if c.cell_type == "code")
    plain = nbbuild_cmd("run", quickstart.name, "-o", "defaults.ipynb", cwd=quickstart.parent)
    assert plain.returncode == 0, plain.stderr
    defaults = nbformat.read(str(quickstart.parent / "defaults.ipynb"), as_version=4)
    assert "12.0" in clean_rows(defaults)                                 # threshold 10.0, as the notebook says
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in defaults.cells)


def test_a_sweep_runs_every_set_on_one_kernel_reusing_what_they_share(quickstart):
    done = nbbuild_cmd("run", quickstart.name, "--sweep", "-p", "threshold", "12", "-p", "threshold", "15",
                       "--show", "len(clean)", "-o", "out-{threshold}.ipynb", cwd=quickstart.parent)
    assert done.returncode == 0, done.stderr
    table = done.stdout.strip().splitlines()[-3:]
    assert table[0].split() == ["threshold", "ran", "reused", "failed", "seconds", "len(clean)", "status"]
    first, second = (row.split() for row in table[1:])
    assert first[0] == "12" and second[0] == "15" and first[-1] == second[-1] == "ok"
    assert 0 < int(second[1]) < int(first[1])             # the second set reuses what does not read threshold
    assert int(second[2]) > 0 and first[3] == second[3] == "0"
    for value in ("12", "15"):
        out = nbformat.read(str(quickstart.parent / f"out-{value}.ipynb"), as_version=4)
        assert injected(out)[1] == f"# Parameters\nthreshold = {value}\n"


def test_f_reads_a_yaml_file_and_a_list_in_it_is_a_sweep(warm):
    quickstart = warm
    folder = quickstart.parent
    (folder / "one.yaml").write_text("threshold: 15.0\n")
    (folder / "many.yaml").write_text("- threshold: 12.0\n- threshold: 15.0\n")
    done = nbbuild_cmd("run", quickstart.name, "-f", "one.yaml", "-o", "one.ipynb", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert injected(nbformat.read(str(folder / "one.ipynb"), as_version=4))[1] == "# Parameters\nthreshold = 15.0\n"
    done = nbbuild_cmd("run", quickstart.name, "-f", "many.yaml", cwd=folder)
    assert done.returncode == 0, done.stderr
    rows = [line.split()[0] for line in done.stdout.strip().splitlines()[-2:]]
    assert rows == ["12.0", "15.0"]
