"""CEL conditions (``successCondition`` / ``failureCondition``), compiled with cel-python and interpreted.

Never Python ``eval``: cel-python's *interpreted* runner walks the parse tree (its transpiling runner, which
``exec``s generated Python, is not used).

Variables an expression may use:

``result``
    the measured value: number, string, bool, list, map (JSON-like), never null when judged (no data is
    Inconclusive before any condition runs);
``samples``
    the sample count, an int, or null when the provider gave none;
``previous``
    the previous measured value of the same check, or null.

Numbers. cel-python 0.5 implements the old CEL rule that ``int`` and ``double`` never mix, so ``result > 0``
with ``result = 0.5`` would be an evaluation error. Current CEL compares numbers across types by value, and
so do we: ``<  <=  >  >=  ==  !=`` and ``in`` compare an int with a double numerically (``1 == 1.0`` is
true). As an extension, arithmetic (``+ - * /``) mixing an int and a double yields a double, so
``result * 100 > 5`` works whatever the type of ``result``. ``int / int`` stays integer division (CEL).
Values of different kinds are unequal (``previous == null`` is false for a number, ``1 == 'a'`` is false),
and ordering them is an error; a bool is never a number.
Python ``int`` becomes CEL ``int`` (a ``double`` beyond int64), ``float`` and ``Decimal`` become ``double``.

Time. Evaluation is bounded by the measurement's deadline: the interpreter checks it at every node it visits
(a heavy comprehension over a large list stops there, an Error), so no static cost limit is needed; inputs are
already bounded by the providers (one SQL row, one Prometheus sample, an HTTP body of at most 4 MiB).

Names are checked when compiling: a misspelt variable (``resutl``), an unknown function or method is a
``ValueError`` at spec-parsing time, not an Error measurement later.
"""

from __future__ import annotations

import datetime as dt
import functools
import operator
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any, cast

import celpy
import lark
import lark.exceptions
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, Evaluator, base_functions

from torghut_operator.core.deadline import Deadline, DeadlineExceeded
from torghut_operator.core.text import cut

VARIABLES = ("result", "samples", "previous")
"""The variables an expression may name."""

_TYPE_NAMES = frozenset(
    {
        "bool",
        "bytes",
        "double",
        "duration",
        "int",
        "list",
        "map",
        "null_type",
        "string",
        "timestamp",
        "uint",
        "type",
        "dyn",
        "google",
    }
)
_MACROS_ONE_VAR = frozenset({"all", "exists", "exists_one", "map", "filter"})
_FUNCTION_MACROS = frozenset({"has", "dyn"})
_INT64 = (-(2**63), 2**63 - 1)
_MAX_SOURCE = 4096


class ConditionEvaluationError(Exception):
    """A condition could not be evaluated on this value (type mismatch, missing key, not a bool...).

    Judged as an Error measurement, never a pass. ``str()`` names the expression and the reason; ``reason``
    is the reason alone."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source!r}: {reason}")
        self.source = source
        self.reason = reason


# --- numbers across int and double -------------------------------------------------------------------------

_NUMBER_TYPES = (celtypes.IntType, celtypes.UintType, celtypes.DoubleType)


def _number(value: Any) -> int | float | None:
    """The Python number of a CEL int/uint/double (bool is not a number), else None."""
    if isinstance(value, celtypes.BoolType) or not isinstance(value, _NUMBER_TYPES):
        return None
    return float(value) if isinstance(value, celtypes.DoubleType) else int(value)


def _mixed(a: Any, b: Any) -> tuple[int | float, int | float] | None:
    """Both numbers of different CEL types (the case cel-python rejects), else None."""
    x, y = _number(a), _number(b)
    if x is None or y is None or type(a) is type(b):
        return None
    return x, y


def _family(value: Any) -> str:
    """CEL's kind of a value, where int, uint and double are all "number"."""
    if value is None:
        return "null"
    if isinstance(value, celtypes.BoolType):
        return "bool"
    if _number(value) is not None:
        return "number"
    return type(value).__name__


