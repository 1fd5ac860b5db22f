"""Reading columns of one sample from ROOT (uproot) or HDF5 (h5py) files.

Errors name the file and the tree/dataset/branch at fault and list the closest existing names. Flat branches
come back as numpy arrays, jagged ones (NanoAOD's ``Jet_pt``) as awkward arrays, fixed-size ones (an HDF5 field of
shape (200, 4), a ROOT ``float x[3]``) as numpy arrays with one row per event; :func:`branch_shapes` tells which
from the file's branch types alone, before any data is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from hhscan.errors import DataError, did_you_mean
from hhscan.settings.expr import FLAT, BranchShape

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


def chunk_ranges(path: Path, tree: str, start: int, stop: int, target: int) -> list[tuple[int, int]]:
    """Entry ranges of about ``target`` entries covering [start, stop). In a ROOT TTree they end where every
    branch's baskets end (its clusters), so no basket is decompressed twice; a cluster far longer than ``target``
    is cut anyway (memory stays bounded)."""
    boundaries: list[int] = []
    if Path(path).suffix.lower() not in HDF5_SUFFIXES:
        handle = _open_root_tree(Path(path), tree)
        with handle.file:
            if hasattr(handle, "common_entry_offsets"):  # a TTree (an RNTuple has no baskets to share)
                boundaries = [int(b) for b in handle.common_entry_offsets()]
    ranges = []
    first = start
    while first < stop:
        cuts = [b for b in boundaries if first + target <= b < stop]
        end = cuts[0] if cuts and cuts[0] <= first + 2 * target else min(first + target, stop)
        ranges.append((first, end))
        first = end
    return ranges or [(start, start)]


def branch_shapes(
    path: Path, tree: str, branches: Sequence[str], used_by: Mapping[str, str] | None = None
) -> dict[str, BranchShape]:
    """What one event holds of each branch (one number, a jagged list, a fixed-size array), from the file's branch
    types: no data is read. Unknown branches are refused as :func:`read_columns` refuses them."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() in HDF5_SUFFIXES:
        return _hdf5_shapes(path, tree, branches, used_by or {})
    return _root_shapes(path, tree, branches, used_by or {})


