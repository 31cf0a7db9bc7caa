# %% [markdown]
# # Analysing studies
#
# A results folder holds one folder per study (`results/NAME/`, see docs/results.md). This
# script, in cells that Jupyter and VS Code open as a notebook, reads every study in one,
# compares each study's configurations fold by fold, plots the learning curves of the best
# trials, and asks the same files a question with DuckDB (`pip install duckdb`).
#
#     python examples/analyse_study.py results        # or open it as a notebook

# %%
import sys
from pathlib import Path

import duckdb
import matplotlib.pyplot as plt

import study
from study.report.summary import configuration_labels
from study.stats import compare_to_best, summary_sentence
from study.stats.selection import study_per_fold

plt.switch_backend("Agg")  # files, not windows: also runs without a display

RESULTS = Path(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "results")

# %% Every study's trials, read together (typed: one schema for all studies)
trials = study.load(RESULTS / "*")
print(trials.groupby(["study", "status"]).size().rename("trials").to_string(), "\n")

# %% Each study's configurations against its best, fold by fold
# A difference between configurations counts only with its interval and verdict: the folds
# are paired (same patients on both sides), the interval corrected for their overlap.
for name, group in trials.groupby("study"):
    epochs = study.load(RESULTS / name, "epochs")
    per_fold = study_per_fold(epochs, group)
    if per_fold.empty:
        print(f"{name}: no completed trial\n")
        continue
    stats = compare_to_best(per_fold, ["score", "pattern_acc"])
    labels = configuration_labels(group)
    score = stats[stats.metric == "score"].copy()
    score["configuration"] = score.trial_id.map(labels)
    columns = ["configuration", "mean", "std", "diff_vs_best", "ci_low", "ci_high", "verdict"]
    print(f"study {name}: the score (mean of pixel, pattern and intensity accuracy)")
    print(score.sort_values("mean", ascending=False)[columns].round(4).to_string(index=False))
    print(summary_sentence(stats, "score"), "\n")

# %% Learning curves of each study's best trials (validation score, mean over folds)
studies = trials.groupby("study")
figure, axes = plt.subplots(1, len(studies), figsize=(6 * len(studies), 4), squeeze=False)
for ax, (name, group) in zip(axes[0], studies, strict=True):
    epochs = study.load(RESULTS / name, "epochs")
    val = epochs[epochs.split == "val"]
    val = val.assign(score=val[["pixel_acc", "pattern_acc", "intensity_acc"]].mean(axis=1))
    labels = configuration_labels(group)
    for trial_id in group.nlargest(3, "cv_score").trial_id:
        curve = val[val.trial_id == trial_id].groupby("epoch").score.mean()
        ax.plot(curve.index, curve.to_numpy(), marker="o", label=labels[trial_id])
    ax.set(title=name, xlabel="epoch", ylabel="validation score (fold mean)")
    ax.legend(fontsize=7)
figure.tight_layout()
curves = RESULTS / "analysis_curves.png"
figure.savefig(curves, dpi=100)
print(f"curves: {curves}\n")

# %% The same files in SQL: completed trials per study and balancer
print(
    duckdb.sql(
        f"""
        select study, balancer, count(*) as trials, round(max(cv_score), 4) as best_score
        from read_parquet('{RESULTS}/*/trials.parquet/*.parquet')
        where status = 'completed'
        group by all order by study, balancer
        """
    )
)
