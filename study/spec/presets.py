"""Studies as presets: functions returning a frozen StudyConfig.

A study is a base TrainConfig plus either a list of configurations (a grid: one trial each)
or an Optuna search space (`num_samples` trials), optionally pruned by ASHA; every trial is
evaluated on all folds. Presets only set fields; everything is validated here, before Ray
starts.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mtl import (
    CHOICES,
    EPOCH_DEPENDENT_SCHEDULES,
    METRIC_DIRECTIONS,
    METRIC_LEVELS,
    SCORE_METRICS,
    TASK_HEADLINES,
    TASK_METRICS,
    TASKS,
    SplitMetrics,
    SynthSpec,
    TrainConfig,
    fold_labels,
    is_active,
    original,
    small,
    tiny,
)
from study.spec.space import Choice, Domain, IntRange, LogUniform, active_space, domain_values


def grid(**values: Sequence) -> tuple[dict, ...]:
    """Every combination of the values, e.g. grid(seg_loss=("dice", "bce"), epochs=(30, 35))."""
    keys = list(values)
    return tuple(
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values.values())
    )


def headline_choices(task: str) -> tuple[str, ...]:
    """The metrics a study may compare `task` by (StudyConfig.task_metrics): its patch-level
    metrics that every comparison reports (IoU follows Dice, and losses are not compared)."""
    return tuple(
        m for m in TASK_METRICS[task]
        if METRIC_LEVELS.get(m) == "patch" and m != "iou" and METRIC_DIRECTIONS[m] > 0
    )  # fmt: skip


# How a study runs, not what it is: a resume may change them (a study started on a laptop
# goes on on a cluster), and study.json records each run's in provenance.runs[]. Every other
# field, the train fields but these and the store's content hash define the study.
RUN_SETTINGS = (
    "max_concurrent", "gpus_per_fold", "cpus_per_fold", "fold_memory_gib", "cpus_per_trial",
    "fold_resources", "fold_strategy", "max_failures", "keep_checkpoints",
)  # fmt: skip
# The store's path (its content hash is compared), the device and the loader's processes
# (where and how fast, not what is trained), how often a fold checkpoints.
TRAIN_RUN_SETTINGS = ("data", "device", "num_workers", "checkpoint_every")


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    name: str
    train: TrainConfig
    # Either explicit configurations (TrainConfig overrides, one trial each) ...
    configurations: tuple[Mapping[str, object], ...] = ()
    # ... or an Optuna search space over TrainConfig fields, `num_samples` trials.
    space: Mapping[str, Domain] = field(default_factory=dict)
    # Configurations a search evaluates first (each a value for every key of the space that
    # its balancer reads): known settings the search should start from and be compared with.
    warm_start: tuple[Mapping[str, object], ...] = ()
    num_samples: int = 1
    # Optuna's sampler: multivariate TPE, or random search (a baseline for it).
    sampler: Literal["tpe", "random"] = "tpe"
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int = 1  # ASHA: epochs before the first stop decision
    reduction_factor: float = 2.0  # ASHA: keep 1 / reduction_factor at every rung
    # The score ASHA and Optuna maximise: the fold-mean of these validation metrics, averaged.
    score_metrics: tuple[str, ...] = SCORE_METRICS
    max_concurrent: int = 0  # trials at once; 0: as many as the resources allow
    # Where the data comes from when train.data is empty: generated once, then cached.
    synthetic: SynthSpec | None = None
    # Resources (study/driver/placement.py). Fold workers are Ray actors with these resources each;
    # "auto" packs a trial's folds on one node's GPUs so that every GPU is busy, within
    # fold_memory_gib per worker (None: measured or probed, study/driver/memory.py), and shares the
    # node's CPUs among them. On a cluster without GPUs the folds of a trial run inside the
    # trial's own process, which takes cpus_per_trial CPUs.
    gpus_per_fold: float | Literal["auto"] = "auto"
    cpus_per_fold: float | Literal["auto"] = "auto"
    fold_memory_gib: float | None = None
    cpus_per_trial: float = 1.0
    fold_resources: Mapping[str, float] = field(default_factory=dict)  # custom resources
    # How a trial's fold workers are placed: PACK fills one node first (GPU locality),
    # SPREAD puts them on different nodes where it can (a lost node costs fewer folds).
    fold_strategy: Literal["PACK", "SPREAD"] = "PACK"
    max_failures: int = 2  # retries of a failed trial from its last checkpoint
    # Finished trials whose last checkpoint (every fold's final weights, for
    # study.results.export) is kept, best cross-validated score first; 0 keeps every trial's.
    keep_checkpoints: int = 1
    seed: int = 0  # the Optuna sampler's
    # A test set: this fraction of the patients (stratified by pattern, seeded by the fold
    # seed) is held out of every fold before the search starts; the chosen configuration's
    # fold ensemble is evaluated on it when the study ends (test.parquet). 0: none, and the
    # best cross-validated score stays biased upwards by the selection.
    test_patients: float = 0.0
    # Repeated cross-validation (Bouckaert & Frank 2004): this many k-fold splits with the
    # seeds fold_seed, fold_seed + 1, ...; every trial trains repeats x k folds.
    repeats: int = 1
    # Single-task baselines: three more trials, the base configuration trained on one task
    # each (tasks=seg, pattern, intensity) with the study's epochs, folds and seeds; never
    # pruned, never told to Optuna. Δm and the per-task comparisons are against them.
    baselines: bool = False
    # Each task's headline metric: what Δm, the per-task fronts and `--objective tasks`
    # compare (a metric of that task, mtl.TASK_METRICS).
    task_metrics: Mapping[str, str] = field(default_factory=lambda: dict(TASK_HEADLINES))
    # What Optuna searches for: the score (one objective), or `tasks`, each task's headline
    # metric as an objective of its own (its best_trials: the front). ASHA, when on, still
    # stops trials on the score.
    objective: Literal["score", "tasks"] = "score"
    # One budget for every balancer (a search whose space has a `balancer` Choice): each
    # balancer gets exactly this many Optuna trials over its own fields and the others of
    # the space (num_samples = this x the balancers); 0: Optuna shares the trials out as it
    # likes. The `balancers` preset compares them so, against tuned fixed weights.
    trials_per_balancer: int = 0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")
        if self.configurations and self.space:
            raise ValueError("a study has configurations or a search space, not both")
        for point in self.warm_start:
            balancer = point.get("balancer", self.train.balancer)
            active = set(active_space(self.space, balancer))
            if set(point) != active:
                expected = ", ".join(sorted(active)) or "none: the study has no search space"
                raise ValueError(
                    f"warm_start: {dict(point)} must set exactly the searched fields that "
                    f"balancer {balancer!r} reads ({expected})"
                )
        self._check_tasks()  # before the repeats: a baseline of a single-task base repeats it
        self._check_budgets()
        self._check_no_repeats()
        if len(self.warm_start) > self.num_samples:
            raise ValueError(
                f"warm_start has {len(self.warm_start)} configurations, more than num_samples "
                f"({self.num_samples})"
            )
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for key in self.space:
            if key not in fields:
                raise ValueError(f"space: {key!r} is not a TrainConfig field")
        metrics = {f.name for f in dataclasses.fields(SplitMetrics)}
        for metric in self.score_metrics:
            if metric not in metrics:
                raise ValueError(f"score_metrics: {metric!r} is not a validation metric")
        for name in ("gpus_per_fold", "cpus_per_fold"):
            value = getattr(self, name)
            if value != "auto" and (isinstance(value, str) or value < 0):
                raise ValueError(f"{name} must be 'auto' or a number >= 0, got {value!r}")
        if self.cpus_per_fold == 0:
            raise ValueError("cpus_per_fold must be 'auto' or positive, got 0")
        if self.fold_memory_gib is not None and self.fold_memory_gib <= 0:
            raise ValueError(f"fold_memory_gib must be positive, got {self.fold_memory_gib}")
        for name in ("num_samples", "grace_period", "cpus_per_trial"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.sampler not in ("tpe", "random"):
            raise ValueError(f"sampler must be 'tpe' or 'random', got {self.sampler!r}")
        self._check_rungs()
        if self.reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {self.reduction_factor}")
        if self.max_concurrent < 0 or self.max_failures < 0 or self.keep_checkpoints < 0:
            raise ValueError("max_concurrent, max_failures and keep_checkpoints must be >= 0")
        if not 0.0 <= self.test_patients < 1.0:
            raise ValueError(f"test_patients must lie in [0, 1), got {self.test_patients}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if self.repeats > 1 and self.train.folds == "seed":
            raise ValueError(
                f"repeats={self.repeats} needs folds that can be redrawn, but folds='seed' is "
                "the original study's one fixed fold table; use --set folds=stratified, or "
                "repeats=1"
            )
        if not self.train.data and self.synthetic is None:
            raise ValueError("the study needs data: set train.data (--data) or synthetic")
        for config in self.train_configs():  # every configuration must be a valid TrainConfig
            del config

    def _check_no_repeats(self) -> None:
        """A grid or a warm start that names one configuration twice would train it twice:
        refused, naming both. Two points are the same configuration when they agree on every
        field their balancer reads (alpha means nothing to `equal`)."""
        for name in ("configurations", "warm_start"):
            seen: dict[tuple, int] = {}
            # The baselines come after the grid's points: one equal to a baseline repeats it.
            points = [*getattr(self, name)]
            points += list(self.baseline_points) if name == "configurations" else []
            for i, point in enumerate(points):
                config = self.train.replace(**point)
                key = tuple(
                    (k, v)
                    for k, v in dataclasses.asdict(config).items()
                    if is_active(k, config.balancer)
                )
                if key in seen:
                    grid = len(getattr(self, name))
                    second = f"{name}[{i}]" if i < grid else f"the baseline {dict(point)}"
                    raise ValueError(
                        f"{name}[{seen[key]}] and {second} are the same configuration "
                        f"({dict(point)}): it would be trained twice; remove one"
                    )
                seen[key] = i

    def _check_tasks(self) -> None:
        if set(self.task_metrics) != set(TASKS):
            raise ValueError(
                f"task_metrics must give one metric for each of {', '.join(TASKS)}, "
                f"got {dict(self.task_metrics)}"
            )
        for task, metric in self.task_metrics.items():
            if metric not in headline_choices(task):
                raise ValueError(
                    f"task_metrics: {metric!r} is not a headline metric of the {task} task; "
                    f"choose one of {', '.join(headline_choices(task))}"
                )
        if self.objective not in ("score", "tasks"):
            raise ValueError(f"objective must be 'score' or 'tasks', got {self.objective!r}")
        if self.objective == "tasks" and not self.space:
            raise ValueError("objective='tasks' is for a search (a space); a grid has no search")
        if self.baselines and self.train.tasks != TASKS:
            raise ValueError(
                f"baselines are compared with configurations that train all three tasks, "
                f"but train.tasks is {self.train.tasks}"
            )

    def _check_budgets(self) -> None:
        if not self.trials_per_balancer:
            return
        if self.trials_per_balancer < 0:
            raise ValueError(f"trials_per_balancer must be >= 0, got {self.trials_per_balancer}")
        if not isinstance(self.space.get("balancer"), Choice):
            raise ValueError(
                "trials_per_balancer gives each balancer of the search space the same number "
                "of trials, but the space has no balancer Choice"
            )
        if self.warm_start:
            raise ValueError(
                "trials_per_balancer and warm_start together would give the warm-started "
                "balancers more trials; leave one out"
            )
        expected = self.trials_per_balancer * len(self.space["balancer"].values)
        if self.num_samples != expected:
            raise ValueError(
                f"num_samples is {self.num_samples}, but trials_per_balancer="
                f"{self.trials_per_balancer} for {len(self.space['balancer'].values)} "
                f"balancers makes {expected}; set one of them only"
            )

    @property
    def balancer_budgets(self) -> dict[str, int]:
        """balancer -> its Optuna trials, for a study with one budget per balancer (else {})."""
        if not self.trials_per_balancer:
            return {}
        return {name: self.trials_per_balancer for name in self.space["balancer"].values}

    @property
    def objectives(self) -> tuple[str, ...]:
        """The metrics Optuna searches for as objectives of their own (none: the score)."""
        return tuple(self.task_metrics[t] for t in TASKS) if self.objective == "tasks" else ()

    @property
    def baseline_points(self) -> tuple[dict, ...]:
        """The single-task baselines' configurations (none without `baselines`); `tasks` as
        `--set` writes it, the form a trial's configuration carries it in."""
        return tuple({"tasks": task} for task in TASKS) if self.baselines else ()

    def _check_rungs(self) -> None:
        """ASHA compares trials at the same epoch. With a searched `epochs` and a learning-
        rate schedule whose shape depends on the total epochs, trials at a rung are at
        different points of their schedules (a 20-epoch cosine trial has decayed further at
        epoch 10 than a 40-epoch one), and ASHA favours the shortest."""
        if self.scheduler != "asha" or "epochs" not in self.space:
            return
        schedules = set(domain_values(self.space["lr_schedule"])) if (
            "lr_schedule" in self.space
        ) else {self.train.lr_schedule}  # fmt: skip
        unfair = sorted(schedules & set(EPOCH_DEPENDENT_SCHEDULES))
        if unfair:
            raise ValueError(
                f"scheduler='asha' with a searched epochs and lr_schedule={unfair[0]!r} (whose "
                "shape depends on the total epochs) compares trials at different points of "
                "their schedules at every rung. Fix one of the three: scheduler='none', a "
                "fixed epochs (--set epochs=N), or --set lr_schedule=constant"
            )

    def train_configs(self) -> list[TrainConfig]:
        """Every configuration the study may train (a search: each extreme of its domains)."""
        baselines = [self.train.replace(**p) for p in self.baseline_points]
        if self.configurations:
            return [self.train.replace(**c) for c in self.configurations] + baselines
        configs = [self.train, *baselines] + [self.train.replace(**p) for p in self.warm_start]
        for key, domain in self.space.items():
            configs += [self.train.replace(**{key: v}) for v in domain_values(domain)]
        return configs

    @property
    def varying(self) -> tuple[str, ...]:
        """The TrainConfig fields that differ between trials."""
        keys = dict.fromkeys(k for c in (*self.configurations, *self.baseline_points) for k in c)
        return tuple(keys) + tuple(k for k in self.space if k not in keys)

    @property
    def folds(self) -> tuple[str, ...]:
        """The fold labels every trial trains: A..E, or 1A..1E, 2A.. with repeats."""
        return fold_labels(self.train.num_folds, self.repeats)

    @property
    def max_epochs(self) -> int:
        return max(c.epochs for c in self.train_configs())

    @property
    def num_trials(self) -> int:
        trials = len(self.configurations) if self.configurations else self.num_samples
        return trials + len(self.baseline_points)


