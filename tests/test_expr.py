"""Tests for lwd_rules.expr: the safe formula language used in rule files."""

from __future__ import annotations

import ast
import contextlib
import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwd_rules import expr
from lwd_rules.expr import CheckedEnv, checked_env, FUNCTIONS, Formula, FormulaError, parse_formula

ENV = {"depths": [2, 2, 6, 2], "stage": 2, "block": 1, "n": 5, "x": 7, "y": 2.5, "empty": []}


def ev(source: str | int | float, **env: object) -> object:
    """Parse and evaluate with ENV overridden by keyword arguments."""
    return parse_formula(source)({**ENV, **env})


def error_of(source: object, **env: object) -> str:
    """Return the FormulaError message raised by parsing or evaluating."""
    with pytest.raises(FormulaError) as info:
        formula = parse_formula(source)  # type: ignore[arg-type]
        formula({**ENV, **env})
    return info.value.message


def parse_error(source: object) -> str:
    """Return the FormulaError message raised at parse time."""
    with pytest.raises(FormulaError) as info:
        parse_formula(source)  # type: ignore[arg-type]
    return info.value.message


def eval_error(source: str, **env: object) -> str:
    """Return the FormulaError message raised at evaluation (parse must succeed)."""
    formula = parse_formula(source)
    with pytest.raises(FormulaError) as info:
        formula({**ENV, **env})
    return info.value.message


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 + 2", 3),
        ("7 - 10", -3),
        ("6 * 7", 42),
        ("7 / 2", 3.5),
        ("6 / 3", 2.0),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("7.5 // 2", 3.0),
        ("7.5 % 2", 1.5),
        ("1.5 + 1", 2.5),
        ("0.25 * 4", 1.0),
        ("1e3", 1000.0),
    ],
)
def test_operators(source: str, expected: object) -> None:
    result = ev(source)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("100 // 10 // 3", 3),
        ("2 ** 3 ** 2", 512),
        ("(2 ** 3) ** 2", 64),
        ("-2 ** 2", -4),
        ("(-2) ** 2", 4),
        ("2 * 3 % 4", 2),
        ("1 + 7 % 4 * 2", 7),
        ("-3", -3),
        ("--3", 3),
        ("+3", 3),
        ("-(1 + 2)", -3),
        ("- x + 1", -6),
        ("+y", 2.5),
    ],
)
def test_precedence_and_unary(source: str, expected: object) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("[1, 2, 3]", [1, 2, 3]),
        ("[]", []),
        ("[x, x + 1, y]", [7, 8, 2.5]),
        ("[0, 2, 3, 12][stage]", 3),
        ("[0, 2, 3, 12][-1]", 12),
        ("depths[0]", 2),
        ("depths[stage]", 6),
        ("depths[stage - 3]", 2),
        ("depths[:stage]", [2, 2]),
        ("depths[1:]", [2, 6, 2]),
        ("depths[1:3]", [2, 6]),
        ("depths[::2]", [2, 6]),
        ("depths[:]", [2, 2, 6, 2]),
        ("depths[10:]", []),
        ("depths", [2, 2, 6, 2]),
        ("[1, 2, 3][1:][0]", 2),
    ],
)
def test_lists_indexing_slicing(source: str, expected: object) -> None:
    assert ev(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("sum(depths)", 12),
        ("sum(depths[:stage]) + block + 1", 6),
        ("sum([])", 0),
        ("sum([0.5, 1])", 1.5),
        ("len(depths)", 4),
        ("len([])", 0),
        ("min(depths)", 2),
        ("max(depths)", 6),
        ("min(3, 1, 2)", 1),
        ("max(3, 1, 2)", 3),
        ("max(1, n - 2) * 2", 6),
        ("max(1, n - 9) * 2", 2),
        ("min(x, y)", 2.5),
        ("3 + block // 3", 3),
        ("num_layers + 1", 13),
        ("sum(depths[:len(depths) - 1])", 10),
    ],
)
def test_functions_and_rule_examples(source: str, expected: object) -> None:
    assert ev(source, num_layers=12) == expected


def test_functions_constant() -> None:
    assert frozenset({"sum", "min", "max", "len"}) == FUNCTIONS


