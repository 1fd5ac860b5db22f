"""A scan's directory ``slurm/NAME/``: the manifest, the resolved configuration, records, models, logs.

The manifest is written once when the scan is created (dictionary hash, trial ids, split checksum, data
fingerprint, code version) and only ever appended to (job ids). Local and Slurm scans share the layout, so
``report``, ``status`` and ``resubmit`` work on both.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hhscan import __version__
from hhscan.errors import ScanError, did_you_mean
from hhscan.fileio import atomic_write_text
from hhscan.learning.records import TrialRecord, read_records
from hhscan.learning.trial import Trial
from hhscan.settings import config
from hhscan.settings.config import Parameters, SampleList


@dataclass(frozen=True)
class Workspace:
    """The project directory a user works in: ``slurm/``, ``models/``, ``splits/``, ``cache/``."""

    root: Path

    @property
    def scans(self) -> Path:
        return self.root / "slurm"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def scan_names(self) -> list[str]:
        if not self.scans.is_dir():
            return []
        return sorted(p.parent.name for p in self.scans.glob("*/scan.json"))

    def scan(self, name: str | None) -> ScanDirectory:
        """An existing scan by name; the most recently created one when ``name`` is None."""
        names = self.scan_names()
        if name is None:
            if not names:
                raise ScanError(f"no scans under {self.scans}: start one with 'hhscan run --local' or 'hhscan submit'")
            name = max(names, key=lambda n: (self.scans / n / "scan.json").stat().st_mtime)
        if name not in names:
            raise ScanError(f"no scan '{name}' under {self.scans} ({did_you_mean(name, names, 'scans')})")
        return ScanDirectory(self.scans / name)


class ScanDirectory:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def manifest_path(self) -> Path:
        return self.root / "scan.json"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def checkpoint_dir(self) -> Path:
        """Where trials keep their epoch-end checkpoints (one per trial, ``training.checkpoint_path``)."""
        return self.root / "checkpoints"

    def model_path(self, trial_id: str) -> Path:
        return self.output_dir / f"{trial_id}.zip"

    @property
    def exists(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> dict[str, Any]:
        if not self.exists:
            raise ScanError(f"{self.root}: not a scan directory (no scan.json)")
        return _read_json(self.manifest_path)

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True))

    def create(
        self,
        parameters: Parameters,
        sample_list: SampleList,
        trials: list[Trial],
        split_checksum: str,
        data_fingerprint: str,
        workspace: Workspace,
        backend: str,
        kind: str,
    ) -> None:
        manifest = {
            "name": self.name,
            "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "code_version": __version__,
            "workspace": str(workspace.root.resolve()),
            "dictionary_hash": parameters.dictionary_hash(),
            "hyperparameters": parameters.hyperparameters,
            "repetitions": parameters.repetitions,
            "seed": parameters.seed,
            "eval_criterion": parameters.eval_criterion,
            "split_name": parameters.split.name,
            "split_checksum": split_checksum,
            "data_fingerprint": data_fingerprint,
            "backend": backend,
            "parameters_file": str(parameters.source),
            "samples_file": str(sample_list.source),
            "trials": [{"id": t.id, "hyperparameters": t.hyperparameters, "repetition": t.repetition} for t in trials],
            "jobs": [],
        }
        if parameters.search.adaptive:  # its trials are asked as it runs: slots under asked/ (search.py)
            manifest["search"] = parameters.search.model_dump(mode="json")
        if parameters.own_model is not None:
            manifest["model"] = model_identity(parameters)
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config(parameters, sample_list)
        self._write_manifest(manifest)

    @property
    def model_source_path(self) -> Path:
        """The scan's copy of an own model's source: what its jobs import and its model zips carry."""
        return self.root / "config" / MODEL_SOURCE

    def write_config(self, parameters: Parameters, sample_list: SampleList) -> None:
        """The resolved configuration jobs read (resources and callbacks may change between submissions).

        An own model's source is copied beside it and the configuration names the copy, so jobs import the source
        the scan was created with (``check_compatible`` refuses a changed one), whatever becomes of the user's file.
        """
        directory = self.root / "config"
        if parameters.own_model is not None:
            spec, source = parameters.own_model
            atomic_write_text(self.model_source_path, source)
            copy = f"{self.model_source_path.resolve()}:{spec.rpartition(':')[2]}"
            parameters = parameters.model_copy(update={"model": copy})
        atomic_write_text(directory / "resolved.json", json.dumps(config.snapshot(parameters, sample_list), indent=1))
        atomic_write_text(directory / "parameters.yaml", parameters.source.read_text())
        atomic_write_text(directory / "sample_list.yaml", sample_list.source.read_text())

    def snapshot_config(self, submission: str) -> Path:
        """A frozen copy of the current configuration for one submission: its queued jobs read this one, so a later
        ``run``/``resubmit`` that rewrites ``config/resolved.json`` (other callbacks, resources) never changes them."""
        path = self.root / "config" / "submissions" / f"{submission}.json"
        atomic_write_text(path, (self.root / "config" / "resolved.json").read_text())
        return path

    def config_files(self, snapshot: Path | None = None) -> dict[str, str]:
        """The configuration texts, keyed by their name inside a model zip (``config/…``); ``resolved.json`` is the
        one the trial ran with (``snapshot``, else the current one)."""
        directory = self.root / "config"
        files = {f"config/{p.name}": p.read_text() for p in sorted(directory.iterdir()) if p.is_file()}
        if snapshot is not None:
            files["config/resolved.json"] = Path(snapshot).read_text()
        return files

    def load_config(self, snapshot: Path | None = None) -> tuple[Parameters, SampleList]:
        """The configuration jobs run with: a submission's frozen ``snapshot``, else the current one."""
        return config.from_snapshot(_read_json(Path(snapshot) if snapshot else self.root / "config" / "resolved.json"))

    def check_compatible(
        self, parameters: Parameters, split_checksum: str | None = None, data_fingerprint: str | None = None
    ) -> None:
        """Refuse to add trials to this scan if its trials or split would change, naming what changed."""
        from hhscan.learning.trial import expand

        manifest = self.manifest()
        now_model = model_identity(parameters) if parameters.own_model is not None else None
        if manifest.get("model") != now_model:
            change = _model_change(manifest.get("model"), now_model, parameters.model)
            raise ScanError(f"scan '{self.name}': {change} since it was created: results would mix; restore it or "
                            f"start a new scan with another --name")  # fmt: skip
        if ("search" in manifest) != parameters.search.adaptive:
            raise ScanError(
                f"scan '{self.name}' is {'an adaptive' if 'search' in manifest else 'a grid'} scan; the parameters "
                f"now ask for {'an adaptive' if parameters.search.adaptive else 'a grid'} one: start a new scan with "
                f"another --name"
            )
        if "search" in manifest and manifest["dictionary_hash"] != parameters.dictionary_hash():
            before = {**manifest["search"], "hyperparameters": manifest["hyperparameters"]}
            now = {**parameters.search.model_dump(mode="json"), "hyperparameters": parameters.hyperparameters}
            changed = sorted(k for k in before if k != "trials" and before[k] != now.get(k))
            raise ScanError(
                f"scan '{self.name}': the search space or its sampler, seed or pruner changed since it was created "
                f"({', '.join(changed)}); only search.trials (the budget) may change: restore it or start a new scan "
                f"with another --name"
            )
        same_trials = sorted(t.id for t in expand(parameters)) == sorted(t["id"] for t in manifest["trials"])
        if not same_trials:  # 0 vs 0.0 or a reordered list give the same trials: not a change
            before, now = manifest["hyperparameters"], parameters.hyperparameters
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            detail = ", ".join(f"{k}: {before.get(k)} → {now.get(k)}" for k in changed)
            if manifest["repetitions"] != parameters.repetitions:
                detail = ", ".join(
                    filter(None, [detail, f"repetitions: {manifest['repetitions']} → {parameters.repetitions}"])
                )
            raise ScanError(
                f"scan '{self.name}': the hyperparameter dictionary changed since it was created ({detail}); "
                f"restore it or start a new scan with another --name"
            )
        if "seed" in manifest and parameters.seed != manifest["seed"]:
            raise ScanError(
                f"scan '{self.name}': seed {manifest['seed']} → {parameters.seed} would change every trial's initial "
                f"weights and batch order, mixing results; restore it or start a new scan with another --name"
            )
        if parameters.split.name != manifest["split_name"]:
            raise ScanError(
                f"scan '{self.name}': split '{manifest['split_name']}' was used, the parameters now name "
                f"'{parameters.split.name}'"
            )
        if split_checksum is not None and split_checksum != manifest["split_checksum"]:
            raise ScanError(
                f"scan '{self.name}': the train/validation/test split changed since it was created "
                f"(checksum {manifest['split_checksum']} → {split_checksum})"
            )
        if data_fingerprint is not None and data_fingerprint != manifest["data_fingerprint"]:
            raise ScanError(
                f"scan '{self.name}': the sample list or its files changed since it was created (inputs, cuts, "
                f"weights, events or the significance guard): results would mix; start a new scan with another --name"
            )

    @property
    def input_checks_path(self) -> Path:
        return self.root / "input_checks.json"

    def write_input_checks(self, leaks: dict[str, float], threshold: float) -> None:
        """Inputs that alone separate the classes (probable label leaks), for ``report`` to show."""
        atomic_write_text(self.input_checks_path, json.dumps({"auc_threshold": threshold, "probable_leaks": leaks}))

    def input_checks(self) -> dict[str, Any]:
        return json.loads(self.input_checks_path.read_text()) if self.input_checks_path.exists() else {}

    def trials(self) -> list[Trial]:
        """The expected trials: the grid's, or the points an adaptive search asked so far, in slot order."""
        manifest = self.manifest()
        listed = [Trial(t["id"], t["hyperparameters"], t["repetition"]) for t in manifest["trials"]]
        if "search" in manifest:
            from hhscan.execution import search

            listed += [asked.trial for asked in search.read_asked(self.root)]
        return listed

    def records(self) -> tuple[dict[str, TrialRecord], dict[str, str]]:
        return read_records(self.output_dir)

    def missing(self, skip_failed: bool = False) -> list[Trial]:
        """Expected trials without a valid DONE (or PRUNED) record (FAIL counts as missing unless ``skip_failed``)."""
        records, _ = self.records()
        result = []
        for trial in self.trials():
            record = records.get(trial.id)
            if record is None or not (record.finished or (skip_failed and record.status == "FAIL")):
                result.append(trial)
        return result

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the scan (``flock``; on NFS the client maps it to a POSIX lock, held by lockd
        or the NFSv4 server) for checks that must be atomic with what follows: creation, submission."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".submit.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def litter(self, min_age_s: float = 600.0) -> list[Path]:
        """What an unfinished write or a finished trial left behind: checkpoints of DONE trials, and temporary
        files (``.*.tmp``, staged ``.*.zip``, lease ``.*.claim``) untouched for ``min_age_s``."""
        records, _ = self.records()
        found = [p for p in sorted(self.checkpoint_dir.glob("*/*")) if p.parent.name in records
                 and records[p.parent.name].finished]  # fmt: skip
        now = time.time()
        for pattern in (".*.tmp", "output/.*.zip", "leases/.*.claim", "asked/.*.slot"):
            for path in self.root.rglob(pattern) if pattern.startswith(".") else self.root.glob(pattern):
                try:
                    if now - path.stat().st_mtime >= min_age_s:
                        found.append(path)
                except FileNotFoundError:  # finished meanwhile
                    continue
        return found

    def clean_litter(self) -> None:
        """A finished scan keeps records, models, logs and configuration: checkpoints, leases and temporary
        files go."""
        for directory in ("checkpoints", "leases"):
            shutil.rmtree(self.root / directory, ignore_errors=True)
        for path in self.litter(min_age_s=0.0):
            path.unlink(missing_ok=True)

    def add_jobs(self, jobs: list[dict[str, Any]]) -> None:
        manifest = self.manifest()
        manifest["jobs"].extend(jobs)
        self._write_manifest(manifest)


