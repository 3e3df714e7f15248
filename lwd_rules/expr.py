"""Safe arithmetic formulas for rule files.

A formula such as ``sum(depths[:stage]) + block + 1`` is parsed once with
:func:`ast.parse`, checked against a whitelist of node types and compiled into
a tree of small closures, so evaluating it many times is cheap and can never
run arbitrary Python.  Sub-expressions without variables are folded at parse
time, so mistakes such as ``1 // 0`` surface when a rule file is loaded rather
than when it is applied.

Values are ints, floats and flat lists of numbers.  Sizes are bounded (source
length, nesting, exponents, integer magnitude, list length) so that a hostile
or mistyped formula fails fast instead of hanging or exhausting memory.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["FUNCTIONS", "CheckedEnv", "Formula", "FormulaError", "checked_env", "parse_formula"]

Value = int | float | list[int | float]
Env = Mapping[str, object]
Evaluator = Callable[[Env], Value]

FUNCTIONS: frozenset[str] = frozenset({"sum", "min", "max", "len"})

_MAX_SOURCE_LENGTH = 500
_MAX_BRACKET_DEPTH = 32
_MAX_TREE_DEPTH = 100  # keeps parse-time and eval-time recursion shallow
_MAX_EXPONENT = 64
_MAX_INT = 10**18
_MAX_LIST_LENGTH = 10_000
_SMALL = 2**24  # ints (and list items) up to this size take the compiled fast path (see _native)
_EMPTY_ENV: Env = {}
_WHITESPACE = str.maketrans("\t\n\r\f\v", "     ")


class FormulaError(ValueError):
    """A formula that cannot be parsed, checked or evaluated."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Formula:
    """A compiled formula; call it with a mapping of variable values."""

    source: str
    variables: frozenset[str]
    _evaluate: Evaluator = field(compare=False, repr=False)

    def __call__(self, env: Env) -> Value:
        """Evaluate with ``env``; any failure is raised as FormulaError."""
        return self._evaluate(env)

    @property
    def evaluator(self) -> Evaluator:
        """The compiled function itself, for callers that evaluate one formula many times."""
        return self._evaluate

    def check(self, known: Iterable[str]) -> None:
        """Raise FormulaError if the formula uses a variable not in ``known``."""
        names = sorted(set(known))
        unknown = sorted(self.variables.difference(names))
        if not unknown:
            return
        name = unknown[0]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FormulaError(f"unknown variable {name!r}{hint}")

    def __reduce__(self) -> tuple[Callable[[str], Formula], tuple[str]]:
        """Pickle by source: closures cannot be pickled, re-parsing is exact."""
        return (parse_formula, (self.source,))


def parse_formula(source: str | int | float) -> Formula:
    """Parse, check and compile ``source`` (a formula string or a number)."""
    if isinstance(source, bool) or not isinstance(source, (str, int, float)):
        raise FormulaError(f"a formula must be a string or a number, not {type(source).__name__}")
    if isinstance(source, int):
        source = str(_number(int(source)))
    elif isinstance(source, float):
        source = repr(_number(float(source)))
    tree = _parse(source)
    compiler = _Compiler()
    code = compiler.compile(tree.body, 0)
    run = code.run
    if code.constant:
        value = run(_EMPTY_ENV)
        # A constant list is shared between calls; hand out copies.
        run = (lambda env: list(value)) if isinstance(value, list) else (lambda env: value)
    else:
        run = _native(tree.body, run) or run
    return Formula(source, frozenset(compiler.variables), run)


# --------------------------------------------------------------------------
# Parsing


def _parse(source: str) -> ast.Expression:
    """Check the size limits, then parse ``source`` into an expression tree."""
    if len(source) > _MAX_SOURCE_LENGTH:
        raise FormulaError(f"formula is too long ({len(source)} characters, limit {_MAX_SOURCE_LENGTH})")
    if not source.strip():
        raise FormulaError("empty formula")
    if "#" in source:
        raise FormulaError("comments ('#') are not allowed")
    _check_bracket_depth(source)
    # Line breaks (e.g. from YAML block scalars) are plain spaces here; the
    # replacement is one-for-one, so columns stay correct.
    text = source.translate(_WHITESPACE)
    stripped = text.lstrip(" ")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(stripped, mode="eval")
    except SyntaxError as err:
        reason = (err.msg or "invalid syntax").splitlines()[0]
        if err.offset is None:
            raise FormulaError(f"syntax error: {reason}") from None
        if err.offset < 1:  # reported at end of input, e.g. "x +"
            column = len(text.rstrip(" ")) + 1
        else:
            column = min(err.offset + len(text) - len(stripped), len(text) + 1)
        raise FormulaError(f"syntax error at column {column}: {reason}") from None
    except ValueError as err:  # e.g. NUL characters or unencodable text
        raise FormulaError(f"syntax error: {err}") from None


