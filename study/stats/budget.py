"""Which balancers beat tuned fixed weights, when every balancer had the same tuning budget
(StudyConfig.trials_per_balancer): each balancer's best trial against the reference's best,
paired by fold.

Each balancer is represented by its best trial (the highest mean of the metric over the
folds), the reference balancer (`fixed`, the tuned baseline of Kurin et al. 2022 and Xin
et al. 2022) by its own, and the two are compared fold by fold with the statistics of every
other comparison (`study.stats.paired_test`: the corrected resampled t-test's interval, the
correlated Bayesian t-test's posterior, a rope of ±rope). Verdicts: `better`, `worse`,
`equivalent`, `undecided`.

The best of N trials is chosen on the folds it is then judged on, so each mean is biased
upwards by the choice; one budget for all makes that bias alike, not zero. A held-out test
set (StudyConfig.test_patients) estimates the chosen configuration without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from study.stats import DEFAULT_ROPE, infer_folds_per_repeat, paired_test, verdict

BUDGET_COLUMNS = ("balancer", "trials", "trial_id", "n_folds", "mean", "diff_vs_reference",
                  "ci_low", "ci_high", "p_value", "p_worse", "p_rope", "p_better",
                  "verdict")  # fmt: skip


def against_reference(
    per_fold: pd.DataFrame,
    balancers: Mapping[str, str],
    reference: str = "fixed",
    metric: str = "score",
    *,
    expected: Sequence[str] = (),
    folds_per_repeat: int | None = None,
    rope: float = DEFAULT_ROPE,
) -> pd.DataFrame:
    """One row per balancer (the reference first, then by mean, best first): its trials,
    its best trial and that trial's mean, and the best trial's fold-paired comparison with
    the reference's best (diff = balancer - reference). Columns BUDGET_COLUMNS; the
    reference's own row has verdict `reference`; a balancer of `expected` without a trial
    with a value gets a row of its own, verdict `no result`, after the others.

    per_fold: one row per trial and fold (`trial_id`, `fold`, optionally `repeat`) with
    `metric`. balancers: trial id -> its balancer, for the trials to compare.
    """
    keys = [c for c in ("repeat", "fold") if c in per_fold]
    rows = per_fold[per_fold.trial_id.isin(set(balancers))]
    if metric not in rows:
        raise ValueError(f"the per-fold table has no {metric!r} column")
    wide = rows.pivot(index="trial_id", columns=keys, values=metric).astype(float)
    means = wide.mean(axis=1).dropna()  # a trial without a value is no candidate
    wide = wide.loc[means.index]
    by_balancer = pd.Series(balancers).reindex(wide.index)
    if reference not in set(by_balancer):
        raise ValueError(f"no trial of the reference balancer {reference!r} has a {metric}")
    k = infer_folds_per_repeat(rows) if folds_per_repeat is None else folds_per_repeat
    if k < 2:
        raise ValueError(f"the fold-paired test needs at least 2 folds per repeat, got {k}")
    best = {name: str(means[trials].idxmax()) for name, trials in
            by_balancer.groupby(by_balancer).groups.items()}  # fmt: skip
    anchor = wide.loc[best[reference]]
    out = []
    for name, trial in best.items():
        values = wide.loc[trial]
        shared = values.notna() & anchor.notna()
        test = paired_test((values - anchor)[shared].to_numpy(), 1 / (k - 1), rope)
        out.append({
            "balancer": name, "trials": int((by_balancer == name).sum()), "trial_id": trial,
            "n_folds": test.n, "mean": float(means[trial]),
            "diff_vs_reference": test.mean_diff, "ci_low": test.ci_low,
            "ci_high": test.ci_high, "p_value": test.p_value, "p_worse": test.p_worse,
            "p_rope": test.p_rope, "p_better": test.p_better,
            "verdict": "reference" if name == reference else
            verdict(test.p_worse, test.p_rope, test.p_better),
        })  # fmt: skip
    for name in dict.fromkeys(expected):
        if name not in best:
            trials = sum(b == name for b in balancers.values())
            out.append({"balancer": name, "trials": trials, "trial_id": "", "n_folds": 0,
                        "verdict": "no result"})  # fmt: skip
    table = pd.DataFrame(out, columns=list(BUDGET_COLUMNS))
    order = (table.balancer != reference).astype(int) + (table.verdict == "no result")
    return (
        table.assign(_order=order)
        .sort_values(["_order", "mean"], ascending=[True, False], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def budget_sentence(table: pd.DataFrame, reference: str, budget: int, rope: float) -> str:
    """Which balancers are established better than the reference, in one sentence."""
    others = table[table.balancer != reference]
    better = others[others.verdict == "better"]
    head = (
        f"One tuning budget ({budget} Optuna trial{'s' if budget != 1 else ''} a balancer), "
        "each balancer's best trial "
        f"against tuned {reference} weights, paired by fold (rope ±{rope:g}; {len(others)} "
        "comparisons, each at the 0.95 threshold, no correction for their number): "
    )
    if better.empty:
        named = "none is established better"
    else:
        named = "established better: " + ", ".join(
            f"{r.balancer} ({r.diff_vs_reference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}])"
            for r in better.itertuples()
        )
    counts = others.verdict.value_counts()
    verdicts = ("worse", "equivalent", "undecided", "no result")
    rest = ", ".join(f"{counts[v]} {v}" for v in verdicts if v in counts)
    return head + named + (f"; the others: {rest}." if rest else ".")