def test_env_tuples_bools_and_subclasses_are_normalised() -> None:
    assert ev("sum(t) + t[1]", t=(1, 2, 3)) == 8
    assert ev("t[1:]", t=(1, 2, 3)) == [2, 3]
    assert ev("b + 1", b=True) == 2
    assert ev("l[0] + 1", l=[1.5]) == 2.5


def test_whitespace_and_newlines_are_allowed() -> None:
    assert ev("  1 +\n 2 ") == 3
    assert ev("\tx\n* 2") == 14


# ---------------------------------------------------------------- constants


def test_int_and_float_inputs_make_constant_formulas() -> None:
    thirteen = parse_formula(13)
    assert thirteen({}) == 13
    assert thirteen.source == "13"
    assert thirteen.variables == frozenset()
    negative = parse_formula(-4)
    assert negative({}) == -4 and negative.source == "-4"
    half = parse_formula(0.5)
    assert half({}) == 0.5 and half.source == "0.5"
    assert type(parse_formula(2.0)({})) is float


@pytest.mark.parametrize(
    "value",
    [True, None, [1], {"a": 1}, b"1", float("inf"), float("nan"), 10**19, 10**5000],
    ids=["bool", "none", "list", "dict", "bytes", "inf", "nan", "big-int", "huge-int"],
)
def test_bad_non_string_inputs(value: object) -> None:
    parse_error(value)


def test_constant_list_result_is_not_shared() -> None:
    formula = parse_formula("[1, 2]")
    first = formula({})
    first.append(3)  # type: ignore[union-attr]
    assert formula({}) == [1, 2]


# ---------------------------------------------------------------- Formula object


def test_variables() -> None:
    assert parse_formula("sum(depths[:stage]) + block + 1").variables == frozenset({"depths", "stage", "block"})
    assert parse_formula("[0, 2, 3, 12][stage]").variables == frozenset({"stage"})
    assert parse_formula("max(1, 2) + len([a, a])").variables == frozenset({"a"})
    assert parse_formula("1 + 2").variables == frozenset()


def test_formula_is_frozen_hashable_and_picklable() -> None:
    a, b = parse_formula("x + 1"), parse_formula("x + 1")
    assert a == b and hash(a) == hash(b)
    assert a != parse_formula("x+1")
    assert len({a, b}) == 1
    assert repr(a) == "Formula(source='x + 1', variables=frozenset({'x'}))"
    with pytest.raises(AttributeError):
        a.source = "2"  # type: ignore[misc]
    for clone in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        assert isinstance(clone, Formula)
        assert clone == a and clone({"x": 4}) == 5


def test_check_passes_for_known_variables() -> None:
    parse_formula("sum(depths[:stage]) + 1").check(["depths", "stage", "other"])
    parse_formula("1 + 2").check([])
    parse_formula("a + b").check(iter(["b", "a"]))


def test_check_suggests_close_names() -> None:
    with pytest.raises(FormulaError) as info:
        parse_formula("sum(dephts[:stage])").check(["depths", "stage", "block"])
    assert info.value.message == "unknown variable 'dephts' (did you mean 'depths'?)"
    assert str(info.value) == info.value.message


def test_check_names_first_unknown_in_sorted_order() -> None:
    with pytest.raises(FormulaError) as info:
        parse_formula("zeta + alpha + blok").check(["block"])
    assert info.value.message == "unknown variable 'alpha'"


def test_formula_error_is_value_error() -> None:
    err = FormulaError("boom")
    assert isinstance(err, ValueError)
    assert err.message == "boom" and str(err) == "boom"


