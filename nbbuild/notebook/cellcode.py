"""A rule's function made of a notebook cell, and why a cell cannot be one.

Contract: `compile_cell(source, name, filename, fetched, namespace)` makes the rule's function:
a function named `name`, with `namespace` (the user's) as its globals, whose body is the cell
(its names: cells.py's `analyse`). Each name in `fetched` (inputs whose version another rule
bound) is assigned first from `__nbbuild_fetch__(name, rule)`, a tracked fetch of that rule's
version; every other input is read from the namespace, so the core versions it by value or by
code. It returns a dict of the outputs the cell bound, plus its last expression's value under
`LAST` (none when a semicolon ends the cell: IPython shows no result for it, and sets no `_`).
Line numbers stay those of the cell, so tracebacks point at the cell's lines. Functions and
classes the cell defines are named as plain execution names them (`make`, `Model.fit`,
`make.<locals>.inner`; their `__module__` is the namespace's `__name__`), not as locals of the
rule's function: their repr, and their pickle (cloudpickle keeps `__qualname__`), are plain
execution's.

`refusal(source)` says in one line why a cell cannot be a rule (a syntax error, a star import,
top-level `await`, `yield`, `return`), or None.

Both are pure functions of their text and arguments, asked for again each time a cell runs
(`%nbbuild auto` asks `refusal` twice per cell): a cell's compiled code and its refusal are kept,
keyed by all they depend on, so a cell run again with the same source and the same versions read
is compiled once (and its code object, the same, is fingerprinted once: engine/code.py).
"""
from __future__ import annotations

import ast
import functools
import io
import tokenize
import types

from ..errors import RuleError
from .cells import CAPTURE, FETCH, LAST, OWN, analyse, parse

__all__ = ["compile_cell", "parse_signature", "params_of", "refusal"]

_RECORD = "__nbbuild_record__"


def parse_signature(text: str) -> ast.arguments:
    """`alpha, l1=0.0` of `%%rule model(alpha, l1=0.0)`."""
    try:
        fn = parse(f"def _({text}): pass").body[0]
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
    code = _compiled(source, name, filename, tuple(fetched.items()), tuple(outputs), params, capture, tuple(watch))
    scratch: dict = {}
    exec(code, namespace, scratch)
    return scratch[name]


@functools.lru_cache(maxsize=512)
def _compiled(source: str, name: str, filename: str, fetched_items: tuple[tuple[str, str], ...],
              outputs: tuple[str, ...], params: ast.arguments | None, capture: bool,
              watch: tuple[str, ...]) -> types.CodeType:
    """The module code that defines the rule's function (`params`, an AST, is a key by identity:
    a parametric rule remade keeps its own)."""
    fetched = dict(fetched_items)
    tree = parse(source)
    body: list[ast.stmt] = list(tree.body)
    _check_top_level(tree)
    quiet = params is None and _quiet(source)
    if body and isinstance(body[-1], ast.Expr) and not quiet:   # the cell's last expression, displayed as Jupyter would
        last = body[-1]
        body[-1] = ast.copy_location(ast.Assign([ast.Name(LAST, ast.Store())], last.value), last)
    line = body[0].lineno if body else 1
    prologue = [ast.parse(f"{n} = {FETCH}({n!r}, {r!r})").body[0] for n, r in fetched.items()]
    candidates = [n for n in analyse(source).inputs if n not in fetched and n not in params_of(params)]
    local = _locals(body) if candidates else frozenset()
    prologue += _global_reads([n for n in candidates if n in local])
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
    return _top_level_names(code, f"{name}.<locals>.")


def params_of(params: ast.arguments | None) -> set[str]:
    if params is None:
        return set()
    every = params.posonlyargs + params.args + params.kwonlyargs + [a for a in (params.vararg, params.kwarg) if a]
    return {a.arg for a in every}


def _locals(body: list[ast.stmt]) -> frozenset[str]:
    """The local variables of a function with this body (compiled once for all the cell's inputs)."""
    scratch = ast.fix_missing_locations(ast.Module([ast.FunctionDef(
        name="f", args=ast.arguments([], [], None, [], [], None, []), body=body or [ast.Pass()],
        decorator_list=[], returns=None, type_comment=None, lineno=1, col_offset=0)], type_ignores=[]))
    try:
        code = compile(scratch, "<cell>", "exec").co_consts
    except SyntaxError:
        return frozenset()
    fn = next(c for c in code if isinstance(c, types.CodeType))
    return frozenset(fn.co_varnames + fn.co_cellvars)


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


@functools.lru_cache(maxsize=512)
def refusal(source: str) -> str | None:
    """Why the cell (Python, after IPython's transformation) cannot be a rule, or None."""
    try:
        analyse(source)
        _check_top_level(parse(source))
    except RuleError as e:
        return str(e)
    return None


def _inside_function(tree: ast.AST, target: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and any(
                n is target for n in ast.walk(node)):
            return True
    return False