def _check_bracket_depth(source: str) -> None:
    """Reject deep bracket nesting before ast.parse, which is slow or crashes on it."""
    depth = 0
    for char in source:
        if char in "([{":
            depth += 1
            if depth > _MAX_BRACKET_DEPTH:
                raise FormulaError(f"formula is nested too deeply (more than {_MAX_BRACKET_DEPTH} levels of brackets)")
        elif char in ")]}":
            depth = max(depth - 1, 0)


# --------------------------------------------------------------------------
# Value checks shared by parsing and evaluation


def _kind(value: object) -> str:
    """Describe a value's type for error messages."""
    return "a list" if isinstance(value, list) else "a number"


def _number(value: object) -> int | float:
    """Return an int/float result unchanged, or raise if it breaks the bounds."""
    if value.__class__ is int:
        if -_MAX_INT <= value <= _MAX_INT:
            return value
        raise FormulaError("integer is too large (limit 10**18)")
    if value.__class__ is float:
        if math.isfinite(value):
            return value
        raise FormulaError("result is not a finite number")
    raise FormulaError("result is not a real number")


def _env_number(name: str, value: object) -> int | float:
    """Normalise one number taken from the environment (bool/int subclasses → int)."""
    if isinstance(value, int):
        return _number(int(value))
    if isinstance(value, float):
        return _number(float(value))
    raise FormulaError(f"variable {name!r} must be a number or a list of numbers, not {type(value).__name__}")


def _env_value(name: str, value: object) -> Value:
    """Normalise an environment value into an int, float or list of numbers."""
    if isinstance(value, (list, tuple)):
        if len(value) > _MAX_LIST_LENGTH:
            raise FormulaError(f"list is too long ({len(value)} items, limit {_MAX_LIST_LENGTH})")
        if value.__class__ is list and all(x.__class__ is int and -_MAX_INT <= x <= _MAX_INT for x in value):
            return value
        return [_env_number(name, x) for x in value]
    return _env_number(name, value)


