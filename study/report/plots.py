"""The study's figures as PNG: training curves, task weights, confusion matrices, Optuna.

Every figure is a plain `matplotlib.figure.Figure` (no pyplot state, no display needed; PNG
goes through Agg) of a fixed size, so that a report's images line up and tests can check
them. Each function draws from the long tables of epochs.parquet and returns the path it
wrote. Optuna's own figures are pyplot figures; they are resized, relabelled and closed here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mtl import INTENSITIES, PATTERNS

DPI = 100
# Width, height in inches; at DPI these are the PNGs' sizes in pixels (x 100).
SIZES = {
    "curves": (12.0, 7.0),
    "weights": (12.0, 4.8),
    "confusion": (12.0, 10.0),
    "optuna": (9.0, 5.5),
    "intervals": (11.0, 6.0),
    "recall": (12.0, 5.0),
    "front": (15.0, 6.5),
}
VERDICT_COLOURS = {
    "best": "tab:green",
    "better": "tab:purple",  # better than the best on shared folds (a circle of missing folds)
    "equivalent": "tab:blue",
    "undecided": "tab:orange",
    "worse": "tab:red",
}
# One panel column per task: (title, loss column, accuracy column, accuracy title).
TASK_PANELS = (
    ("segmentation", "loss_seg", "pixel_acc", "pixel accuracy"),
    ("pattern", "loss_pattern", "pattern_acc", "pattern accuracy"),
    ("intensity", "loss_intensity", "intensity_acc", "intensity accuracy"),
)
WEIGHTS = {
    "weight_seg": "segmentation",
    "weight_pattern": "pattern",
    "weight_intensity": "intensity",
}
SPLIT_STYLE = {"train": {"linestyle": "--", "color": "tab:blue"}, "val": {"color": "tab:orange"}}
ACCURACY_LIMITS = (0.0, 1.02)  # the same scale in every figure, so configurations compare
LINE_STYLES = ("-", "--", ":", "-.")
CMAP = colormaps["Blues"].with_extremes(bad="lightgrey")  # grey: a class without examples


def _figure(kind: str, **kwargs) -> Figure:
    return Figure(figsize=SIZES[kind], dpi=DPI, layout="constrained", **kwargs)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": it would change the size
    return path


def _epoch_axis(ax, last: int) -> None:
    """Whole epochs only, and a sensible range even for a trial pruned after one epoch."""
    ax.set_xlim(0.5, max(int(last), 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)


def training_curves(epochs: pd.DataFrame, title: str, path: Path) -> Path:
    """Loss (top) and accuracy (bottom) per task over the epochs of ONE trial; train dashed,
    validation solid; the line is the mean over folds, the band their minimum and maximum."""
    fig = _figure("curves")
    axes = fig.subplots(2, len(TASK_PANELS), sharex=True)
    folds = epochs.fold.nunique()
    for column, (task, loss, accuracy, accuracy_title) in enumerate(TASK_PANELS):
        for row, metric in enumerate((loss, accuracy)):
            ax = axes[row, column]
            for split, style in SPLIT_STYLE.items():
                stats = (
                    epochs[epochs.split == split]
                    .groupby("epoch")[metric]
                    .agg(["mean", "min", "max"])
                )
                if stats.empty:
                    continue
                ax.plot(stats.index, stats["mean"], marker="o", markersize=3, label=split, **style)
                band = (stats.index, stats["min"], stats["max"])
                ax.fill_between(*band, color=style["color"], alpha=0.2)
            _epoch_axis(ax, epochs.epoch.max())
        axes[0, column].set_title(f"{task} loss")
        axes[1, column].set_title(accuracy_title)
        axes[1, column].set_ylim(*ACCURACY_LIMITS)
        axes[0, column].set_ylim(bottom=0)
        axes[1, column].set_xlabel("epoch")
    axes[0, 0].set_ylabel("loss (mean per patch)")
    axes[1, 0].set_ylabel("accuracy (fraction)")
    handles, labels = axes[1, 0].get_legend_handles_labels()
    bands = f"band: min-max over {folds} folds" if folds > 1 else "one fold"
    names = {"train": "training (running mean over the epoch)", "val": "validation (after it)"}
    labels = [names.get(text, text) for text in labels]
    fig.legend(handles, labels, loc="outside lower center", ncols=2, title=bands)
    fig.suptitle(f"{title}\nmean over {folds} folds per epoch")
    return _save(fig, path)


def task_weights(epochs: pd.DataFrame, labels: Mapping[str, str], title: str, path: Path) -> Path:
    """The balancer's task weights per epoch, one panel per task, one line per trial (mean
    over folds). Weights are logged once per epoch and repeated on both splits: use train."""
    fig = _figure("weights")
    axes = fig.subplots(1, len(WEIGHTS), sharey=True)
    train = epochs[epochs.split == "train"]
    for ax, (column, task) in zip(axes, WEIGHTS.items(), strict=True):
        for i, (trial_id, label) in enumerate(labels.items()):
            mean = train[train.trial_id == trial_id].groupby("epoch")[column].mean()
            # Equal weights coincide; a line style per trial keeps every line in sight.
            style = LINE_STYLES[i % len(LINE_STYLES)]
            ax.plot(mean.index, mean.to_numpy(), style, marker="o", markersize=3, label=label)
        ax.set_title(f"{task} weight")
        ax.set_xlabel("epoch")
        _epoch_axis(ax, train.epoch.max())
    axes[0].set_ylabel("task weight (dimensionless)")
    axes[0].set_ylim(bottom=0)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 3), fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def confusion_matrix(
    cells: pd.DataFrame, level: str, task: str, labels: tuple[str, ...]
) -> np.ndarray:
    """One matrix of confusions.parquet's `cells` (rows true, columns predicted), summed."""
    cells = cells[(cells.level == level) & (cells.task == task)]
    counts = cells.groupby(["true", "predicted"])["count"].sum()
    return np.array([[int(counts.get((t, p), 0)) for p in labels] for t in labels], dtype=np.int64)