# ---------------------------------------------------------------- rejected constructs


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x.y", "attribute access is not allowed"),
        ("depths.__class__", "attribute access is not allowed"),
        ("'a'", "strings are not allowed"),
        ("b'a'", "strings are not allowed"),
        ('f"{x}"', "strings are not allowed"),
        ("x < 1", "comparisons are not allowed"),
        ("x == 1", "comparisons are not allowed"),
        ("x and 1", "'and' / 'or' are not allowed"),
        ("not x", "operator 'not' is not allowed"),
        ("~x", "operator '~' is not allowed"),
        ("x << 1", "operator '<<' is not allowed"),
        ("x | 1", "operator '|' is not allowed"),
        ("x & 1", "operator '&' is not allowed"),
        ("x ^ 1", "operator '^' is not allowed"),
        ("x @ 1", "operator '@' is not allowed"),
        ("lambda: 1", "lambda is not allowed"),
        ("[i for i in x]", "comprehensions are not allowed"),
        ("sum(i for i in x)", "comprehensions are not allowed"),
        ("{i: 1 for i in x}", "comprehensions are not allowed"),
        ("max(*depths)", "starred expressions are not allowed"),
        ("max(a=1)", "keyword arguments are not allowed"),
        ("{1: 2}", "dicts are not allowed"),
        ("{1, 2}", "sets are not allowed"),
        ("(1, 2)", "tuples are not allowed"),
        ("depths[1:2, 0]", "tuples are not allowed"),
        ("True", "booleans are not allowed"),
        ("None", "None is not allowed"),
        ("...", "'...' is not allowed"),
        ("1j", "complex numbers are not allowed"),
        ("1 if x else 2", "conditional expressions are not allowed"),
        ("(y := 1)", "assignment expressions are not allowed"),
        ("open(1)", "unknown function 'open' (allowed: len, max, min, sum)"),
        ("__import__(1)", "unknown function '__import__' (allowed: len, max, min, sum)"),
        ("depths[0](1)", "only calls to named functions are allowed"),
        ("sum", "function 'sum' must be called, e.g. sum(x)"),
        ("sum(depths, 1)", "sum() takes exactly one argument (a list)"),
        ("len()", "len() takes exactly one argument (a list)"),
        ("min()", "min() needs a list or at least two numbers"),
        ("1 # comment", "comments ('#') are not allowed"),
    ],
)
def test_rejected_constructs(source: str, message: str) -> None:
    assert parse_error(source) == message


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("1 +* 2", "syntax error at column 4: invalid syntax"),
        ("  1 +* 2", "syntax error at column 6: invalid syntax"),
        ("x +", "syntax error at column 4: invalid syntax"),
        (" x + ", "syntax error at column 5: invalid syntax"),
        ("x = 1", "syntax error at column 3: invalid syntax"),
        ("(1 + 2", "syntax error at column 1: '(' was never closed"),
        ("max(1 2)", "syntax error at column 5: invalid syntax. Perhaps you forgot a comma?"),
    ],
)
def test_syntax_errors_report_column(source: str, message: str) -> None:
    assert parse_error(source) == message


@pytest.mark.parametrize("source", ["", "   ", "\n\t "])
def test_empty_formula(source: str) -> None:
    assert parse_error(source) == "empty formula"


def test_nul_character_is_a_formula_error() -> None:
    assert parse_error("1 +\x00").startswith("syntax error")


# ---------------------------------------------------------------- bounds


def test_source_length_limit() -> None:
    ok = "+".join(["1"] * 60)  # 119 characters, depth 60 operations
    assert ev(ok) == 60
    assert parse_error("1" + " " * 500) == "formula is too long (501 characters, limit 500)"


def test_bracket_depth_limit() -> None:
    assert ev("(" * 32 + "1" + ")" * 32) == 1
    for source in ["(" * 100 + "1" + ")" * 100, "[" * 33 + "]" * 33, "(" * 500]:  # rejected before parsing
        assert parse_error(source) == "formula is nested too deeply (more than 32 levels of brackets)"


@pytest.mark.parametrize("source", ["-" * 300 + "1", "+x" * 150, "x" + "**x" * 120])
def test_operation_nesting_limit(source: str) -> None:
    assert parse_error(source) == "formula is too complex (more than 100 nested operations)"


def test_exponent_limit() -> None:
    assert ev("2 ** 59") == 576460752303423488
    assert ev("1 ** 64") == 1
    assert ev("x ** -64", x=1) == 1.0
    assert parse_error("2 ** 65") == "exponent 65 is too large (limit 64)"
    assert parse_error("x ** 100") == "exponent 100 is too large (limit 64)"
    assert parse_error("x ** -65") == "exponent -65 is too large (limit 64)"
    assert parse_error("x ** (60 + 5)") == "exponent 65 is too large (limit 64)"
    assert eval_error("2 ** x", x=10**9) == "exponent 1000000000 is too large (limit 64)"
    assert eval_error("x ** n", x=1, n=65) == "exponent 65 is too large (limit 64)"


