"""The hyperparameters a scan may vary: one typed entry each, with its default and its valid values.

This table is the only place that knows them: the configuration checks values against it (before any data is
read), trial ids hash the canonical values it gives (defaults filled in, so omitting a key is the same as writing
its default), and packing asks it which ones shape a pack's training steps. An entry added later
(``hashed_at_default=False``) is left out of ids and scan hashes while at its default, so existing scans keep
their ids (README "Adding a hyperparameter"; the golden ids are in tests/test_registries.py). It imports nothing
heavy, so the configuration stays instant to load; a test compares ``ACTIVATIONS`` with ``keras.activations``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hhscan.errors import did_you_mean

OPTIMIZERS = ("adam", "adamw", "nadam", "sgd", "rmsprop", "adagrad", "adadelta", "adamax")
# keras.activations usable as a Dense layer's activation (a function of x alone that keeps the width); Keras also
# has "threshold" (needs extra arguments) and "glu" (halves the width), which a hidden layer cannot take here.
ACTIVATIONS = (
    "celu", "elu", "exponential", "gelu", "hard_shrink", "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh",
    "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish", "relu", "relu6", "selu", "sigmoid", "silu",
    "soft_shrink", "softmax", "softplus", "softsign", "sparse_plus", "sparse_sigmoid", "sparsemax", "squareplus",
    "swish", "tanh", "tanh_shrink",
)  # fmt: skip
KERAS_ACTIVATIONS_LEFT_OUT = ("glu", "threshold")


class InvalidHyperparameter(ValueError):
    """A value the registry refuses; ``key`` is the hyperparameter, so the message can name ``file:key``."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Hyperparameter:
    """One entry: its type, default and valid values; ``step_structure`` if a pack's trials must share it."""

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    case_insensitive: bool = False
    step_structure: bool = False
    network: bool = False  # an entry of the built-in network (an own model's signature replaces them)
    hashed_at_default: bool = False  # trial ids hash it even at its default (today's nine: their ids never change)
    # A number the fused engine holds per branch (learning_rate, dropout, l2): trials differing only in it share
    # one compiled program, and their networks have the same size.
    per_branch: bool = False
    # A step-structure entry whose values that are multiples of a smaller one may still share a pack (batch_size):
    # the engine steps micro-batches of the smallest, and each branch updates at the end of its own batch.
    micro_batched: bool = False
    # A default that depends on another entry's value: (that entry, {its value: the default}); ``default`` elsewhere.
    # weight_decay's is what each optimizer did before the entry existed (Keras' AdamW decays by 0.004).
    default_by: tuple[str, tuple[tuple[Any, Any], ...]] | None = None

    def default_in(self, point: Mapping[str, Any]) -> Any:
        """The default in a point: ``default``, or the one ``default_by`` gives for the point's value of its entry."""
        if self.default_by is None:
            return self.default
        name, table = self.default_by
        return dict(table).get(point.get(name), self.default)

    def is_default_in(self, value: Any, point: Mapping[str, Any]) -> bool:
        return self.canonical(value) == self.canonical(self.default_in(point))

    @property
    def domain(self) -> str:
        """The valid values in words: an interval ``[0, 1)`` or the list of choices."""
        if self.choices is not None:
            return ", ".join(self.choices)
        low = "-∞" if self.low is None else _number(self.low)
        high = "∞" if self.high is None else _number(self.high)
        opening = "(" if self.low_open or self.low is None else "["
        closing = ")" if self.high_open or self.high is None else "]"
        return f"{opening}{low}, {high}{closing}"

    def canonical(self, value: Any) -> Any:
        """The value with the entry's type (1 → 1.0 for a float, 'Adam' → 'adam'): what trial ids hash."""
        if self.kind is float:
            return float(value)
        if self.kind is int:
            return int(value)
        if self.kind is bool:
            return bool(value)
        text = str(value)
        return text.lower() if self.case_insensitive else text

    def check(self, value: Any) -> Any:
        """The value as written if valid (a numeric string for a float becomes a number), else InvalidHyperparameter."""
        value = self._typed(value)
        if self.choices is not None:
            name = value.lower() if self.case_insensitive else value
            if name not in self.choices:
                raise InvalidHyperparameter(
                    self.name, f"unknown {self.name} '{value}' ({did_you_mean(name, self.choices, self.name + 's')})"
                )
        if self.kind in (int, float):
            inside = math.isfinite(value)
            if self.low is not None:
                inside = inside and (value > self.low if self.low_open else value >= self.low)
            if self.high is not None:
                inside = inside and (value < self.high if self.high_open else value <= self.high)
            if not inside:
                raise InvalidHyperparameter(self.name, f"{_number(value)} is not in {self.domain}")
        return value

    def _typed(self, value: Any) -> Any:
        wrong = InvalidHyperparameter(self.name, f"{value!r} is not {_ARTICLE[self.kind]}")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise wrong
            return value
        if isinstance(value, bool):  # True is an int to Python, never a number to a physicist
            raise wrong
        if self.kind is int:
            if not isinstance(value, int):
                raise wrong
            return value
        if self.kind is float:
            if isinstance(value, str):  # YAML reads 1e-3 (no dot) as text
                try:
                    return float(value)
                except ValueError:
                    raise wrong from None
            if not isinstance(value, (int, float)):
                raise wrong
            return value
        if not isinstance(value, str):
            raise wrong
        return value