def entries_per_event(path: Path, tree: str, branch: str) -> str:
    """How many entries per event a jagged branch has, as "0–12" (reads its counter, or its entries where it has
    none), for error messages."""
    import awkward as ak

    path = Path(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        return f"{_hdf5_shapes(path, tree, [branch], {})[branch].fixed} entries per event"
    import uproot

    with uproot.open(path) as handle:
        values = handle[tree][branch]
        counter = getattr(values, "count_branch", None)  # NanoAOD's nJet: a few bytes per event, not the entries
        counts = counter.array(library="np") if counter is not None else ak.to_numpy(ak.num(values.array(), axis=1))
    low, high = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
    return f"{low}–{high} entries per event" if low != high else f"{low} entries per event"


def _root_shapes(
    path: Path, tree_name: str, branches: Sequence[str], used_by: Mapping[str, str]
) -> dict[str, BranchShape]:

    tree = _open_root_tree(path, tree_name)
    with tree.file:  # the file handle the tree keeps
        _check_branches(path, tree_name, branches, list(tree.keys()), used_by)
        return _tree_shapes(path, tree_name, tree, branches)


def _tree_shapes(path: Path, tree_name: str, tree, branches: Sequence[str]) -> dict[str, BranchShape]:
    """Shapes from a TTree's branch interpretations (counters included), or an RNTuple's field types (read from
    zero entries)."""
    import uproot

    if branches and not hasattr(tree[branches[0]], "interpretation"):  # an RNTuple: fields, no interpretations
        empty = tree.arrays(filter_name=list(branches), entry_start=0, entry_stop=0)
        shapes = {}
        for name in branches:
            text = str(empty[name].type).split(" * ", 1)[1]  # "var * float64", "3 * float64", "float64"
            if text.startswith("var * ") and " * " not in text[6:]:
                shapes[name] = BranchShape(jagged=True)
            elif text.split(" * ")[0].isdigit() and " * " not in text.split(" * ", 1)[1]:
                shapes[name] = BranchShape(jagged=True, fixed=int(text.split(" * ")[0]))
            elif " * " in text:
                raise DataError(f"{path}:{tree_name}: field '{name}' ({text}) is neither one number per event nor a "
                                f"list of numbers: hhscan reads numbers")  # fmt: skip
            else:
                shapes[name] = FLAT
        return shapes
    shapes = {}
    for name in branches:
        branch = tree[name]
        interpretation = branch.interpretation
        if isinstance(interpretation, uproot.AsJagged) and isinstance(interpretation.content, uproot.AsDtype):
            counter = branch.count_branch.name if branch.count_branch is not None else None
            shapes[name] = BranchShape(jagged=True, multiplicity=counter)
        elif isinstance(interpretation, uproot.AsDtype) and interpretation.inner_shape:
            inner = interpretation.inner_shape
            shapes[name] = BranchShape(jagged=True, fixed=inner[0], components=int(np.prod(inner[1:], dtype=int)))
        elif isinstance(interpretation, uproot.AsDtype):
            shapes[name] = FLAT
        else:
            raise DataError(
                f"{path}:{tree_name}: branch '{name}' ({branch.typename}) is neither one number per event nor a "
                f"list of numbers: hhscan reads numbers"
            )
    return shapes


def _open_root_tree(path: Path, tree_name: str):
    import uproot

    try:
        handle = uproot.open(path)
    except (OSError, ValueError, uproot.DeserializationError) as error:
        # what uproot raises on a file too short for a header, without ROOT's magic, or with a garbled header
        raise DataError(f"{path}: not a readable ROOT file ({_one_line(error)})") from None
    trees = handle.keys(cycle=False, filter_classname=["TTree", "TNtuple", "ROOT::RNTuple"])
    if tree_name not in trees:
        handle.close()
        raise DataError(f"{path}: no tree '{tree_name}' ({did_you_mean(tree_name, trees, 'trees')})")
    return handle[tree_name]


def _hdf5_shapes(
    path: Path, dataset_name: str, branches: Sequence[str], used_by: Mapping[str, str]
) -> dict[str, BranchShape]:
    import h5py

    shapes = {}
    with _open_hdf5(path) as handle:
        node = _hdf5_node(handle, path, dataset_name)
        if isinstance(node, h5py.Group):
            available = [k for k in node if isinstance(node[k], h5py.Dataset)]
            _check_branches(path, dataset_name, branches, available, used_by)
            inner = {name: node[name].shape[1:] for name in branches}
        else:
            _check_branches(path, dataset_name, branches, list(node.dtype.names), used_by)
            inner = {name: node.dtype[name].shape for name in branches}
    for name, shape in inner.items():
        if shape:
            shapes[name] = BranchShape(jagged=True, fixed=shape[0], components=int(np.prod(shape[1:], dtype=int)))
        else:
            shapes[name] = FLAT
    return shapes


def _open_hdf5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file ({_one_line(error)})") from None


def _hdf5_node(handle, path: Path, dataset_name: str):
    import h5py

    if dataset_name not in handle:
        names: list[str] = []
        handle.visit(names.append)
        raise DataError(f"{path}: no dataset '{dataset_name}' ({did_you_mean(dataset_name, names, 'datasets')})")
    node = handle[dataset_name]
    if not isinstance(node, h5py.Group) and not node.dtype.names:
        raise DataError(f"{path}:{dataset_name}: expected a compound dataset or a group of datasets")
    return node


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _read_root(
    path: Path, tree_name: str, branches: Sequence[str], used_by: Mapping[str, str], entries: tuple[int, int] | None
) -> tuple[dict[str, np.ndarray], int]:
    tree = _open_root_tree(path, tree_name)
    with tree.file:  # the file handle the tree keeps
        available = list(tree.keys())
        _check_branches(path, tree_name, branches, available, used_by)
        start, stop = entries or (0, int(tree.num_entries))
        stop = min(stop, int(tree.num_entries))
        if not branches:
            return {}, stop - start
        shapes = _tree_shapes(path, tree_name, tree, branches)
        jagged = [name for name in branches if shapes[name].jagged and shapes[name].fixed is None]
        flat = [name for name in branches if name not in jagged]
        columns = tree.arrays(filter_name=flat, library="np", entry_start=start, entry_stop=stop) if flat else {}
        if jagged:  # awkward keeps a jagged branch as offsets and contents: no Python object per event
            columns.update(tree.arrays(filter_name=jagged, library="ak", entry_start=start, entry_stop=stop, how=dict))
        columns = {name: columns[name] for name in branches}
        for name, values in columns.items():
            if isinstance(values, np.ndarray) and values.dtype == object:
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

    with _open_hdf5(path) as handle:
        node = _hdf5_node(handle, path, dataset_name)
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
        else:  # one structured (compound) dataset: _hdf5_node refused any other
            available = list(node.dtype.names)
            _check_branches(path, dataset_name, branches, available, used_by)
            total = len(node)
            start, stop = entries or (0, total)
            columns = {name: node.fields(name)[start:stop] for name in branches}
        count = max(0, min(stop, total) - start)
        for name, values in columns.items():
            if len(values) != count:
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
                hint = '; for files without event weights give their group weight: "1"'
            raise DataError(f"{path}:{tree}: {user} '{name}' ({did_you_mean(name, available, 'branches')}){hint}")
