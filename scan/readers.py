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
    path: Path, tree: str, branches: Sequence[str], used_by: Mapping[str, str] | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """The named branches of ``tree`` in ``path`` as flat numpy arrays, and the number of entries.

    ``used_by`` says, per branch, what needs it (a cut, an input), for the error message.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() in HDF5_SUFFIXES:
        return _read_hdf5(path, tree, branches, used_by or {})
    return _read_root(path, tree, branches, used_by or {})


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _read_root(
    path: Path, tree_name: str, branches: Sequence[str], used_by: Mapping[str, str]
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
        if not branches:
            return {}, int(tree.num_entries)
        arrays = tree.arrays(filter_name=list(branches), library="np")
        columns = {name: arrays[name] for name in branches}
        for name, values in columns.items():
            if values.dtype == object:
                raise DataError(f"{path}:{tree_name}: branch '{name}' is not one number per event")
        return columns, int(tree.num_entries)


def _read_hdf5(
    path: Path, dataset_name: str, branches: Sequence[str], used_by: Mapping[str, str]
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
            columns = {name: node[name][()] for name in branches}
            entries = len(node[available[0]]) if available else 0
        elif node.dtype.names:  # one structured (compound) dataset
            available = list(node.dtype.names)
            _check_branches(path, dataset_name, branches, available, used_by)
            entries = len(node)
            columns = {name: node.fields(name)[()] for name in branches}
        else:
            raise DataError(f"{path}:{dataset_name}: expected a compound dataset or a group of datasets")
        for name, values in columns.items():
            if values.ndim != 1 or len(values) != entries:
                raise DataError(f"{path}:{dataset_name}: '{name}' is not one number per event")
        return columns, entries


def _check_branches(
    path: Path, tree: str, wanted: Sequence[str], available: Sequence[str], used_by: Mapping[str, str]
) -> None:
    for name in wanted:
        if name not in available:
            user = f"{used_by[name]} uses unknown branch" if name in used_by else "no branch"
            raise DataError(f"{path}:{tree}: {user} '{name}' ({did_you_mean(name, available, 'branches')})")


def list_branches(path: Path, tree: str) -> list[str]:
    """Names of the branches (or HDF5 fields) of a tree, for error messages and the test command."""
    path = Path(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        import h5py

        with h5py.File(path, "r") as handle:
            node = handle[tree]
            return list(node.dtype.names) if isinstance(node, h5py.Dataset) else list(node)
    import uproot

    with uproot.open(path) as handle:
        return list(handle[tree].keys())