def _comparison(op: Callable[[Any, Any], bool], fallback: Callable[..., Any]) -> Callable[..., Any]:
    equality = op in (operator.eq, operator.ne)

    def compare(a: Any, b: Any) -> Any:
        if isinstance(a, CELEvalError) or isinstance(b, CELEvalError):
            return fallback(a, b)  # errors propagate, never become false
        if _family(a) != _family(b):
            # CEL's heterogeneous equality: values of different kinds are unequal (Python would say
            # True == 1); ordering them is an error (Python would say True > 0).
            if equality:
                return celtypes.BoolType(op is operator.ne)
            raise TypeError(f"no such overload: {_cel_type_name(a)} and {_cel_type_name(b)}")
        pair = _mixed(a, b)
        if pair is None:
            return fallback(a, b)
        return celtypes.BoolType(op(*pair))  # Python compares int with float exactly

    compare.__name__ = getattr(fallback, "__name__", "compare")
    return compare


def _arithmetic(op: Callable[[Any, Any], Any], fallback: Callable[..., Any]) -> Callable[..., Any]:
    def compute(a: Any, b: Any) -> Any:
        pair = _mixed(a, b)
        if pair is None:
            return fallback(a, b)
        return celtypes.DoubleType(op(float(pair[0]), float(pair[1])))

    compute.__name__ = getattr(fallback, "__name__", "compute")
    return compute


def _contains(item: Any, container: Any) -> Any:
    """``in`` with numbers compared across types; anything else as cel-python does it."""
    needle = _number(item)
    if needle is not None and isinstance(container, celtypes.ListType):
        return celtypes.BoolType(any(_number(element) == needle for element in container))
    return base_functions["_in_"](item, container)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "_<_": _comparison(operator.lt, base_functions["_<_"]),
    "_<=_": _comparison(operator.le, base_functions["_<=_"]),
    "_>_": _comparison(operator.gt, base_functions["_>_"]),
    "_>=_": _comparison(operator.ge, base_functions["_>=_"]),
    "_==_": _comparison(operator.eq, base_functions["_==_"]),
    "_!=_": _comparison(operator.ne, base_functions["_!=_"]),
    "_+_": _arithmetic(operator.add, base_functions["_+_"]),
    "_-_": _arithmetic(operator.sub, base_functions["_-_"]),
    "_*_": _arithmetic(operator.mul, base_functions["_*_"]),
    "_/_": _arithmetic(operator.truediv, base_functions["_/_"]),
    "_in_": _contains,
}
_KNOWN_FUNCTIONS = frozenset(base_functions) | _FUNCTION_MACROS | {"reduce", "min"} | _MACROS_ONE_VAR


# --- Python values to CEL ----------------------------------------------------------------------------------


def to_cel(value: Any, deadline: Deadline | None = None) -> Any:
    """A JSON-like Python value as a CEL value. Raises TypeError for anything else, DeadlineExceeded when
    ``deadline`` passes (converting a large structure takes time of its own: about 10 µs an item)."""
    counter = [0]

    def convert(item: Any) -> Any:
        counter[0] += 1
        if deadline is not None and counter[0] % 1024 == 0 and deadline.expired():
            raise DeadlineExceeded(f"preparing CEL variables ran past the check's timeout of {deadline.label}")
        if item is None:
            return None
        if isinstance(item, bool):
            return celtypes.BoolType(item)
        if isinstance(item, int):
            if _INT64[0] <= item <= _INT64[1]:
                return celtypes.IntType(item)
            return celtypes.DoubleType(float(item))
        if isinstance(item, float | Decimal):
            return celtypes.DoubleType(float(item))
        if isinstance(item, str):
            return celtypes.StringType(item)
        if isinstance(item, list | tuple):
            return celtypes.ListType([convert(element) for element in item])
        if isinstance(item, Mapping):
            return celtypes.MapType({convert(key): convert(element) for key, element in item.items()})
        if isinstance(item, dt.datetime):
            return celtypes.TimestampType(item if item.tzinfo else item.replace(tzinfo=dt.UTC))
        if isinstance(item, dt.timedelta):
            return celtypes.DurationType(item)
        raise TypeError(f"a {type(item).__name__} value can't be used in a CEL condition")

    return convert(value)


# --- evaluating within a deadline ---------------------------------------------------------------------------


