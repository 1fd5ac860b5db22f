"""Figures in a HEP style (mplhep's ROOT style, scaled for slides), written as PNG.

Each function takes arrays or a DataFrame and a path and writes one PNG atomically. Physics quantities (ROC, AUC,
KS) come from :mod:`hhscan.data.metrics`; what this module computes itself is what a histogram needs (folded bins,
Σw² errors) and the weighted correlation of a correlation matrix, pure functions tested on their own.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from hhscan.data import metrics
from hhscan.fileio import atomic_write_bytes

FOLDED_NOTE = "under- and overflow folded into the first and last bins"
Function = TypeVar("Function", bound=Callable)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style() -> dict:
    """mplhep's ROOT style with fonts and ticks scaled from its 10-inch canvas to the 6-inch ones used here."""
    import mplhep

    return {
        **mplhep.style.ROOT,
        "font.size": 15,
        "xtick.major.size": 7,
        "xtick.minor.size": 3.5,
        "ytick.major.size": 7,
        "ytick.minor.size": 3.5,
        "axes.linewidth": 1.3,
        "lines.linewidth": 1.8,
        "legend.fontsize": "x-small",
    }


def _hep(function: Function) -> Function:
    @functools.wraps(function)
    def styled(*args, **kwargs):
        with _pyplot().style.context(_style()):
            return function(*args, **kwargs)

    return styled  # type: ignore[return-value]


_kept: list | None = None


@contextlib.contextmanager
def kept_figures() -> Iterator[list]:
    """Figures written inside the block stay open and are listed, in order (to inspect them or show them)."""
    global _kept
    previous, _kept = _kept, []
    try:
        yield _kept
    finally:
        _kept = previous


def save_figure(figure, path: Path) -> Path:
    """A figure written atomically as a PNG, then closed (unless ``kept_figures`` keeps it open)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    if _kept is None:
        _pyplot().close(figure)
    else:
        _kept.append(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# --- pure helpers -------------------------------------------------------------------------------------------------


def folded_histogram(values: np.ndarray, weights: np.ndarray, edges: np.ndarray):
    """Weighted counts and Σw² per bin, with entries outside ``edges`` folded into the first and last bins.

    Returns ``(sum_w, sum_w2, below, above)``: ``below``/``above`` count the entries folded in (NaN are dropped).
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    keep = ~np.isnan(values)
    values, weights = values[keep], weights[keep]
    below, above = int((values < edges[0]).sum()), int((values > edges[-1]).sum())
    clipped = np.clip(values, edges[0], edges[-1])
    sum_w, _ = np.histogram(clipped, bins=edges, weights=weights)
    sum_w2, _ = np.histogram(clipped, bins=edges, weights=weights**2)
    return sum_w, sum_w2, below, above


