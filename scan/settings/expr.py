"""ROOT-style cut and input expressions, parsed and evaluated safely on numpy arrays.

Physicists write ``jet1_pt > 30 && (abs(lep1_eta) < 2.4 || !is_fwd)``, meaning what ROOT means: ``!`` binds
tighter than comparisons (``!pt > 20`` is ``(!pt) > 20``) and chained comparisons (``20 < pt < 40``, always true
in C) are refused. The text is tokenised here, rewritten
into Python's expression grammar (``&&`` → ``and``, quoted branch names → placeholders) and parsed with
:func:`ast.parse`; the tree is then walked by a small interpreter that only knows arithmetic, comparisons,
boolean logic, numbers, branch names and a fixed table of functions. Nothing is ever passed to ``eval``.

Branch names that are not identifiers (``jet1_b-tag``) are written in double quotes or backticks.
Names starting with ``$`` (``$era``) refer to columns hhscan adds itself.

Jagged branches (NanoAOD's ``Jet_pt``: a variable number of entries per event, read as awkward arrays) follow
ROOT's TTreeFormula: arithmetic and comparisons are element-wise (``Jet_pt > 30 && abs(Jet_eta) < 2.4``), ``X[i]``
is the i-th entry, ``Alt$(X[i], d)`` that entry or ``d`` where an event has none, and ``Sum$ Min$ Max$ MinIf$
MaxIf$ Length$`` reduce each event's entries to one number (``Min$``/``Max$`` of no entries is 0, as in ROOT).
An event lacking an entry ``X[i]`` asks for is *missing* (an awkward ``None``): ``&&`` with a false side and
``||`` with a true side are defined anyway (C evaluates them short-circuit), anything else stays missing and the
caller decides whether that event matters (a cut may have removed it). :meth:`Expression.shape` checks, from the
branches' shapes alone (before data is read), that jagged values are used where ROOT allows them.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

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

# ROOT's functions of jagged values, written with a trailing `$`, and the identifiers they are rewritten to.
JAGGED_FUNCTIONS = ("Sum$", "Min$", "Max$", "MinIf$", "MaxIf$", "Length$", "Alt$")
_JAGGED_IDENTIFIER = {name: f"__{name[:-1]}" for name in JAGGED_FUNCTIONS}
_JAGGED_NAME = {identifier: name for name, identifier in _JAGGED_IDENTIFIER.items()}
_ARGUMENTS = {"Sum$": 1, "Min$": 1, "Max$": 1, "Length$": 1, "MinIf$": 2, "MaxIf$": 2, "Alt$": 2}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<quoted>"[^"]*"|`[^`]*`)
  | (?P<jagged>(?:Sum|Min|Max|MinIf|MaxIf|Length|Alt)\$)
  | (?P<unknown_jagged>[A-Za-z_][A-Za-z0-9_]*\$)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>\$?[A-Za-z_][A-Za-z0-9_.]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>&&|\|\||==|!=|<=|>=|\*\*|[-+*/%<>!(),^\[\]])
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
class BranchShape:
    """What one event holds of a branch, known from the file's branch types before any data is read."""

    jagged: bool = False  # a list of entries per event (NanoAOD's Jet_pt, an HDF5 field of shape (200,))
    multiplicity: str | None = None  # what sets an event's entry count (the counter branch nJet); None: unknown
    fixed: int | None = None  # entries per event of a fixed-size array (HDF5 (200,), ROOT float x[3])
    components: int = 1  # numbers per entry (an HDF5 field of shape (200, 4): 4)

    def describe(self) -> str:
        if self.fixed is not None:
            return f"{self.fixed} entries per event" + (f" of {self.components} numbers" if self.components > 1 else "")
        return f"entries per event counted by {self.multiplicity}" if self.multiplicity else "entries per event"


FLAT = BranchShape()