def test_integer_size_limit() -> None:
    assert ev("10 ** 18") == 1_000_000_000_000_000_000
    assert ev("-(10 ** 18)") == -1_000_000_000_000_000_000
    assert parse_error("10 ** 18 + 1") == "integer is too large (limit 10**18)"
    assert parse_error("2 ** 64") == "integer is too large (limit 10**18)"
    assert parse_error("1" + "0" * 19) == "integer is too large (limit 10**18)"
    assert eval_error("x * x", x=10**10) == "integer is too large (limit 10**18)"
    assert eval_error("sum(l)", l=[10**18, 1]) == "integer is too large (limit 10**18)"
    assert eval_error("x + 1", x=10**19) == "integer is too large (limit 10**18)"
    assert eval_error("l[0]", l=[10**19]) == "integer is too large (limit 10**18)"
    assert eval_error("x ** 64 ** 1", x=10**18) == "integer is too large (limit 10**18)"


def test_float_limits() -> None:
    assert parse_error("1e999") == "result is not a finite number"
    assert parse_error("1e300 * 1e300") == "result is not a finite number"
    assert parse_error("10.0 ** 64 ** 1 * 1e300") == "result is not a finite number"
    assert parse_error("(-8) ** 0.5") == "result is not a real number"
    assert eval_error("x + 1", x=float("nan")) == "result is not a finite number"


def test_list_length_limit() -> None:
    assert ev("len(l)", l=[0] * 10_000) == 10_000
    assert eval_error("len(l)", l=[0] * 10_001) == "list is too long (10001 items, limit 10000)"
    assert eval_error("l", l=tuple(range(10_001))) == "list is too long (10001 items, limit 10000)"


# ---------------------------------------------------------------- errors: parse-time folding and eval-time


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("1 // 0", "division by zero"),
        ("3 % 0", "division by zero"),
        ("2 / (1 - 1)", "division by zero"),
        ("1.5 / 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("x + 1 // 0", "division by zero"),
        ("[1, 2][5]", "index 5 out of range for list of length 2"),
        ("[1, 2][-3]", "index -3 out of range for list of length 2"),
        ("[1, 2][0.5]", "list index must be an integer, not a float"),
        ("[1, 2][1:0.5]", "slice bound must be an integer, not a float"),
        ("[1, 2][::0]", "slice step cannot be zero"),
        ("3[0]", "cannot index a number"),
        ("3[:1]", "cannot slice a number"),
        ("sum(3)", "sum() needs a list, not a number"),
        ("len(3)", "len() needs a list, not a number"),
        ("min(3)", "min() with one argument needs a list, not a number"),
        ("max([])", "max() of an empty list"),
        ("max([1], 2)", "max() takes one list or several numbers, not a mix"),
        ("[1] + [2]", "cannot apply '+' to a list"),
        ("[1] * 3", "cannot apply '*' to a list"),
        ("-[1]", "cannot apply unary '-' to a list"),
        ("[[1], 2]", "list items must be numbers, not lists"),
        ("2 ** [1]", "cannot apply '**' to a list"),
    ],
)
def test_constant_errors_happen_at_parse(source: str, message: str) -> None:
    assert parse_error(source) == message


