"""Loading and validating the two configuration files, in one place.

``sample_lists/*.yaml`` describes the data (files, trees, classes, eras, weights, variables);
``parameters/*.yaml`` describes the scan (hyperparameter dictionary, split, training, Slurm resources).
Every error names the file and the key at fault, and unknown keys list the closest valid ones.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from hhscan.errors import ConfigError, ExpressionError, did_you_mean
from hhscan.settings import criteria, expr, hyperparameters, model_function, searchers
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

# --------------------------------------------------------------------------------------------- sample list


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class InputVariable(_Strict):
    """One input: a branch, an expression of branches, a categorical variable to one-hot encode, or a block (with
    ``length``): the first ``length`` entries of a jagged or array expression, ``pad`` where an event has fewer."""

    name: str
    expr: str
    one_hot: list[str | int | float] | None = None
    length: int | None = None
    pad: float = 0.0
    components: int = 1  # numbers per entry of a block of an array field (HDF5 shape (200, 4): 4)

    @field_validator("length")
    @classmethod
    def _length(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"length is {value}: a block takes the first length ≥ 1 entries of each event")
        return value

    @model_validator(mode="after")
    def _block(self) -> InputVariable:
        if self.length is None and (self.pad != 0.0 or self.components != 1):
            raise ValueError(f"input '{self.name}': pad and components belong to a block (give length: N)")
        if self.length is not None and self.one_hot is not None:
            raise ValueError(f"input '{self.name}': a block (length) cannot be one-hot")
        if not math.isfinite(self.pad):
            raise ValueError(f"input '{self.name}': pad must be a finite number, got {self.pad}")
        if self.components < 1:
            raise ValueError(f"input '{self.name}': components must be ≥ 1, got {self.components}")
        return self

    @property
    def columns(self) -> list[str]:
        """The feature columns this input becomes; a block's entry-major: name_0 … (name_0_0, name_0_1 …)."""
        if self.length is not None:
            if self.components == 1:
                return [f"{self.name}_{i}" for i in range(self.length)]
            return [f"{self.name}_{i}_{k}" for i in range(self.length) for k in range(self.components)]
        if self.one_hot is None:
            return [self.name]
        return [f"{self.name}_{value}" for value in self.one_hot]


def _column_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text.lstrip("$")).strip("_")
    return name or "var"