def demo() -> StudyConfig:
    """A short Optuna + ASHA search on synthetic 64 px data (32 patients), sized to finish
    within 8 minutes on a 2-core laptop even when ASHA stops nothing: 6 trials of 4 epochs,
    two at a time (at most 24 trial-epochs of about 30 s each). The first four are the
    2 x 2 of balancer (equal, GradNorm) and segmentation loss (Dice, BCE), trained to the end
    whatever the order trials reach ASHA's rung in (study.search.WarmStartASHA), so that every
    demo compares at least these four; Optuna draws the other two, and ASHA stops those in
    the lower half at epoch 2. A fifth of the patients is held out as a test set for the
    chosen one.
    """
    # Every trial trains 4 epochs, so the cosine schedule keeps ASHA's rungs comparable.
    train = small().replace(epochs=4)
    return StudyConfig(
        name="demo",
        train=train,
        space={
            "seg_loss": Choice(("dice", "bce")),
            "balancer": Choice(("equal", "gradnorm")),
            "alpha": LogUniform(0.05, 1.5),
        },
        # alpha exists only for GradNorm: the equal-weight points have none.
        warm_start=grid(seg_loss=("dice", "bce"), balancer=("equal",))
        + grid(seg_loss=("dice", "bce"), balancer=("gradnorm",), alpha=(0.5,)),
        num_samples=6,
        scheduler="asha",
        grace_period=2,
        max_concurrent=2,
        test_patients=0.2,
        synthetic=SynthSpec(patients=32, size=64, specimens=1, seed=0),
    )