@pytest.mark.parametrize(
    ("source", "env", "message"),
    [
        ("x // n", {"n": 0}, "division by zero"),
        ("x % n", {"n": 0}, "division by zero"),
        ("x / (n - 5)", {}, "division by zero"),
        ("depths[n]", {}, "index 5 out of range for list of length 4"),
        ("depths[y]", {}, "list index must be an integer, not a float"),
        ("depths[depths]", {}, "list index must be an integer, not a list"),
        ("x[0]", {}, "cannot index a number"),
        ("x[:1]", {}, "cannot slice a number"),
        ("depths[:y]", {}, "slice bound must be an integer, not a float"),
        ("sum(x)", {}, "sum() needs a list, not a number"),
        ("len(x)", {}, "len() needs a list, not a number"),
        ("min(empty)", {}, "min() of an empty list"),
        ("max(depths, x)", {}, "max() takes one list or several numbers, not a mix"),
        ("depths + 1", {}, "cannot apply '+' to a list"),
        ("depths * 2", {}, "cannot apply '*' to a list"),
        ("-depths", {}, "cannot apply unary '-' to a list"),
        ("[depths]", {}, "list items must be numbers, not lists"),
        ("missing + 1", {}, "variable 'missing' is not defined"),
        ("s + 1", {"s": "3"}, "variable 's' must be a number or a list of numbers, not str"),
        ("s + 1", {"s": None}, "variable 's' must be a number or a list of numbers, not NoneType"),
        ("s[0]", {"s": [[1]]}, "variable 's' must be a number or a list of numbers, not list"),
        ("s[0]", {"s": ["a"]}, "variable 's' must be a number or a list of numbers, not str"),
        ("x ** y", {"x": -8, "y": 0.5}, "result is not a real number"),
        ("x ** n", {"x": 1e300, "n": 2}, "result is not a finite number"),
    ],
)
def test_evaluation_errors(source: str, env: dict[str, object], message: str) -> None:
    assert eval_error(source, **env) == message


# ---------------------------------------------------------------- properties

VARIABLES = ["a", "b", "c"]


def _trees() -> st.SearchStrategy[object]:
    """Random small integer expression trees: leaves are ints or variable names."""
    leaves = st.one_of(st.integers(min_value=0, max_value=10**6), st.sampled_from(VARIABLES))
    return st.recursive(
        leaves,
        lambda children: st.tuples(st.sampled_from("+-*"), children, children),
        max_leaves=12,
    )


def _render(tree: object) -> str:
    if isinstance(tree, tuple):
        op, left, right = tree
        return f"({_render(left)} {op} {_render(right)})"
    return str(tree)


def _reference(tree: object, env: dict[str, int]) -> int | None:
    """Evaluate with plain Python arithmetic; None if any value leaves ±10**18."""
    if isinstance(tree, tuple):
        op, left, right = tree
        a, b = _reference(left, env), _reference(right, env)
        if a is None or b is None:
            return None
        value = a + b if op == "+" else a - b if op == "-" else a * b
    elif isinstance(tree, str):
        value = env[tree]
    else:
        assert isinstance(tree, int)
        value = tree
    return value if abs(value) <= 10**18 else None


@settings(max_examples=300)
@given(tree=_trees(), values=st.lists(st.integers(min_value=-1000, max_value=1000), min_size=3, max_size=3))
def test_matches_reference_arithmetic(tree: object, values: list[int]) -> None:
    env = dict(zip(VARIABLES, values, strict=True))
    expected = _reference(tree, env)
    source = _render(tree)
    if expected is None:
        with pytest.raises(FormulaError, match="integer is too large"):
            parse_formula(source)(env)
    else:
        result = parse_formula(source)(env)
        assert result == expected and type(result) is int


FORMULA_ALPHABET = "0123456789+-*/%()[]{}:,.=<>!&|^~@#'\"\\ \n\tabcdefijklmnorstuxyz_eE"


@settings(max_examples=500, deadline=None)  # speed is measured in benchmarks/, not asserted here
@given(source=st.one_of(st.text(max_size=600), st.text(alphabet=FORMULA_ALPHABET, max_size=120)))
def test_fuzz_only_formula_errors(source: str) -> None:
    try:
        formula = parse_formula(source)
    except FormulaError as err:
        assert err.message and "\n" not in err.message and "Traceback" not in err.message
    else:
        values = [3, [1, 2], 0, 2.5, -1] * 100
        env = dict(zip(sorted(formula.variables), values, strict=False))
        with contextlib.suppress(FormulaError):
            formula(env)


