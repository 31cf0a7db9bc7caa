"""Training configuration of one fold: a frozen dataclass, validated on construction.

`study` builds on these; nothing here knows about Ray or Optuna. A configuration is made,
changed and checked without torch (tests/test_layering.py); only `is_active` loads the torch
code, the balancer classes it asks.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mtl.schema import TASKS

# A field with a closed set of values: its names, here without torch, so that a configuration
# is made and checked without loading the code that builds it. Each name's factory lives with
# that code, in a registry that checks on import that it has exactly these names
# (`check_registry`): a strategy added there must be named here, where it becomes valid and
# listed in every --help.
CHOICES: dict[str, tuple[str, ...]] = {
    "folds": ("stratified", "seed"),  # mtl.data.folds.FOLD_SCHEMES
    "augment": ("none", "basic"),  # mtl.data.augment.AUGMENTATIONS
    "head": ("flatten", "pool"),  # mtl.model.HEADS
    "seg_loss": ("dice", "bce"),  # mtl.losses.SEG_LOSSES
    "balancer": (  # mtl.balancing.BALANCERS
        "equal",
        "gradnorm",
        "uncertainty",
        "dwa",
        "rlw",
        "famo",
        "fixed",
        "upgrad",
        "pcgrad",
        "mgda",
        "cagrad",
        "nashmtl",
    ),
    "lr_schedule": ("constant", "cosine"),  # mtl.trainer.LR_SCHEDULES
    "device": ("auto", "cpu", "cuda"),  # mtl.trainer.DEVICES
}
# Schedules whose value at an epoch depends on the total epochs: trials of different lengths
# are at different points of them at the same epoch (which ASHA's rungs compare).
EPOCH_DEPENDENT_SCHEDULES = frozenset({"cosine"})
# GradNorm's asymmetry and the task weights' learning rate (GradNorm's paper: 0.025); the
# balancers take these defaults from here.
ALPHA = 0.12
BALANCER_LR = 0.025
# FAMO's decay of its task-weight logits (Liu et al. 2023, Algorithm 2: gamma = 1e-3).
FAMO_DECAY = 1e-3
# CAGrad's radius c (Liu et al. 2021: 0.4 on NYU-v2 and Cityscapes, dense prediction).
CAGRAD_C = 0.4


def check_registry(field: str, registry: Mapping[str, object]) -> None:
    """Raise unless `registry` (name -> factory) has exactly the names of CHOICES[field], in
    their order: called by each registry's module when it is imported."""
    if tuple(registry) != CHOICES[field]:
        raise ImportError(
            f"the {field} registry has {', '.join(registry)} but mtl.config.CHOICES[{field!r}] "
            f"lists {', '.join(CHOICES[field])}; name every {field} in both, in one order"
        )


def check_choice(field: str, value: object) -> None:
    """Raise a ValueError naming the valid values unless `value` is one of `field`'s."""
    names = CHOICES[field]
    if value in names:
        return
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"{field} must be one of {', '.join(names)}; got {value!r}{hint}")