def _positive(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a positive number, got {value:g}")
    return value


class Era(_Strict):
    """Per era: luminosity and where cross-sections and Σweights come from (JSON, see ``XSEC_LAYOUTS``).

    ``lumi`` has no default: a sample of the era with a cross-section is refused without it (a silent 1 pb⁻¹ made
    yields wrong by orders of magnitude).
    """

    lumi: float | None = None
    xsec: str | dict[str, Any] | None = None
    event_weight_sum: str | dict[str, Any] | None = None

    _lumi = field_validator("lumi")(_positive)


class SampleGroup(_Strict):
    """Files of one process: a tree (ROOT) or dataset (HDF5), a class, and optionally an era and tag."""

    files: list[str]
    tree: str
    class_name: str = Field(alias="class")
    name: str | None = None
    era: str | None = None
    tag: str | None = None
    cut: str | None = None
    weight: str | None = None
    xsec: float | None = None
    event_weight_sum: float | None = None
    training: bool = True

    _numbers = field_validator("xsec", "event_weight_sum")(_positive)

    @field_validator("files", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class Sample(_Strict):
    """One file of a group: the unit of reading, weighting, splitting and reporting."""

    name: str
    path: Path
    tree: str
    class_name: str
    era: str | None
    tag: str
    cut: str | None
    weight: str | None
    xsec: float | None
    event_weight_sum: float | None
    lumi: float  # its era's; a sample with a cross-section always has one (1.0, never used, where it has none)
    is_signal: bool
    training: bool = True
    # The group's name (a key for ``hhscan test --samples … --output``); kept out of dumps: caches and snapshots
    # stay as they were.
    group: str | None = Field(None, exclude=True)

    @property
    def is_data(self) -> bool:
        """Real data: class ``data`` and no event weight (no label, weight, cross-section or Σweights to write)."""
        return self.class_name == DATA_CLASS and self.weight is None


# The class of groups in a scoring-only sample list that give none: real data.
DATA_CLASS = "data"

XSEC_UNITS = {"fb": 1e-3, "pb": 1.0, "nb": 1e3}  # in pb
LUMI_UNITS = {"fb-1": 1e3, "pb-1": 1.0, "nb-1": 1e-3}  # in pb⁻¹


class Units(_Strict):
    """The units of cross-sections and luminosities in this sample list; yields are xsec × lumi."""

    xsec: Literal["fb", "pb", "nb"] = "pb"
    lumi: Literal["fb-1", "pb-1", "nb-1"] = "pb-1"

    @property
    def factor(self) -> float:
        """xsec × lumi in these units → expected events."""
        return XSEC_UNITS[self.xsec] * LUMI_UNITS[self.lumi]


class LeakCheck(_Strict):
    """Inputs that alone separate the classes almost perfectly are probable label leaks."""

    auc: float = Field(0.99, gt=0.5, le=1.0)  # flagged when the single-input AUC is ≥ auc or ≤ 1 − auc
    allow: list[str] = []  # input columns known to separate this well (acknowledged, not flagged)


class Significance(_Strict):
    """How the Asimov Z scan picks its best cut (``metrics.significance_scan``): only cuts whose background MC can be
    trusted (a Z resting on one background event is a fluctuation), optionally with a relative background
    uncertainty in Z."""

    min_background_events: int = Field(10, ge=0)  # background MC events passing the cut (unweighted)
    max_background_error: float | None = Field(0.2, gt=0)  # relative MC error of b, √Σw²/Σw; null: no limit
    background_uncertainty: float = Field(0.0, ge=0)  # σ_b / b in Cowan et al.'s Asimov Z; 0: none


# Columns hhscan adds from the configuration: the class (and the sample or tag that determines it) is the truth.
TRUTH_COLUMNS = ("$class", "$sample", "$tag")


class SampleList(_Strict):
    base_dir: str = "."
    classes: list[str] | None = None
    signal_classes: list[str] = ["signal"]
    class_weight_factors: dict[str, float] = {}
    cut: str | None = None
    weight: str | None = None
    inputs: list[InputVariable]
    other_variables: list[str] = []
    label_branch: str | None = None
    units: Units = Units()
    leak_check: LeakCheck = LeakCheck()
    significance: Significance = Significance()
    eras: dict[str, Era] = {}
    groups: list[SampleGroup]
    # Resolved at load time, not read from YAML.
    source: Path = Path("sample_list.yaml")
    samples: list[Sample] = []

    @field_validator("class_weight_factors")
    @classmethod
    def _factors(cls, value: dict[str, float]) -> dict[str, float]:
        for name, factor in value.items():
            if not (math.isfinite(factor) and factor > 0):
                raise ValueError(f"the factor of class '{name}' must be a positive number, got {factor:g}")
        return value

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        result = []
        for item in value:
            if isinstance(item, str):
                if "@" in item:  # the original's "$era@op_era": one-hot without listed values is ambiguous
                    raise ValueError(f"'{item}': write one-hot inputs as {{expr: ..., one_hot: [values]}}")
                result.append({"name": _column_name(item), "expr": item})
            elif isinstance(item, dict) and "expr" in item and "name" not in item:
                result.append({**item, "name": _column_name(item["expr"])})
            else:
                result.append(item)
        return result

    @property
    def training_samples(self) -> list[Sample]:
        return [s for s in self.samples if s.training]

    @property
    def feature_names(self) -> list[str]:
        return [column for variable in self.inputs for column in variable.columns]

    @property
    def class_names(self) -> list[str]:
        """Classes in output order; for a binary task the signal class is index 1 (score = P(signal))."""
        names = self.classes or list(dict.fromkeys(g.class_name for g in self.groups if g.training))
        if len(names) == 2:
            signal = [n for n in names if n in self.signal_classes]
            if len(signal) == 1:
                names = [n for n in names if n != signal[0]] + signal
        return names

    def fingerprint_data(self) -> dict[str, Any]:
        """Everything in the sample list that shapes the training arrays (for the cache key)."""
        # leak_check only decides what is warned about: changing it changes no trial's result.
        data = self.model_dump(mode="json", exclude={"source", "base_dir", "groups", "leak_check", "significance"})
        # The Z guard changes val_significance, so a changed one is a changed scan; at its defaults it is left out,
        # so scans and caches made before it existed keep their fingerprints.
        if self.significance != Significance():
            data["significance"] = self.significance.model_dump(mode="json")
        # An era without lumi dumps as before lumi lost its default of 1 (only eras whose samples have no
        # cross-section may omit it, so the value was never used).
        for era in data.get("eras", {}).values():
            if era.get("lumi") is None:
                era["lumi"] = 1.0
        # Likewise a block's keys: an input that is no block dumps as it did before blocks existed.
        block_defaults = {"length": None, "pad": 0.0, "components": 1}
        data["inputs"] = [
            {key: value for key, value in variable.items() if block_defaults.get(key, ...) != value}
            for variable in data["inputs"]
        ]
        return data


# ----------------------------------------------------------------------------------------------- parameters



class SplitSettings(_Strict):
    """How events are assigned to train/validation/test, persisted under ``name``.

    ``kind: kfold`` assigns each event the fold ``variable mod folds`` (an integer branch or expression, e.g. the
    event number): fold model f is tested on fold f, validated on fold f+1 (mod k) and trained on the others, so
    every event is scored by a model that never saw it.
    """

    kind: Literal["ratio", "kfold"] = "ratio"
    name: str = "default"
    train: float = 0.6
    validation: float = 0.2
    test: float = 0.2
    seed: int = 42
    folds: int | None = None
    variable: str | None = None

    @property
    def kfold(self) -> bool:
        return self.kind == "kfold"

    @model_validator(mode="after")
    def _ratios(self) -> SplitSettings:
        if self.kfold:
            if self.folds is None or self.variable is None:
                raise ValueError("kind: kfold needs folds (an integer ≥ 3) and variable (an integer branch or "
                                 "expression, e.g. event)")  # fmt: skip
            if self.folds < 3:
                raise ValueError(f"folds is {self.folds}: k-fold needs at least 3 (a test, a validation and a "
                                 f"training fold per model)")  # fmt: skip
            try:
                expr.parse(self.variable)
            except ExpressionError as error:
                raise ValueError(f"variable: {error}") from None
        elif self.folds is not None or self.variable is not None:
            raise ValueError("folds and variable belong to kind: kfold (this split is kind: ratio)")
        ratios = (self.train, self.validation, self.test)
        if any(r < 0 for r in ratios):
            raise ValueError("split ratios must not be negative")
        if not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
            raise ValueError(
                f"split ratios train+validation+test must sum to 1, got "
                f"{self.train}+{self.validation}+{self.test}={sum(ratios):g}"
            )
        for partition, ratio, why in (
            ("train", self.train, "the trials train on it"),
            ("validation", self.validation, "trials are ranked and stopped on it"),
            ("test", self.test, "'hhscan test' scores it"),
        ):
            if ratio <= 0:
                raise ValueError(f"{partition} is {ratio:g}: every partition needs events ({why})")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"split name '{self.name}' may contain only letters, digits, '_', '.', '-'")
        return self


class _Monitored(_Strict):
    enabled: bool = True
    monitor: str = "val_loss"
    patience: int = 5

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, value: str) -> str:
        if value not in criteria.MONITORS:
            reason = " (computed once at the end, not every epoch)" if value in criteria.METRICS else ""
            raise ValueError(
                f"unknown monitor '{value}'{reason} ({did_you_mean(value, criteria.MONITORS, 'monitors')})"
            )
        return value

    @field_validator("patience")
    @classmethod
    def _patience(cls, value: int) -> int:
        if value < 0:
            raise ValueError("patience must not be negative")
        return value