def weighted_correlation(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns of ``values`` (events × variables), each event counted with its weight."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    centred = values - (weights @ values) / weights.sum()
    covariance = (centred * weights[:, None]).T @ centred
    scale = np.sqrt(np.diag(covariance))
    with np.errstate(invalid="ignore", divide="ignore"):
        return covariance / np.outer(scale, scale)


def input_edges(values: np.ndarray, bins: int = 30) -> np.ndarray:
    """Bin edges for an input: one bin per integer for small integer ranges, else its central 99 % in ``bins``."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return np.linspace(0, 1, bins + 1)
    low, high = float(finite.min()), float(finite.max())
    if np.all(finite == np.round(finite)) and high - low <= bins:
        return np.arange(low - 0.5, high + 1.0, 1.0)
    low, high = np.percentile(finite, [0.5, 99.5])
    return np.linspace(low, high if high > low else low + 1, bins + 1)


def hyperparameter_label(hyperparameters: Mapping[str, object], names: Sequence[str], per_line: int = 3) -> str:
    """``name=value`` for the named hyperparameters, ``per_line`` to a line: what tells curves apart in a legend."""
    items = [f"{name}={hyperparameters.get(name)}" for name in names]
    return "\n".join(", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line))


def _heatmap_ticks(axis) -> None:
    """Cells are labelled: no minor ticks, and no ticks on the far sides (the HEP style mirrors them)."""
    axis.minorticks_off()
    axis.tick_params(top=False, right=False)


# --- figures ------------------------------------------------------------------------------------------------------


MAX_CATEGORIES = 8  # more distinct numeric values than this (a searched range): a scatter, not one box per value


def _numeric(column) -> bool:
    return column.dropna().dtype.kind in "iuf"


def is_continuous(column) -> bool:
    """A numeric frame column with more distinct values than a box plot or heatmap can show side by side."""
    return _numeric(column) and column.dropna().nunique() > MAX_CATEGORIES


def _value_axis(axis, column, which: str) -> None:
    """Positive values spanning more than a decade (a learning rate) on a log axis."""
    values = np.asarray(column.dropna(), dtype=float)
    if len(values) and values.min() > 0 and values.max() / values.min() > 10:
        (axis.set_xscale if which == "x" else axis.set_yscale)("log")


@_hep
def hyperparameter_effects(frame, parameters: Sequence[str], criterion: str, directory: Path) -> list[Path]:
    """One plot per varied hyperparameter, one per pair. Few values: criterion per value (boxes) and a heatmap of
    the mean criterion per pair. A searched range (many values): the criterion against the value, and a pair as a
    scatter of the two values coloured by the criterion."""
    import seaborn as sns

    plt = _pyplot()
    paths = []
    for name in parameters:
        figure, axis = plt.subplots(figsize=(6, 4.5))
        column = f"hp_{name}"
        if is_continuous(frame[column]):
            axis.scatter(frame[column], frame[criterion], color="#08306b", s=20)
            _value_axis(axis, frame[column], "x")
        else:
            order = sorted(frame[column].dropna().unique(), key=lambda v: (str(type(v)), v))
            sns.boxplot(data=frame, x=column, y=criterion, order=order, ax=axis, color="#b3cde3", fliersize=0)
            sns.stripplot(data=frame, x=column, y=criterion, order=order, ax=axis, color="#08306b", size=5)
            axis.minorticks_off()
        axis.set_xlabel(name)
        axis.set_ylabel(criterion)
        paths.append(save_figure(figure, directory / f"hp_{name}.png"))
    for first, second in itertools.combinations(parameters, 2):
        x, y = frame[f"hp_{second}"], frame[f"hp_{first}"]
        if is_continuous(x) or is_continuous(y):
            figure, axis = plt.subplots(figsize=(6, 5))
            numeric = [_numeric(v) for v in (x, y)]
            points = axis.scatter(*(v if n else v.astype(str) for v, n in zip((x, y), numeric, strict=True)),
                                  c=frame[criterion], cmap="viridis", s=30)  # fmt: skip
            figure.colorbar(points, ax=axis, label=criterion)
            for values, which, is_numeric in ((x, "x", numeric[0]), (y, "y", numeric[1])):
                if is_numeric:
                    _value_axis(axis, values, which)
        else:
            table = frame.pivot_table(index=f"hp_{first}", columns=f"hp_{second}", values=criterion, aggfunc="mean")
            figure, axis = plt.subplots(figsize=(6, 5))
            sns.heatmap(table, annot=True, fmt=".3g", cmap="viridis", ax=axis, cbar_kws={"label": f"mean {criterion}"})
            _heatmap_ticks(axis)
        axis.set_xlabel(second)
        axis.set_ylabel(first)
        paths.append(save_figure(figure, directory / f"pair_{first}__{second}.png"))
    return paths


@_hep
def learning_curves(histories: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> Path:
    """Training (dashed) and validation (solid) loss per epoch; ``histories`` maps a legend label to a history."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, history), color in zip(histories.items(), itertools.cycle(colors)):
        loss, val_loss = list(history.get("loss", [])), list(history.get("val_loss", []))
        axis.plot(np.arange(1, len(loss) + 1), loss, color=color, linestyle="--", alpha=0.8)
        axis.plot(np.arange(1, len(val_loss) + 1), val_loss, color=color, label=label)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.xaxis.set_minor_locator(MaxNLocator(integer=True, nbins="auto", steps=[1]))
    axis.set_xlabel("epoch")
    axis.set_ylabel("weighted loss")
    handles, labels = axis.get_legend_handles_labels()
    handles += [Line2D([], [], color="black", linestyle="--"), Line2D([], [], color="black")]
    labels += ["training", "validation"]
    axis.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: curves stay visible
    return save_figure(figure, path)


@_hep
def roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path, title: str = "") -> Path:
    """Weighted ROC curves (signal vs background efficiency); ``curves`` maps a label to labels, scores, weights."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 6))
    for label, (truth, scores, weights) in curves.items():
        fpr, tpr, _ = metrics.weighted_roc(truth, scores, weights)
        auc = metrics.weighted_auc(truth, scores, weights)
        axis.plot(fpr, tpr, label=f"{label}: AUC = {auc:.4f}")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel(r"background efficiency $\varepsilon_b$")
    axis.set_ylabel(r"signal efficiency $\varepsilon_s$")
    axis.legend(loc="lower right", title=title or None, title_fontsize="x-small")
    return save_figure(figure, path)


@_hep
def rejection(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path, title: str = "") -> Path:
    """Background rejection 1/ε_b (log scale) against signal efficiency, from the same inputs as :func:`roc`."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 6))
    for label, (truth, scores, weights) in curves.items():
        fpr, tpr, _ = metrics.weighted_roc(truth, scores, weights)
        defined = fpr > 0  # no background left: rejection infinite, nothing to draw
        auc = metrics.weighted_auc(truth, scores, weights)
        axis.plot(tpr[defined], 1.0 / fpr[defined], label=f"{label}: AUC = {auc:.4f}")
    axis.set_yscale("log")
    axis.set_xlim(0, 1)
    axis.set_xlabel(r"signal efficiency $\varepsilon_s$")
    axis.set_ylabel(r"background rejection $1/\varepsilon_b$")
    axis.legend(loc="upper right", title=title or None, title_fontsize="x-small")
    return save_figure(figure, path)