def is_active(field: str, balancer: str) -> bool:
    """Whether `field` means anything to a fold trained with `balancer`: a field some balancer
    reads (its class's `reads`) means nothing to the others; a search does not sample it for
    them, and the result tables and labels leave it null there. An unknown balancer reads no
    balancer field.

    The balancer classes are the one statement of what each reads (build_balancer passes
    them exactly those fields), and they are torch modules: their module is imported here,
    on the first question, not when the configuration is. Whoever asks (a search space, a
    results table) is about to train or tabulate folds; TrainConfig itself never asks.
    """
    from mtl.balancing import BALANCERS

    reads = {name: cls.reads for name, cls in BALANCERS.items()}
    read_by_some = {name for fields in reads.values() for name in fields}
    return field not in read_by_some or field in reads.get(balancer, ())


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that decides how one fold is trained and evaluated.

    Defaults are the original study's model and optimisation (EfficientNet-B4 U-Net at 384
    px, Adam 1e-4, batch 8, Dice loss) with equal task weights and stratified folds; its
    GradNorm and fold table are `original()`'s. `data` a caller always sets.
    """

    # Data: a patch store made by `python -m mtl.data` (or the synthetic generator).
    data: str = ""
    folds: str = "stratified"  # CHOICES["folds"]
    num_folds: int = 5
    fold_seed: int = 0
    # Patients in no fold, neither trained nor validated on: a study's test set, chosen once
    # before the search (StudyConfig.test_patients), so that the chosen configuration gets an
    # estimate free of the selection's optimism.
    held_out: tuple[int, ...] = ()
    augment: str = "none"  # the original study had none
    # Model: an smp U-Net with two classification heads on the bottleneck.
    encoder: str = "efficientnet-b4"
    encoder_depth: int = 5
    encoder_weights: str | None = None  # a local state-dict file; nothing is downloaded
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    head: str = "flatten"
    head_hidden: int = 512
    image_size: int = 384
    # The tasks trained (any non-empty subset of TASKS, kept in TASKS order): all three, or
    # fewer for a single-task baseline. The model keeps every head; only these tasks' losses
    # are trained and balanced, and the other tasks' metrics are null.
    tasks: tuple[str, ...] = TASKS
    # Optimisation.
    seg_loss: str = "dice"
    balancer: str = "equal"
    alpha: float = ALPHA  # GradNorm's asymmetry
    balancer_lr: float = BALANCER_LR  # the task weights' own Adam (GradNorm, uncertainty, FAMO)
    famo_decay: float = FAMO_DECAY  # FAMO: weight decay of its task-weight logits
    cagrad_c: float = CAGRAD_C  # CAGrad: how far the update may move from the mean gradient
    # `fixed`: each task's weight, relative (normalised onto the simplex, then scaled to sum
    # to the number of tasks trained: equal values train exactly as `equal`).
    fixed_seg: float = 1.0
    fixed_pattern: float = 1.0
    fixed_intensity: float = 1.0
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-4
    # constant (the original; epoch k of a longer run equals a k-epoch run, which ASHA and an
    # epochs search rely on) or cosine decay to zero over `epochs`, per epoch.
    lr_schedule: str = "constant"
    threshold: float = 0.5  # on the mask probability, for pixel accuracy
    # A fold fails when more than this share of an epoch's training steps had a non-finite
    # loss (each such step is skipped and changes nothing): a diverged fold, not noise.
    max_skipped_share: float = 0.05
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0  # loader worker processes; 0 reads batches in the training process
    checkpoint_every: int = 1  # epochs between checkpoints (and always after the last)

    def __post_init__(self) -> None:
        for name in CHOICES:
            check_choice(name, getattr(self, name))
        # In TASKS order (a frozen field, set once here): seg,intensity and intensity,seg
        # are one configuration.
        object.__setattr__(self, "tasks", _check_tasks(self.tasks))
        for name in ("num_folds", "encoder_depth", "head_hidden", "image_size", "epochs",
                     "checkpoint_every"):  # fmt: skip
            _check_positive(name, getattr(self, name))
        _check_positive("batch_size", self.batch_size)
        _check_positive("lr", self.lr)
        _check_positive("balancer_lr", self.balancer_lr)
        for name in ("alpha", "famo_decay", "cagrad_c"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for task in TASKS:
            _check_positive(f"fixed_{task}", getattr(self, f"fixed_{task}"))
        if self.num_folds < 2:
            raise ValueError(f"num_folds must be at least 2, got {self.num_folds}")
        if not 0.0 <= self.max_skipped_share <= 1.0:
            raise ValueError(f"max_skipped_share must lie in [0, 1], got {self.max_skipped_share}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if len(set(self.held_out)) != len(self.held_out):
            raise ValueError(f"held_out lists a patient twice: {self.held_out}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if len(self.decoder_channels) < self.encoder_depth:
            raise ValueError(
                f"decoder_channels needs {self.encoder_depth} entries (encoder_depth), "
                f"got {self.decoder_channels}"
            )
        stride = 2**self.encoder_depth
        if self.image_size % stride:
            raise ValueError(
                f"image_size must be a multiple of {stride} (2**encoder_depth), "
                f"got {self.image_size}"
            )

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """From `dataclasses.asdict` output read back from JSON (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def replace(self, **changes: object) -> TrainConfig:
        """A copy with some fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)


def original() -> TrainConfig:
    """The original study: EfficientNet-B4 U-Net at 384 px, Adam 1e-4, batch 8, seed folds,
    GradNorm whose weights shared the network's Adam at lr 1e-4."""
    return TrainConfig(folds="seed", epochs=30, balancer="gradnorm", alpha=0.06, balancer_lr=1e-4)


def tiny() -> TrainConfig:
    """Seconds per epoch on a CPU: a small timm encoder at 64 px, for tests and smoke runs."""
    return TrainConfig(
        encoder="tu-mobilenetv3_small_050",
        decoder_channels=(64, 32, 16, 8, 8),
        head="pool",
        head_hidden=64,
        image_size=64,
        epochs=2,
        batch_size=16,
        lr=1e-3,
        device="cpu",
    )


def small() -> TrainConfig:
    """A small encoder at 64 px that learns the synthetic task on a CPU in minutes: augmented,
    cosine learning rate (the demo's and the learning tests' model)."""
    return tiny().replace(
        encoder="tu-resnet10t", epochs=8, lr_schedule="cosine", augment="basic", device="auto"
    )


TRAIN_PRESETS = {"original": original, "small": small, "tiny": tiny}


def package_version() -> str:
    """The installed hep2-mtl's version ("unknown" when it runs from a tree not installed)."""
    from importlib import metadata

    try:
        return metadata.version("hep2-mtl")
    except metadata.PackageNotFoundError:
        return "unknown"


def add_version_option(parser) -> None:
    """Every command's `--version`."""
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s (hep2-mtl {package_version()})"
    )