class CheckedEnv(dict):  # type: ignore[type-arg]
    """An environment whose lists were checked once (``checked_env``), so a formula evaluated
    many times does not check them again; every other value is checked at each use.

    ``small`` holds the lists whose items are all ints within ±``_SMALL``, which compiled
    formulas may read with plain Python arithmetic (see ``_native``).
    """

    small: dict[str, list[int | float]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.small = {}

    def copy(self) -> CheckedEnv:
        """A copy that keeps what was checked."""
        out = CheckedEnv(self)
        out.small = dict(self.small)
        return out


def checked_env(env: Env) -> dict[str, object]:
    """``env`` with its lists checked and normalised once, as a ``CheckedEnv``; when one fails the
    check, a plain copy, so the formula that reads it reports the error with its location."""
    out = CheckedEnv(env)
    for name, value in env.items():
        if isinstance(value, (list, tuple)):
            try:
                out[name] = checked = _env_value(name, value)
            except FormulaError:
                return dict(env)
            if all(x.__class__ is int and -_SMALL <= x <= _SMALL for x in checked):  # type: ignore[union-attr]
                out.small[name] = checked  # type: ignore[assignment]
    return out


def _list(value: Value, what: str) -> list[int | float]:
    """Return ``value`` if it is a list, else raise naming the operation."""
    if value.__class__ is list:
        return value
    raise FormulaError(f"{what} needs a list, not {_kind(value)}")


def _int(value: Value, what: str) -> int:
    """Return ``value`` if it is an int (for indices and slice bounds)."""
    if value.__class__ is int:
        return value
    raise FormulaError(f"{what} must be an integer, not {'a float' if isinstance(value, float) else 'a list'}")


def _exponent(value: Value) -> None:
    """Reject exponents that would make ``**`` slow or its result huge."""
    if not isinstance(value, list) and abs(value) > _MAX_EXPONENT:
        raise FormulaError(f"exponent {value} is too large (limit {_MAX_EXPONENT})")


# --------------------------------------------------------------------------
# Compilation to closures


class _Code(NamedTuple):
    """A compiled sub-expression; ``constant`` means it uses no variables."""

    run: Evaluator
    constant: bool


_ARITHMETIC: dict[type[ast.operator], tuple[str, Callable[[object, object], object]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", operator.pow),
}

_OTHER_OPERATORS: dict[type[ast.AST], str] = {
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
    ast.Invert: "~",
    ast.Not: "not",
}

_REJECTED: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access is not allowed",
    ast.Compare: "comparisons are not allowed",
    ast.BoolOp: "'and' / 'or' are not allowed",
    ast.IfExp: "conditional expressions are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Set: "sets are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.NamedExpr: "assignment expressions are not allowed",
    ast.JoinedStr: "strings are not allowed",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
}


def _fold(run: Evaluator, parts: Iterable[_Code]) -> _Code:
    """Evaluate ``run`` once now if all its parts are constant."""
    if all(part.constant for part in parts):
        value = run(_EMPTY_ENV)
        return _Code(lambda env: value, True)
    return _Code(run, False)


class _Compiler:
    """Walks a whitelisted expression tree and builds evaluator closures."""

    def __init__(self) -> None:
        self.variables: set[str] = set()

    def compile(self, node: ast.AST, depth: int) -> _Code:
        """Compile one node, rejecting anything outside the language."""
        if depth > _MAX_TREE_DEPTH:
            raise FormulaError(f"formula is too complex (more than {_MAX_TREE_DEPTH} nested operations)")
        handler = _HANDLERS.get(type(node))
        if handler is None:
            raise FormulaError(_REJECTED.get(type(node), f"{type(node).__name__} expressions are not allowed"))
        return handler(self, node, depth + 1)

    def constant(self, node: ast.Constant, depth: int) -> _Code:
        """Numbers only; strings, booleans, None, complex and ``...`` are rejected."""
        value = node.value
        if isinstance(value, bool):
            raise FormulaError("booleans are not allowed")
        if isinstance(value, (int, float)):
            number = _number(value)
            return _Code(lambda env: number, True)
        if isinstance(value, (str, bytes)):
            raise FormulaError("strings are not allowed")
        if isinstance(value, complex):
            raise FormulaError("complex numbers are not allowed")
        raise FormulaError("'...' is not allowed" if value is Ellipsis else f"{value!r} is not allowed")

    def name(self, node: ast.Name, depth: int) -> _Code:
        """A variable, looked up and validated in the environment at each call."""
        name = node.id
        if name in FUNCTIONS:
            raise FormulaError(f"function {name!r} must be called, e.g. {name}(x)")
        self.variables.add(name)

        def run(env: Env) -> Value:
            try:
                value = env[name]
            except KeyError:
                raise FormulaError(f"variable {name!r} is not defined") from None
            if value.__class__ is int and -_MAX_INT <= value <= _MAX_INT:
                return value
            if value.__class__ is list and env.__class__ is CheckedEnv:
                return value  # checked once, when the environment was made
            return _env_value(name, value)

        return _Code(run, False)

    def binop(self, node: ast.BinOp, depth: int) -> _Code:
        """Arithmetic on numbers, with every result checked against the bounds."""
        op_type = type(node.op)
        if op_type not in _ARITHMETIC:
            raise FormulaError(f"operator {_OTHER_OPERATORS.get(op_type, op_type.__name__)!r} is not allowed")
        symbol, op = _ARITHMETIC[op_type]
        left = self.compile(node.left, depth)
        right = self.compile(node.right, depth)
        if op_type is ast.Pow and right.constant:
            _exponent(right.run(_EMPTY_ENV))
        left_run, right_run = left.run, right.run
        check_exponent = op_type is ast.Pow
        int_closed = op_type in (ast.Add, ast.Sub, ast.Mult)  # int op int is an int: only its size to check

        def run(env: Env) -> Value:
            a = left_run(env)
            b = right_run(env)
            if int_closed and a.__class__ is int and b.__class__ is int:
                result = op(a, b)
                if -_MAX_INT <= result <= _MAX_INT:
                    return result
                raise FormulaError("integer is too large (limit 10**18)")
            if a.__class__ is list or b.__class__ is list:
                raise FormulaError(f"cannot apply '{symbol}' to a list")
            if check_exponent:
                _exponent(b)
            try:
                return _number(op(a, b))
            except ZeroDivisionError:
                raise FormulaError("division by zero") from None
            except OverflowError:
                raise FormulaError("result is not a finite number") from None

        return _fold(run, (left, right))

    def unaryop(self, node: ast.UnaryOp, depth: int) -> _Code:
        """Unary ``-`` and ``+`` on numbers."""
        op_type = type(node.op)
        if op_type not in (ast.USub, ast.UAdd):
            raise FormulaError(f"operator {_OTHER_OPERATORS.get(op_type, op_type.__name__)!r} is not allowed")
        operand = self.compile(node.operand, depth)
        operand_run = operand.run
        negate = op_type is ast.USub
        symbol = "-" if negate else "+"

        def run(env: Env) -> Value:
            a = operand_run(env)
            if a.__class__ is list:
                raise FormulaError(f"cannot apply unary '{symbol}' to a list")
            return -a if negate else a  # type: ignore[operator]

        return _fold(run, (operand,))

    def list_(self, node: ast.List, depth: int) -> _Code:
        """A list literal; items must be numbers so lists stay flat."""
        items = [self.compile(item, depth) for item in node.elts]
        runs = [item.run for item in items]

        def run(env: Env) -> Value:
            values = [item(env) for item in runs]
            for value in values:
                if value.__class__ is list:
                    raise FormulaError("list items must be numbers, not lists")
            return values  # type: ignore[return-value]

        return _fold(run, items)

    def subscript(self, node: ast.Subscript, depth: int) -> _Code:
        """``x[i]`` (Python semantics, negative indices allowed) or a slice."""
        container = self.compile(node.value, depth)
        container_run = container.run
        if isinstance(node.slice, ast.Slice):
            return self._slice(container, node.slice, depth)
        index = self.compile(node.slice, depth)
        index_run = index.run

        def run(env: Env) -> Value:
            items = container_run(env)
            if items.__class__ is not list:
                raise FormulaError("cannot index a number")
            position = _int(index_run(env), "list index")
            try:
                return items[position]
            except IndexError:
                raise FormulaError(f"index {position} out of range for list of length {len(items)}") from None

        return _fold(run, (container, index))

    def _slice(self, container: _Code, node: ast.Slice, depth: int) -> _Code:
        """``x[a:b:c]`` with optional integer bounds and step."""
        bounds = [None if part is None else self.compile(part, depth) for part in (node.lower, node.upper, node.step)]
        container_run = container.run
        lower, upper, step = (None if part is None else part.run for part in bounds)

        def run(env: Env) -> Value:
            items = container_run(env)
            if items.__class__ is not list:
                raise FormulaError("cannot slice a number")
            start = None if lower is None else _int(lower(env), "slice bound")
            stop = None if upper is None else _int(upper(env), "slice bound")
            stride = None if step is None else _int(step(env), "slice step")
            if stride == 0:
                raise FormulaError("slice step cannot be zero")
            return items[start:stop:stride]

        return _fold(run, [container, *(part for part in bounds if part is not None)])

    def call(self, node: ast.Call, depth: int) -> _Code:
        """A call to one of FUNCTIONS with positional arguments."""
        if not isinstance(node.func, ast.Name):
            raise FormulaError("only calls to named functions are allowed")
        name = node.func.id
        if name not in FUNCTIONS:
            raise FormulaError(f"unknown function {name!r} (allowed: {', '.join(sorted(FUNCTIONS))})")
        if node.keywords:
            raise FormulaError("keyword arguments are not allowed")
        args = [self.compile(arg, depth) for arg in node.args]
        if name in ("sum", "len") and len(args) != 1:
            raise FormulaError(f"{name}() takes exactly one argument (a list)")
        if not args:
            raise FormulaError(f"{name}() needs a list or at least two numbers")
        builder = _FUNCTION_BUILDERS[name]
        return _fold(builder([arg.run for arg in args]), args)


def _sum(args: list[Evaluator]) -> Evaluator:
    """Build sum(list)."""
    (arg,) = args

    def run(env: Env) -> Value:
        return _number(sum(_list(arg(env), "sum()")))

    return run


def _len(args: list[Evaluator]) -> Evaluator:
    """Build len(list)."""
    (arg,) = args

    def run(env: Env) -> Value:
        return len(_list(arg(env), "len()"))

    return run


def _extremum(name: str, pick: Callable[[list[int | float]], int | float]) -> Callable[[list[Evaluator]], Evaluator]:
    """Build min()/max(): one list argument, or two or more numbers."""

    def build(args: list[Evaluator]) -> Evaluator:
        if len(args) == 1:
            (arg,) = args

            def run_list(env: Env) -> Value:
                items = _list(arg(env), f"{name}() with one argument")
                if not items:
                    raise FormulaError(f"{name}() of an empty list")
                return pick(items)

            return run_list

        def run_numbers(env: Env) -> Value:
            values = [item(env) for item in args]
            for value in values:
                if value.__class__ is list:
                    raise FormulaError(f"{name}() takes one list or several numbers, not a mix")
            return pick(values)  # type: ignore[arg-type]

        return run_numbers

    return build


_FUNCTION_BUILDERS: dict[str, Callable[[list[Evaluator]], Evaluator]] = {
    "sum": _sum,
    "len": _len,
    "min": _extremum("min", min),
    "max": _extremum("max", max),
}

_HANDLERS: dict[type[ast.AST], Callable[[_Compiler, Any, int], _Code]] = {
    ast.Constant: _Compiler.constant,
    ast.Name: _Compiler.name,
    ast.BinOp: _Compiler.binop,
    ast.UnaryOp: _Compiler.unaryop,
    ast.List: _Compiler.list_,
    ast.Subscript: _Compiler.subscript,
    ast.Call: _Compiler.call,
}


# --------------------------------------------------------------------------
# Compilation to one Python function, for small integers


class _NotNative(Exception):
    """The formula (or this part of it) has no native fast path."""


class _Typed(NamedTuple):
    """Python source for a sub-expression, its type, the largest magnitude it can take and, for a
    list, the most items it can hold."""

    source: str
    is_list: bool
    bound: int
    length: int = 0


_NATIVE_OPERATORS: dict[type[ast.operator], str] = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%"}


def _native(body: ast.expr, interpreted: Evaluator) -> Evaluator | None:
    """One compiled Python function computing the formula with plain arithmetic, or None.

    It takes the fast path only when every variable is an int (or a checked list of ints) within
    ±``_SMALL``; the bounds below then show that no intermediate value can pass ``_MAX_INT``, so
    its result is exactly what ``interpreted`` gives. Anything else (another type, a larger value,
    any exception) goes to ``interpreted``, which gives the result or the precise FormulaError.
    """
    translator = _Translator()
    try:
        typed = translator.translate(body, want_list=False)
    except _NotNative:
        return None
    guards = []
    for name, (local, is_list) in translator.variables.items():
        if is_list:
            guards.append(f"small.get({name!r}) is {local}")
        else:
            guards.append(f"{local}.__class__ is int and -{_SMALL} <= {local} <= {_SMALL}")
    loads = "".join(f"        {local} = env[{name!r}]\n" for name, (local, _) in translator.variables.items())
    small = "    small = env.small if env.__class__ is CheckedEnv else _NO_LISTS\n" if any(is_list for _, is_list in translator.variables.values()) else ""
    source = (
        "def native(env):\n"
        f"{small}"
        "    try:\n"
        f"{loads}"
        f"        if {' and '.join(guards)}:\n"
        f"            return {typed.source}\n"
        "    except Exception:\n"
        "        pass\n"
        "    return interpreted(env)\n"
    )
    namespace: dict[str, Any] = {"__builtins__": {}, "int": int, "Exception": Exception, "interpreted": interpreted, "CheckedEnv": CheckedEnv, "_NO_LISTS": {}, **_NATIVE_FUNCTIONS}
    namespace.update(translator.constants)
    exec(compile(source, "<formula>", "exec"), namespace)  # noqa: S102 - source built from a checked tree: locals, ints, operators
    return namespace["native"]  # type: ignore[no-any-return]


_NATIVE_FUNCTIONS = {"sum": sum, "len": len, "min": min, "max": max}


class _Translator:
    """Typed Python source for the whitelisted trees that use ints and lists of ints only."""

    def __init__(self) -> None:
        self.variables: dict[str, tuple[str, bool]] = {}  # name -> (local, is a list)
        self.constants: dict[str, list[int]] = {}

    def translate(self, node: ast.expr, want_list: bool) -> _Typed:
        typed = self._translate(node, want_list)
        if typed.is_list != want_list or typed.bound > _MAX_INT:
            raise _NotNative
        return typed

    def _translate(self, node: ast.expr, want_list: bool) -> _Typed:
        if _is_constant(node):
            return self._constant(node)
        if isinstance(node, ast.Name):
            local, is_list = self.variables.setdefault(node.id, (f"v{len(self.variables)}", want_list))
            if is_list != want_list:  # one variable read as a number and as a list
                raise _NotNative
            return _Typed(local, is_list, _SMALL, _MAX_LIST_LENGTH)
        if isinstance(node, ast.BinOp) and type(node.op) in _NATIVE_OPERATORS:
            left, right = self.translate(node.left, False), self.translate(node.right, False)
            bound = {ast.Add: left.bound + right.bound, ast.Sub: left.bound + right.bound, ast.Mult: left.bound * right.bound}.get(type(node.op))
            if bound is None:  # |a // b| <= |a| and |a % b| < |b| for ints, b != 0
                bound = left.bound if isinstance(node.op, ast.FloorDiv) else right.bound
            return _Typed(f"({left.source} {_NATIVE_OPERATORS[type(node.op)]} {right.source})", False, bound)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.translate(node.operand, False)
            return _Typed(f"({'-' if isinstance(node.op, ast.USub) else '+'}{operand.source})", False, operand.bound)
        if isinstance(node, ast.List):
            items = [self.translate(item, False) for item in node.elts]
            return _Typed(f"[{', '.join(item.source for item in items)}]", True, max((item.bound for item in items), default=0), len(items))
        if isinstance(node, ast.Subscript):
            items = self.translate(node.value, True)
            if isinstance(node.slice, ast.Slice):
                parts = [None if part is None else self.translate(part, False).source for part in (node.slice.lower, node.slice.upper, node.slice.step)]
                text = ":".join("" if part is None else part for part in parts)
                return _Typed(f"{items.source}[{text}]", True, items.bound, items.length)
            index = self.translate(node.slice, False)
            return _Typed(f"{items.source}[{index.source}]", False, items.bound)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return self._call(node.func.id, node.args)
        raise _NotNative

    def _call(self, name: str, args: list[ast.expr]) -> _Typed:
        if len(args) == 1:
            items = self.translate(args[0], True)
            bound = {"sum": items.bound * items.length, "len": items.length}.get(name, items.bound)
            return _Typed(f"{name}({items.source})", False, bound)
        numbers = [self.translate(arg, False) for arg in args]
        if name not in ("min", "max"):
            raise _NotNative
        return _Typed(f"{name}({', '.join(number.source for number in numbers)})", False, max(number.bound for number in numbers))

    def _constant(self, node: ast.expr) -> _Typed:
        """A sub-expression without variables, computed now as the interpreter computes it."""
        value = _Compiler().compile(node, 0).run(_EMPTY_ENV)
        if value.__class__ is int:
            return _Typed(f"({value})", False, abs(value))  # type: ignore[arg-type]
        if value.__class__ is list and all(item.__class__ is int for item in value):  # type: ignore[union-attr]
            local = f"c{len(self.constants)}"
            self.constants[local] = value  # type: ignore[assignment]
            return _Typed(local, True, max(map(abs, value), default=0), len(value))  # type: ignore[arg-type]
        raise _NotNative


def _is_constant(node: ast.expr) -> bool:
    return not any(isinstance(child, ast.Name) and child.id not in FUNCTIONS for child in ast.walk(node)) and not isinstance(node, ast.Name)
