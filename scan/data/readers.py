"""Reading columns of one sample from ROOT (uproot) or HDF5 (h5py) files.

Errors name the file and the tree/dataset/branch at fault and list the closest existing names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from hhscan.errors import DataError, did_you_mean

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def read_columns(
    path: Path,
    tree: str,
    branches: Sequence[str],
    used_by: Mapping[str, str] | None = None,
    entries: tuple[int, int] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """The named branches of ``tree`` in ``path`` as flat numpy arrays, and the number of entries read.

    ``used_by`` says, per branch, what needs it (a cut, an input), for the error message; ``entries`` is an
    optional [start, stop) range, for reading large files in chunks.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() in HDF5_SUFFIXES:
        return _read_hdf5(path, tree, branches, used_by or {}, entries)
    return _read_root(path, tree, branches, used_by or {}, entries)


def count_entries(path: Path, tree: str) -> int:
    return read_columns(path, tree, [])[1]


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _read_root(
    path: Path, tree_name: str, branches: Sequence[str], used_by: Mapping[str, str], entries: tuple[int, int] | None
) -> tuple[dict[str, np.ndarray], int]:
    import uproot

    try:
        handle = uproot.open(path)
    except Exception as error:
        raise DataError(f"{path}: not a readable ROOT file ({_one_line(error)})") from None
    with handle:
        trees = handle.keys(cycle=False, filter_classname=["TTree", "TNtuple", "ROOT::RNTuple"])
        if tree_name not in trees:
            raise DataError(f"{path}: no tree '{tree_name}' ({did_you_mean(tree_name, trees, 'trees')})")
        tree = handle[tree_name]
        available = list(tree.keys())
        _check_branches(path, tree_name, branches, available, used_by)
        start, stop = entries or (0, int(tree.num_entries))
        stop = min(stop, int(tree.num_entries))
        if not branches:
            return {}, stop - start
        arrays = tree.arrays(filter_name=list(branches), library="np", entry_start=start, entry_stop=stop)
        columns = {name: arrays[name] for name in branches}
        for name, values in columns.items():
            if values.dtype == object:
                raise DataError(f"{path}:{tree_name}: branch '{name}' is not one number per event")
        return columns, stop - start


def _read_hdf5(
    path: Path,
    dataset_name: str,
    branches: Sequence[str],
    used_by: Mapping[str, str],
    entries: tuple[int, int] | None,
) -> tuple[dict[str, np.ndarray], int]:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file ({_one_line(error)})") from None
    with handle:
        if dataset_name not in handle:
            names: list[str] = []
            handle.visit(names.append)
            raise DataError(f"{path}: no dataset '{dataset_name}' ({did_you_mean(dataset_name, names, 'datasets')})")
        node = handle[dataset_name]
        if isinstance(node, h5py.Group):  # a group of one dataset per variable
            available = [k for k in node if isinstance(node[k], h5py.Dataset)]
            _check_branches(path, dataset_name, branches, available, used_by)
            lengths = {name: len(node[name]) for name in (branches or available[:1])}
            if len(set(lengths.values())) > 1:  # one event per row: columns must line up
                shortest, longest = min(lengths, key=lengths.get), max(lengths, key=lengths.get)
                raise DataError(
                    f"{path}:{dataset_name}: datasets of unequal length: '{longest}' has {lengths[longest]} entries, "
                    f"'{shortest}' {lengths[shortest]}"
                )
            total = next(iter(lengths.values()), 0)
            start, stop = entries or (0, total)
            columns = {name: node[name][start:stop] for name in branches}
        elif node.dtype.names:  # one structured (compound) dataset
            available = list(node.dtype.names)
            _check_branches(path, dataset_name, branches, available, used_by)
            total = len(node)
            start, stop = entries or (0, total)
            columns = {name: node.fields(name)[start:stop] for name in branches}
        else:
            raise DataError(f"{path}:{dataset_name}: expected a compound dataset or a group of datasets")
        count = max(0, min(stop, total) - start)
        for name, values in columns.items():
            if values.ndim != 1 or len(values) != count:
                raise DataError(f"{path}:{dataset_name}: '{name}' is not one number per event")
        return columns, count


def _check_branches(
    path: Path, tree: str, wanted: Sequence[str], available: Sequence[str], used_by: Mapping[str, str]
) -> None:
    for name in wanted:
        if name not in available:
            user = f"{used_by[name]} uses unknown branch" if name in used_by else "no branch"
            hint = ""
            if used_by.get(name, "").startswith("weight "):
                hint = "; for files without event weights give their group weight: \"1\""
            raise DataError(f"{path}:{tree}: {user} '{name}' ({did_you_mean(name, available, 'branches')}){hint}")