@_hep
def overtraining(
    scores_by_class: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], path: Path, score_name: str = "score"
) -> Path:
    """Score distributions per class, each normalised to unit area: training filled, test as points with
    sqrt(Σw²) error bars; the legend gives the weighted KS p-value of training vs test."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 5.5))
    edges = np.linspace(0, 1, 31)
    centres = 0.5 * (edges[1:] + edges[:-1])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, parts), color in zip(scores_by_class.items(), itertools.cycle(colors)):
        (train_scores, train_weights), (test_scores, test_weights) = parts["train"], parts["test"]
        _, p_value = metrics.weighted_ks(train_scores, test_scores, train_weights, test_weights)
        train_w, _, _, _ = folded_histogram(train_scores, train_weights, edges)
        axis.stairs(train_w / train_w.sum(), edges, fill=True, alpha=0.35, color=color, label=f"{name} training")
        test_w, test_w2, _, _ = folded_histogram(test_scores, test_weights, edges)
        total = test_w.sum()
        axis.errorbar(centres, test_w / total, yerr=np.sqrt(test_w2) / abs(total), fmt="o", color=color,
                      markersize=4, capsize=0, label=f"{name} test (KS p = {p_value:.3f})")  # fmt: skip
    axis.set_xlim(0, 1)
    axis.set_xlabel(score_name)
    axis.set_ylabel("fraction of events / 0.033")
    axis.legend(loc="upper center")
    axis.set_ylim(top=axis.get_ylim()[1] * 1.35)  # room for the legend
    return save_figure(figure, path)


@_hep
def significance(scan: metrics.SignificanceScan | None, path: Path, reason: str | None = None) -> Path:
    """Asimov significance against the score cut, the best allowed cut marked and the MC-statistics guard stated;
    cuts the guard refuses (too few background MC events, too large an MC error) are drawn faint. Without physical
    yields (``scan`` None) the plot says why instead of showing a number."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    if scan is None:
        axis.text(0.5, 0.5, f"Z not computed:\n{reason}", ha="center", va="center", wrap=True, fontsize=11,
                  transform=axis.transAxes)  # fmt: skip
        axis.set_title("Asimov significance: not computed", fontsize=12)
    else:
        trusted = np.where(scan.allowed, scan.z, np.nan)
        axis.plot(scan.thresholds, scan.z, color="C0", alpha=0.3, linestyle="--",
                  label="cuts refused: too little background MC")  # fmt: skip
        axis.plot(scan.thresholds, trusted, color="C0", label="Asimov $Z$ (physical yields, test split)")
        if scan.best is not None:
            best = scan.best
            axis.axvline(scan.thresholds[best], color="grey", linestyle=":",
                         label=f"$Z_{{max}}$ = {scan.z[best]:.3g} at score ≥ {scan.thresholds[best]:.2f}: "
                               f"s {scan.signal[best]:.3g}, b {scan.background[best]:.3g}")  # fmt: skip
        axis.legend(loc="best", fontsize=9)
        axis.set_title(f"guard: {scan.guard()}", fontsize=10)
    axis.set_xlabel("score cut")
    axis.set_ylabel(r"Asimov significance $Z$ [$\sigma$]")
    return save_figure(figure, path)


