"""The cluster launcher files pass Ray's own validation, offline, and keep the project's rules.

`ray up` first runs `prepare_config` (merges the provider's defaults.yaml, fills node types)
and `validate_config` (Ray's ray-schema.json plus its own consistency checks); only after that
does it ask the cloud for anything. The test runs those same two functions, so a key Ray
would reject fails here, without credentials or network.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

# validate_config checks the schema with jsonschema (a dev dependency, so never skipped).
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
FILES = ["cluster.yaml", "cluster.local.yaml"]
IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d+)-(?P<platform>gpu|cu\d+)$")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def ray_up_checks(config: dict) -> dict:
    """What `ray up` does to the file before it talks to a cloud: fill defaults, validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", FILES)
def test_ray_accepts_the_file(name):
    ray_up_checks(load(name))


@pytest.mark.parametrize("name", FILES)
def test_the_validation_is_not_vacuous(name):
    config = load(name)
    config["docker"]["imagee"] = config["docker"]["image"]  # a typo Ray must reject
    with pytest.raises(jsonschema.ValidationError):
        ray_up_checks(config)


@pytest.mark.parametrize("name", FILES)
def test_image_is_pinned_to_this_ray(name):
    image = load(name)["docker"]["image"]
    match = IMAGE.match(image)
    assert match, f"{name}: {image} is not an exact rayproject/ray:X.Y.Z-pyNN-gpu tag"
    assert match["ray"] == ray.__version__, f"{name}: bump the image to Ray {ray.__version__}"


def test_both_files_run_the_same_image():
    assert load("cluster.yaml")["docker"]["image"] == load("cluster.local.yaml")["docker"]["image"]


@pytest.mark.parametrize("name", FILES)
def test_head_offers_ray_no_cpus_or_gpus(name):
    start = " ".join(ray_up_checks(load(name))["head_start_ray_commands"])
    assert "--num-cpus=0" in start and "--num-gpus=0" in start


def test_aws_head_declares_zero_cpus_and_no_gpus():
    config = ray_up_checks(load("cluster.yaml"))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0


def test_aws_workers_have_gpus_and_scale_from_zero():
    config = ray_up_checks(load("cluster.yaml"))
    workers = {
        name: node
        for name, node in config["available_node_types"].items()
        if name != config["head_node_type"]
    }
    gpus = sorted(node["resources"]["GPU"] for node in workers.values())
    assert gpus == [1, 8]
    assert all(node["min_workers"] == 0 for node in workers.values())
    assert all(node["max_workers"] >= 1 for node in workers.values())
    assert config["max_workers"] >= 1


@pytest.mark.parametrize("name", FILES)
def test_project_is_mounted_and_installed(name):
    config = load(name)
    assert config["file_mounts"]["/home/ray/hep2-mtl"] == "."
    assert "pip install --quiet -e /home/ray/hep2-mtl" in config["setup_commands"]


@pytest.mark.parametrize("name", FILES)
def test_no_secrets(name):
    text = (ROOT / name).read_text()
    for secret in ("aws_access_key_id", "aws_secret_access_key", "BEGIN RSA", "BEGIN OPENSSH"):
        assert secret.lower() not in text.lower()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # the shape of an AWS access key ID


@pytest.mark.parametrize("name", FILES)
def test_the_dashboard_listens_on_localhost_only(name):
    """The dashboard serves Ray's job API (arbitrary code on every node): never on a public
    address; users reach it through `ray dashboard FILE` (an SSH tunnel)."""
    commands = " ".join(load(name)["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", commands)
    assert hosts and all(host in ("127.0.0.1", "localhost") for host in hosts), hosts


def test_a_public_dashboard_would_be_caught():
    commands = "ray start --head --dashboard-host=0.0.0.0"
    hosts = re.findall(r"--dashboard-host[= ](\S+)", commands)
    assert hosts == ["0.0.0.0"] and not all(h in ("127.0.0.1", "localhost") for h in hosts)


def _outside_rules(rules: list[dict]) -> list[dict]:
    """The inbound rules that admit addresses (IpRanges) rather than the cluster's groups."""
    return [rule for rule in rules if rule.get("IpRanges") or rule.get("Ipv6Ranges")]


def _admits_more_than_ssh(rules: list[dict]) -> bool:
    return any(
        (rule.get("IpProtocol"), rule.get("FromPort"), rule.get("ToPort")) != ("tcp", 22, 22)
        for rule in _outside_rules(rules)
    )


def test_aws_admits_nothing_but_ssh_from_outside():
    """The inbound rules Ray's AWS provider makes of this file: its defaults (the cluster's
    own groups, and SSH from anywhere: ray/autoscaler/_private/aws/config.py,
    _create_default_inbound_rules, which needs boto3 to import) plus the file's
    IpPermissions."""
    group = load("cluster.yaml")["provider"]["security_group"]
    assert group["GroupName"]  # declared, so that nobody else's group is reused by name
    defaults = [
        {"IpProtocol": "-1", "FromPort": -1, "ToPort": -1,
         "UserIdGroupPairs": [{"GroupId": "sg-cluster"}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    ]  # fmt: skip
    rules = defaults + list(group.get("IpPermissions", []))
    assert _outside_rules(rules) and not _admits_more_than_ssh(rules)


def test_an_open_inbound_rule_would_be_caught():
    dashboard = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
                 "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}  # fmt: skip
    assert _admits_more_than_ssh([dashboard])


@pytest.mark.parametrize("name", FILES)
def test_token_authentication_is_on_everywhere(name):
    """Every process of every node runs with RAY_AUTH_MODE=token and the user's token."""
    config = load(name)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert not re.search(r"RAY_AUTH_MODE\s*=\s*disabled", (ROOT / name).read_text())


@pytest.mark.parametrize("name", FILES)
def test_the_repository_s_git_reaches_the_head(name):
    """The driver on the head names the commit it runs (study/provenance.py) from .git, and
    hands it to every trial: `ray up` must copy it."""
    import fnmatch

    excluded = load(name).get("rsync_exclude", [])
    for path in (".git", ".git/HEAD", "hep2-mtl/.git/refs/heads/main"):
        assert not any(fnmatch.fnmatch(path, pattern) for pattern in excluded), path