class EarlyStopping(_Monitored):
    min_delta: float = 0.0
    restore_best_weights: bool = True


class ReduceLROnPlateau(_Monitored):
    patience: int = 3
    factor: float = Field(0.5, gt=0.0, lt=1.0)
    min_lr: float = 1e-6


class Training(_Strict):
    backend: Literal["auto", "jax", "tensorflow"] = "auto"
    early_stopping: EarlyStopping = EarlyStopping()
    reduce_lr: ReduceLROnPlateau = ReduceLROnPlateau()
    # Trials trained together as one fused model (same batch size and epochs); "auto" measures the best size.
    pack_size: int | Literal["auto"] = "auto"
    # Seconds between epoch-end checkpoints (0: every epoch; null: never). A requeued job loses at most this.
    checkpoint_interval_s: float | None = 30.0
    # Restart the worker process between packs past this resident memory (GB): the same job goes on with the trials
    # not done yet. null: 80% of a Slurm job's memory, no bound outside Slurm.
    worker_memory_gb: float | None = Field(None, gt=0)

    @field_validator("pack_size")
    @classmethod
    def _pack_size(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("pack_size must be a positive number of trials or 'auto'")
        return value


class SlurmSettings(_Strict):
    """Resources, by submitit's own parameter names (``slurm_`` prefix optional); validated at submission."""

    resources: dict[str, Any] = {"timeout_min": 60, "gpus_per_node": 1, "cpus_per_task": 2, "mem_gb": 8}
    array_parallelism: int = 64
    max_array_size: int | None = None


class KeyedError(ValueError):
    """A refusal about one key below the validated model (``search.trials``), so the message can name it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


class Search(_Strict):
    """How trials are chosen: the whole grid (today's behaviour), or ``trials`` points asked of an Optuna sampler,
    optionally pruned per epoch (``search.py``)."""

    sampler: str = "grid"  # a name of searchers.SAMPLERS
    trials: int | None = Field(None, ge=1)  # the budget: required for an adaptive sampler
    pruner: str = "none"  # a name of searchers.PRUNERS
    pruner_settings: dict[str, Any] = {}  # checked against the pruner's own settings model
    seed: int | None = None  # the sampler's seed; default the scan's seed

    @property
    def adaptive(self) -> bool:
        return searchers.SAMPLERS[self.sampler].build is not None

    @field_validator("sampler", "pruner")
    @classmethod
    def _known(cls, value: str, info: ValidationInfo) -> str:
        what = info.field_name
        table = searchers.SAMPLERS if what == "sampler" else searchers.PRUNERS
        if value not in table:
            raise ValueError(f"unknown {what} '{value}' ({did_you_mean(value, table, what + 's')})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Search:
        if self.adaptive and self.trials is None:
            raise KeyedError("trials", f"required with sampler {self.sampler} (the number of trials to run)")
        if not self.adaptive and self.trials is not None:
            raise KeyedError("trials", "the budget of an adaptive sampler; sampler grid runs every point")
        if not self.adaptive and self.pruner != "none":
            adaptive = ", ".join(searchers.ADAPTIVE_SAMPLERS)
            raise KeyedError("pruner", f"{self.pruner} needs an adaptive sampler ({adaptive}), not grid")
        pruner = searchers.PRUNERS[self.pruner]
        allowed = pruner.setting_names
        for key in self.pruner_settings:
            if key not in allowed:
                known = f"{did_you_mean(key, allowed, 'settings')}" if allowed else "it takes none"
                raise KeyedError(f"pruner_settings.{key}", f"not a setting of pruner {self.pruner} ({known})")
        try:  # their types, strictly (true is no number, 2.5 no integer)
            settings = pruner.settings.model_validate(self.pruner_settings)
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in first["loc"][:1])
            given = f" ({first['input']!r} given)" if first["type"] != "missing" else ""
            message = "required key is missing" if first["type"] == "missing" else first["msg"]
            raise KeyedError(f"pruner_settings.{key}", f"{message}{given}") from None
        if self.pruner_settings:  # their values, by Optuna itself (imported only for settings to check)
            try:
                pruner.build(**searchers.given(settings))
            except (ValueError, TypeError) as error:
                raise KeyedError("pruner_settings", " ".join(str(error).split())) from None
        return self


class Parameters(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, protected_namespaces=())

    samples: str
    # An own model: "file.py:function" (made absolute when loaded) or "package.module:function"; None: built-in.
    model: str | None = None
    model_source: str | None = None  # the text of the model's file, read once: what the scan copies and hashes
    hyperparameters: dict[str, list[Any] | dict[str, Any]]
    repetitions: int = 1
    seed: int = 1234
    split: SplitSettings = SplitSettings()
    eval_criterion: str = "val_auc"
    training: Training = Training()
    slurm: SlurmSettings = SlurmSettings()
    split_name: Literal["sample", "class", "tag"] = "sample"
    search: Search = Search()
    source: Path = Path("parameters.yaml")

    @model_validator(mode="before")
    @classmethod
    def _model_function(cls, data: Any, info: ValidationInfo) -> Any:
        """The model's file resolved (relative to the parameters file) and read, unless its text is given (a scan's
        snapshot: workers and model zips never read the user's file)."""
        if not isinstance(data, dict) or data.get("model") is None:
            return data
        if not isinstance(data["model"], str):
            raise KeyedError("model", f"{data['model']!r} is not 'file.py:function' or 'package.module:function'")
        if data.get("model_source") is None:
            base = Path((info.context or {}).get("base", "."))
            try:
                spec, source = model_function.resolve(data["model"], base)
            except ValueError as error:
                raise KeyedError("model", str(error)) from None
            data = {**data, "model": spec, "model_source": source}
        _registry(data["model"], data["model_source"])  # the signature's errors name model:, not the dictionary
        return data

    @field_validator("hyperparameters", mode="before")
    @classmethod
    def _dictionary(cls, value: Any, info: ValidationInfo) -> Any:
        registry = _registry(info.data.get("model"), info.data.get("model_source"))
        if info.data.get("model") and isinstance(value, dict):
            where, function = model_function.split_spec(info.data["model"])
            for key in value:
                if key not in registry:
                    raise hyperparameters.InvalidHyperparameter(str(key), (
                        f"{function}() in {Path(where).name} takes no argument '{key}' and it is no training "
                        f"hyperparameter ({did_you_mean(str(key), registry, 'hyperparameters')})"))  # fmt: skip
            try:
                return hyperparameters.check_dictionary(value, registry)
            except hyperparameters.InvalidHyperparameter as error:
                entry = registry.get(error.key.split(".")[0])
                if entry is None or not entry.network:
                    raise
                taken = f"Literal{list(entry.choices)}" if entry.choices else entry.kind.__name__
                message = f"{error.message} ({function}() in {Path(where).name} takes {entry.name}: {taken})"
                raise hyperparameters.InvalidHyperparameter(error.key, message) from None
        return hyperparameters.check_dictionary(value, registry)

    @property
    def own_model(self) -> tuple[str, str] | None:
        """(model, model_source) of an own model; None for the built-in network."""
        return None if self.model is None or self.model_source is None else (self.model, self.model_source)

    @property
    def registry(self) -> dict[str, hyperparameters.Hyperparameter]:
        """The hyperparameters this scan's model takes: the built-in network's, or the own model's signature with
        hhscan's training entries."""
        return _registry(self.model, self.model_source)

    @field_validator("eval_criterion")
    @classmethod
    def _criterion(cls, value: str) -> str:
        if problem := criterion_problem(value):  # pydantic's location names the key: the message does not repeat it
            raise ValueError(problem)
        return value

    @field_validator("repetitions")
    @classmethod
    def _repetitions(cls, value: int) -> int:
        if value < 1:
            raise ValueError("repetitions must be at least 1")
        return value

    @model_validator(mode="after")
    def _search_space(self) -> Parameters:
        ranges = [k for k, v in self.hyperparameters.items() if hyperparameters.is_range(v)]
        if ranges and not self.search.adaptive:
            raise KeyedError(
                f"hyperparameters.{ranges[0]}",
                f"a range needs an adaptive search.sampler ({searchers.in_words(searchers.ADAPTIVE_SAMPLERS)}); "
                "the grid takes lists",
            )
        if self.search.adaptive and self.repetitions != 1:
            raise KeyedError("repetitions", f"{self.repetitions}: an adaptive search asks each point once (use 1)")
        return self

    def dictionary_hash(self) -> str:
        """Hash of what defines the scan's trials: the dictionary and the repetitions (and, for an adaptive
        search, the sampler, its seed and the pruner: not the budget, which may be raised to go on)."""
        # An entry added to the registry since, at its default, is left out: the scan's hash stays what it was.
        dictionary = {k: v for k, v in self.hyperparameters.items()
                      if not hyperparameters.at_silent_default(k, v, self.registry, self.hyperparameters)}  # fmt: skip
        content: dict[str, Any] = {"hp": dictionary, "rep": self.repetitions}
        if self.search.adaptive:  # a grid scan's hash is unchanged by the search section
            content["search"] = self.search.model_dump(mode="json", exclude={"trials"})
        payload = json.dumps(content, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _registry(model: str | None, source: str | None) -> dict[str, hyperparameters.Hyperparameter]:
    if model is None or source is None:
        return hyperparameters.REGISTRY
    try:
        return model_function.registry(model, source)
    except ValueError as error:
        raise KeyedError("model", str(error)) from None


def criterion_problem(value: str) -> str | None:
    """Why ``value`` cannot rank a scan (not a validation metric of the registry, the closest listed), or None."""
    if value in criteria.CRITERIA:
        return None
    return f"unknown criterion '{value}' ({did_you_mean(value, criteria.CRITERIA, 'criteria')})"


def check_criterion(value: str, where: str) -> None:
    """A metric a scan may be ranked by, else one line naming ``where`` and listing them."""
    if problem := criterion_problem(value):
        raise ConfigError(f"{where}: {problem}")


# ------------------------------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        siblings = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        hint = f" ({did_you_mean(path.name, siblings, 'files there')})" if siblings else ""
        raise ConfigError(f"{path}: no such configuration file{hint}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return content


def _validate(model: type[BaseModel], content: dict[str, Any], path: Path, context: dict | None = None) -> Any:
    try:
        return model.model_validate(content, context=context)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            parent = _model_at(model, first["loc"][:-1])
            valid = [f.alias or name for name, f in parent.model_fields.items()] if parent else []
            valid = [v for v in valid if v not in {"source", "samples", "model_source"}]
            key = str(first["loc"][-1])
            raise ConfigError(f"{path}: unknown key '{location}' ({did_you_mean(key, valid, 'keys')})") from None
        message = first["msg"].removeprefix("Value error, ")
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, (hyperparameters.InvalidHyperparameter, KeyedError)):  # name the entry: .dropout
            location, message = f"{location}.{cause.key}" if location else cause.key, cause.message
        if first["type"] == "missing":
            message = "required key is missing"
        where = f"{path}:{location}" if location else str(path)
        raise ConfigError(f"{where}: {message}") from None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class at a location path, for listing valid keys."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        field = fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        args = getattr(current, "__args__", ())
        for arg in args:  # list[X], dict[str, X], X | None
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def load_parameters(path: str | Path) -> Parameters:
    path = Path(path)
    content = _read_yaml(path)
    if "model_source" in content:  # hhscan reads it from the model's file, never from the parameters
        valid = [f for f in Parameters.model_fields if f not in {"source", "samples", "model_source"}]
        raise ConfigError(f"{path}: unknown key 'model_source' ({did_you_mean('model_source', valid, 'keys')})")
    parameters: Parameters = _validate(Parameters, content, path, context={"base": path.parent.resolve()})
    return parameters.model_copy(update={"source": path.resolve()})


def load_sample_list(path: str | Path, scoring: bool = False) -> SampleList:
    """A sample list, validated; with ``scoring`` one only scored by a trained model (``hhscan test --samples``).

    A scoring-only list trains nothing: its groups are all ``training: false``, may omit ``class`` (then
    ``data``), a ``data`` group inherits no top-level ``weight`` (real data has none) and needs no cross-section,
    and the class checks of a training list do not apply (the model's own classes are its outputs).
    """
    path = Path(path)
    content = _read_yaml(path)
    if scoring and isinstance(content.get("groups"), list):
        content["groups"] = [_scoring_group(group) for group in content["groups"]]
    sample_list: SampleList = _validate(SampleList, content, path)
    base = (path.parent / sample_list.base_dir).resolve()
    samples = _resolve_samples(sample_list, base, path, scoring)
    sample_list = sample_list.model_copy(update={"source": path.resolve(), "samples": samples})
    _cross_check(sample_list, path, scoring)
    return sample_list


def _scoring_group(group: Any) -> Any:
    if not isinstance(group, dict):
        return group  # validation names what is wrong with it
    given = "class" in group or "class_name" in group
    return {**({} if given else {"class": DATA_CLASS}), **group, "training": False}


def samples_path(parameters: Parameters) -> Path:
    """The sample list a parameters file names, relative to the parameters file."""
    return (parameters.source.parent / parameters.samples).resolve()


XSEC_LAYOUTS = (
    '{"<file name, file stem or group name>": number, ...} or '
    '{"<file name, file stem or group name>": {"xsec": number, "event_weight_sum": number}, ...}'
)


def _json_table(value: str | dict[str, Any] | None, base: Path, where: str, quantity: str) -> dict[str, float]:
    """One quantity (``xsec`` or ``event_weight_sum``) by name, from a JSON file or an inline mapping.

    Two layouts are read: flat (name → number) or one object per process (name → {xsec, event_weight_sum}), so
    one file may hold both quantities. Anything else is refused naming the file and the key.
    """
    if value is None:
        return {}
    source = where
    if isinstance(value, dict):
        table: Any = value
    else:
        path = (base / value).resolve()
        if not path.is_file():
            raise ConfigError(f"{where}: file '{path}' not found")
        try:
            table = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
        source = str(path)
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: expected an object, laid out as {XSEC_LAYOUTS}")
    result = {}
    for key, entry in table.items():
        label = key
        if isinstance(entry, dict):
            if quantity not in entry:
                if {"xsec", "event_weight_sum"} & set(entry):
                    continue  # this process gives the other quantity only
                raise ConfigError(
                    f"{source}: key '{key}' holds neither 'xsec' nor 'event_weight_sum' "
                    f"({did_you_mean(quantity, entry, 'keys')}); expected {XSEC_LAYOUTS}"
                )
            entry, label = entry[quantity], f"{key}.{quantity}"
        if isinstance(entry, bool) or not isinstance(entry, (int, float)):
            raise ConfigError(f"{source}: '{label}' is {json.dumps(entry)}, not a number; expected {XSEC_LAYOUTS}")
        if not (math.isfinite(entry) and entry > 0):
            raise ConfigError(f"{source}: '{label}' is {entry:g}: {quantity} must be positive")
        result[key] = float(entry)
    return result


def _lookup(table: dict[str, float], file: Path, group: str | None) -> float | None:
    """A file's value: by file name, file stem, or its group's name (then the same for every file of the group)."""
    for key in (file.name, file.stem, group):
        if key is not None and key in table:
            return table[key]
    return None


def _resolve_samples(sample_list: SampleList, base: Path, path: Path, scoring: bool = False) -> list[Sample]:
    samples: list[Sample] = []
    backgrounds: list[tuple[str, Path, dict[str, float], str, bool]] = []
    tables: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for name, era in sample_list.eras.items():
        tables[name] = (
            _json_table(era.xsec, path.parent, f"{path}:eras.{name}.xsec", "xsec"),
            _json_table(era.event_weight_sum, path.parent, f"{path}:eras.{name}.event_weight_sum", "event_weight_sum"),
        )
    for index, group in enumerate(sample_list.groups):
        where = f"{path}:groups.{index}"
        if group.era is not None and group.era not in sample_list.eras:
            raise ConfigError(
                f"{where}.era: unknown era '{group.era}' ({did_you_mean(group.era, sample_list.eras, 'eras')})"
            )
        files: list[Path] = []
        for pattern in group.files:
            full = base / pattern
            matches = sorted(Path(p) for p in glob.glob(str(full))) if glob.has_magic(pattern) else [full]
            if not matches:
                raise ConfigError(f"{where}.files: pattern '{pattern}' matches no file under {base}")
            files.extend(matches)
        is_signal = group.class_name in sample_list.signal_classes
        era = sample_list.eras.get(group.era) if group.era else None
        if group.era is None and (group.xsec is not None or group.event_weight_sum is not None):
            given = "xsec" if group.xsec is not None else "event_weight_sum"
            raise ConfigError(
                f"{where}: group '{group.name or group.files[0]}' has {given} but no era, so no lumi for its yields: "
                f"give it an era with lumi: (eras: {', '.join(sample_list.eras) or 'none defined'})"
            )
        xsecs, sums = tables.get(group.era or "", ({}, {}))
        for file in files:
            name = group.name if group.name and len(files) == 1 else file.stem
            if group.era and group.era not in name:
                name = f"{name}_{group.era}"
            xsec = group.xsec if group.xsec is not None else _lookup(xsecs, file, group.name)
            weight_sum = (
                group.event_weight_sum if group.event_weight_sum is not None else _lookup(sums, file, group.name)
            )
            if xsec is not None and era is not None and era.lumi is None:
                raise ConfigError(
                    f"{path}:eras.{group.era}: no lumi, which '{file.name}' (groups.{index}) needs: it has a "
                    f"cross-section, and its yields are xsec × lumi (give lumi: in {sample_list.units.lumi})"
                )
            if not is_signal and group.training:
                backgrounds.append((where, file, xsecs, group.class_name, xsec is None))
            if xsec is not None and (weight_sum is None or weight_sum <= 0):
                raise ConfigError(
                    f"{where}: no positive event_weight_sum for '{file.name}', which has a cross-section "
                    f"({did_you_mean(file.name, sums, 'keys')})"
                )
            cuts = [c for c in (sample_list.cut, group.cut) if c]
            weight = group.weight or sample_list.weight
            if scoring and group.class_name == DATA_CLASS:
                weight = group.weight  # the list's weight is the simulation's: data has no such branch
            samples.append(
                Sample(
                    name=name,
                    path=file,
                    tree=group.tree,
                    class_name=group.class_name,
                    era=group.era,
                    tag=group.tag or group.class_name,
                    cut=" && ".join(f"({c})" for c in cuts) if cuts else None,
                    weight=weight,
                    xsec=xsec,
                    event_weight_sum=weight_sum,
                    lumi=era.lumi if era and era.lumi is not None else 1.0,
                    is_signal=is_signal,
                    training=group.training,
                    group=group.name,
                )
            )
    # A background without a cross-section is fine alone in its class (equalisation cancels the normalisation);
    # next to other samples of its class its share of the class would be arbitrary.
    per_class = {c: sum(1 for _, _, _, k, _ in backgrounds if k == c) for _, _, _, c, _ in backgrounds}
    for where, file, xsecs, class_name, missing in backgrounds:
        if missing and per_class[class_name] > 1:
            raise ConfigError(
                f"{where}: no cross-section for background file '{file.name}', one of {per_class[class_name]} "
                f"samples of class '{class_name}' (give xsec: in the group, or a key '{file.name}', '{file.stem}' or "
                f"the group's name in the era's xsec JSON; {did_you_mean(file.name, xsecs, 'keys')})"
            )
    return samples


def _cross_check(sample_list: SampleList, path: Path, scoring: bool = False) -> None:
    names = [s.name for s in sample_list.samples]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{path}: sample name '{duplicated[0]}' is used twice (give groups a name:)")
    if not scoring:
        _check_classes(sample_list, path)
    _check_expressions(sample_list, path)


def _check_classes(sample_list: SampleList, path: Path) -> None:
    used = {g.class_name for g in sample_list.groups if g.training}
    classes = sample_list.class_names
    if sample_list.classes:
        for cls in used - set(classes):
            raise ConfigError(f"{path}:groups: class '{cls}' is not in classes ({did_you_mean(cls, classes)})")
        for cls in classes:
            if cls not in used:
                raise ConfigError(f"{path}:classes: class '{cls}' has no samples")
    if len(classes) < 2:
        raise ConfigError(f"{path}: need at least two classes, found {classes}")
    for name in sample_list.signal_classes:  # a name that is no class gives no signal column: Z 0 for every trial
        if name not in classes:
            raise ConfigError(
                f"{path}:signal_classes: '{name}' is not a class (classes: {', '.join(classes)}; "
                f"{did_you_mean(name, classes, 'classes')})"
            )
    if not sample_list.signal_classes:
        raise ConfigError(f"{path}:signal_classes: empty; name at least one of the classes {', '.join(classes)}")
    if len(classes) == 2 and sum(c in sample_list.signal_classes for c in classes) != 1:
        raise ConfigError(
            f"{path}:signal_classes: a binary task needs exactly one signal class among {classes} "
            f"(signal_classes is {sample_list.signal_classes})"
        )
    for cls in sample_list.class_weight_factors:
        if cls not in classes:
            raise ConfigError(
                f"{path}:class_weight_factors.{cls}: unknown class ({did_you_mean(cls, classes, 'classes')})"
            )


def _check_expressions(sample_list: SampleList, path: Path) -> None:
    columns = sample_list.feature_names
    if len(set(columns)) != len(columns):
        raise ConfigError(f"{path}:inputs: two inputs share the column name '{_first_duplicate(columns)}'")
    for index, variable in enumerate(sample_list.inputs):
        parsed = expr.parse(variable.expr, where=f"{path}:inputs.{index}")
        truth = [b for b in parsed.branches if b in TRUTH_COLUMNS]
        if truth:
            raise ConfigError(
                f"{path}:inputs.{index}: '{variable.expr}' uses '{truth[0]}', which is derived from the truth "
                f"(the class of each sample): it would leak the label into the inputs"
            )
        numbers = [v for v in variable.one_hot or [] if not isinstance(v, str)]
        if numbers and parsed.branches == (variable.expr.strip(),) and variable.expr.strip().startswith("$"):
            raise ConfigError(
                f"{path}:inputs.{index}: '{variable.expr}' is text but its one_hot lists the number {numbers[0]}: "
                f"quote it (one_hot: [\"{numbers[0]}\"])"
            )
        if sample_list.label_branch and sample_list.label_branch in parsed.branches:
            raise ConfigError(
                f"{path}:inputs.{index}: '{variable.expr}' uses the label branch '{sample_list.label_branch}': "
                f"the truth label must never be an input"
            )
    expressions = [(key, text) for key, text in [("cut", sample_list.cut), ("weight", sample_list.weight)] if text]
    for index, group in enumerate(sample_list.groups):
        expressions += [(f"groups.{index}.{k}", getattr(group, k)) for k in ("cut", "weight") if getattr(group, k)]
    for key, text in expressions:
        parsed = expr.parse(text, where=f"{path}:{key}")
        text_columns = [b for b in parsed.branches if b.startswith("$")]
        if text_columns:
            # $sample, $era, $tag and $class are text; expressions compute on numbers only.
            raise ConfigError(
                f"{path}:{key}: '{text}' uses '{text_columns[0]}', a text column that can only be a one-hot input; "
                f"select by sample with the groups' own cut: instead"
            )


def _first_duplicate(items: list[str]) -> str:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return ""


def snapshot(parameters: Parameters, sample_list: SampleList) -> dict[str, Any]:
    """The resolved configuration as JSON-able data: what a job on another node needs, no relative paths."""
    return {
        "parameters": parameters.model_dump(mode="json", by_alias=True),
        "sample_list": sample_list.model_dump(mode="json", by_alias=True),
    }


def from_snapshot(data: dict[str, Any]) -> tuple[Parameters, SampleList]:
    return Parameters.model_validate(data["parameters"]), SampleList.model_validate(data["sample_list"])
