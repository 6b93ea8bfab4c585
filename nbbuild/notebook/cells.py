"""What a notebook cell binds and reads: the analysis that turns a cell into a rule.

Contract: `analyse(source)` takes a cell's Python source (after IPython's own transformation) and
returns `CellNames`:
- `outputs`: the names the cell binds at top level, in order — assignments (also augmented,
  annotated and walrus), imports, defs, classes, for/with/except/match targets. A name deleted at
  top level and not bound again is not an output. A name that a function declares `global` and
  assigns is bound where the function is called, not where it is defined: it is found when it is
  bound (replay.Capture's `REBOUND`), not here.
- `default_name`: the rule's name when the cell gives none: the first name it assigns (`=`, `+=`,
  `:=`), else the first it binds (an import, a def, a loop or with target).
- `imported`: outputs bound only by imports. They are bound like any output, but a module is the
  same object whoever imports it: several rule cells may import one name.
- `inputs`: the free names the cell reads, in order of first read — at top level, a name read
  before the cell binds it (`x += 1` and `del x` read `x`); inside functions, classes and lambdas
  the cell defines, a name they read that is neither their own nor bound anywhere at the cell's
  top level. The first iterable of a comprehension is read in the enclosing scope, and a walrus
  inside a comprehension binds there. Builtins and IPython's own names (`get_ipython`, `In`,
  `Out`, `_`, `_i3`, `display`, ...) are never inputs. `deferred`: the inputs read only inside
  those functions, classes and lambdas, when they are called (plainly: the notebook's globals then).
A syntax error, or a star import (whose names cannot be known), raises RuleError with one line.
Making a rule's function of a cell is cellcode.py's.
"""
from __future__ import annotations

import ast
import functools
import builtins
import re
import warnings
from typing import Sequence
from dataclasses import dataclass

from ..errors import RuleError

__all__ = ["CellNames", "analyse", "parse", "LAST", "FETCH", "CAPTURE", "OWN"]

OWN = "__nbbuild_"                 # names of ours in a cell's outputs begin so: never the user's
LAST = "__nbbuild_last__"
FETCH = "__nbbuild_fetch__"
CAPTURE = "__nbbuild_capture__"

_IPYTHON_NAMES = frozenset({"get_ipython", "In", "Out", "exit", "quit", "display", "_oh", "_ih", "_dh"})
_IPYTHON_PATTERN = re.compile(r"^_+$|^_i+$|^_i?\d+$")
_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True)
class CellNames:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    assigned: tuple[str, ...] = ()   # outputs bound by =, += or := (not import, def, for, with)
    imported: tuple[str, ...] = ()   # outputs bound only by import statements
    deferred: tuple[str, ...] = ()   # inputs read only inside the functions, classes, lambdas it defines

    @property
    def default_name(self) -> str | None:
        """The rule's name when the cell gives none: what it computes, not what it imports."""
        return (self.assigned or self.outputs or (None,))[0]


def _ignored(name: str) -> bool:
    return name in _BUILTINS or name in _IPYTHON_NAMES or bool(_IPYTHON_PATTERN.match(name))


def _targets(node: ast.AST) -> list[str]:
    """Names a binding target binds (`a, (b, *c) = ...`, `for x in`, `with ... as y`)."""
    return [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]


def _pattern_names(pattern: ast.AST) -> list[str]:
    names = []
    for n in ast.walk(pattern):
        if isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name:
            names.append(n.name)
        elif isinstance(n, ast.MatchMapping) and n.rest:
            names.append(n.rest)
    return names


