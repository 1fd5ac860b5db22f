"""Adaptive search: Optuna's samplers and pruners on hhscan's own files, with no database and no second state.

hhscan's files are the single source of truth; Optuna only ever sees an in-memory study rebuilt from them:

- ``asked/<slot>.json`` — one file per trial of the budget, slot 0…N−1, created with ``os.link`` (atomic, fails if
  the name exists, on local disks and NFS, as leases are claimed): of two workers taking one slot exactly one
  wins, so at most N trials are ever asked, whatever the number of workers. Slots are filled without gaps and
  read by name, never from a directory listing (which NFS caches). A slot holds the trial (id = hash of
  the canonical point, as a grid trial's) and what the sampler attached to it when it was asked (Optuna's trial
  system attributes, e.g. CMA-ES's generation and state, and the study's, e.g. QMC's sample counter).
- ``output/<trial>.csv`` — the trial's record (DONE, FAIL or PRUNED), written as for a grid trial; its history is
  the trial's intermediate values, and it carries the pruner's attributes (e.g. ASHA's rungs).
- ``leases/`` — who trains a trial right now (``leases.py``): the one claim mechanism for grid and adaptive trials.

Before every ask the study is rebuilt from the slots in slot order (so one worker and a fixed seed give the same
trials in the same order): a slot with a finished record is COMPLETE (its value of the criterion), FAIL or PRUNED
(with its intermediate values); a slot without one is RUNNING — being trained, or left by a killed worker and
trained again by the next worker that finds it without a live lease. A point whose id is already asked is told
to the in-memory study (with the known value, else as failed) and asked again: no trial is trained twice.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hhscan.learning import trial
from hhscan.learning.records import DONE, FAIL, PRUNED, TrialRecord
from hhscan.settings import criteria, hyperparameters, searchers
from hhscan.settings.config import Parameters

if TYPE_CHECKING:
    import optuna

ASKED = "asked"
MAX_DUPLICATES = 100  # consecutive already-asked points before a small discrete space counts as exhausted


@dataclass(frozen=True)
class Asked:
    """One slot of the budget: the trial asked into it, and the sampler's attributes at that moment."""

    slot: int
    trial: trial.Trial
    system_attrs: dict[str, Any] = field(default_factory=dict)
    study_system_attrs: dict[str, Any] = field(default_factory=dict)


def asked_dir(scan_root: Path) -> Path:
    return Path(scan_root) / ASKED


def _slot_name(slot: int) -> str:
    return f"{slot:06d}.json"


def read_asked(scan_root: Path) -> list[Asked]:
    """Every slot taken so far, in slot order (each file is complete: it was linked into place whole).

    Slots are looked up by name, 0, 1, … until one does not exist (``take_slot`` fills them without gaps): NFS
    clients cache directory listings, while a lookup by name is checked with the server.
    """
    directory = asked_dir(scan_root)
    found = []
    while True:
        slot = len(found)
        try:
            with open(directory / _slot_name(slot)) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return found
        found.append(
            Asked(
                slot,
                trial.Trial(
                    data["trial_id"],
                    hyperparameters.with_defaults(data["hyperparameters"]),  # keys added since: their default
                    data.get("repetition", 0),
                ),
                data.get("system_attrs", {}),
                data.get("study_system_attrs", {}),
            )
        )


def take_slot(scan_root: Path, asked: Asked, budget: int) -> int | None:
    """Write ``asked`` into the first free slot below ``budget``; its slot number, or None when the budget is spent.

    ``os.link`` of a complete temporary file creates the slot atomically and only if it does not exist yet.
    """
    directory = asked_dir(scan_root)
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{asked.trial.id}.{secrets.token_hex(6)}.slot"
    slot = len(read_asked(scan_root))
    try:
        while slot < budget:
            content = {
                "slot": slot,
                "trial_id": asked.trial.id,
                "hyperparameters": asked.trial.hyperparameters,
                "repetition": asked.trial.repetition,
                "system_attrs": asked.system_attrs,
                "study_system_attrs": asked.study_system_attrs,
            }
            temporary.write_text(json.dumps(content, sort_keys=True))
            try:
                os.link(temporary, directory / _slot_name(slot))
            except FileExistsError:
                slot += 1  # another worker took it first
                continue
            return slot
        return None
    finally:
        temporary.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ the space