def smoke() -> StudyConfig:
    """Seconds: the tiny model, 10 synthetic patients, two epochs, Dice vs BCE; for tests."""
    return StudyConfig(
        name="smoke",
        train=tiny(),
        configurations=grid(seg_loss=("dice", "bce")),
        synthetic=SynthSpec(patients=10, size=64, specimens=1, seed=0),
    )


# The original study's six configurations (GradNorm throughout; mtl.config.original()).
ORIGINAL_SIX = (
    {"seg_loss": "dice", "epochs": 30, "alpha": 0.06},
    {"seg_loss": "dice", "epochs": 35, "alpha": 0.06},
    {"seg_loss": "dice", "epochs": 30, "alpha": 0.12},
    {"seg_loss": "bce", "epochs": 30, "alpha": 0.06},
    {"seg_loss": "bce", "epochs": 35, "alpha": 0.06},
    {"seg_loss": "bce", "epochs": 30, "alpha": 0.12},
)


def paper() -> StudyConfig:
    """The original study exactly: its six configurations, seed folds A-E, EfficientNet-B4 at
    384 px, batch 8, Adam 1e-4 (network and GradNorm weights), no augmentation, no pruning.

    Without --data it runs on a synthetic set of the real set's size (252 patients).
    """
    return StudyConfig(
        name="paper",
        train=original(),
        configurations=ORIGINAL_SIX,
        synthetic=SynthSpec(patients=252, size=384, specimens=4, seed=0),
    )


