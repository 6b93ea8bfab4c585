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
`refusal(source)` says in one line why a cell cannot be a rule (those, and top-level `await`,
`yield`, `return`), or None.

`compile_cell(source, name, filename, fetched, namespace)` makes the rule's function: a function
named `name`, with `namespace` (the user's) as its globals, whose body is the cell. Each name in
`fetched` (inputs whose version another rule bound) is assigned first from
`__nbbuild_fetch__(name, rule)`, a tracked fetch of that rule's version; every other input is read
from the namespace, so the core versions it by value or by code. It returns a dict of the outputs the cell bound, plus its last expression's value under
`LAST` (none when a semicolon ends the cell: IPython shows no result for it, and sets no `_`).
Line numbers stay those of the cell, so tracebacks point at the cell's lines. Functions and
classes the cell defines are named as plain execution names them (`make`, `Model.fit`,
`make.<locals>.inner`; their `__module__` is the namespace's `__name__`), not as locals of the
rule's function: their repr, and their pickle (cloudpickle keeps `__qualname__`), are plain
execution's.
"""
from __future__ import annotations

import ast
import functools
import builtins
import io
import re
import tokenize
import types
import warnings
from typing import Sequence
from dataclasses import dataclass

from ..errors import RuleError

__all__ = ["CellNames", "analyse", "compile_cell", "parse_signature", "refusal", "LAST", "FETCH", "CAPTURE", "OWN"]

OWN = "__nbbuild_"                 # names of ours in a cell's outputs begin so: never the user's
LAST = "__nbbuild_last__"
FETCH = "__nbbuild_fetch__"
CAPTURE = "__nbbuild_capture__"
_RECORD = "__nbbuild_record__"

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


def _parse(source: str) -> ast.Module:
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
    tree = _parse(source)
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


def parse_signature(text: str) -> ast.arguments:
    """`alpha, l1=0.0` of `%%rule model(alpha, l1=0.0)`."""
    try:
        fn = _parse(f"def _({text}): pass").body[0]
    except RuleError:
        raise RuleError(f"parameters ({text}) are not a Python parameter list") from None
    return fn.args  # type: ignore[attr-defined]


def compile_cell(source: str, name: str, filename: str, fetched: dict[str, str],
                 outputs: tuple[str, ...], namespace: dict, params: ast.arguments | None = None,
                 capture: bool = False, watch: tuple[str, ...] = ()) -> types.FunctionType:
    """`fetched` maps each name the cell reads from a rule to that rule's name (the version it
    reads): the call `__nbbuild_fetch__(name, rule)` is part of the code, so reading another
    version is another rule version. With `params`, the function takes them and returns the value
    of `name` as the cell binds it, or else its last expression, instead of the dict of outputs.
    With `capture`, the body runs inside `with __nbbuild_capture__(globals(), watch, name) as
    record:` (the notebook's recorder of output and of changes in place, a global; `watch`: the
    globals read by value), and `record.outputs(locals(), names)` picks the outputs."""
    tree = _parse(source)
    body: list[ast.stmt] = list(tree.body)
    _check_top_level(tree)
    quiet = params is None and _quiet(source)
    if body and isinstance(body[-1], ast.Expr) and not quiet:   # the cell's last expression, displayed as Jupyter would
        last = body[-1]
        body[-1] = ast.copy_location(ast.Assign([ast.Name(LAST, ast.Store())], last.value), last)
    line = body[0].lineno if body else 1
    prologue = [ast.parse(f"{n} = {FETCH}({n!r}, {r!r})").body[0] for n, r in fetched.items()]
    prologue += _global_reads([n for n in analyse(source).inputs if n not in fetched and n not in (params_of(params))
                               and _binds_locally(body, n)])
    if params is None and capture:
        epilogue = ast.parse(f"return {_RECORD}.outputs(locals(), {tuple(outputs) + (LAST,)!r})").body
    elif params is None:
        epilogue = ast.parse(f"__l = locals()\nreturn {{k: __l[k] for k in {tuple(outputs) + (LAST,)!r} if k in __l}}").body
    else:
        epilogue = ast.parse(f"__l = locals()\nreturn __l.get({name!r}, __l.get({LAST!r}))").body
    for stmt in prologue + epilogue:
        for n in ast.walk(stmt):   # compiler-made lines: at the cell's first line, never in between
            n.lineno = n.end_lineno = line  # type: ignore[attr-defined]
            n.col_offset = n.end_col_offset = 0  # type: ignore[attr-defined]
    if capture:     # from here on, what the body binds in the namespace is its own (REBOUND)
        prologue += ast.parse(f"{_RECORD}.mark()").body
    for stmt in prologue:
        for n in ast.walk(stmt):
            n.lineno = n.end_lineno = line  # type: ignore[attr-defined]
            n.col_offset = n.end_col_offset = 0  # type: ignore[attr-defined]
    inner = prologue + (body or [ast.Pass()]) + epilogue
    if capture:
        call = ast.parse(f"{CAPTURE}(globals(), {tuple(watch)!r}, {name!r})", mode="eval").body
        for n in ast.walk(call):
            n.lineno = n.end_lineno = line  # type: ignore[attr-defined]
            n.col_offset = n.end_col_offset = 0  # type: ignore[attr-defined]
        inner = [ast.With([ast.withitem(call, ast.Name(_RECORD, ast.Store()))], inner, lineno=line, col_offset=0)]
    fn = ast.FunctionDef(name=name, args=params or ast.arguments([], [], None, [], [], None, []),
                         body=inner, decorator_list=[], returns=None,
                         type_comment=None, lineno=line, col_offset=0)
    module = ast.fix_missing_locations(ast.Module([fn], type_ignores=[]))
    try:
        code = compile(module, filename, "exec")
    except SyntaxError as e:
        raise RuleError(f"the cell cannot be a rule, line {e.lineno}: {e.msg}; run it without %%rule") from None
    code = _top_level_names(code, f"{name}.<locals>.")
    scratch: dict = {}
    exec(code, namespace, scratch)
    return scratch[name]


def params_of(params: ast.arguments | None) -> set[str]:
    if params is None:
        return set()
    every = params.posonlyargs + params.args + params.kwonlyargs + [a for a in (params.vararg, params.kwarg) if a]
    return {a.arg for a in every}


def _binds_locally(body: list[ast.stmt], name: str) -> bool:
    """Whether `name` is a local variable of a function with this body."""
    scratch = ast.fix_missing_locations(ast.Module([ast.FunctionDef(
        name="f", args=ast.arguments([], [], None, [], [], None, []), body=body or [ast.Pass()],
        decorator_list=[], returns=None, type_comment=None, lineno=1, col_offset=0)], type_ignores=[]))
    try:
        code = compile(scratch, "<cell>", "exec").co_consts
    except SyntaxError:
        return False
    fn = next(c for c in code if isinstance(c, types.CodeType))
    return name in fn.co_varnames or name in fn.co_cellvars


def _global_reads(names: list[str]) -> list[ast.stmt]:
    """`x = x + 1` read by value: in the function that a rule cell becomes, x is local, so the
    value the cell starts from is read from the notebook's globals first, through a nested
    function (whose LOAD_GLOBAL makes x an input of the rule, as a global read is). A name not
    bound yet stays unbound, so the body fails as plain execution would."""
    out: list[ast.stmt] = []
    for n in names:
        reader = f"{OWN}read_{n}"
        out += ast.parse(f"def {reader}():\n    global {n}\n    return {n}\n"
                         f"try:\n    {n} = {reader}()\nexcept NameError:\n    pass\n").body
    return out


def _quiet(source: str) -> bool:
    """A semicolon ends the cell (`plt.plot(x);`): IPython's displayhook then shows nothing."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skipped = (tokenize.ENDMARKER, tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT)
    last = next((t for t in reversed(tokens) if t.type not in skipped), None)
    return last is not None and last.type == tokenize.OP and last.string == ";"


def _top_level_names(code: types.CodeType, prefix: str) -> types.CodeType:
    """`code` with the qualified names the compiler gave the functions, classes, lambdas and
    comprehensions of the cell (`f_1a2b.<locals>.make`) without the rule function's `prefix`. The
    compiler keeps them as the code objects' co_qualname (3.11+) and as string constants: before
    MAKE_FUNCTION (3.10) and a class body's `__qualname__ = ...`. Only strings beginning with the
    prefix change; '<locals>' cannot be part of a name, so the compiler made them."""
    consts = tuple(_top_level_names(c, prefix) if isinstance(c, types.CodeType)
                   else c[len(prefix):] if isinstance(c, str) and c.startswith(prefix) else c
                   for c in code.co_consts)
    if any(new is not old for new, old in zip(consts, code.co_consts)):   # (== on code ignores co_qualname)
        code = code.replace(co_consts=consts)
    qualname = getattr(code, "co_qualname", "")
    if qualname.startswith(prefix):
        code = code.replace(co_qualname=qualname[len(prefix):])
    return code


def _check_top_level(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await)) and not _inside_function(tree, node):
            raise RuleError("a rule cell cannot yield or await at top level: run this cell without %%rule, "
                            "or move that into a function")
        if isinstance(node, (ast.Return, ast.Nonlocal)) and not _inside_function(tree, node):
            raise RuleError(f"'{type(node).__name__.lower()}' outside a function, line {node.lineno}: "
                            "plain Python refuses it too; remove it or put it in a function")


def refusal(source: str) -> str | None:
    """Why the cell (Python, after IPython's transformation) cannot be a rule, or None."""
    try:
        analyse(source)
        _check_top_level(_parse(source))
    except RuleError as e:
        return str(e)
    return None


def _inside_function(tree: ast.AST, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and any(
                n is target for n in ast.walk(node)):
            return True
    return False
