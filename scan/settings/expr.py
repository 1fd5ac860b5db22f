"""ROOT-style cut and input expressions, parsed and evaluated safely on numpy arrays.

Physicists write ``jet1_pt > 30 && (abs(lep1_eta) < 2.4 || !is_fwd)``, meaning what ROOT means: ``!`` binds
tighter than comparisons (``!pt > 20`` is ``(!pt) > 20``) and chained comparisons (``20 < pt < 40``, always true
in C) are refused. The text is tokenised here, rewritten
into Python's expression grammar (``&&`` → ``and``, quoted branch names → placeholders) and parsed with
:func:`ast.parse`; the tree is then walked by a small interpreter that only knows arithmetic, comparisons,
boolean logic, numbers, branch names and a fixed table of functions. Nothing is ever passed to ``eval``.

Branch names that are not identifiers (``jet1_b-tag``) are written in double quotes or backticks.
Names starting with ``$`` (``$era``) refer to columns hhscan adds itself.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from hhscan.errors import ExpressionError, did_you_mean

FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "abs": np.abs,
    "fabs": np.abs,
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "log10": np.log10,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "tanh": np.tanh,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "atan2": np.arctan2,
    "pow": np.power,
    "min": np.minimum,
    "max": np.maximum,
    "floor": np.floor,
    "ceil": np.ceil,
}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<quoted>"[^"]*"|`[^`]*`)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>\$?[A-Za-z_][A-Za-z0-9_.]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>&&|\|\||==|!=|<=|>=|\*\*|[-+*/%<>!(),^])
    """,
    re.VERBOSE,
)

_ROOT_FUNCTION_ALIASES = {
    "TMath::Abs": "abs",
    "TMath::Sqrt": "sqrt",
    "TMath::Log": "log",
    "TMath::Exp": "exp",
}

_BINARY = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.Mod: np.mod,
    ast.Pow: np.power,
}
_COMPARE = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


@dataclass(frozen=True)
class Expression:
    """A parsed expression; ``branches`` are the names it reads, in order of first use."""

    text: str
    tree: ast.expr
    placeholders: Mapping[str, str]

    @cached_property
    def branches(self) -> tuple[str, ...]:
        functions = {id(n.func) for n in ast.walk(self.tree) if isinstance(n, ast.Call)}
        names = [n for n in ast.walk(self.tree) if isinstance(n, ast.Name) and id(n) not in functions]
        names.sort(key=lambda n: n.col_offset)
        return tuple(dict.fromkeys(self.placeholders.get(n.id, n.id) for n in names))

    def evaluate(self, columns: Mapping[str, np.ndarray], where: str = "") -> np.ndarray:
        """Evaluate on ``columns``; ``where`` (a file or config key) prefixes error messages."""
        missing = [b for b in self.branches if b not in columns]
        if missing:
            prefix = f"{where}: " if where else ""
            raise ExpressionError(
                f"{prefix}expression '{self.text}' uses unknown branch '{missing[0]}' "
                f"({did_you_mean(missing[0], columns, 'branches')})"
            )
        with np.errstate(all="ignore"):
            return np.asarray(_Evaluator(self, columns).visit(self.tree))


