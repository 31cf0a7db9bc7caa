"""The numbers of a study's report, pure pandas: which epoch of each fold, per-fold tables,
the comparison of configurations, their labels, the stopped trials, the original study side
by side, and the results folder they come from. study/report/render.py turns them into text,
study/report/document.py into report.md, CSVs and figures.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from mtl import SCORE_METRICS, TASK_HEADLINES, TASKS, TrainConfig
from study.stats import compare_to_best
from study.stats.selection import (
    level_metrics,
    task_counts,
    voted_column,
)

# Every metric with its level in its name, for tables that mix levels.
METRIC_TITLES = {
    "score": "score (mean of pixel, pattern, intensity acc.)",
    "pixel_acc": "pixel accuracy",
    "dice": "Dice (cells)",
    "iou": "IoU (cells)",
    "pattern_acc": "pattern accuracy",
    "pattern_mca": "pattern mean class acc.",
    "intensity_acc": "intensity accuracy",
    **{
        f"{level}_{metric}": f"{title}, {level} vote"
        for level in ("image", "patient")
        for metric, title in (
            ("pattern_acc", "pattern accuracy"),
            ("pattern_mca", "pattern mean class acc."),
            ("intensity_acc", "intensity accuracy"),
        )
    },
}


def summary_columns(level: str) -> list[str]:
    return [*level_metrics(level), "score", "epoch"]


def fold_table(selected: pd.DataFrame, trial_id: str, level: str = "patch") -> pd.DataFrame:
    """One trial's Fig. 4 table: rows the metrics, the score and the epoch used; columns the
    folds, then `mean` and `std` (sample std, ddof=1) over them."""
    rows = selected[selected.trial_id == trial_id].set_index("fold").sort_index()
    folds = rows[summary_columns(level)].T.astype(float).rename_axis(index="metric", columns=None)
    return folds.assign(mean=folds.mean(axis=1), std=folds.std(axis=1, ddof=1))


def summarise(selected: pd.DataFrame, level: str = "patch") -> pd.DataFrame:
    """Per trial (index): mean and sample std (`<metric>_std`) over folds of every metric,
    the score and the epoch, and the number of folds; the best score first.

    At patch level and the final epoch, `score` is the study's cv_score.
    """
    columns = summary_columns(level)
    grouped = selected.groupby("trial_id")[columns]
    summary = grouped.mean().join(grouped.std(ddof=1).add_suffix("_std"))
    summary["folds"] = selected.groupby("trial_id").fold.nunique()
    return summary.sort_values("score", ascending=False, kind="stable")


def value_text(value: object) -> str:
    """A configuration value as a label shows it: 0.06, dice, (64, 32, 16)."""
    if isinstance(value, np.ndarray | list | tuple):
        values = np.asarray(value).tolist()
        if all(isinstance(v, str) for v in values):  # tasks: as --set writes them
            return ",".join(values)
        return str(tuple(values))
    if isinstance(value, float):
        return f"{value:.3g}"  # a searched 0.0636647... reads as 0.0637
    return str(value)


ALL_TASKS = ",".join(TASKS)  # `tasks` of a multi-task trial, as value_text writes it


def varying_fields(trials: pd.DataFrame, keys=()) -> list[str]:
    """The TrainConfig fields whose value differs between trials; else the study's `keys`
    (a study of one configuration, or one whose trials all drew the same values)."""
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name in trials]
    varying = [f for f in fields if trials[f].map(value_text).nunique() > 1]
    return varying or [key for key in keys if key in trials]


def configuration_label(row: pd.Series, keys) -> str:
    """'seg_loss=dice, alpha=0.06'; a field the trial's balancer does not read (null in
    trials.parquet) is left out, and so are `tasks` where they are all three (only the
    single-task baselines say theirs: 'tasks=pattern, seg_loss=dice')."""
    shown = [
        f"{key}={value_text(row[key])}"
        for key in keys
        if not _is_null(row[key]) and not (key == "tasks" and value_text(row[key]) == ALL_TASKS)
    ]
    return ", ".join(shown) or "base"


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def configuration_labels(trials: pd.DataFrame, keys=()) -> pd.Series:
    """trial_id -> label from what varies, e.g. 'seg_loss=dice, alpha=0.06'; unique."""
    keys = varying_fields(trials, keys)
    labels = pd.Series(
        [configuration_label(row, keys) for _, row in trials.iterrows()],
        index=trials.trial_id.to_numpy(),
        dtype=object,
    )
    twins = labels.duplicated(keep=False)  # the same values drawn twice (a search can)
    labels[twins] = [f"{label} ({trial})" for trial, label in labels[twins].items()]
    return labels


def stopped_trials(trials: pd.DataFrame, last: pd.DataFrame) -> pd.DataFrame:
    """Pruned and errored trials with their last state: epochs run of those planned, the
    score of their last epoch (from `last`, a summary at the final epoch), the error."""
    stopped = trials[trials.status != "completed"]
    score = stopped.trial_id.map(last["score"]) if len(last) else np.nan
    return pd.DataFrame(
        {
            "trial_id": stopped.trial_id,
            "status": stopped.status,
            "epochs_run": stopped.epochs_run,
            "epochs": stopped.epochs,
            "last_score": score,
            "error": stopped.error,
        }
    ).reset_index(drop=True)


def original_results() -> pd.DataFrame:
    """The original study's six configurations (patch level, final epoch, fold means)."""
    text = resources.files("study").joinpath("data/original_results.csv").read_text()
    return pd.read_csv(io.StringIO(text))


