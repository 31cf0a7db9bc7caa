"""A study as a file: the record an earlier study wrote, or a study written by hand.

`study_record` turns a StudyConfig into plain JSON data (what RESULTS/NAME/study.json holds);
`study_from_record` and `load_study_file` turn such data, or a YAML/JSON file with the same
fields, back into the StudyConfig, so that `python -m study.run --config FILE` reruns an
earlier study or runs one written by hand.

The format is StudyConfig's fields as `dataclasses.asdict` gives them (tuples as lists,
`train` and `synthetic` as mappings of their fields), except the search space: a bare
{"low": .., "high": ..} would not say which domain it was, so each domain is tagged:

    space:
      seg_loss: {choice: [dice, bce]}
      alpha: {log_uniform: [0.05, 1.5]}
      epochs: {int_range: [20, 40, 5]}     # low, high, step (step may be left out: 1)

Reading is strict, because a misspelt key in a hand-written file would otherwise run the
default without a word: every key at every level must be a field (the error names the key,
the file and the closest field), and every value must have the field's type. What a file
leaves out takes the dataclasses' defaults: `train` may give only the fields that differ
from TrainConfig's (mtl.config: equal weights, stratified folds; `original()` holds the
original study's settings), and `load_study_file` names a study
without `name` after its file (`my-study.yaml`: my-study). A top-level `provenance` block
(what ran, written by the harness beside the configuration) is a record, not configuration,
and is ignored. A study.json written before the domains were tagged ({"values": [...]},
{"low", "high"}, {"low", "high", "step"}) is read too.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
import types
import typing
from collections.abc import Mapping
from pathlib import Path

import yaml

from mtl import SynthSpec, TrainConfig
from study.spec.presets import RUN_SETTINGS, TRAIN_RUN_SETTINGS, StudyConfig
from study.spec.space import Choice, Domain, IntRange, LogUniform

# Top-level keys a study file may carry that are not configuration: read past, never used.
IGNORED_KEYS = ("provenance",)
DOMAIN_FORMS = ("choice", "log_uniform", "int_range")
DOMAIN_HELP = (
    "a domain is {choice: [a, b, ...]}, {log_uniform: [low, high]} or "
    "{int_range: [low, high, step]}"
)
SUFFIXES = (".json", ".yaml", ".yml")


def study_record(study: StudyConfig) -> dict:
    """The study as JSON-ready data (what RESULTS/NAME/study.json holds): every field as
    `dataclasses.asdict` gives it, tuples as lists, the search space's domains tagged."""
    record = _plain(dataclasses.asdict(study))
    record["space"] = {key: encode_domain(domain) for key, domain in study.space.items()}
    return record


def study_identity(record: Mapping) -> dict[str, object]:
    """What defines the study in a record (study_record's output), flat by key path
    (`train.epochs`, `space.alpha`): everything but the run settings and the provenance."""
    run = {*RUN_SETTINGS, *IGNORED_KEYS, *(f"train.{k}" for k in TRAIN_RUN_SETTINGS)}
    return {k: v for k, v in _flat(record).items() if k not in run}


def run_settings(study: StudyConfig) -> dict:
    """How this run of the study runs: the run settings of the study and of its training."""
    record = study_record(study)
    return {
        **{k: record[k] for k in RUN_SETTINGS},
        **{f"train.{k}": record["train"][k] for k in TRAIN_RUN_SETTINGS},
    }