@dataclass(frozen=True)
class _Kind:
    """The shape of a sub-expression's value: one number per event, or entries of some multiplicity."""

    branch: str | None = None  # the first jagged branch it comes from (None: one number per event)
    multiplicity: str | None = None

    @property
    def jagged(self) -> bool:
        return self.branch is not None


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

    @cached_property
    def bare_branch(self) -> str | None:
        """The branch the whole expression is (``Jet_pt``, a quoted name resolved); None for anything else."""
        return self.placeholders.get(self.tree.id, self.tree.id) if isinstance(self.tree, ast.Name) else None

    @cached_property
    def uses_jagged_syntax(self) -> bool:
        """Whether it indexes or reduces (``X[i]``, ``Sum$``…): then it needs jagged branches."""
        return any(isinstance(n, ast.Subscript) or (isinstance(n, ast.Call) and n.func.id in _JAGGED_NAME)
                   for n in ast.walk(self.tree))  # fmt: skip

    def check_shapes(
        self,
        shapes: Mapping[str, BranchShape],
        where: str = "",
        block: bool = False,
        entries: Callable[[str], str] | None = None,
        block_allowed: bool = False,
    ) -> BranchShape:
        """Check from the branches' shapes that jagged values are used as ROOT allows; one line per misuse.

        ``block``: the expression of a block, whose value must be jagged (else one number per event is required).
        ``entries`` describes a branch's entries per event for the messages (e.g. "0–12", from its counter);
        ``block_allowed`` (an input) suggests a block as a way out.
        Returns the shape of the value (for a block: its multiplicity, fixed size and components).
        """
        prefix = f"{where}: " if where else ""
        bare = self.bare_branch
        if bare is not None and shapes.get(bare, FLAT).components > 1:
            if block:
                return shapes[bare]
            raise ExpressionError(
                f"{prefix}'{self.text}': {bare} has {shapes[bare].describe()}: use it whole as a block's expr "
                f"({{name: ..., expr: {bare}, length: N, components: {shapes[bare].components}}})"
            )
        kind = _ShapeChecker(self, shapes, prefix).visit(self.tree)
        if block and not kind.jagged:
            raise ExpressionError(
                f"{prefix}block of '{self.text}', which is one number per event: a block takes a jagged or array "
                f"branch (or an expression of them); give '{self.text}' as a plain input"
            )
        if not block and kind.jagged:
            name = kind.branch
            count = entries(name) if entries else shapes.get(name, FLAT).describe()
            ways = [f"{name}[0]", f"Alt$({name}[0], 0)", f"a reduction like Sum$({name})"]
            ways += ["a block"] if block_allowed else []
            raise ExpressionError(
                f"{prefix}{name} is jagged ({count}) in '{self.text}': use {', '.join(ways[:-1])}, or {ways[-1]}"
            )
        if not kind.jagged:
            return FLAT
        base = shapes.get(kind.branch, FLAT)
        return BranchShape(jagged=True, multiplicity=kind.multiplicity, fixed=base.fixed)

    def evaluate(self, columns: Mapping[str, Any], where: str = "") -> np.ndarray:
        """Evaluate on ``columns``; ``where`` (a file or config key) prefixes error messages. An event lacking an
        entry the expression indexes is an error here (see :meth:`evaluate_with_missing`)."""
        values, missing = self.evaluate_with_missing(columns, where)
        if missing is not None and missing.any():
            raise ExpressionError(self.missing_message(int(missing.sum()), missing.size, where))
        return values

    def evaluate_with_missing(
        self, columns: Mapping[str, Any], where: str = ""
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The values (one number per event) and which events lack an entry the expression indexes (``None``: no
        event does); the caller decides which events matter (an input only needs the selected ones)."""
        self._check_columns(columns, where)
        self.check_shapes(_shapes_of(columns, self.branches), where)
        result = self._run(columns, where)
        if _is_awkward(result):
            import awkward as ak

            missing = ak.to_numpy(ak.is_none(result, axis=0)) if _has_option(result) else None
            if missing is None:
                return ak.to_numpy(result), None
            filler = False if "bool" in str(ak.type(result)) else 0  # keeps a missing comparison boolean
            return ak.to_numpy(ak.fill_none(result, filler)), missing
        return np.asarray(result), None

    def evaluate_block(
        self, columns: Mapping[str, Any], length: int, pad: float, where: str = ""
    ) -> tuple[np.ndarray, np.ndarray]:
        """A block: each event's first ``length`` entries, ``pad`` after its last one, as a float64 array (events,
        length) or (events, length, components); and each event's real entries (at most ``length``)."""
        import awkward as ak

        self._check_columns(columns, where)
        self.check_shapes(_shapes_of(columns, self.branches), where, block=True)
        bare = self.bare_branch
        if bare is not None and isinstance(columns[bare], np.ndarray) and columns[bare].ndim == 3:
            values = np.asarray(columns[bare], dtype=np.float64)[:, :length]
            short = length - values.shape[1]
            values = np.pad(values, ((0, 0), (0, short), (0, 0)), constant_values=pad) if short else values
            return values, np.full(len(values), min(length, columns[bare].shape[1]))
        result = self._run(columns, where)
        if _has_option(result):  # an index inside a block's expression, missing for some entries
            raise ExpressionError(
                f"{where + ': ' if where else ''}block of '{self.text}': an index in it is missing for "
                f"some events; a block's expression is element-wise (Jet_pt * 2, not Jet_pt[0])"
            )
        counts = np.minimum(ak.to_numpy(ak.num(result, axis=1)), length)
        padded = ak.fill_none(ak.pad_none(result, length, axis=1, clip=True), pad)
        return ak.to_numpy(padded).astype(np.float64), counts

    def missing_message(self, count: int, total: int, where: str = "", what: str = "events") -> str:
        """One line for ``count`` of ``total`` events lacking an entry the expression indexes."""
        prefix = f"{where}: " if where else ""
        index = next((n for n in ast.walk(self.tree) if isinstance(n, ast.Subscript)), None)
        example = "X[i]"
        guard = "Length$(X) > i"
        if index is not None and isinstance(index.value, ast.Name):
            branch = self.placeholders.get(index.value.id, index.value.id)
            position = index.slice.value if isinstance(index.slice, ast.Constant) else 0
            example, guard = f"{branch}[{position}]", f"Length$({branch}) > {position}"
        return (
            f"{prefix}'{self.text}': {count} of the {total} {what} have no {example}: cut them ({guard}) or write "
            f"Alt$({example}, default)"
        )

    def _check_columns(self, columns: Mapping[str, Any], where: str) -> None:
        missing = [b for b in self.branches if b not in columns]
        if missing:
            prefix = f"{where}: " if where else ""
            raise ExpressionError(
                f"{prefix}expression '{self.text}' uses unknown branch '{missing[0]}' "
                f"({did_you_mean(missing[0], columns, 'branches')})"
            )

    def _run(self, columns: Mapping[str, Any], where: str) -> Any:
        try:
            with np.errstate(all="ignore"):
                return _Evaluator(self, columns).visit(self.tree)
        except ValueError as error:
            if "broadcast" not in str(error):
                raise
            prefix = f"{where}: " if where else ""
            raise ExpressionError(
                f"{prefix}'{self.text}' combines jagged branches element-wise whose events have different numbers of "
                f"entries: reduce each first (Sum$, Max$…) or index them ([0])"
            ) from None