class _BoundedEvaluator(Evaluator):
    """cel-python's tree-walking evaluator, checking a deadline at every node it visits (also in the
    sub-evaluators of macros such as ``all`` and ``map``)."""

    def __init__(self, ast: lark.Tree[Any], activation: Any, deadline: Deadline | None) -> None:
        super().__init__(ast, activation=activation)
        self._deadline = deadline

    def _visit_tree(self, tree: lark.Tree[Any]) -> Any:
        if self._deadline is not None and self._deadline.expired():
            raise DeadlineExceeded(f"CEL evaluation ran past the check's timeout of {self._deadline.label}")
        return super()._visit_tree(tree)

    def sub_evaluator(self, ast: lark.Tree[Any]) -> Evaluator:
        return _BoundedEvaluator(ast, self.activation, self._deadline)


class _BoundedRunner(celpy.InterpretedRunner):
    def evaluate_within(self, context: dict[str, Any], deadline: Deadline | None) -> Any:
        evaluator = _BoundedEvaluator(self.ast, self.new_activation(), deadline)
        return evaluator.evaluate(context)


# --- compiling ---------------------------------------------------------------------------------------------

_lock = threading.Lock()


@functools.cache
def _environment() -> celpy.Environment:
    # Built on first use, never at import. Interpreted: no generated Python is exec'd.
    return celpy.Environment(runner_class=_BoundedRunner)


def warm_up() -> None:
    """Build cel-python's parser now (0.15-0.3 s of CPU, once per process) rather than in the first condition's
    compile: the operator does it at startup, off its event loop."""
    _environment()


def _subtrees(tree: lark.Tree[Any]) -> Iterator[lark.Tree[Any]]:
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in node.children if isinstance(child, lark.Tree))


def _bare_ident(tree: Any) -> str | None:
    """The identifier when ``tree`` (an expr) is just a name, as in the ``x`` of ``result.all(x, x > 0)``."""
    while isinstance(tree, lark.Tree):
        if tree.data == "ident":
            token = tree.children[0]
            return str(token) if isinstance(token, lark.Token) else None
        if len(tree.children) != 1:
            return None
        tree = tree.children[0]
    return None


def _check_names(ast: lark.Tree[Any]) -> None:
    bound: set[str] = set()
    for node in _subtrees(ast):
        if node.data == "member_dot_arg" and len(node.children) == 3:
            method, args = str(node.children[1]), node.children[2]
            if isinstance(args, lark.Tree):
                count = 2 if method == "reduce" else 1 if method in _MACROS_ONE_VAR else 0
                for expr in args.children[:count]:
                    name = _bare_ident(expr)
                    if name is not None:
                        bound.add(name)
    for node in _subtrees(ast):
        if node.data == "ident":
            name = str(node.children[0])
            if name not in VARIABLES and name not in _TYPE_NAMES and name not in bound:
                raise ValueError(f"unknown name {name!r}; a condition can use {', '.join(VARIABLES)}")
        elif node.data in {"ident_arg", "member_dot_arg"}:
            name = str(node.children[0] if node.data == "ident_arg" else node.children[1])
            if name not in _KNOWN_FUNCTIONS:
                raise ValueError(f"unknown function {name!r}")


class CompiledCondition:
    """A parsed, name-checked CEL expression, ready to evaluate any number of times (thread-safe)."""

    def __init__(self, source: str, runner: _BoundedRunner) -> None:
        self.source = source
        self._runner = runner

    def __repr__(self) -> str:
        return f"CompiledCondition({self.source!r})"

    def evaluate(
        self, *, result: Any, samples: int | None = None, previous: Any | None = None, deadline: Deadline | None = None
    ) -> bool:
        """Evaluate with these variables. Returns the bool the expression yields; raises
        ConditionEvaluationError when it can't be evaluated or yields anything but a bool, DeadlineExceeded
        when ``deadline`` passes first."""
        try:
            variables = {
                "result": to_cel(result, deadline),
                "samples": None if samples is None else celtypes.IntType(samples),
                "previous": to_cel(previous, deadline),
            }
        except (TypeError, ValueError) as error:
            raise ConditionEvaluationError(self.source, str(error)) from error
        try:
            outcome = self._runner.evaluate_within(variables, deadline)
        except DeadlineExceeded:
            raise
        except CELEvalError as error:
            raise ConditionEvaluationError(self.source, _describe(error)) from error
        except Exception as error:  # anything from the interpreter
            raise ConditionEvaluationError(self.source, f"{type(error).__name__}: {error}") from error
        if deadline is not None and deadline.expired():  # an error swallowed by the interpreter on the way
            raise DeadlineExceeded(f"CEL evaluation ran past the check's timeout of {deadline.label}")
        if isinstance(outcome, CELEvalError):
            raise ConditionEvaluationError(self.source, _describe(outcome))
        if not isinstance(outcome, celtypes.BoolType | bool):
            shown = cut(str(outcome), 60)
            raise ConditionEvaluationError(self.source, f"yielded {_cel_type_name(outcome)} {shown}, not a bool")
        return bool(outcome)


