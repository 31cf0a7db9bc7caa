"""Study files: every preset survives study.json and YAML, hand-written files load with the
defaults filled in, and a misspelt key anywhere stops `--config` before any work."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from mtl import SynthSpec, TrainConfig, original, parse_overrides
from study.driver import prepare as prepare_module
from study.run import main, parse_args, resolve_study
from study.spec.presets import PRESETS, StudyConfig, apply_overrides, smoke
from study.spec.record import load_study_file, study_from_record, study_record
from study.spec.space import Choice, IntRange, LogUniform

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_json_and_yaml(name):
    study = PRESETS[name]()
    record = study_record(study)
    assert study_from_record(json.loads(json.dumps(record))) == study
    assert study_from_record(yaml.safe_load(yaml.safe_dump(record))) == study
    # study.json as written before the domains were tagged reads back too.
    legacy = json.loads(json.dumps(dataclasses.asdict(study), default=str))
    assert study_from_record(legacy) == study


def test_domains_are_tagged_and_a_resolved_study_round_trips():
    search = PRESETS["search"]()
    assert study_record(search)["space"] == {
        "alpha": {"log_uniform": [0.01, 3.0]},
        "epochs": {"int_range": [20, 40, 5]},
        "seg_loss": {"choice": ["dice", "bce"]},
        "balancer": {"choice": ["gradnorm", "equal", "uncertainty", "dwa"]},
        "balancer_lr": {"log_uniform": [1e-4, 0.1]},
    }
    # What run_study writes: data and held-out patients filled in, overrides applied.
    resolved = apply_overrides(
        search, parse_overrides(["data=/stores/x", "decoder_channels=8,8,8,8,8"])
    )
    resolved = dataclasses.replace(resolved, train=resolved.train.replace(held_out=(3, 17)))
    assert study_from_record(json.loads(json.dumps(study_record(resolved)))) == resolved


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = """
name: mine
train: {epochs: 3, lr: 1e-3, decoder_channels: [64, 32, 16, 8, 8], balancer: gradnorm}
space:
  seg_loss: {choice: [dice, bce]}
  alpha: {log_uniform: [0.05, 1.5]}
  batch_size: {int_range: [4, 16, 4]}
  head_hidden: {int_range: [32, 64]}
warm_start:
  - {seg_loss: dice, alpha: 0.5, batch_size: 8, head_hidden: 64}