def _is_awkward(value: Any) -> bool:
    return type(value).__module__.startswith("awkward")


def _has_option(value: Any) -> bool:
    import awkward as ak

    return _is_awkward(value) and "?" in str(ak.type(value).content)


def _shapes_of(columns: Mapping[str, Any], names: Sequence[str]) -> dict[str, BranchShape]:
    """Shapes of ``columns`` as read: awkward lists are jagged, numpy arrays of more dimensions fixed-size."""
    shapes = {}
    for name in names:
        value = columns[name]
        if _is_awkward(value) and value.ndim > 1:
            shapes[name] = BranchShape(jagged=True)
        elif isinstance(value, np.ndarray) and value.ndim > 1:
            components = int(np.prod(value.shape[2:])) if value.ndim > 2 else 1
            shapes[name] = BranchShape(jagged=True, fixed=value.shape[1], components=components)
    return shapes


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
        elif kind == "jagged":
            pieces.append(_JAGGED_IDENTIFIER[token])
        elif kind == "unknown_jagged":
            raise ExpressionError(
                f"{prefix}unknown function '{token}' in '{text}' ({did_you_mean(token, JAGGED_FUNCTIONS, 'functions')})"
            )
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
        ast.Name, ast.Load, ast.Constant, ast.Call, ast.Subscript, *_BINARY, *_COMPARE,
    )  # fmt: skip
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise ExpressionError(f"{prefix}'{text}' uses a construct hhscan does not evaluate")
        if isinstance(node, ast.Subscript) and not (
            isinstance(node.slice, ast.Constant) and type(node.slice.value) is int and node.slice.value >= 0
        ):
            raise ExpressionError(f"{prefix}'{text}': an index X[i] takes a whole number ≥ 0 (the i-th entry)")
        if isinstance(node, ast.Name) and node.id in _JAGGED_NAME:
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.func is node]
            function = _JAGGED_NAME[node.id]
            if not calls or len(calls[0].args) != _ARGUMENTS[function] or calls[0].keywords:
                usage = {1: f"{function}(expr)", 2: f"{function}(expr, condition)"}[_ARGUMENTS[function]]
                usage = "Alt$(X[i], default)" if function == "Alt$" else usage
                raise ExpressionError(f"{prefix}'{text}': write {usage}")
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
            if name in _JAGGED_NAME:
                continue
            if name not in FUNCTIONS or node.keywords:
                raise ExpressionError(
                    f"{prefix}unknown function '{name}' in '{text}' "
                    f"({did_you_mean(name, [*FUNCTIONS, *JAGGED_FUNCTIONS], 'functions')})"
                )
        if isinstance(node, ast.Name) and node.id in FUNCTIONS and node.id not in placeholders:
            # A bare function name used as a value, e.g. "abs > 3".
            parent_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.func is node]
            if not parent_calls:
                raise ExpressionError(f"{prefix}'{node.id}' in '{text}' is a function; quote a branch of that name")