def search_space(parameters: Parameters) -> tuple[dict[str, optuna.distributions.BaseDistribution], dict[str, Any]]:
    """The sampler's distributions (ranges; lists of several values as categorical) and the fixed values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for name, values in parameters.hyperparameters.items():
        entry = parameters.registry[name]
        if hyperparameters.is_range(values):
            if entry.kind is int:
                space[name] = IntDistribution(values["low"], values["high"], log=values["log"], step=values["step"])
            else:
                space[name] = FloatDistribution(values["low"], values["high"], log=values["log"], step=values["step"])
            continue
        choices = list(dict.fromkeys(entry.canonical(v) for v in values))  # 0 and 0.0 are one choice
        if len(choices) == 1:
            fixed[name] = choices[0]
        else:
            space[name] = CategoricalDistribution(choices)
    return space, fixed


def point_trial(
    params: Mapping[str, Any],
    fixed: Mapping[str, Any],
    registry: Mapping[str, hyperparameters.Hyperparameter] = hyperparameters.REGISTRY,
) -> trial.Trial:
    """The hhscan trial of a sampled point: canonical values, defaults filled in, id as for a grid trial."""
    point = trial.canonical({**fixed, **params}, registry)
    return trial.Trial(trial.trial_id(point, 0, registry), point, 0)


def direction(parameters: Parameters) -> str:
    return "minimize" if criteria.metric(parameters.eval_criterion).direction == "min" else "maximize"


def pruning_monitor(parameters: Parameters) -> str:
    """What the pruner compares every epoch: the criterion where it is logged per epoch, else the validation
    loss (reported negated when the criterion is maximised, so the study's direction holds for both)."""
    criterion = criteria.metric(parameters.eval_criterion)
    return criterion.name if criterion.per_epoch else "val_loss"


def intermediate_values(parameters: Parameters, history: Mapping[str, Sequence[float]]) -> dict[int, float]:
    """A trial's intermediate values by step, in the study's direction. Step = epoch − 1, Optuna's convention
    (``n_warmup_steps: 2`` spares the first two epochs; Hyperband's ``max_resource`` is the last step + 1)."""
    monitor = pruning_monitor(parameters)
    flip = criteria.metric(monitor).direction != criteria.metric(parameters.eval_criterion).direction
    return {step: (-v if flip else v) for step, v in enumerate(history.get(monitor, []))
            if isinstance(v, (int, float)) and math.isfinite(v)}  # fmt: skip


def objective_value(parameters: Parameters, record: TrialRecord) -> float | None:
    value = record.metrics.get(parameters.eval_criterion)
    return float(value) if criteria.is_valid_value(value) else None


def state_of(parameters: Parameters, record: TrialRecord | None) -> tuple[str, float | None]:
    """The Optuna state of a slot's trial (a TrialState name) and its value."""
    if record is None:
        return "RUNNING", None
    if record.status == PRUNED:
        return "PRUNED", None
    if record.status == DONE and (value := objective_value(parameters, record)) is not None:
        return "COMPLETE", value
    return "FAIL", None  # FAIL, or DONE without a finite value: never a number the sampler learns from


# ------------------------------------------------------------------------------------------------ the study


def _sampler(parameters: Parameters, n_asked: int) -> optuna.samplers.BaseSampler:
    import numpy as np

    search = parameters.search
    entry = searchers.SAMPLERS[search.sampler]
    if entry.build is None:  # a caller's bug: the grid's trials are expanded (trial.expand), never asked
        raise ValueError(f"sampler {search.sampler} builds no study")
    seed = parameters.seed if search.seed is None else search.seed
    if not entry.reseeded:  # QMC: its sequence is fixed by the seed; the position is the study's sample counter
        return entry.build(seed)
    # A rebuilt study has a fresh sampler: its seed moves on with the number of points asked, so each rebuild
    # draws new points, and a rerun from the same records draws the same ones.
    return entry.build(int(np.random.SeedSequence([seed % 2**32, n_asked]).generate_state(1)[0] % 2**31))


def _pruner(parameters: Parameters) -> optuna.pruners.BasePruner:
    search = parameters.search
    pruner = searchers.PRUNERS[search.pruner]
    return pruner.build(**searchers.given(pruner.settings.model_validate(search.pruner_settings)))


@dataclass
class SearchStudy:
    """An Optuna study rebuilt in memory from a scan's slots and records, and what hhscan needs of it.

    A trial's number in the study is its slot: Hyperband picks a trial's bracket from its number, so the number a
    trial trains under must be the one every later rebuild gives it (the runner's next-pack step rebuilds the study once
    a pack's new points have their slots).
    """

    parameters: Parameters
    study: optuna.Study
    storage: optuna.storages.BaseStorage  # the study's own in-memory storage, created by ``build_study``
    space: dict[str, Any]
    fixed: dict[str, Any]
    ids: dict[str, int] = field(default_factory=dict)  # hhscan trial id of a slot → the storage's trial id
    # Points asked and not yet told, by hhscan trial id: a sampler may propose one point several times.
    pending: dict[str, list[int]] = field(default_factory=dict)

    @property
    def study_id(self) -> int:
        return self.storage.get_study_id_from_name(self.study.study_name)

    @property
    def prunes(self) -> bool:
        return self.parameters.search.pruner != "none"

    def ask(self) -> tuple[trial.Trial, Asked]:
        """One point from the sampler, as an hhscan trial and the slot content that records how it was asked."""
        asked = self.study.ask(self.space)
        found = point_trial(asked.params, self.fixed, self.parameters.registry)
        internal = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, asked.number)
        self.pending.setdefault(found.id, []).append(internal)
        frozen = self.storage.get_trial(internal)
        study_attrs = self.storage.get_study_system_attrs(self.study_id)
        return found, Asked(-1, found, dict(frozen.system_attrs), dict(study_attrs))

    def tell_duplicate(self, trial_id: str, value: float | None) -> None:
        """The last ask of ``trial_id`` proposed a point that is already a trial of the scan: the sampler hears its
        known value (else a failure) and is asked again; it is never trained twice. The slots' trials keep theirs."""
        import optuna

        number = self.storage.get_trial(self.pending[trial_id].pop()).number
        if value is None:
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(number, value)

    def should_prune(self, trial_id: str, epoch: int, history: Mapping[str, Sequence[float]]) -> bool:
        """The pruner's decision for a trial in training after ``epoch`` (from 1), from its history so far."""
        internal = self.ids.get(trial_id)
        if internal is None or not self.prunes:
            return False
        values = intermediate_values(self.parameters, history)
        if epoch - 1 not in values:
            return False  # a value that is not finite: the trial diverges, which is its own failure
        known = self.storage.get_trial(internal).intermediate_values
        for step, value in values.items():
            if step not in known:
                self.storage.set_trial_intermediate_value(internal, step, value)
        return bool(self.study.pruner.prune(self.study, self.storage.get_trial(internal)))

    def trial_state(self, trial_id: str) -> dict[str, Any]:
        """What a record keeps of the study's trial: the attributes samplers and pruners attached to it."""
        internal = self.ids.get(trial_id)
        if internal is None:
            return {}
        return {"system_attrs": dict(self.storage.get_trial(internal).system_attrs)}