def compare_with_original(
    original: pd.DataFrame, summary: pd.DataFrame, trials: pd.DataFrame
) -> pd.DataFrame:
    """One row per original configuration: its accuracies, ours (mean and std over folds, of
    the best-scoring of our trials with the same seg_loss, epochs and alpha; NaN without
    one) and ours - original. `summary` is a patch-level summary: all the original has."""
    ours = trials[trials.trial_id.isin(summary.index)]
    rows = []
    for orig in original.itertuples(index=False):
        same = (
            (ours.seg_loss == orig.seg_loss)
            & (ours.epochs == orig.epochs)
            & np.isclose(ours.alpha.astype(float), orig.alpha)
        )
        matched = summary.loc[ours.trial_id[same]]
        best = matched.score.idxmax() if len(matched) else None
        row = {"seg_loss": orig.seg_loss, "epochs": orig.epochs, "alpha": orig.alpha,
               "trial_id": best, "matches": len(matched)}  # fmt: skip
        mine = summary.loc[best] if best is not None else {}
        for metric in SCORE_METRICS:
            row[f"original_{metric}"] = getattr(orig, metric)
            row[f"ours_{metric}"] = mine.get(metric, np.nan)
            row[f"ours_{metric}_std"] = mine.get(f"{metric}_std", np.nan)
            row[f"difference_{metric}"] = row[f"ours_{metric}"] - row[f"original_{metric}"]
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Results:
    path: Path
    name: str
    epochs: pd.DataFrame
    trials: pd.DataFrame
    keys: tuple[str, ...]  # the fields the study set out to vary
    score_metrics: tuple[str, ...]  # what the study's own cv_score averages
    num_folds: int | None = None  # k of the (repeated) k-fold cross-validation
    held_out: bool = False  # whether the study kept a test set out of every fold
    test: pd.DataFrame | None = None  # test.parquet: the chosen configuration's test estimate
    warm_start: int = 0  # how many configurations a search evaluated first
    # Each task's headline metric (StudyConfig.task_metrics): what Δm compares.
    task_metrics: dict[str, str] = field(default_factory=lambda: dict(TASK_HEADLINES))
    # StudyConfig.trials_per_balancer: each balancer had this many trials (0: no such budget)
    trials_per_balancer: int = 0
    # confusions.parquet: every cell of every fold's confusion matrices, by epoch and split
    confusions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            columns=["trial_id", "fold", "epoch", "split", "level", "task", "true", "predicted",
                     "count"]
        )
    )  # fmt: skip


def study_keys(study: dict) -> tuple[str, ...]:
    """The fields a study varies, from study.json: its configurations' keys, its search
    space's, or (older files) its grid's."""
    keys = [k for c in study.get("configurations", ()) for k in c]
    keys += ["tasks"] if study.get("baselines") else []
    return tuple(dict.fromkeys([*keys, *study.get("space", {}), *study.get("grid", {})]))


# Optuna's storages by file name in the results folder.
def _sqlite(path: Path):
    return f"sqlite:///{path}"


