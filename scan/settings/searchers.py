"""The samplers and pruners of an adaptive search: one table each, name → builder and allowed settings.

The configuration's validation and its error messages, the builders ``execution/search.py`` calls and README's
lists all come from these tables (``tests/test_registries.py`` compares README with them): adding a pruner is one
row here, its settings model and a README row (README "Adding a pruner"). A pruner's settings are typed (pydantic,
strict: ``true`` is no number, 2.5 no integer) and named as Optuna names its arguments, and Optuna itself then
checks their values, all before any data is read. Optuna is imported only inside the builders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt

if TYPE_CHECKING:
    import optuna


# ------------------------------------------------------------------------------------------------ samplers


@dataclass(frozen=True)
class Sampler:
    """One sampler: ``build(seed)`` gives Optuna's sampler (None for the grid, which asks no sampler);
    ``reseeded``: a rebuilt study's sampler draws from a seed that moves on with the points asked (``search.py``),
    else it keeps the scan's seed (a fixed sequence whose position the study itself holds)."""

    name: str
    description: str
    build: Callable[[int], optuna.samplers.BaseSampler] | None
    reseeded: bool = True


def _random(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # trials in training count as lies


def _cmaes(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _qmc(seed: int) -> optuna.samplers.BaseSampler:
    import warnings

    import optuna

    with warnings.catch_warnings():  # "experimental" once per rebuild says nothing to a user who chose it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)


SAMPLERS: dict[str, Sampler] = {
    entry.name: entry
    for entry in (
        Sampler("grid", "every point of the dictionary, exactly as without a search section (the default)", None),
        Sampler("random", "independent uniform draws", _random),
        Sampler("tpe", "Tree-structured Parzen Estimator (trials in training count as lies)", _tpe),
        Sampler("cmaes", "CMA-ES (needs the cmaes package, a dependency)", _cmaes),
        Sampler("qmc", "quasi-Monte Carlo (Sobol) sequence", _qmc, reseeded=False),
    )
}
ADAPTIVE_SAMPLERS = tuple(name for name, entry in SAMPLERS.items() if entry.build is not None)


# ------------------------------------------------------------------------------------------------ pruners


class PrunerSettings(BaseModel):
    """A pruner's settings: Optuna's own argument names and types; an omitted one keeps Optuna's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoSettings(PrunerSettings):
    pass


class MedianSettings(PrunerSettings):
    n_startup_trials: StrictInt | None = None
    n_warmup_steps: StrictInt | None = None
    interval_steps: StrictInt | None = None
    n_min_trials: StrictInt | None = None


class SuccessiveHalvingSettings(PrunerSettings):
    min_resource: StrictInt | Literal["auto"] | None = None
    reduction_factor: StrictInt | None = None
    min_early_stopping_rate: StrictInt | None = None
    bootstrap_count: StrictInt | None = None


class HyperbandSettings(PrunerSettings):
    min_resource: StrictInt | None = None
    max_resource: StrictInt | Literal["auto"] | None = None
    reduction_factor: StrictInt | None = None
    bootstrap_count: StrictInt | None = None


class PatientSettings(PrunerSettings):
    patience: StrictInt  # required: epochs without improvement before a trial is pruned
    min_delta: StrictFloat | StrictInt | None = None


@dataclass(frozen=True)
class Pruner:
    """One pruner: its settings model and ``build(settings)`` (only the settings given) → Optuna's pruner."""

    name: str
    description: str
    settings: type[PrunerSettings]
    build: Callable[..., optuna.pruners.BasePruner]

    @property
    def setting_names(self) -> tuple[str, ...]:
        return tuple(self.settings.model_fields)


def _none(**settings: Any) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner(**settings)


def _median(**settings: Any) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(**settings)


def _asha(**settings: Any) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(**settings)


def _hyperband(**settings: Any) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.HyperbandPruner(**settings)


def _patient(**settings: Any) -> optuna.pruners.BasePruner:
    import warnings

    import optuna

    with warnings.catch_warnings():  # "experimental" at every rebuild says nothing to a user who chose it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.PatientPruner(None, **settings)  # alone: prunes on patience only


PRUNERS: dict[str, Pruner] = {
    entry.name: entry
    for entry in (
        Pruner("none", "no pruning (the default)", NoSettings, _none),
        Pruner("median", "below the median of earlier trials at the same epoch", MedianSettings, _median),
        Pruner("asha", "asynchronous successive halving", SuccessiveHalvingSettings, _asha),
        Pruner("hyperband", "Hyperband (brackets of successive halving)", HyperbandSettings, _hyperband),
        Pruner("patient", "no improvement by min_delta for patience epochs", PatientSettings, _patient),
    )
}


def given(settings: PrunerSettings) -> dict[str, Any]:
    """The settings a user wrote, for the builder: an omitted one keeps Optuna's default."""
    return settings.model_dump(exclude_unset=True)


def in_words(names: tuple[str, ...] | list[str]) -> str:
    """'a, b or c'."""
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)