class _ShapeChecker(ast.NodeVisitor):
    """Infers each sub-expression's shape from the branches' shapes, refusing what ROOT would not compute."""

    def __init__(self, expression: Expression, shapes: Mapping[str, BranchShape], prefix: str):
        self.expression = expression
        self.shapes = shapes
        self.prefix = prefix

    def _fail(self, message: str) -> None:
        raise ExpressionError(f"{self.prefix}'{self.expression.text}': {message}")

    def _text(self, node: ast.expr) -> str:
        text = ast.unparse(node)
        for key, name in {**self.expression.placeholders, **_JAGGED_NAME}.items():
            text = text.replace(key, name)
        return text

    def combine(self, kinds: list[_Kind]) -> _Kind:
        jagged = [k for k in kinds if k.jagged]
        for first, other in itertools.pairwise(jagged):
            if first.multiplicity and other.multiplicity and first.multiplicity != other.multiplicity:
                self._fail(
                    f"{first.branch} (counted by {first.multiplicity}) and {other.branch} (counted by "
                    f"{other.multiplicity}) have different multiplicities and cannot be combined entry by entry: "
                    f"reduce or index each first (Sum$({first.branch}) * Sum$({other.branch}), "
                    f"{first.branch}[0] * {other.branch}[0])"
                )
        if not jagged:
            return _Kind()
        known = next((k for k in jagged if k.multiplicity), jagged[0])
        return _Kind(jagged[0].branch, known.multiplicity)

    def visit_Name(self, node: ast.Name) -> _Kind:
        name = self.expression.placeholders.get(node.id, node.id)
        shape = self.shapes.get(name, FLAT)
        if shape.components > 1:
            self._fail(f"{name} has {shape.describe()}: use it whole as a block's expr")
        if not shape.jagged:
            return _Kind()
        return _Kind(name, shape.multiplicity or (f"{shape.fixed} (fixed)" if shape.fixed else None))

    def visit_Constant(self, node: ast.Constant) -> _Kind:
        return _Kind()

    def visit_UnaryOp(self, node: ast.UnaryOp) -> _Kind:
        return self.visit(node.operand)

    def visit_BinOp(self, node: ast.BinOp) -> _Kind:
        return self.combine([self.visit(node.left), self.visit(node.right)])

    def visit_BoolOp(self, node: ast.BoolOp) -> _Kind:
        return self.combine([self.visit(v) for v in node.values])

    def visit_Compare(self, node: ast.Compare) -> _Kind:
        return self.combine([self.visit(node.left), *(self.visit(c) for c in node.comparators)])

    def visit_Subscript(self, node: ast.Subscript) -> _Kind:
        if not self.visit(node.value).jagged:
            inner = self._text(node.value)
            self._fail(f"{self._text(node)} indexes {inner}, which is one number per event: write {inner}")
        return _Kind()

    def visit_Call(self, node: ast.Call) -> _Kind:
        assert isinstance(node.func, ast.Name)
        kinds = [self.visit(arg) for arg in node.args]
        function = _JAGGED_NAME.get(node.func.id)
        if function is None:
            return self.combine(kinds)
        if function == "Alt$":
            if kinds[0].jagged or kinds[1].jagged:
                self._fail("Alt$ takes one number per event (Alt$(Jet_pt[1], 0)), not a jagged value")
            return _Kind()
        if not kinds[0].jagged:
            self._fail(
                f"{function}({self._text(node.args[0])}) reduces entries, but {self._text(node.args[0])} is one "
                f"number per event: {function} takes a jagged branch or an expression of them"
            )
        self.combine(kinds)
        return _Kind()