def test_checked_env_checks_lists_once_and_still_reports_bad_values() -> None:
    formula = parse_formula("sum(depths[:s]) + s")
    env = checked_env({"depths": (3, 3, 9, 3), "s": 2})
    assert isinstance(env, CheckedEnv) and env["depths"] == [3, 3, 9, 3]
    assert formula(env) == 8
    bad = checked_env({"depths": [1, "x"], "s": 1})
    assert not isinstance(bad, CheckedEnv)  # left to the formula, which names the variable
    with pytest.raises(FormulaError, match="variable 'depths' must be a number or a list of numbers, not str"):
        formula(bad)
    with pytest.raises(FormulaError, match="integer is too large"):
        formula(CheckedEnv(depths=[1], s=10**19))  # numbers are still checked at every use


# The compiled fast path (``expr._native``) against the interpreter, on formulas and values of
# every kind: the same value, or the same FormulaError message.

NATIVE_NUMBERS = ("a", "b")
NATIVE_LISTS = ("xs", "ys")


def _native_trees(want_list: bool) -> st.SearchStrategy[str]:
    numbers = st.deferred(lambda: number_trees)
    lists = st.deferred(lambda: list_trees)
    number_trees = st.one_of(
        st.integers(min_value=-(2**30), max_value=2**30).map(str),
        st.sampled_from(NATIVE_NUMBERS),
        st.tuples(numbers, st.sampled_from(["+", "-", "*", "//", "%"]), numbers).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        numbers.map(lambda n: f"(-{n})"),
        st.tuples(lists, numbers).map(lambda t: f"{t[0]}[{t[1]}]"),
        st.tuples(st.sampled_from(["sum", "len", "min", "max"]), lists).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(["min", "max"]), numbers, numbers).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
        st.sampled_from(["xs", "a"]),  # a variable read with the other type
    )
    list_trees = st.one_of(
        st.sampled_from(NATIVE_LISTS),
        st.lists(numbers, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
        st.tuples(lists, st.one_of(st.just(""), numbers), st.one_of(st.just(""), numbers)).map(lambda t: f"{t[0]}[{t[1]}:{t[2]}]"),
        st.tuples(lists, numbers).map(lambda t: f"{t[0]}[::{t[1]}]"),
    )
    return list_trees if want_list else number_trees


_NATIVE_VALUES = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.integers(min_value=-(2**25), max_value=2**25),
    st.sampled_from([2**24, -(2**24), 2**24 + 1, 10**18, 10**18 + 1, True, 2.0, 2.5]),
    st.lists(st.integers(min_value=-3, max_value=6), max_size=4),
    st.lists(st.sampled_from([2**24 + 1, 10**18, 1.5, 0]), max_size=3),
)


def _outcome(run: Callable[[Any], object], env: Any) -> object:
    try:
        value = run(env)
    except FormulaError as err:
        return ("error", err.message)
    return (type(value).__name__, value)


@settings(max_examples=1500, deadline=None)
@given(source=_native_trees(want_list=False), values=st.lists(_NATIVE_VALUES, min_size=4, max_size=4), checked=st.booleans())
def test_native_fast_path_matches_the_interpreter(source: str, values: list[object], checked: bool) -> None:
    try:
        formula = parse_formula(source)
    except FormulaError:
        return
    env: dict[str, object] = dict(zip(NATIVE_NUMBERS + NATIVE_LISTS, values, strict=True))
    if checked:
        env = checked_env(env)
    interpreted = expr._Compiler().compile(ast.parse(source, mode="eval").body, 0).run
    assert _outcome(formula, env) == _outcome(interpreted, env)


@pytest.mark.parametrize(
    "source",
    ["block + 1", "block * 24 // blocks + 1", "sum(depths[:stage]) + block + 1", "min(block // 3, 11) + 1", "[0, 3, 9][stage] + block", "len(depths) - stage"],
)
def test_rule_formulas_take_the_native_path(source: str) -> None:
    """The formulas bundled rule sets use compile to one Python function (the fast path)."""
    assert parse_formula(source).evaluator.__name__ == "native"


@pytest.mark.parametrize("source", ["a / 2", "a ** 2", "a * a * a * a", "depth * 1.5"])
def test_formulas_outside_the_native_subset_are_interpreted(source: str) -> None:
    """True division, powers, products that could pass 10**18 and floats stay with the interpreter."""
    assert parse_formula(source).evaluator.__name__ != "native"