def search() -> StudyConfig:
    """Optuna over GradNorm's alpha, epochs, segmentation loss, balancer and its learning
    rate, with ASHA; the original model and data setting otherwise.

    The search starts from the original study's six configurations (evaluated first and
    trained to the end), so its report answers whether the search found better and whether
    the difference is real. alpha
    is sampled only for GradNorm trials and balancer_lr only for the balancers with learned
    weights. ASHA may prune a searched `epochs` fairly because the learning rate is constant
    (the original's): epoch k of every trial is what a k-epoch run gives, whatever its total;
    a cosine schedule would be rejected here.
    """
    original_six = tuple(
        {**c, "balancer": "gradnorm", "balancer_lr": original().balancer_lr} for c in ORIGINAL_SIX
    )
    return StudyConfig(
        name="search",
        train=original(),
        space={
            "alpha": LogUniform(0.01, 3.0),
            "epochs": IntRange(20, 40, 5),
            "seg_loss": Choice(("dice", "bce")),
            "balancer": Choice(("gradnorm", "equal", "uncertainty", "dwa")),
            "balancer_lr": LogUniform(1e-4, 0.1),
        },
        warm_start=original_six,
        num_samples=40,
        scheduler="asha",
        grace_period=5,
        reduction_factor=2,
        test_patients=0.2,
        synthetic=SynthSpec(patients=252, size=384, specimens=4, seed=0),
    )