@_hep
def confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    import seaborn as sns

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 5))
    sns.heatmap(matrix, annot=True, fmt=".2f", xticklabels=class_names, yticklabels=class_names, ax=axis,
                cmap="Blues", vmin=0, vmax=1, cbar_kws={"label": "weighted fraction of the true class"})  # fmt: skip
    _heatmap_ticks(axis)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    return save_figure(figure, path)


@_hep
def input_distributions(frame, feature_names: Sequence[str], path: Path) -> Path:
    """Per-class distributions of each input, weighted and normalised to unit area (``frame`` has the inputs,
    ``class`` and ``weight``); under- and overflow are folded into the edge bins, and the plot says how many."""
    plt = _pyplot()
    columns = 4
    rows = int(np.ceil(len(feature_names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.3 * rows), squeeze=False,
                                layout="constrained")  # fmt: skip
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(frame.groupby("class"))
    for axis, name in zip(axes.flat, feature_names, strict=False):
        edges = input_edges(frame[name].to_numpy())
        folded = [0, 0]
        for (cls, part), color in zip(groups, itertools.cycle(colors)):
            sum_w, _, below, above = folded_histogram(part[name].to_numpy(), part["weight"].to_numpy(), edges)
            axis.stairs(sum_w / sum_w.sum(), edges, color=color, linewidth=1.5, label=str(cls))
            folded[0] += below
            folded[1] += above
        axis.set_xlabel(name, fontsize="small")
        axis.set_ylabel("fraction of events", fontsize="x-small")
        axis.tick_params(labelsize="xx-small")
        axis.minorticks_off()  # small panels: minor and mirrored ticks are clutter, and dominate the drawing time
        axis.tick_params(top=False, right=False)
        if any(folded):
            axis.text(0.97, 0.95, f"folded: {folded[0]} below, {folded[1]} above", transform=axis.transAxes,
                      ha="right", va="top", fontsize="xx-small", color="dimgrey")  # fmt: skip
        axis.set_ylim(top=axis.get_ylim()[1] * 1.25)
    for axis in list(axes.flat)[len(feature_names) :]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper center", ncols=len(labels), fontsize="small",
                  title=f"weighted, unit area; {FOLDED_NOTE}", title_fontsize="x-small")  # fmt: skip
    return save_figure(figure, path)


@_hep
def correlations(frame, feature_names: Sequence[str], path: Path, title: str, weight_column: str = "weight") -> Path:
    """Weighted linear correlations of the inputs (events weighted as in the input histograms)."""
    import seaborn as sns

    plt = _pyplot()
    names = list(feature_names)
    weights = frame[weight_column].to_numpy() if weight_column in frame else np.ones(len(frame))
    matrix = weighted_correlation(frame[names].to_numpy(), weights)
    size = max(6, 0.5 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size, size * 0.85))
    sns.heatmap(matrix, vmin=-1, vmax=1, cmap="RdBu_r", ax=axis, square=True, xticklabels=names, yticklabels=names,
                annot=len(names) <= 12, fmt=".2f", annot_kws={"fontsize": 8},
                cbar_kws={"label": "weighted correlation coefficient"})  # fmt: skip
    _heatmap_ticks(axis)
    axis.tick_params(labelsize="x-small")
    axis.tick_params(axis="y", labelrotation=0)
    axis.collections[0].colorbar.ax.yaxis.label.set_size("small")
    axis.set_title(title, loc="left", fontsize="small")
    return save_figure(figure, path)