num_samples: 4
synthetic: {patients: 20}
provenance: {runs: [{command: python -m study.run, started: "2025-01-01"}]}
"""


def test_a_hand_written_file_takes_the_defaults_for_what_it_leaves_out(tmp_path):
    expected = StudyConfig(
        name="mine",
        # 1e-3 without a dot is a string to YAML 1.1; a float field reads it as the number.
        train=TrainConfig(
            epochs=3, lr=0.001, decoder_channels=(64, 32, 16, 8, 8), balancer="gradnorm"
        ),  # fmt: skip
        space={
            "seg_loss": Choice(("dice", "bce")),
            "alpha": LogUniform(0.05, 1.5),
            "batch_size": IntRange(4, 16, 4),
            "head_hidden": IntRange(32, 64),
        },
        warm_start=({"seg_loss": "dice", "alpha": 0.5, "batch_size": 8, "head_hidden": 64},),
        num_samples=4,
        synthetic=SynthSpec(patients=20),
    )
    assert load_study_file(write(tmp_path, MINIMAL)) == expected  # provenance: ignored
    assert load_study_file(write(tmp_path, json.dumps(study_record(expected)), "s.json")) == (
        expected
    )
    # No name: the file's; no train: TrainConfig's defaults, the original study's settings.
    unnamed = load_study_file(write(tmp_path, "synthetic: {}\n", "my-study.yml"))
    assert unnamed.name == "my-study" and unnamed.train == TrainConfig()
    assert original().encoder == unnamed.train.encoder


def test_the_readme_example_is_a_valid_study(tmp_path):
    text = README.read_text().split("**A study from a file.**", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    study = load_study_file(write(tmp_path, example))
    assert study.scheduler == "asha" and isinstance(study.space["alpha"], LogUniform)
    assert study.train.image_size == study.synthetic.size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nscheduelr: asha\n", r"unknown key 'scheduelr'; did you mean 'scheduler'"),
        ("name: x\ntrain: {epohcs: 3}\n", r"train: unknown key 'epohcs'; did you mean 'epochs'"),
        ("name: x\nsynthetic: {patient: 3}\n", r"synthetic: unknown key 'patient'"),
        ("name: x\nspace: {alpah: {choice: [1]}}\n", r"space: unknown key 'alpah'.*'alpha'"),
        (
            "name: x\nspace: {alpha: {loguniform: [0.1, 1]}}\n",
            r"space.alpha: unknown domain form 'loguniform'; did you mean 'log_uniform'",
        ),
        (
            "name: x\nspace: {alpha: {uniform: [0.1, 1]}}\n",
            r"unknown domain form 'uniform'.* a domain is \{choice",
        ),
        (
            "name: x\nconfigurations: [{seg_los: bce}]\n",
            r"configurations\[0\]: unknown key 'seg_los'",
        ),
        ("name: x\nzzz: 1\n", r"unknown key 'zzz'; a study's keys: name, train, "),
    ],
)
def test_an_unknown_key_names_itself_and_the_file(tmp_path, text, message):
    path = write(tmp_path, text + "synthetic: {}\n" * ("synthetic" not in text))
    with pytest.raises(ValueError, match=message) as error:
        load_study_file(path)
    assert str(error.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: {epochs: three}", r"train.epochs: expected an integer, got 'three'"),
        ("train: {lr: fast}", r"train.lr: expected a number, got 'fast'"),
        ("train: {decoder_channels: 8}", r"train.decoder_channels: expected a list of integ"),
        ("scheduler: ASHA", r"scheduler: expected one of 'none', 'asha', got 'ASHA'"),
        ("gpus_per_fold: many", r"gpus_per_fold: expected a number or 'auto', got 'many'"),
        ("space: {epochs: {choice: [20, '30']}}", r"space.epochs.choice\[1\]: expected an int"),
        ("space: {alpha: {log_uniform: [1.0]}}", r"space.alpha: log_uniform takes low and high"),
        ("space: {alpha: {log_uniform: [2, 1]}}", r"space.alpha: LogUniform needs 0 < low"),
        ("train: {image_size: 100}", r"train: image_size must be a multiple of 32"),
        ("repeats: 0", r"repeats must be at least 1"),
    ],
)
def test_a_bad_value_names_the_field_and_the_file(tmp_path, text, message):
    path = write(tmp_path, f"name: x\nsynthetic: {{}}\n{text}\n")
    with pytest.raises(ValueError, match=message) as error:
        load_study_file(path)
    assert str(error.value).startswith(f"{path}: ")


def test_missing_unparsable_and_non_mapping_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no study file .*nothere.yaml"):
        load_study_file(tmp_path / "nothere.yaml")
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        load_study_file(write(tmp_path, "name: [x\n", "broken.yaml"))
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_study_file(write(tmp_path, "{name: x}", "broken.json"))
    with pytest.raises(ValueError, match="list.yaml: a study file holds a mapping"):
        load_study_file(write(tmp_path, "- name: x\n", "list.yaml"))
    with pytest.raises(ValueError, match="study.toml: a study file ends in .json, .yaml, .yml"):
        load_study_file(write(tmp_path, "name = 'x'\n", "study.toml"))
    with pytest.raises(ValueError, match="no name"):
        study_from_record({"synthetic": {}})


def test_config_and_preset_exclude_each_other(tmp_path, capsys):
    path = write(tmp_path, "name: x\nsynthetic: {}\n")
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--config", str(path), "--preset", "demo"])
    assert exit_.value.code == 2
    assert "--preset: not allowed with argument --config" in capsys.readouterr().err


def test_flags_apply_on_top_of_the_file(tmp_path):
    path = write(tmp_path, json.dumps(study_record(smoke())), "study.json")
    argv = ["--config", str(path), "--set", "epochs=1", "--name", "again", "--repeats", "2"]
    assert resolve_study(parse_args(argv)) == dataclasses.replace(
        apply_overrides(smoke(), parse_overrides(["epochs=1"])), name="again", repeats=2
    )
    # A file may leave its data to --data: the study is checked with it.
    dataless = write(tmp_path, "name: x\ntrain: {epochs: 2}\n")
    study = resolve_study(parse_args(["--config", str(dataless), "--data", str(tmp_path)]))
    assert study.train.data == str(tmp_path.resolve()) and study.synthetic is None
    assert resolve_study(parse_args([])).name == "demo"  # still the default preset


def test_a_misspelt_key_stops_the_command_before_data_or_ray(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("reached work that a bad study file must prevent")

    monkeypatch.setattr(prepare_module, "prepare_data", never)
    monkeypatch.setattr(prepare_module, "connect", never)
    path = write(tmp_path, "name: x\nsynthetic: {}\ntrain: {epohcs: 3}\n", "typo.yaml")
    assert main(["--config", str(path), "--results", str(tmp_path)]) == 2
    printed = "".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "'epohcs'" in printed and "typo.yaml" in printed and "'epochs'" in printed