def compile_condition(expr: str) -> CompiledCondition:
    """Parse and name-check ``expr``; raises ValueError naming the problem and where it is."""
    if not expr.strip():
        raise ValueError("CEL condition is empty")
    if len(expr) > _MAX_SOURCE:
        raise ValueError(f"CEL condition is longer than {_MAX_SOURCE} characters")
    return _compile(expr)


@functools.lru_cache(maxsize=512)
def _compile(expr: str) -> CompiledCondition:
    environment = _environment()
    try:
        with _lock:
            ast = environment.compile(expr)
            runner = environment.program(ast, functions=_FUNCTIONS)
    except CELParseError as error:
        raise ValueError(f"CEL condition {expr!r} does not parse: {_syntax_error(error)}") from error
    except RecursionError as error:
        raise ValueError(f"CEL condition {expr!r} is nested too deeply") from error
    except Exception as error:  # the parser may raise lark errors of its own
        raise ValueError(f"CEL condition {expr!r} does not parse: {type(error).__name__}: {error}") from error
    try:
        _check_names(ast)
    except ValueError as error:
        raise ValueError(f"CEL condition {expr!r}: {error}") from None
    return CompiledCondition(expr, cast(_BoundedRunner, runner))


def _syntax_error(error: CELParseError) -> str:
    cause = error.__context__
    if isinstance(cause, lark.exceptions.UnexpectedToken):
        token = cause.token
        what = "unexpected end of expression" if token.type == "$END" else f"unexpected {str(token)!r}"
    elif isinstance(cause, lark.exceptions.UnexpectedCharacters):
        what = f"unexpected character {cause.char!r}"
    else:
        what = "syntax error"
    if error.line is not None and error.column is not None:
        what += f" at line {error.line} column {error.column}"
    return what


def _cel_type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = {
        celtypes.IntType: "int",
        celtypes.UintType: "uint",
        celtypes.DoubleType: "double",
        celtypes.StringType: "string",
        celtypes.ListType: "list",
        celtypes.MapType: "map",
        celtypes.BytesType: "bytes",
    }
    return names.get(type(value), type(value).__name__)


_OPERATORS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=", "in": "in"}
_CLASS = re.compile(r"celpy\.celtypes\.(\w+)Type|<class '(NoneType)'>")


def _describe(error: CELEvalError) -> str:
    """cel-python's error text without its dump of the whole activation."""
    message = str(error.args[0]) if error.args else "evaluation error"
    cause = error.args[2] if len(error.args) > 2 else None
    if message.startswith("undeclared reference"):
        return message.split(" (in activation", 1)[0]
    if message.startswith("found no matching overload"):
        # "found no matching overload for Token('RULE', 'relation_gt') applied to '(<class ...>, <class ...>)'"
        relation = re.search(r"relation_(\w+)", message)
        symbol = _OPERATORS.get(relation.group(1), "operator") if relation else "operator"
        types = ["null" if none else name.lower() for name, none in _CLASS.findall(message)]
        on = f" on {' and '.join(types)}" if len(types) == 2 else ""
        return f"no matching overload for {symbol}{on}"
    if cause:
        detail = " ".join(str(part) for part in cause) if isinstance(cause, tuple) else str(cause)
        return f"{message}: {detail}"
    return message