_ARTICLE = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


REGISTRY: dict[str, Hyperparameter] = {
    entry.name: entry
    for entry in (
        # 0 hidden layers is a logistic (or softmax) regression on the scaled inputs: it builds and trains.
        Hyperparameter("layers", int, 2, low=0, network=True, hashed_at_default=True),
        Hyperparameter("neurons", int, 64, low=1, network=True, hashed_at_default=True),
        Hyperparameter("activation", str, "relu", choices=ACTIVATIONS, network=True, hashed_at_default=True),
        Hyperparameter("dropout", float, 0.0, low=0, high=1, high_open=True, network=True, per_branch=True,
                       hashed_at_default=True),
        Hyperparameter("l2", float, 0.0, low=0, network=True, per_branch=True, hashed_at_default=True),
        Hyperparameter("optimizer", str, "adam", choices=OPTIMIZERS, case_insensitive=True, hashed_at_default=True),
        Hyperparameter("learning_rate", float, 0.001, low=0, low_open=True, per_branch=True,
                       hashed_at_default=True),
        Hyperparameter("batch_size", int, 256, low=1, step_structure=True, micro_batched=True,
                       hashed_at_default=True),
        Hyperparameter("epochs", int, 20, low=1, step_structure=True, hashed_at_default=True),
        # Entries added later: hashed_at_default False, so a scan that does not set them keeps its ids.
        # Decoupled weight decay of every optimizer (adamw's included: 0 unless set, not Keras' 0.004).
        Hyperparameter("weight_decay", float, 0.0, low=0, default_by=("optimizer", (("adamw", 0.004),))),
    )
}


RANGE_KEYS = ("low", "high", "log", "step")


def is_range(values: Any) -> bool:
    """A dictionary value that is a range (``{low, high, log, step}``) rather than a list of values."""
    return isinstance(values, Mapping)