def _option_and(left: Any, right: Any, combine: Callable[..., Any]) -> Any:
    """C's short-circuit ``&&``/``||`` on values that may be missing: a false side of ``&&`` (true side of ``||``)
    decides alone; otherwise a missing side leaves the result missing."""
    import awkward as ak

    if not (_has_option(left) or _has_option(right)):
        return combine(left, right)
    is_and = combine is np.logical_and
    decided = ak.fill_none(left == (not is_and), False) | ak.fill_none(right == (not is_and), False)
    unknown = ak.is_none(left, axis=-1) | ak.is_none(right, axis=-1)
    value = combine(
        ak.values_astype(ak.fill_none(left, is_and), bool), ak.values_astype(ak.fill_none(right, is_and), bool)
    )
    return ak.mask(value, decided | ~unknown)


def _reduce(function: str, values: Any, condition: Any = None) -> Any:
    """ROOT's reductions over each event's entries: Sum$ counts booleans, Min$/Max$ of no entries is 0."""
    import awkward as ak

    if condition is not None:
        values = values[ak.values_astype(condition, bool)]
    if function == "Length$":
        return ak.num(values, axis=1)
    if function == "Sum$":
        if "bool" in str(ak.type(values)):
            values = ak.values_astype(values, np.int64)
        return ak.sum(values, axis=1)
    extreme = ak.min if function in ("Min$", "MinIf$") else ak.max
    return ak.fill_none(extreme(values, axis=1), 0)


class _Evaluator(ast.NodeVisitor):
    def __init__(self, expression: Expression, columns: Mapping[str, Any]):
        self.expression = expression
        self.columns = columns

    def visit_Name(self, node: ast.Name) -> Any:
        values = self.columns[self.expression.placeholders.get(node.id, node.id)]
        if isinstance(values, np.ndarray) and values.ndim == 2:  # a fixed-size array per event: a regular list
            import awkward as ak

            return ak.from_numpy(values)
        return values

    def visit_Subscript(self, node: ast.Subscript) -> Any:
        import awkward as ak

        index = node.slice.value
        return ak.pad_none(self.visit(node.value), index + 1, axis=1)[:, index]

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
            result = _option_and(result, self.visit(value), combine)
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
        arguments = [self.visit(arg) for arg in node.args]
        function = _JAGGED_NAME.get(node.func.id)
        if function == "Alt$":
            import awkward as ak

            value, fallback = arguments
            if not _has_option(value):
                return value
            if not _is_awkward(fallback) and np.ndim(fallback) == 0:
                return ak.fill_none(value, fallback)
            # a fallback varying per event (a branch, another index): fill_none would build a union of the two
            # types that awkward cannot convert, so pick element by element instead
            return ak.where(ak.is_none(value, axis=-1), fallback, ak.fill_none(value, 0))
        if function is not None:
            return _reduce(function, *arguments)
        return FUNCTIONS[node.func.id](*arguments)