def frozen_trial(
    parameters: Parameters, space: Mapping[str, Any], item: Asked, record: TrialRecord | None
) -> optuna.trial.FrozenTrial:
    """One slot as an Optuna trial: its searched values, its record's outcome (RUNNING without one) and intermediate
    values, the sampler's attributes, and the hhscan trial id as the user attribute ``trial_id``."""
    import optuna

    state, value = state_of(parameters, record)
    attrs = {**item.system_attrs, **(record.search_state.get("system_attrs", {}) if record else {})}
    return optuna.trial.create_trial(
        params={key: item.trial.hyperparameters[key] for key in space},
        distributions=dict(space),
        value=value,
        state=optuna.trial.TrialState[state],
        intermediate_values=intermediate_values(parameters, record.history) if record else None,
        user_attrs={"trial_id": item.trial.id},
        system_attrs=attrs,
    )


def build_study(
    parameters: Parameters, name: str, asked: Sequence[Asked], records: Mapping[str, TrialRecord]
) -> SearchStudy:
    """The study as the scan's files say it is: every slot in slot order, with its record's outcome."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna's own handler holds the sys.stderr of its first use (a closed stream later, under a capturing
    # caller); through Python's logging its warnings reach whatever sys.stderr is at the time.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    space, fixed = search_space(parameters)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage,
        sampler=_sampler(parameters, len(asked)),
        pruner=_pruner(parameters),
        direction=direction(parameters),
        study_name=f"hhscan-{name}",  # Hyperband's brackets hash the study name with the trial number
    )
    result = SearchStudy(parameters, study, storage, space, fixed)
    study_id = result.study_id
    for number, item in enumerate(asked):  # a trial's number is its slot (slots are 0, 1, … without gaps)
        study.add_trial(frozen_trial(parameters, space, item, records.get(item.trial.id)))
        result.ids[item.trial.id] = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        for key, attr in item.study_system_attrs.items():  # e.g. QMC's sample counter, as of this slot's ask
            storage.set_study_system_attr(study_id, key, attr)
    return result


def finished_state(record: TrialRecord | None) -> bool:
    """A record that ends a trial for the budget: DONE, PRUNED or FAIL (a failure is told, not retried)."""
    return record is not None and record.status in (DONE, PRUNED, FAIL)