def _journal(path: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


OPTUNA_STORAGES = {"optuna.db": _sqlite, "optuna.journal": _journal}


def load_optuna_study(results: Path):
    """The one Optuna study stored in the results folder, or None when there is none."""
    found = [(results / name, open_) for name, open_ in OPTUNA_STORAGES.items()]
    found = [(path, open_) for path, open_ in found if path.is_file()]
    if not found:
        return None
    import optuna

    path, open_ = found[0]
    storage = open_(path)
    names = optuna.get_all_study_names(storage)
    if len(names) != 1:
        raise ValueError(f"{path} holds {len(names)} Optuna studies ({names}); expected one")
    return optuna.load_study(study_name=names[0], storage=storage)


def load_results(path: str | Path) -> Results:
    """epochs.parquet, trials.parquet and study.json of one study folder (RESULTS/NAME)."""
    path = Path(path)
    missing = [n for n in ("epochs.parquet", "trials.parquet") if not (path / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{path} has no {' or '.join(missing)}: expected a study's folder, RESULTS/NAME"
        )
    study_file = path / "study.json"
    study = json.loads(study_file.read_text()) if study_file.is_file() else {}
    train = study.get("train", {})
    test_file = path / "test.parquet"
    confusions_file = path / "confusions.parquet"
    return Results(
        path=path,
        name=study.get("name", path.name),
        epochs=pd.read_parquet(path / "epochs.parquet"),
        trials=pd.read_parquet(path / "trials.parquet"),
        keys=study_keys(study),
        score_metrics=tuple(study.get("score_metrics", SCORE_METRICS)),
        num_folds=train.get("num_folds"),
        held_out=bool(train.get("held_out")),
        test=pd.read_parquet(test_file) if test_file.is_file() else None,
        **({"confusions": pd.read_parquet(confusions_file)} if confusions_file.exists() else {}),
        warm_start=len(study.get("warm_start", ())),
        task_metrics=dict(study.get("task_metrics") or TASK_HEADLINES),
        trials_per_balancer=int(study.get("trials_per_balancer") or 0),
    )


def warm_start_sentence(
    stats: pd.DataFrame, trials: pd.DataFrame, labels: pd.Series, count: int
) -> str | None:
    """Did the search beat the configurations it started from (its first `count` Optuna
    trials), and is the difference real? From the score rows of `compare_to_best`."""
    rows = stats[stats.metric == "score"] if len(stats) else stats
    if not count or "optuna_trial" not in trials or not len(rows) or not rows.is_best.any():
        return None
    starts = set(trials.nsmallest(count, "optuna_trial").trial_id)
    started = rows[rows.trial_id.isin(starts)]
    if started.empty:
        return None
    best = rows[rows.is_best].iloc[0]
    if best.trial_id in starts:
        return (
            f"The search did not beat its warm start: the best configuration "
            f"({labels.get(best.trial_id, best.trial_id)}) is one of the {count} it started from."
        )
    start = started.loc[started["mean"].idxmax()]
    real = {
        "worse": "the difference is real",
        "equivalent": "the two are equivalent within the rope",
        "undecided": "the difference is not established",
        "better": "yet the start is better on the folds they share",
    }.get(start.verdict, "the difference is not established")
    return (
        f"The search against its warm start: the best found ({labels.get(best.trial_id)}, "
        f"score {best['mean']:.3f}) minus the best of the {count} it started from "
        f"({labels.get(start.trial_id)}, {start['mean']:.3f}) is {-start.diff_vs_best:+.3f}, "
        f"95% interval [{-start.ci_high:+.3f}, {-start.ci_low:+.3f}] over {int(start.n_folds)} "
        f"folds: {real}."
    )


def fold_statistics(
    results: Results, selected: pd.DataFrame, done: pd.Series, level: str, rope: float
) -> pd.DataFrame:
    """Every completed configuration against the best, fold by fold, on the report's rows."""
    metrics = ["score", *level_metrics(level)]
    per_fold = selected[selected.trial_id.isin(done)]
    if per_fold.empty:
        return pd.DataFrame()
    columns = ["trial_id", "fold", *(["repeat"] if "repeat" in per_fold else []), *metrics]
    return compare_to_best(
        per_fold[columns], metrics, folds_per_repeat=results.num_folds, rope=rope
    )


def optimism_sentence(table: pd.DataFrame, metric: str = "score") -> str:
    """One line: the cross-validated and the test estimate of the chosen configuration."""
    row = table.set_index("metric").loc[metric]
    interval = f"95% bootstrap interval {row.ci_low:.3f} to {row.ci_high:.3f}"
    inside = row.ci_low <= row.cv <= row.ci_high
    verdict = (
        "the cross-validated estimate lies inside it"
        if inside
        else "the cross-validated estimate lies outside it"
    )
    return (
        f"Test estimate of the chosen configuration ({row.test_patients} held-out patients, "
        f"{row.folds} fold models as one ensemble): {metric} {row.test:.3f} ({interval}); "
        f"cross-validated {row.cv:.3f}, optimism of the selection {row.optimism:+.3f} "
        f"({verdict})."
    )


def baseline_trials(trials: pd.DataFrame) -> dict[str, str]:
    """task -> the completed trial that trained that task alone (a single-task baseline);
    a task with none, or with more than one (which would be ambiguous), is left out."""
    if "tasks" not in trials:
        return {}
    single = trials[(trials.status == "completed") & (task_counts(trials) == 1)]
    counts = single.tasks.map(lambda tasks: tasks[0]).value_counts()
    return {row.tasks[0]: row.trial_id for row in single.itertuples() if counts[row.tasks[0]] == 1}


def multi_task_trials(trials: pd.DataFrame) -> pd.Series:
    """The completed trials that train all three tasks."""
    done = trials[(trials.status == "completed") & (task_counts(trials) == len(TASKS))]
    return done.trial_id


def task_gains(
    results: Results, selected: pd.DataFrame, level: str, rope: float
) -> pd.DataFrame | None:
    """Δm of every completed multi-task configuration against the study's single-task
    baselines, with each task's relative difference (study.stats.gain.delta_m on the
    selected epochs, each task's headline metric at `level`); None without all three
    baselines or a configuration to compare."""
    from study.stats.gain import delta_m

    baselines = baseline_trials(results.trials)
    configurations = multi_task_trials(results.trials)
    if set(baselines) != set(TASKS) or configurations.empty:
        return None
    rows, metrics = _headline_rows(results, selected, level, {*configurations, *baselines.values()})
    return delta_m(rows, baselines, metrics, folds_per_repeat=results.num_folds, rope=rope)


def balancer_budgets(
    results: Results, selected: pd.DataFrame, reference: str, rope: float
) -> pd.DataFrame | None:
    """Each balancer's best completed trial against the reference balancer's best, paired
    by fold on the score (study.stats.budget), for a study that gave every balancer one
    budget; None for any other study, or without a completed trial of the reference."""
    from study.stats.budget import against_reference

    trials = results.trials
    if not results.trials_per_balancer or "balancer" not in trials:
        return None
    done = trials[trials.trial_id.isin(multi_task_trials(trials))]
    balancers = dict(zip(done.trial_id, done.balancer, strict=True))
    keys = [c for c in ("trial_id", "repeat", "fold") if c in selected]
    per_fold = selected.loc[selected.trial_id.isin(balancers), [*keys, "score"]]
    references = per_fold.trial_id.map(balancers) == reference
    if not per_fold.score[references].notna().any():
        return None
    return against_reference(
        per_fold, balancers, reference, "score", expected=list(dict.fromkeys(trials.balancer)),
        folds_per_repeat=results.num_folds, rope=rope,
    )  # fmt: skip


def gain_sentence(gains: pd.DataFrame, labels: pd.Series, rope: float) -> str:
    """What Δm says in words: how many configurations that train the tasks together help,
    hurt or cannot be told from the baselines; the largest Δm with its interval, and the
    tasks that pay for it where the folds establish that they do."""
    overall = gains[gains.term == "delta_m"]
    counts = overall.verdict.value_counts()
    told = ", ".join(
        f"{int(counts.get(v, 0))} {v}" for v in ("helps", "hurts", "equivalent", "undecided")
    )
    sentence = (
        "Training the three tasks together against each task trained alone (Δm: the mean "
        "relative difference of the tasks' headline metrics, paired by fold, rope "
        f"±{rope:g}): of {len(overall)} configuration(s), {told}"
    )
    if overall["mean"].notna().any():
        top = overall.loc[overall["mean"].idxmax()]
        interval = (
            f"95% interval {top.ci_low:+.1%} to {top.ci_high:+.1%}"
            if pd.notna(top.ci_low)
            else f"{int(top.n_folds)} fold(s) with a value, too few for an interval"
        )
        sentence += (
            f"; the largest Δm is {labels.get(top.trial_id, top.trial_id)}'s, "
            f"{top['mean']:+.1%} ({interval}, {top.verdict})"
        )
        tasks = gains[(gains.trial_id == top.trial_id) & (gains.term != "delta_m")]
        paying = [f"the {r.term} task ({r.mean:+.1%})" for r in tasks.itertuples()
                  if r.verdict == "hurts"]  # fmt: skip
        if paying:
            sentence += ", paid for by " + " and ".join(paying)
    return sentence + "."


def task_fronts(
    results: Results, selected: pd.DataFrame, level: str, rope: float
) -> pd.DataFrame | None:
    """The per-task front of the completed configurations that train every task
    (study.stats.front.task_front on the selected epochs, each task's headline metric at
    `level`); None with fewer than two of them."""
    from study.stats.front import task_front

    configurations = multi_task_trials(results.trials)
    if len(configurations) < 2:
        return None
    rows, metrics = _headline_rows(results, selected, level, set(configurations))
    front = task_front(rows, metrics, folds_per_repeat=results.num_folds, rope=rope)
    return front if len(front) else None


def _headline_rows(
    results: Results, selected: pd.DataFrame, level: str, trial_ids: set[str]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The selected rows of `trial_ids` with their keys and each task's headline metric at
    `level` (by votes where votes have it), and task -> that metric's column."""
    metrics = {task: voted_column(m, level) for task, m in results.task_metrics.items()}
    keys = [c for c in ("trial_id", "repeat", "fold") if c in selected]
    rows = selected[selected.trial_id.isin(trial_ids)]
    return rows[[*keys, *dict.fromkeys(metrics.values())]], metrics


def front_sentence(front: pd.DataFrame, labels: pd.Series, rope: float) -> str:
    """The per-task front in words: how many configurations are on it by means, which are
    established dominated and by which, and how many are dominated by means only."""
    state = front.groupby("trial_id", sort=False)[
        ["on_front", "established_dominated", "dominated_by"]
    ].first()
    metrics = ", ".join(dict.fromkeys(front.metric))
    on = int(state.on_front.sum())
    established = state[state.established_dominated]
    sentence = (
        f"Per-task front ({metrics}; means over folds): {on} of {len(state)} configurations "
        f"are on it; {len(established)} established dominated (another is established "
        f"better or equivalent on every task and better on one, paired by fold, rope "
        f"±{rope:g})"
    )
    if len(established):
        named = []
        for trial, row in established.iterrows():
            by = " and ".join(labels.get(o, o) for o in row.dominated_by.split(","))
            named.append(f"{labels.get(trial, trial)} by {by}")
        sentence += ": " + "; ".join(named)
    by_means_only = int((~state.on_front & ~state.established_dominated).sum())
    if by_means_only:
        are = "is" if by_means_only == 1 else "are"
        sentence += (
            f". {by_means_only} more {are} off the front by means only: the folds do not "
            "establish that it is dominated" if by_means_only == 1 else
            f". {by_means_only} more {are} off the front by means only: the folds do not "
            "establish that they are dominated"
        )  # fmt: skip
    return sentence + "."


# The original study's conclusions on the segmentation loss, by task: (metric, loss, words).
ORIGINAL_CONCLUSIONS = (
    ("pattern_acc", "dice", "Dice best for the pattern"),
    ("intensity_acc", "bce", "BCE best for the intensity"),
)


def original_conclusions_sentence(
    stats: pd.DataFrame, trials: pd.DataFrame, labels: pd.Series, level: str = "patch"
) -> str | None:
    """Which of the original study's conclusions the folds establish. "Dice best for the
    pattern" is established when the best pattern accuracy (compare_to_best's best, at
    `level`) is a Dice configuration and every BCE configuration is established worse than
    it; where the best is a BCE one and every Dice one is established worse, the folds
    establish the opposite; else neither. Likewise BCE for the intensity. None unless both
    losses have completed configurations."""
    if not len(stats) or "seg_loss" not in trials:
        return None
    loss = trials.set_index("trial_id").seg_loss
    name = {"dice": "Dice", "bce": "BCE"}
    parts = []
    for metric, expected, words in ORIGINAL_CONCLUSIONS:
        metric = voted_column(metric, level)
        rows = stats[(stats.metric == metric) & stats.trial_id.isin(loss.index)]
        if not rows.is_best.any() or set(loss[rows.trial_id]) != set(name):
            return None
        best = rows[rows.is_best].iloc[0]
        winner = loss[best.trial_id]
        others = rows[loss[rows.trial_id].to_numpy() != winner]
        worse = int((others.verdict == "worse").sum())
        loser = name["bce" if winner == "dice" else "dice"]
        found = (
            f"the best {metric} is {labels.get(best.trial_id, best.trial_id)}'s "
            f"({name[winner]}); {worse} of {len(others)} {loser} configurations are "
            "established worse than it"
        )
        if worse < len(others):
            verdict = "not established"
        elif winner == expected:
            verdict = "established"
        else:
            verdict = "the opposite is established"
        parts.append(f'"{words}": {verdict} ({found})')
    return "The original study's conclusions, on these folds: " + "; ".join(parts) + "."
