"""What a physicist sees: the live progress of a local run, the leaderboard's columns, and the figures drawn
(axes, scales, artists, error bars and folded bins checked against independent numpy/sklearn/scipy computations)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from hhscan.data import metrics
from hhscan.learning.records import DONE, TrialRecord
from hhscan.learning.training import EpochProgress
from hhscan.results import plots
from hhscan.results.views import RunProgress, leaderboard_table
from rich.console import Console


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def _folded_by_numpy(values, weights, edges):
    """Folding done another way: the outer edges moved to ±inf."""
    open_edges = np.r_[-np.inf, edges[1:-1], np.inf]
    return (np.histogram(values, open_edges, weights=weights)[0], np.histogram(values, open_edges, weights=weights**2)[0])


# --- pure helpers --------------------------------------------------------------------------------------------------


def test_folded_histogram_matches_numpy_with_open_edges(rng):
    values = rng.normal(0, 2, 500)
    weights = rng.uniform(-0.2, 1.5, 500)
    edges = np.linspace(-1, 1, 11)
    sum_w, sum_w2, below, above = plots.folded_histogram(values, weights, edges)
    expected_w, expected_w2 = _folded_by_numpy(values, weights, edges)
    np.testing.assert_allclose(sum_w, expected_w)
    np.testing.assert_allclose(sum_w2, expected_w2)
    assert (below, above) == (int(np.sum(values < -1)), int(np.sum(values > 1)))
    assert np.isclose(sum_w.sum(), weights.sum())  # nothing lost


def test_weighted_correlation_equals_corrcoef_of_repeated_events(rng):
    values = rng.normal(size=(200, 3))
    values[:, 1] += 0.7 * values[:, 0]
    counts = rng.integers(1, 5, 200)
    expected = np.corrcoef(np.repeat(values, counts, axis=0), rowvar=False)
    np.testing.assert_allclose(plots.weighted_correlation(values, counts.astype(float)), expected, atol=1e-12)
    # By hand for one pair, with non-integer weights.
    w = rng.uniform(0.1, 2, 200)
    x, y = values[:, 0], values[:, 1]
    mx, my = np.sum(w * x) / w.sum(), np.sum(w * y) / w.sum()
    r = np.sum(w * (x - mx) * (y - my)) / np.sqrt(np.sum(w * (x - mx) ** 2) * np.sum(w * (y - my) ** 2))
    assert np.isclose(plots.weighted_correlation(values, w)[0, 1], r)


def test_hyperparameter_label_names_values():
    label = plots.hyperparameter_label({"learning_rate": 0.01, "neurons": 8, "epochs": 5}, ["learning_rate", "neurons"])
    assert label == "learning_rate=0.01, neurons=8"


# --- figures ------------------------------------------------------------------------------------------------------


def _scores(rng, n=800):
    truth = rng.random(n) < 0.5
    scores = np.clip(rng.normal(0.35 + 0.3 * truth, 0.15), 0, 1)
    return truth, scores, rng.uniform(0.5, 1.5, n)


def test_roc_and_rejection_axes_and_curves(rng, tmp_path):
    from sklearn.metrics import roc_curve

    truth, scores, weights = _scores(rng)
    curves = {"training": (truth[:400], scores[:400], weights[:400]), "test": (truth[400:], scores[400:], weights[400:])}
    with plots.kept_figures() as figures:
        plots.roc(curves, tmp_path / "roc.png")
        plots.rejection(curves, tmp_path / "rejection.png")
    roc_axis, rejection_axis = (f.axes[0] for f in figures)
    assert roc_axis.get_xscale() == roc_axis.get_yscale() == "linear"
    assert len(roc_axis.lines) == 3  # two curves and the random line
    assert "background efficiency" in roc_axis.get_xlabel() and "signal efficiency" in roc_axis.get_ylabel()
    assert rejection_axis.get_yscale() == "log" and "1/" in rejection_axis.get_ylabel()
    assert "signal efficiency" in rejection_axis.get_xlabel()
    assert len(rejection_axis.lines) == 2
    fpr, tpr, _ = roc_curve(truth[400:], scores[400:], sample_weight=weights[400:], drop_intermediate=False)
    x, y = rejection_axis.lines[1].get_data()
    np.testing.assert_allclose(x, tpr[fpr > 0])
    np.testing.assert_allclose(y, 1 / fpr[fpr > 0])
    assert (tmp_path / "rejection.png").stat().st_size > 0


def test_overtraining_error_bars_are_sqrt_sum_w2_and_legend_has_ks(rng, tmp_path):
    from scipy.stats import ks_2samp

    truth, scores, weights = _scores(rng, 1200)
    train, test = slice(0, 700), slice(700, None)
    by_class = {}
    for k, name in ((0, "background"), (1, "signal")):
        a, b = truth[train] == k, truth[test] == k
        by_class[name] = {"train": (scores[train][a], np.ones(a.sum())), "test": (scores[test][b], weights[test][b])}
    with plots.kept_figures() as figures:
        plots.overtraining(by_class, tmp_path / "over.png", "P(signal)")
    axis = figures[0].axes[0]
    assert axis.get_xlabel() == "P(signal)" and axis.get_ylabel().startswith("fraction of events")
    containers = [c for c in axis.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(containers) == 2
    edges = np.linspace(0, 1, 31)
    for container, name in zip(containers, by_class, strict=True):
        test_scores, test_weights = by_class[name]["test"]
        sum_w, sum_w2 = _folded_by_numpy(test_scores, test_weights, edges)
        segments = container.lines[2][0].get_segments()
        half_heights = np.array([abs(s[1, 1] - s[0, 1]) / 2 for s in segments])
        np.testing.assert_allclose(half_heights, np.sqrt(sum_w2) / sum_w.sum(), rtol=1e-9)
        np.testing.assert_allclose(container.lines[0].get_ydata(), sum_w / sum_w.sum(), rtol=1e-9)
    labels = axis.get_legend_handles_labels()[1]
    assert all(re.fullmatch(rf"{n} test \(KS p = [01]\.\d{{3}}\)", t) for n, t in zip(by_class, labels[2:], strict=True))
    # With unit weights on both sides the legend's p-value is scipy's ks_2samp (asymptotic).
    same = {"c": {"train": (scores[train], np.ones(700)), "test": (scores[test], np.ones(500))}}
    with plots.kept_figures() as figures:
        plots.overtraining(same, tmp_path / "over1.png")
    label = figures[0].axes[0].get_legend_handles_labels()[1][1]
    expected = ks_2samp(scores[train], scores[test], method="asymp").pvalue
    assert label == f"c test (KS p = {expected:.3f})"


def test_input_distributions_fold_overflow_and_say_so(rng, tmp_path):
    n = 600
    frame = pd.DataFrame({"pt": np.maximum(rng.normal(20, 30, n), 0), "njet": rng.integers(2, 6, n), "eta": rng.normal(0, 1, n)})
    frame["class"] = np.where(rng.random(n) < 0.5, "signal", "background")
    frame["weight"] = rng.uniform(0.5, 1.5, n)
    with plots.kept_figures() as figures:
        plots.input_distributions(frame, ["pt", "njet", "eta"], tmp_path / "inputs.png")
    figure = figures[0]
    axes = figure.axes[:3]
    assert [a.get_xlabel() for a in axes] == ["pt", "njet", "eta"]
    assert all(not a.get_title() for a in figure.axes)  # names are axis labels: no titles to overlap
    assert plots.FOLDED_NOTE in figure.legends[0].get_title().get_text()
    for axis, name in zip(axes, ["pt", "njet", "eta"], strict=True):
        edges = plots.input_edges(frame[name].to_numpy())
        steps = [p for p in axis.patches if type(p).__name__ == "StepPatch"]
        assert len(steps) == 2  # one per class
        below = above = 0
        for step, (_, part) in zip(steps, frame.groupby("class"), strict=True):
            values, weights = part[name].to_numpy(), part["weight"].to_numpy()
            expected, _ = _folded_by_numpy(values, weights, edges)
            np.testing.assert_allclose(step.get_data().values, expected / weights.sum(), rtol=1e-9)
            below += int(np.sum(values < edges[0]))
            above += int(np.sum(values > edges[-1]))
        texts = [t.get_text() for t in axis.texts]
        if below or above:
            assert texts == [f"folded: {below} below, {above} above"]
    assert np.array_equal(plots.input_edges(frame["njet"].to_numpy()), np.arange(1.5, 6.0))  # one bin per integer
    assert axes[0].texts[0].get_text() == "folded: 0 below, 3 above"  # pt ≥ 0: nothing below its 0.5 % point


def test_correlation_plot_is_weighted(rng, tmp_path):
    n = 400
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    frame["weight"] = np.where(frame["a"] > 0, 5.0, 0.2)
    frame["b"] += np.where(frame["a"] > 0, frame["a"], 0)
    with plots.kept_figures() as figures:
        plots.correlations(frame, ["a", "b"], tmp_path / "corr.png", "signal")
    drawn = np.asarray(figures[0].axes[0].collections[0].get_array()).reshape(2, 2)
    counts = np.round(frame["weight"].to_numpy() * 5).astype(int)  # weights 5 and 0.2 as 25 and 1 copies
    expected = np.corrcoef(np.repeat(frame[["a", "b"]].to_numpy(), counts, axis=0), rowvar=False)
    np.testing.assert_allclose(drawn, expected, atol=1e-12)
    assert not np.isclose(drawn[0, 1], np.corrcoef(frame["a"], frame["b"])[0, 1], atol=0.02)
    assert figures[0].axes[0].get_title(loc="left") == "signal"


def test_learning_curves_integer_epochs_and_hyperparameter_legend(tmp_path):
    histories = {
        "#1 learning_rate=0.01": {"loss": [0.7, 0.5, 0.45], "val_loss": [0.72, 0.55, 0.5]},
        "#2 learning_rate=0.003": {"loss": [0.7, 0.6], "val_loss": [0.71, 0.65]},
    }
    with plots.kept_figures() as figures:
        plots.learning_curves(histories, tmp_path / "curves.png")
    axis = figures[0].axes[0]
    figures[0].canvas.draw()
    ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert len(axis.lines) == 4  # training and validation per trial
    assert axis.get_xlabel() == "epoch"
    labels = [t.get_text() for t in axis.get_legend().get_texts()]
    assert labels[:2] == list(histories) and labels[2:] == ["training", "validation"]


def test_hyperparameter_effects_show_a_searched_range_as_a_scatter_and_few_values_as_boxes(rng, tmp_path):
    n = 24
    frame = pd.DataFrame({
        "hp_learning_rate": 10 ** rng.uniform(-4, -1, n),  # a searched log range: 24 distinct values
        "hp_neurons": rng.choice([16, 32, 64], n),
        "hp_activation": rng.choice(["relu", "elu"], n),
        "val_auc": rng.uniform(0.6, 0.9, n),
    })  # fmt: skip
    with plots.kept_figures() as figures:
        paths = plots.hyperparameter_effects(frame, ["learning_rate", "neurons", "activation"], "val_auc", tmp_path)
    assert [p.name for p in paths] == ["hp_learning_rate.png", "hp_neurons.png", "hp_activation.png",
                                       "pair_learning_rate__neurons.png", "pair_learning_rate__activation.png",
                                       "pair_neurons__activation.png"]  # fmt: skip
    rate, neurons, _, rate_neurons, _, neurons_activation = (f.axes[0] for f in figures)
    # The range: one point per trial at its own value, on a log axis (not 24 boxes).
    np.testing.assert_allclose(rate.collections[0].get_offsets(), frame[["hp_learning_rate", "val_auc"]].to_numpy())
    assert rate.get_xscale() == "log" and not rate.patches
    # Three values: one box each, in order.
    assert [t.get_text() for t in neurons.get_xticklabels()] == ["16", "32", "64"] and neurons.get_xscale() == "linear"
    # A pair with the range: each trial at (neurons, learning rate), coloured by its val_auc.
    points = rate_neurons.collections[0]
    np.testing.assert_allclose(points.get_offsets(), frame[["hp_neurons", "hp_learning_rate"]].to_numpy())
    np.testing.assert_allclose(points.get_array(), frame["val_auc"])
    assert rate_neurons.get_yscale() == "log" and rate_neurons.get_xscale() == "linear"
    # Two categorical parameters: the heatmap of the mean per cell, as numpy computes it.
    cells = neurons_activation.collections[0].get_array().reshape(3, 2)
    for i, width in enumerate([16, 32, 64]):
        for j, activation in enumerate(["elu", "relu"]):
            chosen = (frame["hp_neurons"] == width) & (frame["hp_activation"] == activation)
            expected = frame["val_auc"][chosen].mean() if chosen.any() else np.nan
            np.testing.assert_allclose(cells[i, j], expected)


def test_significance_axes_mark_the_best_trusted_cut_and_state_the_guard(tmp_path):
    # Background yields falling with the cut; above 0.6 only one background event passes (a spike of Z).
    thresholds = np.linspace(0, 1, 11)
    scores = np.r_[np.linspace(0, 1, 200), np.linspace(0, 0.55, 300), [0.75]]
    labels = np.r_[np.ones(200, bool), np.zeros(301, bool)]
    weights = np.r_[np.full(200, 0.2), np.full(300, 1.0), [0.01]]
    scan = metrics.significance_scan(labels, scores, weights, thresholds, min_background_events=10,
                                     max_background_error=0.5, background_uncertainty=0.1)  # fmt: skip
    with plots.kept_figures() as figures:
        plots.significance(scan, tmp_path / "z.png")
    axis = figures[0].axes[0]
    assert axis.get_xlabel() == "score cut" and "significance" in axis.get_ylabel()
    # The best cut by hand: the largest Z among cuts keeping ≥ 10 background events (0.6 and above keep one).
    trusted = [k for k, cut in enumerate(thresholds) if ((scores >= cut) & ~labels).sum() >= 10]
    best = max(trusted, key=lambda k: scan.z[k])
    s, b = weights[(scores >= thresholds[best]) & labels].sum(), weights[(scores >= thresholds[best]) & ~labels].sum()
    legend = [t.get_text() for t in axis.get_legend().get_texts()]
    assert f"$Z_{{max}}$ = {scan.z[best]:.3g} at score ≥ {thresholds[best]:.2f}: s {s:.3g}, b {b:.3g}" in legend
    assert np.argmax(scan.z) > best  # the spike the guard refuses
    assert axis.get_title() == "guard: ≥ 10 bkg MC events, bkg MC error ≤ 50%, σ_b = 10%·b"


# --- console ------------------------------------------------------------------------------------------------------


def _record(trial_id: str, epochs: int = 3, hp: dict | None = None) -> TrialRecord:
    return TrialRecord(trial_id=trial_id, status=DONE, repetition=0, hyperparameters=hp or {},
                       criterion="val_auc", value=0.8, metrics={"val_auc": 0.8, "train_auc": 0.82},
                       epochs_run=epochs)  # fmt: skip


def test_single_trial_leaderboard_columns_are_unique_and_named():
    records = {"a": _record("a", epochs=3, hp={"epochs": 5, "neurons": 8})}
    table = leaderboard_table("one", "val_auc", records)
    headers = [str(c.header) for c in table.columns]
    assert len(headers) == len(set(headers))
    assert headers == ["rank", "trial", "epochs", "neurons", "val_auc", "train_auc", "epochs run"]
    cells = {str(c.header): c._cells[0] for c in table.columns}
    assert cells["epochs"] == "5" and cells["epochs run"] == "3"


def _epoch(epoch, active, best, ids=("t1", "t2")):
    return EpochProgress(trial_ids=list(ids), epoch=epoch, epochs=4, active=list(active), seconds_per_epoch=0.5,
                         monitor="val_auc", best=list(best))  # fmt: skip


def test_run_progress_ticks_trials_that_stop_early_once():
    console = Console(record=True, width=150, force_terminal=False)
    with RunProgress(console, total=2) as view:
        view.epoch(_epoch(1, [True, True], [0.6, 0.7]))
        view.epoch(_epoch(2, [True, False], [0.65, 0.72]))
        assert view.progress.tasks[0].completed == 1  # t2 stopped early: counted now
        view.trial_done(_record("t1"))
        view.trial_done(_record("t2"))
        assert view.progress.tasks[0].completed == 2  # not twice
    text = console.export_text()
    lines = text.splitlines()
    assert lines[0] == "pack 1 (2 trials) epoch 1/4  0.50 s/epoch  ETA 0:02  best val_auc 0.7"
    assert "t2 stopped early after epoch 2/4" in lines
    assert lines[2] == "pack 1 (2 trials) epoch 2/4  0.50 s/epoch  ETA 0:01  best val_auc 0.72, 1 stopped early"


@pytest.fixture
def tiny(analysis):
    analysis.edit_parameters(hyperparameters={"epochs": [3]})
    return analysis


def test_run_in_a_terminal_shows_the_epoch_counter_before_the_first_trial_ends(tiny, capsys, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich treats the captured stream as a terminal
    monkeypatch.setenv("COLUMNS", "160")
    code, out, err = run_cli(["run", "--local", "--name", "live"], tiny.root, capsys, monkeypatch)
    assert code == 0, err
    first_trial = re.search(r"[0-9a-f]{12} val_auc=", out).start()
    counters = [m.start() for m in re.finditer(r"epoch (\d)/3", out)]
    seen = [int(m.group(1)) for m in re.finditer(r"epoch (\d)/3", out[:first_trial])]
    assert counters and seen[:1] == [1] and 3 in seen  # it advanced, epoch by epoch, before any trial ended
    assert "\x1b[" in out  # redrawn in place, not printed line by line
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert "next: hhscan report live" in plain and "hhscan test --model best" in plain
    assert re.search(r"pack 1 epoch 3/3 +━+ +0\.\d\d s/epoch", plain) and not re.search(r"^pack 1 \(2 trials\) epoch", plain, re.M)  # a bar, not lines
    # `hhscan test` says which long step it is in.
    assert run_cli(["report", "live", "--no-plots"], tiny.root, capsys, monkeypatch)[0] == 0
    code, out, err = run_cli(["test"], tiny.root, capsys, monkeypatch)
    assert code == 0, err
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    # A spinner redraws at most 12 times a second: the long steps are on screen, the quick ones may not be (loading
    # the model is quick once Keras is imported in this process; the order of all steps is checked below).
    assert "plotting input distributions" in plain
    assert "plots: models/live_best/" in plain
    from hhscan.execution.scandir import Workspace
    from hhscan.results.apply import apply_model

    steps: list[str] = []
    apply_model(Workspace(tiny.root), "best", directory=tiny.root / "again", on_step=steps.append, plots=False)
    assert [step.split(" ")[0] for step in steps] == ["loading", "reading", "scoring"] + ["writing"] * 5  # one per sample
    assert steps[2] == "scoring 1620 events"  # every event used: 365 + 185 + 352 + 363 + 355 in the samples table


def test_run_in_a_log_prints_one_line_per_epoch_per_pack(tiny, capsys, monkeypatch):
    code, out, err = run_cli(["run", "--local", "--name", "log"], tiny.root, capsys, monkeypatch)
    assert code == 0, err
    epoch_lines = [line for line in out.splitlines() if re.match(r"pack \d+ \(\d+ trials?\) epoch", line)]
    assert [line.split(" epoch ")[1].split()[0] for line in epoch_lines] == ["1/3", "2/3", "3/3"]
    assert "\x1b[" not in out and "\r" not in out  # no redraws in a log
    assert out.rstrip().splitlines()[-1].startswith("next: hhscan report log")


def test_the_sample_table_shows_a_luminosity_only_where_a_yield_uses_one():
    from hhscan.data.dataset import SampleSummary
    from hhscan.results.views import print_summaries
    from rich.console import Console

    common = {"class_name": "background", "era": None, "entries": 10, "selected": 8, "dropped_non_positive": 1,
              "used": 7}  # fmt: skip
    summaries = [SampleSummary(name="with_xsec", file="a.root", xsec=831.8, event_weight_sum=1e6, lumi=36.3,
                               expected_events=30.2, **common),
                 SampleSummary(name="without", file="b.root", xsec=None, event_weight_sum=None, lumi=1.0, **common)]  # fmt: skip
    console = Console(record=True, width=250)
    print_summaries(console, summaries, "jax")
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in console.export_text().splitlines() if line.startswith("│")}  # fmt: skip
    assert rows["with_xsec"][5] == "36.3" and rows["without"][5] == "–"  # lumi [pb-1]