MODEL_SOURCE = "model_source.py"


def model_identity(parameters: Parameters) -> dict[str, str]:
    """What defines an own model in a scan's manifest: its function's name and its source's checksum."""
    from hhscan.settings import model_function

    spec, source = parameters.own_model or ("", "")
    return {"function": spec.rpartition(":")[2], "sha256": model_function.source_hash(source)}


def _model_change(before: dict[str, str] | None, now: dict[str, str] | None, spec: str | None) -> str:
    if before is None or now is None:
        return f"the model changed from {'the built-in network' if before is None else before['function'] + '()'} " \
               f"to {'the built-in network' if now is None else now['function'] + '()'}"
    if before["function"] != now["function"]:
        return f"the model function changed from {before['function']}() to {now['function']}()"
    return (f"the source of the model {spec} changed (sha256 {before['sha256'][:12]} → {now['sha256'][:12]}; the "
            f"scan keeps the original in config/{MODEL_SOURCE})")


def _read_json(path: Path) -> dict[str, Any]:
    """A scan's own JSON file; a truncated or hand-damaged one is a :class:`ScanError` naming it."""
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScanError(
            f"{path}: unreadable ({' '.join(str(error).split())}): restore it from a backup, or start the scan "
            f"again under another --name (its trial records under output/ stay valid)"
        ) from None
    if not isinstance(content, dict):
        raise ScanError(f"{path}: not a scan file (expected a JSON object)")
    return content