# Panels of the confusion figure: (level, task, labels, level's name, what is counted).
CONFUSION_PANELS = (
    ("patch", "pattern", PATTERNS, "patch level", "patches"),
    ("patch", "intensity", INTENSITIES, "patch level", "patches"),
    ("patient", "pattern", PATTERNS, "patient level, majority vote", "patients"),
    ("patient", "intensity", INTENSITIES, "patient level, majority vote", "patients"),
)


def confusion_matrices(cells: pd.DataFrame, title: str, path: Path) -> Path:
    """Pattern and intensity confusion at patch and patient level, summed over `cells` (rows
    of confusions.parquet: one validation epoch per fold). Colour: the fraction of the true
    class (rows sum to 1), so small classes stay visible; numbers: the counts."""
    fig = _figure("confusion")
    axes = fig.subplots(2, 2, gridspec_kw={"width_ratios": [len(PATTERNS), 3]})
    image = None
    for ax, (level_key, task, labels, level, unit) in zip(axes.flat, CONFUSION_PANELS, strict=True):
        counts = confusion_matrix(cells, level_key, task, labels)
        support = counts.sum(1, keepdims=True)
        # A class without examples in these folds (golgi in fold A) has no fraction: grey.
        fraction = np.divide(counts, support, out=np.full(counts.shape, np.nan), where=support > 0)
        image = ax.imshow(fraction, cmap=CMAP, vmin=0, vmax=1)
        for (t, p), count in np.ndenumerate(counts):
            colour = "white" if fraction[t, p] > 0.5 else "black"
            ax.text(p, t, str(count), ha="center", va="center", color=colour, fontsize=9)
        ticks = range(len(labels))
        ax.set_xticks(ticks, labels, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(ticks, labels)
        ax.set_xlabel(f"predicted {task}")
        ax.set_ylabel(f"true {task}")
        ax.set_title(f"{task}, {level}\n(counts: {unit}, {int(counts.sum())} in all)", fontsize=10)
    fig.colorbar(
        image, ax=axes, shrink=0.6, label="fraction of the true class (row); grey: no examples"
    )
    fig.suptitle(title)
    return _save(fig, path)


def score_intervals(
    per_fold: pd.DataFrame,
    stats: pd.DataFrame,
    labels: Mapping[str, str],
    ratio: float,
    title: str,
    path: Path,
    metric: str = "score",
) -> Path:
    """Each configuration's `metric`: its per-fold values (dots), the mean and its 95%
    interval (corrected for the overlap of cross-validation training sets: the t quantile
    times sd * sqrt(1/n + ratio)), sorted best first and coloured by the verdict of its
    paired comparison with the best; a dashed line at the best's mean."""
    from scipy import stats as scipy_stats

    rows = stats[stats.metric == metric].sort_values("mean", ascending=True)
    fig = _figure("intervals")
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # jitter only: the same picture every time
    for y, row in enumerate(rows.itertuples()):
        values = per_fold.loc[per_fold.trial_id == row.trial_id, metric].dropna().to_numpy()
        colour = VERDICT_COLOURS.get(row.verdict, "black")
        jitter = rng.uniform(-0.15, 0.15, len(values))
        ax.scatter(values, y + jitter, s=14, color="grey", alpha=0.7, zorder=2)
        n = len(values)
        if n > 1:
            half = scipy_stats.t.ppf(0.975, n - 1) * values.std(ddof=1) * np.sqrt(1 / n + ratio)
            ax.errorbar(row.mean, y, xerr=half, fmt="o", color=colour, capsize=4, zorder=3)
        else:
            ax.plot(row.mean, y, "o", color=colour, zorder=3)
    best = rows[rows.is_best]
    if len(best):
        ax.axvline(best["mean"].iloc[0], linestyle="--", color="tab:green", alpha=0.6)
    ax.set_yticks(range(len(rows)), [labels.get(t, t) for t in rows.trial_id], fontsize=8)
    ax.set_xlabel(f"{metric} (fraction); dots: folds; bar: 95% interval of the mean")
    ax.grid(axis="x", alpha=0.3)
    handles = [
        ax.errorbar([], [], xerr=[], fmt="o", color=c, label=v) for v, c in VERDICT_COLOURS.items()
    ]
    ax.legend(handles=handles, title="against the best", loc="lower right", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def pattern_recall(
    selected: pd.DataFrame, labels: Mapping[str, str], title: str, path: Path
) -> Path:
    """Recall of every pattern for each configuration in `labels` (in that order): the mean
    over folds as a bar, the folds' spread (min to max) as a line."""
    fig = _figure("recall")
    ax = fig.subplots()
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(PATTERNS))
    for i, (trial_id, label) in enumerate(labels.items()):
        rows = selected[selected.trial_id == trial_id]
        recall = rows[[f"recall_{p}" for p in PATTERNS]]
        offset = x - 0.4 + width * (i + 0.5)
        ax.bar(offset, recall.mean().to_numpy(), width, label=label)
        ax.vlines(offset, recall.min().to_numpy(), recall.max().to_numpy(), color="black", lw=1)
    ax.set_xticks(x, PATTERNS)
    ax.set_ylim(*ACCURACY_LIMITS)
    ax.set_ylabel("recall (fraction of the class's patches)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title)
    return _save(fig, path)


def optuna_figures(study, out: Path) -> tuple[list[Path], list[str]]:
    """Intermediate values, history, parameter importances and parallel coordinates of an
    Optuna study; returns the PNGs written and a note for every figure that could not be
    drawn."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis

    if len(study.directions) != 1:
        return [], ["the Optuna study has several objectives: no figures drawn"]
    objective = (study.metric_names or ["cv_score"])[0]  # what study.run optimises
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    params = {name for t in complete for name in t.params}
    # name -> (plot function, the least number of completed trials, title, x label, y label)
    figures = {
        "optuna_intermediate": (vis.plot_intermediate_values, 1,
                                "intermediate values (every trial, pruned ones included)",
                                "epoch", f"{objective} (fraction)"),
        "optuna_history": (vis.plot_optimization_history, 1, "optimisation history",
                           "trial number", f"{objective} (fraction)"),
        "optuna_importances": (vis.plot_param_importances, 2, "parameter importances (fANOVA)",
                               f"importance for {objective} (fraction, sums to 1)", "parameter"),
        "optuna_parallel": (vis.plot_parallel_coordinate, 1, "parallel coordinates",
                            "parameter", f"{objective} (fraction)"),
    }  # fmt: skip
    paths, notes = [], []
    reported = [t for t in study.trials if t.intermediate_values]
    for name, (plot, least, title, xlabel, ylabel) in figures.items():
        if name == "optuna_intermediate":
            if not reported:
                notes.append(f"{title}: no trial reported an intermediate value")
                continue
        elif len(complete) < least or not params:
            notes.append(
                f"{title}: needs {least} completed trials with parameters, "
                f"the study has {len(complete)}"
            )
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings on every call
                ax = plot(study)
        except (ValueError, RuntimeError) as error:  # e.g. a parameter that never varied
            notes.append(f"{title}: not drawn ({error})")
            continue
        fig = ax.figure
        fig.set_size_inches(*SIZES["optuna"])
        _relabel_optuna(fig, ax, {"Objective Value": objective, "Best Value": "best so far"})
        ax.set_title(f"Optuna study {study.study_name}: {title}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        paths.append(_save(fig, out / f"{name}.png"))
        plt.close(fig)
    return paths, notes


def _relabel_optuna(fig, ax, names: Mapping[str, str]) -> None:
    """Optuna's figures say "Objective Value" (legends, colour bars, axis ticks) and put a
    second title on the left, which overlaps ours: name the objective, drop the title."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        if text.get_text() in names:
            text.set_text(names[text.get_text()])
    ticks = [t.get_text() for t in ax.get_xticklabels()]  # set by a formatter, not Text yet
    if any(t in names for t in ticks):
        ax.set_xticks(ax.get_xticks(), [names.get(t, t) for t in ticks])
    for loc in ("left", "right"):
        ax.set_title("", loc=loc)
    if ax.get_legend() is not None and len(ax.get_legend().get_texts()) < 2:
        ax.get_legend().remove()  # one entry (importances): the axis label says it
    if ax.get_xlabel() == "Trial":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers are integers
    for collection in ax.collections:
        # Parallel coordinates colour lines with Blues: the worst trials were white on grey.
        if collection.get_array() is not None:
            collection.set_cmap("viridis")


def task_front(front: pd.DataFrame, labels: Mapping[str, str], title: str, path: Path) -> Path:
    """One panel per pair of tasks: each configuration at its means with their 95% intervals
    (front.parquet), the front of that pair's means drawn as a staircase, configurations off
    the front of all tasks in grey, established dominated ones in light grey."""
    tasks = list(dict.fromkeys(front.task))
    metric = dict(zip(front.task, front.metric, strict=False))
    wide = {c: front.pivot(index="trial_id", columns="task", values=c) for c in
            ("mean", "ci_low", "ci_high")}  # fmt: skip
    state = front.groupby("trial_id")[["on_front", "established_dominated"]].first()
    pairs = [(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1 :]]
    fig = _figure("front")
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    # Numbers on the points, the labels in the legend: labels are too long to sit beside.
    numbers = {trial: k for k, trial in enumerate(wide["mean"].index, 1)}
    colours = {
        trial: "tab:blue" if state.loc[trial, "on_front"]
        else ("lightgrey" if state.loc[trial, "established_dominated"] else "grey")
        for trial in numbers
    }  # fmt: skip
    for ax, (x, y) in zip(axes, pairs, strict=True):
        for trial in wide["mean"].index:
            on, colour = state.loc[trial, "on_front"], colours[trial]
            mx, my = wide["mean"].at[trial, x], wide["mean"].at[trial, y]
            xerr = [[mx - wide["ci_low"].at[trial, x]], [wide["ci_high"].at[trial, x] - mx]]
            yerr = [[my - wide["ci_low"].at[trial, y]], [wide["ci_high"].at[trial, y] - my]]
            ax.errorbar(mx, my, xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt="o",
                        color=colour, capsize=3, zorder=3 if on else 2)  # fmt: skip
            ax.annotate(str(numbers[trial]), (mx, my), fontsize=8, color=colour,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
        # The front of this pair's means (both higher is better): a staircase.
        points = wide["mean"][[x, y]].dropna().sort_values(x, ascending=False).to_numpy()
        stairs, best_y = [], -np.inf
        for px, py in points:
            if py > best_y:
                stairs.append((px, py))
                best_y = py
        if stairs:
            xs, ys = zip(*stairs, strict=True)
            ax.step(xs, ys, where="post", color="tab:blue", alpha=0.4)
        ax.set_xlabel(f"{x}: {metric[x]}")
        ax.set_ylabel(f"{y}: {metric[y]}")
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], linestyle="none", marker=f"${k}$", markersize=9, color=colours[trial],
               label=labels.get(trial, trial))
        for trial, k in numbers.items()
    ]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
