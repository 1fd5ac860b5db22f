"""NanoAOD-like events written with uproot ``mktree``: the jagged benchmark's data and data/nanoaod_like.root.

    python bench/nanoaod.py data/nanoaod_like.root     # the small file the NanoAOD sample list reads

Jets (pt, eta, phi, mass, btagDeepFlavB; counter nJet), muons and electrons (pt, eta; counters nMuon, nElectron),
a flat generator weight and an event number. ``shift`` > 0 makes harder, more b-tagged jets (a signal-like
process). Values are random, not physics: the file is for tests, examples and timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

JAGGED_BRANCHES = ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagDeepFlavB",
                   "Muon_pt", "Muon_eta", "Electron_pt", "Electron_eta", "Electron_phi"]  # fmt: skip


def nanoaod_events(n: int, seed: int, shift: float = 0.0) -> dict:
    import awkward as ak

    rng = np.random.default_rng(seed)

    def collection(count: np.ndarray, fields: dict) -> ak.Array:
        total = int(count.sum())
        return ak.zip({name: ak.unflatten(make(total).astype(np.float32), count) for name, make in fields.items()})

    n_jet = rng.poisson(3.0 + shift, n)
    jets = collection(n_jet, {
        "pt": lambda k: rng.exponential(35 + 15 * shift, k) + 20,
        "eta": lambda k: rng.normal(0, 1.8, k),
        "phi": lambda k: rng.uniform(-np.pi, np.pi, k),
        "mass": lambda k: rng.exponential(8, k) + 2,
        "btagDeepFlavB": lambda k: rng.random(k) ** (1 + 2 * shift),
    })  # fmt: skip
    muons = collection(rng.poisson(0.8, n), {"pt": lambda k: rng.exponential(25, k) + 5,
                                             "eta": lambda k: rng.normal(0, 1.2, k)})  # fmt: skip
    electrons = collection(rng.poisson(0.7, n), {"pt": lambda k: rng.exponential(25, k) + 7,
                                                 "eta": lambda k: rng.normal(0, 1.2, k),
                                                 "phi": lambda k: rng.uniform(-np.pi, np.pi, k)})  # fmt: skip
    return {
        "Jet": jets,
        "Muon": muons,
        "Electron": electrons,
        "genWeight": rng.uniform(0.5, 1.5, n),
        "event": np.arange(n, dtype=np.int64) + seed * 10_000_000,
    }


def write_nanoaod(path: Path, n: int, seed: int, shift: float = 0.0, chunk: int = 250_000) -> None:
    """Write ``n`` events to the tree Events of ``path`` (in baskets of ``chunk`` events)."""
    import awkward as ak
    import uproot

    with uproot.recreate(path) as handle:
        tree = None
        for start in range(0, n, chunk):
            events = nanoaod_events(min(chunk, n - start), seed + start, shift)
            if tree is None:
                types = {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in events.items()}
                tree = handle.mktree("Events", types)
            tree.extend(events)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "data/nanoaod_like.root")
    with_signal = target.with_name(target.stem + "_signal.root")
    write_nanoaod(target, 2000, seed=11, shift=0.0)
    write_nanoaod(with_signal, 2000, seed=12, shift=1.0)
    print(f"wrote {target} ({target.stat().st_size:,} B) and {with_signal} ({with_signal.stat().st_size:,} B)")