def check_range(
    name: str, spec: Mapping[str, Any], registry: Mapping[str, Hyperparameter] = REGISTRY
) -> dict[str, Any]:
    """A range of a numeric entry, checked against its domain, as ``{low, high, log, step}`` with every key present.

    Errors name the range's own key (``learning_rate.low``), so the message reads ``file:hyperparameters.x.low``.
    """
    entry = registry[name]
    if entry.kind not in (int, float):
        raise InvalidHyperparameter(name, f"a range needs a numeric hyperparameter; {name} takes a list of values")
    for key in spec:
        if key not in RANGE_KEYS:
            raise InvalidHyperparameter(
                f"{name}.{key}", f"unknown key of a range ({did_you_mean(str(key), RANGE_KEYS, 'keys')})"
            )
    for key in ("low", "high"):
        if key not in spec:
            raise InvalidHyperparameter(f"{name}.{key}", "required key of a range is missing")
    bounds = {}
    for key in ("low", "high"):
        try:
            bounds[key] = entry.check(spec[key])
        except InvalidHyperparameter as error:
            raise InvalidHyperparameter(f"{name}.{key}", error.message) from None
    low, high = entry.canonical(bounds["low"]), entry.canonical(bounds["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise InvalidHyperparameter(f"{name}.log", f"{log!r} is not true or false")
    step = spec.get("step")
    if low > high:
        raise InvalidHyperparameter(f"{name}.high", f"{_number(high)} is below low {_number(low)}")
    if log and low <= 0:
        raise InvalidHyperparameter(f"{name}.low", f"{_number(low)}: a log range needs low > 0")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not (math.isfinite(step) and step > 0):
            raise InvalidHyperparameter(f"{name}.step", f"{step!r} is not a positive number")
        if entry.kind is int and not isinstance(step, int):
            raise InvalidHyperparameter(f"{name}.step", f"{step!r} is not an integer ({name} is one)")
        if log and step != 1:
            raise InvalidHyperparameter(f"{name}.step", "a log range takes no step (every value is possible)")
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):  # the sampler would move high silently
            raise InvalidHyperparameter(
                f"{name}.step", f"high - low = {_number(high - low)} is not a multiple of step {_number(step)}"
            )
        step = entry.canonical(step)
    if step is None and entry.kind is int:
        step = 1
    return {"low": low, "high": high, "log": log, "step": step}


def check_dictionary(dictionary: Any, registry: Mapping[str, Hyperparameter] = REGISTRY) -> Any:
    """A scan's dictionary, checked value by value, with every omitted key filled with ``[default]``.

    A value is a list (the grid's values, or a sampler's choices) or, for a number, a range ``{low, high, log,
    step}`` that an adaptive sampler draws from (returned with every key present).
    """
    if not isinstance(dictionary, Mapping):
        return dictionary  # the model's own type check says it is not a mapping
    for key, values in dictionary.items():
        if key not in registry:
            raise InvalidHyperparameter(
                str(key), f"unknown hyperparameter ({did_you_mean(str(key), registry, 'hyperparameters')})"
            )
        if is_range(values):
            continue
        if not isinstance(values, list):
            raise InvalidHyperparameter(
                key, f"every value must be a list or a range {{low, high}} (write [{values!r}] for one value)"
            )
        if not values:
            raise InvalidHyperparameter(key, "empty list")
    checked = {
        key: check_range(key, values, registry) if is_range(values) else [registry[key].check(v) for v in values]
        for key, values in dictionary.items()
    }
    # A default that depends on the point is filled point by point (``canonical``), not once for the dictionary.
    checked.update({name: [entry.default] for name, entry in registry.items()
                    if name not in checked and entry.default_by is None})  # fmt: skip
    return checked


def canonical(point: Mapping[str, Any], registry: Mapping[str, Hyperparameter] = REGISTRY) -> dict[str, Any]:
    """One grid point with canonical types and defaults filled in, keys sorted (unknown keys kept as they are)."""
    full = {**{name: entry.default for name, entry in registry.items() if entry.default_by is None}, **point}
    full.update({name: entry.default_in(full) for name, entry in registry.items() if name not in full})
    return {key: registry[key].canonical(full[key]) if key in registry else full[key] for key in sorted(full)}


def at_silent_default(name: str, values: Any, registry: Mapping[str, Hyperparameter] = REGISTRY,
                      dictionary: Mapping[str, Any] | None = None) -> bool:  # fmt: skip
    """An entry left out of trial ids and scan hashes: one added later (not ``hashed_at_default``) whose value, or
    every value of its list, is its default — in every point of ``dictionary`` where the default depends on another
    entry — so the ids it had before it existed do not move."""
    entry = registry.get(name)
    if entry is None or entry.hashed_at_default or is_range(values):
        return False
    listed = values if isinstance(values, list) else [values]
    if entry.default_by is None:
        return bool(listed) and all(entry.is_default_in(v, {}) for v in listed)
    other = entry.default_by[0]
    others = (dictionary or {}).get(other, [registry[other].default] if other in registry else [None])
    if is_range(others):
        return False
    points = [{other: registry[other].canonical(o) if other in registry else o} for o in others]
    return bool(listed) and all(entry.is_default_in(v, point) for v in listed for point in points)


def with_defaults(point: Mapping[str, Any], registry: Mapping[str, Hyperparameter] = REGISTRY) -> dict[str, Any]:
    """A recorded point as it reads today: training entries added since it was written take their default (which
    is what it trained with), network entries only where the point is the built-in network's. Anything but a
    complete point (every original training entry present) is returned as it is."""
    original = {name: entry.network for name, entry in registry.items() if entry.hashed_at_default}
    if not all(name in point for name, network in original.items() if not network):
        return dict(point)
    builtin = all(name in point for name in original)
    missing = {
        name: entry.default_in(point)
        for name, entry in registry.items()
        if name not in point and not entry.hashed_at_default and (builtin or not entry.network)
    }
    return {**point, **missing}


def step_structure(point: Mapping[str, Any], registry: Mapping[str, Hyperparameter] = REGISTRY) -> tuple[int, ...]:
    """The values that shape a pack's training steps (batch size, epochs)."""
    return tuple(int(point.get(name, registry[name].default)) for name in step_structure_names(registry))


def step_structure_names(registry: Mapping[str, Hyperparameter] = REGISTRY) -> list[str]:
    """The entries of ``step_structure``, in its order."""
    return [name for name, entry in registry.items() if entry.step_structure]
