"""Experiment trackers, opt-in: `--tracker mlflow` and `--tracker wandb`.

Each is Ray Tune's own logger callback, narrowed to what a study means:

- one tracker run per trial (a resumed trial continues its run), named by its Tune trial id;
- its parameters are the trial's training configuration without the fields its balancer
  does not read (no alpha on an `equal` trial), as everywhere else in the harness;
- its metrics are the cross-validated `cv_*` of every epoch, at step = epoch;
- tags (W&B: config keys) for the study name and the Tune and Optuna trial ids.

After the report, one study-level run holds report.md, the tables' CSVs and the figures.
The callbacks themselves are in study/trackers/callbacks.py (importing MLflow or W&B takes
seconds; this module stays light for the command line's checks).
The Parquet tables in RESULTS/NAME stay the record; a tracker is a view of them.

MLflow: the tracking URI is MLFLOW_TRACKING_URI, else a SQLite database inside the study
folder (RESULTS/NAME/mlflow.db, artifacts beside it; MLflow 3 refuses its old plain-folder
store); the experiment is MLFLOW_EXPERIMENT_NAME, else the study's name.
W&B: the project is WANDB_PROJECT, else "hep2-mtl", one group per study; runs are written
offline under RESULTS/NAME/wandb (upload them later with `wandb sync`) unless this machine
is logged in (`wandb login` or WANDB_API_KEY), or WANDB_MODE says otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from mtl import TrainConfig, is_active
from study.results.tables import OPTUNA_TRIAL, train_overrides

# name -> (the module it imports, the extra that installs it)
TRACKERS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}
STUDY_RUN_TAG = "hep2.run"  # "trial" or "study"
logger = logging.getLogger(__name__)


def check_trackers(names: Iterable[str]) -> tuple[str, ...]:
    """The tracker names, each known and importable; otherwise a ValueError that says how to
    install it, before any data or Ray."""
    names = (names,) if isinstance(names, str) else names
    names = tuple(dict.fromkeys(names))  # in order, once each
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"unknown tracker {name!r}; expected one of {', '.join(TRACKERS)}")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(
                f"--tracker {name} needs the {module} package: pip install 'hep2-mtl[{extra}]' "
                f"(in a clone of the repository: pip install -e '.[{extra}]')"
            )
    return names


def trial_params(base: TrainConfig, config: Mapping) -> dict:
    """A trial's training configuration (the study's base with the trial's values), without
    the fields its balancer does not read."""
    params = {**dataclasses.asdict(base), **train_overrides(config)}
    return {k: v for k, v in params.items() if is_active(k, params["balancer"])}


def study_key(folder: str | os.PathLike) -> str:
    """A short id of the study folder: runs are matched by it (not by the study's name, which
    two folders can share and which may hold characters a filter or a W&B id refuses)."""
    return hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:10]


def study_tags(study: str, folder: str | os.PathLike, level: str) -> dict[str, str]:
    return {"study": study, "study_key": study_key(folder), STUDY_RUN_TAG: level}


def trial_tags(study: str, folder: str | os.PathLike, trial) -> dict[str, str]:
    tags = {**study_tags(study, folder, "trial"), "tune_trial_id": trial.trial_id}
    if trial.config.get(OPTUNA_TRIAL) is not None:
        tags[OPTUNA_TRIAL] = str(trial.config[OPTUNA_TRIAL])
    return tags


def cv_metrics(result: Mapping) -> dict[str, float]:
    """The cross-validated metrics of one report (fold means, their spread, the score)."""
    return {k: float(v) for k, v in result.items() if k.startswith("cv_") and v is not None}


def log_study(names: Sequence[str], study: str, folder: Path, files: Iterable[Path]) -> None:
    """The study-level run of each tracker: stats.csv, the report, tables' CSVs and figures in
    `files`, and (MLflow) each trial run tagged with the status it ended with."""
    files = {Path(folder) / "stats.csv", *map(Path, files)}
    files = sorted(f for f in files if f.is_file())
    for name in names:
        try:
            {"mlflow": _mlflow_study_run, "wandb": _wandb_study_run}[name](study, folder, files)
        except Exception as error:  # noqa: BLE001 - the study is done and in its folder
            logger.warning("%s: the study run was not logged: %s", name, error)


# --- MLflow ---------------------------------------------------------------------------------


def mlflow_target(study: str, folder: Path) -> tuple[str, str, str | None]:
    """(tracking URI, experiment name, artifact location or None for the server's own)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or study
    if uri:
        return uri, experiment, None
    folder = Path(folder).resolve()
    return f"sqlite:///{folder / 'mlflow.db'}", experiment, str(folder / "mlflow-artifacts")


def find_runs(client, experiment_id: str, tags: Mapping[str, str]) -> list:
    """The MLflow run (at most one) with these study key, trial and level tags (values of
    hex digits and underscores only: nothing to quote in the filter)."""
    keys = ("study_key", "tune_trial_id", STUDY_RUN_TAG)
    where = " and ".join(f"tags.`{k}` = '{tags[k]}'" for k in keys if k in tags)
    return client.search_runs([experiment_id], filter_string=where, max_results=1)


def mlflow_experiment(client, study: str, folder: Path) -> str:
    """The experiment's id, resolved as Ray's callback does (MLFLOW_EXPERIMENT_ID first), so
    that the study run lands beside its trials."""
    from mlflow.exceptions import MlflowException

    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        with contextlib.suppress(MlflowException):
            return client.get_experiment(os.environ["MLFLOW_EXPERIMENT_ID"]).experiment_id
    _, name, artifact_location = mlflow_target(study, folder)
    experiment = client.get_experiment_by_name(name)
    if experiment:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def _mlflow_study_run(study: str, folder: Path, files: list[Path]) -> None:
    import mlflow
    import pandas as pd

    uri, _, _ = mlflow_target(study, folder)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = mlflow_experiment(client, study, folder)
    tags = study_tags(study, folder, "study")
    (run,) = find_runs(client, experiment_id, tags) or [
        client.create_run(experiment_id, run_name=f"{study} (study)", tags=tags)
    ]
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    # Each trial run says how the trial ended (ASHA's pruned trials end as FINISHED runs).
    trials = pd.read_parquet(Path(folder) / "trials.parquet", columns=["trial_id", "status"])
    for row in trials.itertuples():
        trial = {"study_key": tags["study_key"], "tune_trial_id": row.trial_id}
        for trial_run in find_runs(client, experiment_id, trial):
            client.set_tag(trial_run.info.run_id, "status", row.status)
    client.set_terminated(run.info.run_id)


# --- Weights & Biases -------------------------------------------------------------------------


def wandb_project() -> str:
    return os.environ.get("WANDB_PROJECT") or "hep2-mtl"


def wandb_run_id(folder: str | os.PathLike, name: str) -> str:
    """A W&B run id unique to the study folder (W&B ids refuse :;,#?' and more)."""
    return f"{study_key(folder)}-{name}"


def wandb_tags(study: str) -> list[str]:
    return [study[:64]]  # W&B's limit for a tag


def wandb_mode() -> str:
    """WANDB_MODE if set; else online when this machine is logged in, offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    import wandb

    try:  # credentials from `wandb login` (netrc), without prompting or a network call
        return "online" if wandb.login(prompt=False, verify=False) else "offline"
    except TypeError:  # an older wandb, whose login has no `prompt`
        wandb.ensure_configured()
        return "online" if wandb.api.api_key else "offline"
    except Exception:  # noqa: BLE001 - no usable login: offline, as documented
        return "offline"


def _wandb_study_run(study: str, folder: Path, files: list[Path]) -> None:
    import pandas as pd
    import wandb

    run = wandb.init(
        project=wandb_project(),
        group=study,
        job_type="study",
        name=f"{study} (study)",
        id=wandb_run_id(folder, "study"),
        resume="allow",
        dir=str(Path(folder).resolve()),
        mode=wandb_mode(),
        tags=wandb_tags(study),
        config=study_tags(study, folder, "study"),
    )
    try:
        report = wandb.Artifact(f"{study}-report", type="report")
        for path in files:
            report.add_file(str(path))
        run.log_artifact(report)
        figures = {p.stem: wandb.Image(str(p)) for p in files if p.suffix == ".png"}
        stats = Path(folder) / "stats.csv"
        tables = {"stats": wandb.Table(dataframe=pd.read_csv(stats))} if stats.is_file() else {}
        run.log({**figures, **tables})
    finally:
        run.finish()