def parse(text: str, where: str = "") -> Expression:
    """Parse a ROOT-style expression; raises :class:`ExpressionError` naming ``where`` and the position."""
    prefix = f"{where}: " if where else ""
    if not text or not text.strip():
        raise ExpressionError(f"{prefix}empty expression")
    pieces: list[str] = []
    placeholders: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ExpressionError(
                f"{prefix}cannot read '{text[position : position + 10]}' at column {position + 1} of '{text}'"
            )
        kind, token = match.lastgroup, match.group()
        position = match.end()
        if kind == "space":
            pieces.append(" ")
        elif kind == "quoted" or (kind == "name" and (token.startswith("$") or "." in token)):
            name = token[1:-1] if kind == "quoted" else token
            key = f"_b{len(placeholders)}_"
            placeholders[key] = name
            pieces.append(key)
        elif kind == "name":
            pieces.append(_ROOT_FUNCTION_ALIASES.get(token, token))
        elif token == "&&":
            pieces.append(" and ")
        elif token == "||":
            pieces.append(" or ")
        elif token == "!":
            # C's `!` is a unary operator: it binds tighter than any binary one, `!pt > 20` is `(!pt) > 20`.
            # Python's `~` has that precedence (`not` binds looser than comparisons); it evaluates as logical not.
            pieces.append(" ~")
        elif token == "^":
            raise ExpressionError(f"{prefix}'^' in '{text}': write powers as pow(x, n) or x**n")
        else:
            pieces.append(token)
    rewritten = "".join(pieces)
    try:
        tree = ast.parse(rewritten.strip(), mode="eval").body
    except SyntaxError as error:
        raise ExpressionError(f"{prefix}syntax error in '{text}': {error.msg}") from None
    _check(tree, text, prefix, placeholders)
    return Expression(text=text, tree=tree, placeholders=placeholders)


def _check(tree: ast.expr, text: str, prefix: str, placeholders: Mapping[str, str]) -> None:
    allowed = (
        ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Invert, ast.USub, ast.UAdd, ast.BinOp, ast.Compare,
        ast.Name, ast.Load, ast.Constant, ast.Call, *_BINARY, *_COMPARE,
    )  # fmt: skip
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise ExpressionError(f"{prefix}'{text}' uses a construct hhscan does not evaluate")
        if isinstance(node, ast.Compare) and len(node.ops) > 1:
            # In C and ROOT `20 < pt < 40` is `(20 < pt) < 40`, always true: almost never what was meant.
            raise ExpressionError(
                f"{prefix}chained comparison in '{text}': C and ROOT compare the first result (0 or 1) with the "
                f"next value; write it with && (e.g. 20 < pt && pt < 40)"
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise ExpressionError(f"{prefix}'{text}': only numbers are allowed as constants")
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else "?"
            if name not in FUNCTIONS or node.keywords:
                raise ExpressionError(
                    f"{prefix}unknown function '{name}' in '{text}' ({did_you_mean(name, FUNCTIONS, 'functions')})"
                )
        if isinstance(node, ast.Name) and node.id in FUNCTIONS and node.id not in placeholders:
            # A bare function name used as a value, e.g. "abs > 3".
            parent_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.func is node]
            if not parent_calls:
                raise ExpressionError(f"{prefix}'{node.id}' in '{text}' is a function; quote a branch of that name")


class _Evaluator(ast.NodeVisitor):
    def __init__(self, expression: Expression, columns: Mapping[str, np.ndarray]):
        self.expression = expression
        self.columns = columns

    def visit_Name(self, node: ast.Name) -> np.ndarray:
        return self.columns[self.expression.placeholders.get(node.id, node.id)]

    def visit_Constant(self, node: ast.Constant) -> float:
        return node.value

    def visit_UnaryOp(self, node: ast.UnaryOp):
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.Invert):  # the rewritten `!`
            return np.logical_not(operand)
        return np.negative(operand) if isinstance(node.op, ast.USub) else operand

    def visit_BinOp(self, node: ast.BinOp):
        return _BINARY[type(node.op)](self.visit(node.left), self.visit(node.right))

    def visit_BoolOp(self, node: ast.BoolOp):
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        result = self.visit(node.values[0])
        for value in node.values[1:]:
            result = combine(result, self.visit(value))
        return result

    def visit_Compare(self, node: ast.Compare):
        left = self.visit(node.left)
        result = None
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.visit(comparator)
            step = _COMPARE[type(op)](left, right)
            result = step if result is None else np.logical_and(result, step)
            left = right
        return result

    def visit_Call(self, node: ast.Call):
        assert isinstance(node.func, ast.Name)
        return FUNCTIONS[node.func.id](*(self.visit(arg) for arg in node.args))