def balancers() -> StudyConfig:
    """Every balancer under one budget (Kurin et al. 2022; Xin et al. 2022: unequal tuning
    explains most reported gains): the same epochs, folds and seeds, and for each balancer
    the same number of Optuna trials over the network's learning rate and the balancer's own
    fields, fixed task weights (searched on the simplex) among them as the tuned baseline.
    The report says which balancers are established better than tuned fixed weights, by the
    fold-paired statistics of each one's best trial against fixed's best.

    The small model on synthetic 64 px data, 4 trials per balancer (48 in all): an hour or
    two on a laptop CPU, minutes on GPUs. A demo-sized run: --trials-per-balancer 1 and
    --set epochs=2 (README). On real data: --data STORE and the model's fields by --set.
    """
    return StudyConfig(
        name="balancers",
        train=small().replace(epochs=6),
        space={
            "balancer": Choice(CHOICES["balancer"]),
            "lr": LogUniform(3e-4, 3e-3),
            "alpha": LogUniform(0.05, 3.0),
            "balancer_lr": LogUniform(1e-3, 0.1),
            "famo_decay": LogUniform(1e-5, 1e-2),
            "cagrad_c": LogUniform(0.1, 0.9),
            # Normalised onto the simplex by the balancer: relative weights up to 100:1.
            **{f"fixed_{task}": LogUniform(0.1, 10.0) for task in TASKS},
        },
        num_samples=4 * len(CHOICES["balancer"]),
        trials_per_balancer=4,
        synthetic=SynthSpec(patients=32, size=64, specimens=1, seed=0),
    )


PRESETS: dict[str, Callable[[], StudyConfig]] = {
    "demo": demo,
    "smoke": smoke,
    "paper": paper,
    "search": search,
    "balancers": balancers,
}


def get_preset(name: str) -> StudyConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def apply_overrides(study: StudyConfig, changes: Mapping[str, object]) -> StudyConfig:
    """The study with TrainConfig fields set to typed values (`{"epochs": 3,
    "decoder_channels": (64, 32, 16, 8, 8)}`; the command line's `--set` pairs go through
    mtl's parse_overrides first).

    A field that the configurations, the search space or the warm start vary is fixed to the
    value given (a warm-start point keeps the searched fields its balancer still reads).
    Unknown fields and invalid values are errors that name the field.
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ValueError(
            f"overrides: no TrainConfig field {', '.join(unknown)}; fields are: "
            + ", ".join(sorted(fields))
        )
    changes = dict(changes)
    configurations = tuple(
        dict.fromkeys(
            tuple((k, v) for k, v in c.items() if k not in changes) for c in study.configurations
        )
    )
    train = study.train.replace(**changes)
    space = {k: d for k, d in study.space.items() if k not in changes}
    points = []
    for point in study.warm_start:
        balancer = point.get("balancer", train.balancer) if "balancer" in space else train.balancer
        kept = {k: point[k] for k in active_space(space, balancer) if k in point}
        if kept and kept not in points:
            points.append(kept)
    return dataclasses.replace(
        study,
        train=train,
        configurations=tuple(dict(c) for c in configurations if c) if configurations else (),
        space=space,
        warm_start=tuple(points),
    )
