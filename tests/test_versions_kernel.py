"""Notebooks as people write them, in a real kernel (nbclient, Run All): every cell a rule
(`%%rule` on each, or `%nbbuild auto`) shows what plain execution shows, in plain execution's
order (the result before the figures), and after a restart runs no cell body and shows the same."""
from __future__ import annotations

import re

import nbformat
import pytest

pytest.importorskip("matplotlib")

CELLS = [
    "import numpy as np\nimport pandas as pd\nimport matplotlib.pyplot as plt\nnp.random.seed(0)",
    "df = pd.DataFrame({'x': np.random.rand(20)})\ndf.shape",
    "df['y'] = df.x * 2\nprint('columns', list(df.columns))",
    "df = df[df.x > 0.3]\nlen(df)",
    "fig, ax = plt.subplots()\nax.plot(df.x, df.y)\nround(df.y.sum(), 6)",
    "fig, ax = plt.subplots()\nax.hist(np.random.rand(50))\nprint('drawn')",
    "noise = np.random.rand(3)\nnoise.round(6).tolist()",
    "items = []\nfor i in range(3):\n    items.append(i * len(df))\nitems",
    "items.append(-1)\ndf.describe().loc['count', 'x']",
    # the result is formatted before the figure is drawn (which moves the label), as plainly
    "fig, ax = plt.subplots()\nax.plot(df.x)\nax.set_xlabel('x')",
    "fig, ax = plt.subplots()\nax.set_title('no result');",
]
SESSION = "# nbbuild: off\nprint('ran', get_ipython()._nbbuild_state.build.metrics().session.ran)"


def notebook(cells: list[str]):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


def shown(cell) -> list[tuple[str, str]]:
    """What a cell shows, in order, as plain execution would: the build view left out, addresses
    normalised, a figure as its kind."""
    found = []
    for o in cell.outputs:
        if o.output_type == "stream":
            found.append((o.name, re.sub(r"0x[0-9a-f]+", "0x?", o.text)))
        elif o.output_type in ("execute_result", "display_data"):
            if "nbbuild" in o.get("metadata", {}):
                continue
            kind = "figure" if "image/png" in o.data else o.output_type
            found.append((kind, re.sub(r"0x[0-9a-f]+", "0x?", o.data.get("text/plain", "")) if kind != "figure" else ""))
        elif o.output_type == "error":
            found.append(("error", o.ename))
    return found


@pytest.fixture(scope="module")
def plain(tmp_path_factory, execute_notebook):
    nb = execute_notebook(notebook(["%matplotlib inline"] + CELLS), tmp_path_factory.mktemp("plain"))
    return [shown(c) for c in nb.cells[1:]]


@pytest.mark.parametrize("way", ["rule", "auto"])
def test_every_cell_a_rule_shows_what_plain_execution_shows_also_after_a_restart(way, plain, tmp_path,
                                                                                  execute_notebook):
    head = ["%matplotlib inline", "%load_ext nbbuild"] + (["%nbbuild auto"] if way == "auto" else [])
    body = ["%%rule\n" + c for c in CELLS] if way == "rule" else CELLS
    for run, ran in (("first", str(len(CELLS))), ("after a restart", "0")):
        nb = execute_notebook(notebook(head + body + [SESSION]), tmp_path)
        cells = nb.cells[len(head):]
        assert [shown(c) for c in cells[:-1]] == plain, run
        assert cells[-1].outputs[0].text == f"ran {ran}\n", run


def test_the_result_comes_before_the_figures_as_in_plain_jupyter(plain):
    assert [kind for kind, _ in plain[4]] == ["execute_result", "figure"]     # the oracle's order
    assert [kind for kind, _ in plain[5]] == ["stdout", "figure"]


def test_the_oracle_shows_a_result_formatted_before_the_figure_is_drawn_and_none_after_a_semicolon(plain):
    assert plain[9] == [("execute_result", "Text(0.5, 0, 'x')"), ("figure", "")]
    assert plain[10] == [("figure", "")]