def add_overrides_option(parser) -> None:
    """Every command's `--set KEY=VALUE` (into `args.overrides`, for `parse_overrides`),
    its help listing the names of each field with a closed set (CHOICES)."""
    listed = "; ".join(f"{name}: {'|'.join(names)}" for name, names in CHOICES.items())
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training field (mtl.config.TrainConfig), e.g. --set epochs=5; "
        f"repeatable. Choices: {listed}",
    )


def parse_overrides(pairs: Sequence[str]) -> dict[str, object]:
    """`["epochs=3", "lr=1e-3"]` -> {"epochs": 3, "lr": 0.001}, typed by TrainConfig's fields.

    Unknown keys and values of the wrong type raise ValueError naming the field.
    """
    hints = typing.get_type_hints(TrainConfig)
    changes: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--set {pair!r}: expected key=value")
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
            raise ValueError(f"--set {key}: no such field; fields are: {known}")
        changes[key] = parse_value(key, text.strip(), hints[key])
    return changes


def parse_value(key: str, text: str, hint: object) -> object:
    """Turn the text of `--set key=text` into the field's type, or raise naming the field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is tuple:
            return tuple(parse_value(key, part.strip(), args[0]) for part in text.split(","))
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(text)
    except ValueError:
        name = getattr(hint, "__name__", hint)
        raise ValueError(f"--set {key}={text}: not a valid {name}") from None
    raise ValueError(f"--set {key}: fields of type {hint} cannot be set from the command line")


def _check_tasks(tasks: Sequence[str] | str) -> tuple[str, ...]:
    """`tasks` in TASKS order, or a ValueError naming what is wrong. A string is read as
    `--set tasks=...` writes them ("seg,intensity"): so a study's trial configurations carry
    them, as Ray Tune would take a tuple apart into nested parameters."""
    if isinstance(tasks, str):
        tasks = tuple(task.strip() for task in tasks.split(",") if task.strip())
    if not tasks:
        raise ValueError(f"tasks must name at least one of {', '.join(TASKS)}; got {tasks!r}")
    for task in tasks:
        if task not in TASKS:
            close = difflib.get_close_matches(str(task), TASKS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"tasks: {task!r} is not a task; the tasks are "
                             f"{', '.join(TASKS)}{hint}")  # fmt: skip
        if list(tasks).count(task) > 1:
            raise ValueError(f"tasks names {task!r} twice: {tuple(tasks)}")
    return tuple(task for task in TASKS if task in tasks)


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