def _flat(record: Mapping, prefix: str = "") -> dict[str, object]:
    """A nested record flattened to key paths; only `train` and `synthetic` are nested
    further (a space or a configuration compares whole)."""
    flat = {}
    for key, value in record.items():
        path = f"{prefix}{key}"
        if key in ("train", "synthetic") and not prefix and isinstance(value, Mapping):
            flat.update(_flat(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def encode_domain(domain: Domain) -> dict:
    """{"choice": [...]}, {"log_uniform": [low, high]} or {"int_range": [low, high, step]}."""
    if isinstance(domain, Choice):
        return {"choice": _plain(domain.values)}
    if isinstance(domain, LogUniform):
        return {"log_uniform": [domain.low, domain.high]}
    if isinstance(domain, IntRange):
        return {"int_range": [domain.low, domain.high, domain.step]}
    raise TypeError(f"not a search-space domain: {domain!r}")


def study_from_record(record: Mapping, source: str = "") -> StudyConfig:
    """The StudyConfig of `record` (study_record's output, or a hand-written subset of it).

    Raises ValueError naming `source` (the file) and the key for an unknown key, a value of
    the wrong type, a missing `name` and every check of StudyConfig and TrainConfig.
    """
    return _Reader(source).study(record)


def read_study_file(path: str | Path) -> dict:
    """The mapping a .json, .yaml or .yml study file holds, `name` defaulting to its stem."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: a study file ends in {', '.join(SUFFIXES)}")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"no study file {path}") from None
    except OSError as error:
        raise ValueError(f"cannot read the study file {path}: {error}") from None
    if path.suffix.lower() == ".json":
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON: {error}") from None
    else:
        try:
            record = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(record, Mapping):
        raise ValueError(
            f"{path}: a study file holds a mapping of study fields (name: ..., train: ...), "
            f"not {type(record).__name__ if record is not None else 'nothing'}"
        )
    return {"name": path.stem, **record}


def load_study_file(path: str | Path, *, data: str = "") -> StudyConfig:
    """The study in a .json, .yaml or .yml file (see the module's docstring for its format).

    `data` (the command line's --data) replaces train.data before the study is checked, so
    that a file may leave its data to the command line (StudyConfig refuses a study with
    neither train.data nor synthetic).
    """
    record = read_study_file(path)
    train = record.get("train")
    if data and (train is None or isinstance(train, Mapping)):
        record = {**record, "train": {**(train or {}), "data": data}}
    return study_from_record(record, source=str(path))


def _plain(value: object) -> object:
    """JSON's types all the way down: tuples as lists, numpy numbers as Python's."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)  # a Path, say: as json.dumps(default=str) writes it


class _Reader:
    """Builds a StudyConfig from plain data, each error prefixed with the file and the key
    path (`train.epochs`, `space.alpha`, `configurations[2].seg_loss`)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ValueError:
        parts = [p for p in (self.source, where) if p]
        return ValueError(": ".join([*parts, message]))

    def study(self, record: Mapping) -> StudyConfig:
        record = self.mapping("", record)
        values = {k: v for k, v in record.items() if k not in IGNORED_KEYS}
        if "name" not in values:
            raise self.fail("", "no name: a study needs one (its folder, RESULTS/NAME)")
        special = {
            "train": lambda where, value: self.dataclass(where, value, TrainConfig),
            "synthetic": lambda where, value: (
                None if value is None else self.dataclass(where, value, SynthSpec)
            ),
            "space": self.space,
            "configurations": self.configurations,
            "warm_start": self.configurations,
        }
        fields = self.fields(
            "", values, StudyConfig, special, extra=IGNORED_KEYS, what="a study's keys"
        )
        fields.setdefault("train", TrainConfig())
        return self.build("", StudyConfig, fields)

    def dataclass(self, where: str, value: object, cls: type) -> object:
        return self.build(where, cls, self.fields(where, value, cls))

    def build(self, where: str, cls: type, fields: dict) -> object:
        try:
            return cls(**fields)
        except (ValueError, TypeError) as error:  # the dataclass's own checks
            raise self.fail(where, str(error)) from None

    def fields(
        self,
        where: str,
        value: object,
        cls: type,
        special: Mapping | None = None,
        extra: tuple[str, ...] = (),
        what: str = "",
    ) -> dict:
        """The dataclass's keyword arguments from a mapping: known keys, typed values."""
        value, special = self.mapping(where, value), special or {}
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        self.known_keys(where, value, [*names, *extra], what or f"{cls.__name__}'s fields")
        return {
            key: special[key](_join(where, key), item)
            if key in special
            else self.value(_join(where, key), item, hints[key])
            for key, item in value.items()
        }

    def space(self, where: str, value: object) -> dict[str, Domain]:
        value = self.mapping(where, value)
        self.known_keys(where, value, _train_fields(), "TrainConfig's fields")
        return {key: self.domain(_join(where, key), key, spec) for key, spec in value.items()}

    def domain(self, where: str, key: str, spec: object) -> Domain:
        hint = typing.get_type_hints(TrainConfig)[key]
        form, args = self.domain_form(where, spec)
        args = self.value(f"{where}.{form}", args, tuple[object, ...])
        if form == "choice":
            values = tuple(self.value(f"{where}.choice[{i}]", v, hint) for i, v in enumerate(args))
            return self.build(where, Choice, {"values": values})
        if form == "log_uniform":
            if len(args) != 2:
                raise self.fail(where, f"log_uniform takes low and high, got {list(args)}")
            low, high = (self.value(f"{where}.log_uniform", v, float) for v in args)
            return self.build(where, LogUniform, {"low": low, "high": high})
        if len(args) not in (2, 3):
            raise self.fail(where, f"int_range takes low, high and step (or 1), got {list(args)}")
        ints = [self.value(f"{where}.int_range", v, int) for v in args]
        return self.build(where, IntRange, dict(zip(("low", "high", "step"), ints, strict=False)))

    def domain_form(self, where: str, spec: object) -> tuple[str, object]:
        """(form, arguments) of a tagged domain, or of one that study.json wrote untagged."""
        if not isinstance(spec, Mapping):
            raise self.fail(where, f"expected a domain, got {spec!r}; {DOMAIN_HELP}")
        legacy = _legacy_domain(spec)
        if legacy:
            return legacy
        if len(spec) != 1:
            raise self.fail(where, f"expected a domain, got {dict(spec)!r}; {DOMAIN_HELP}")
        ((form, args),) = spec.items()
        if form not in DOMAIN_FORMS:
            close = difflib.get_close_matches(str(form), DOMAIN_FORMS, n=1)
            mean = f"did you mean {close[0]!r}? " if close else ""
            raise self.fail(where, f"unknown domain form {form!r}; {mean}{DOMAIN_HELP}")
        return form, args

    def configurations(self, where: str, value: object) -> tuple[dict, ...]:
        """Configurations or warm-start points: TrainConfig overrides, typed by its fields."""
        hints = typing.get_type_hints(TrainConfig)
        points = self.value(where, value, tuple[object, ...])
        typed = []
        for i, point in enumerate(points):
            at = f"{where}[{i}]"
            point = self.mapping(at, point)
            self.known_keys(at, point, _train_fields(), "TrainConfig's fields")
            typed.append({k: self.value(_join(at, k), v, hints[k]) for k, v in point.items()})
        return tuple(typed)

    def mapping(self, where: str, value: object) -> Mapping:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"expected a mapping of fields, got {value!r}")
        return value

    def known_keys(self, where: str, value: Mapping, allowed, what: str) -> None:
        allowed = list(allowed)
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"{what}: {', '.join(allowed)}"
                raise self.fail(where, f"unknown key {key!r}; {hint}")

    def value(self, where: str, value: object, hint: object) -> object:
        """`value` as the type `hint` says, or an error naming the field and the type."""
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            arms = [a for a in args if a is not type(None)]
            if len(arms) == 1:  # Optional: the arm's own error says more
                return self.value(where, value, arms[0])
            for arm in arms:
                try:
                    return self.value(where, value, arm)
                except ValueError:
                    continue
        elif origin is typing.Literal:
            if value in args:
                return value
        elif origin is tuple:
            if isinstance(value, list | tuple):
                return tuple(self.value(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value))
        elif origin is Mapping:
            if isinstance(value, Mapping):
                return {
                    self.value(where, k, args[0]): self.value(_join(where, k), v, args[1])
                    for k, v in value.items()
                }
        elif dataclasses.is_dataclass(hint):
            return self.dataclass(where, value, hint)
        elif hint is object:
            return value
        elif hint is bool or hint is str:
            if isinstance(value, hint):
                return value
        elif hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif hint is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            # YAML 1.1 reads 1e-3 (no dot) as a string: a number in a float field is meant.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        else:
            raise TypeError(f"{where}: fields of type {hint} cannot be read from a study file")
        raise self.fail(where, f"expected {_describe(hint)}, got {value!r}")


def _join(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _train_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig) if f.init]


def _legacy_domain(spec: Mapping) -> tuple[str, list] | None:
    """(form, arguments) of a domain as `dataclasses.asdict` wrote it into study.json before
    the domains were tagged; the three dataclasses' field sets tell them apart."""
    keys = set(spec)
    if keys == {"values"}:
        return "choice", spec["values"]
    if keys == {"low", "high"}:
        return "log_uniform", [spec["low"], spec["high"]]
    if keys == {"low", "high", "step"}:
        return "int_range", [spec["low"], spec["high"], spec["step"]]
    return None


def _describe(hint: object) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is Mapping:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, "null" if hint is type(None) else getattr(hint, "__name__", str(hint)))