class _Scope(ast.NodeVisitor):
    """Reads and binds of one scope, in execution order. Function bodies are deferred: their
    outer reads are collected separately and judged against everything the cell binds."""

    def __init__(self, top: bool):
        self.top = top
        self.reads: list[str] = []          # reads of names not bound (yet) in this scope
        self.bound: list[str] = []
        self.deleted: set[str] = set()
        self.deferred: list[str] = []       # outer reads of nested functions, classes, lambdas
        self.globals_bound: list[str] = []  # names nested code declares global and assigns

    # ------------------------------------------------------------ reads and binds

    def read(self, name: str) -> None:
        if name not in self.bound:
            self.reads.append(name)

    def bind(self, names: list[str]) -> None:
        for name in names:
            self.bound.append(name)
            self.deleted.discard(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.read(node.id)
        elif isinstance(node.ctx, ast.Store):
            self.bind([node.id])
        else:  # del x: reads x, then unbinds it
            self.read(node.id)
            self.deleted.add(node.id)

    # ------------------------------------------------------------ statements whose order matters

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for t in node.targets:
            self.visit(t)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):   # x += 1 reads x (symtable does not say so)
            self.read(node.target.id)
        self.visit(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.annotation)
        self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    visit_AsyncFor = visit_For

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                raise RuleError(f"'from {getattr(node, 'module', '')} import *' in a rule cell binds names that "
                                "cannot be known; import the names you use, or run it without %%rule")
            self.bind([alias.asname or alias.name.partition(".")[0]])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.bind([node.name])
        for stmt in node.body:
            self.visit(stmt)
        if node.name:   # Python unbinds the exception name when the handler ends
            self.deleted.add(node.name)

    def visit_match_case(self, node: ast.match_case) -> None:
        self.bind(_pattern_names(node.pattern))
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        pass

    # ------------------------------------------------------------ nested scopes

    def _nested(self, node: ast.AST, params: list[str], body: Sequence[ast.AST]) -> None:
        inner = _Scope(top=False)
        inner.bind(params)
        declared_global: set[str] = set()
        for n in ast.walk(node):
            if isinstance(n, ast.Global):
                declared_global.update(n.names)
        for stmt in body:
            inner.visit(stmt)
        local = set(inner.bound) - declared_global
        self.deferred.extend(n for n in inner.reads + inner.deferred if n not in local)
        self.globals_bound.extend(inner.globals_bound)
        self.globals_bound.extend(n for n in inner.bound if n in declared_global)

    def _arguments(self, args: ast.arguments) -> list[str]:
        every = args.posonlyargs + args.args + args.kwonlyargs
        every += [a for a in (args.vararg, args.kwarg) if a is not None]
        # defaults and annotations are evaluated where the function is defined
        for expr in args.defaults + [d for d in args.kw_defaults if d is not None] + [
                a.annotation for a in every if a.annotation is not None]:
            self.visit(expr)
        return [a.arg for a in every]

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for deco in node.decorator_list:
            self.visit(deco)
        params = self._arguments(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        self._nested(node, params, node.body)
        self.bind([node.name])

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._nested(node, self._arguments(node.args), [node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            self.visit(expr)
        inner = _Scope(top=False)
        for stmt in node.body:          # a class body runs now, in order; its methods later
            inner.visit(stmt)
        self.reads.extend(n for n in inner.reads if n not in self.bound)
        self.deferred.extend(inner.deferred)
        self.globals_bound.extend(inner.globals_bound)
        self.bind([node.name])

    def _comprehension(self, node: ast.AST, elements: list[ast.AST]) -> None:
        gens: list[ast.comprehension] = node.generators  # type: ignore[attr-defined]
        self.visit(gens[0].iter)        # the first iterable is evaluated in this scope
        inner = _Scope(top=False)
        for i, gen in enumerate(gens):
            if i:
                inner.visit(gen.iter)
            inner.visit(gen.target)
            for cond in gen.ifs:
                inner.visit(cond)
        for element in elements:
            inner.visit(element)
        walrus = [n.target.id for n in ast.walk(node) if isinstance(n, ast.NamedExpr)]
        own = {n for gen in gens for n in _targets(gen.target)}
        for name in inner.reads:
            if name not in own:
                self.read(name)
        self.deferred.extend(inner.deferred)
        self.bind(walrus)               # a walrus in a comprehension binds in the enclosing scope

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])


def parse(source: str) -> ast.Module:
    """The cell's syntax tree; RuleError (one line) when it is not Python."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ast.parse on junk can print SyntaxWarnings
        try:
            tree = ast.parse(source)
        except SyntaxError as e:
            raise RuleError(f"syntax error in the cell, line {e.lineno}: {e.msg}") from None
        except (ValueError, RecursionError, MemoryError) as e:   # NUL bytes; absurd nesting
            raise RuleError(f"the cell cannot be read as Python: {e}") from None
    return tree


@functools.lru_cache(maxsize=512)
def analyse(source: str) -> CellNames:
    # a pure function of the text, asked for several times per cell (auto, the ordinary cell's
    # reads, the rule, its refusal): analysed once
    tree = parse(source)
    top = _Scope(top=True)
    try:
        for stmt in tree.body:
            top.visit(stmt)
    except RecursionError:
        raise RuleError("the cell nests too deeply to analyse; split the expression") from None
    bound_anywhere = set(top.bound) | set(top.globals_bound)
    inputs = [n for n in top.reads + [d for d in top.deferred if d not in bound_anywhere] if not _ignored(n)]
    outputs = [n for n in top.bound if n not in top.deleted]
    assigned = [n for n in _assigned(tree.body) if n in outputs]
    imports, others = _bindings(tree.body)
    imported = [n for n in imports if n in outputs and n not in others and n not in top.globals_bound]
    later = [n for n in inputs if n not in top.reads]
    return CellNames(tuple(dict.fromkeys(inputs)), tuple(dict.fromkeys(outputs)), tuple(dict.fromkeys(assigned)),
                     tuple(dict.fromkeys(imported)), tuple(dict.fromkeys(later)))


_OWN_SCOPE = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp,
              ast.DictComp, ast.GeneratorExp)


def _assigned(nodes: list) -> list[str]:
    """Names assigned (`=`, `+=`, `:=`) at top level, in order, not looking into scopes of their own."""
    found: list[str] = []
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Assign):
            found.extend(n for t in node.targets for n in _targets(t))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
            found.extend(_targets(node.target))
        if not isinstance(node, _OWN_SCOPE):
            stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return found


def _bindings(nodes: list) -> tuple[list[str], set[str]]:
    """(names bound at top level by import statements, names bound there any other way)."""
    imports: list[str] = []
    others: set[str] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.extend((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            others.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            others.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            others.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            others.add(node.name)
        if not isinstance(node, _OWN_SCOPE):
            stack.extend(ast.iter_child_nodes(node))
    return imports, others
