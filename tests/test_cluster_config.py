"""Offline checks of cluster.yaml (the `ray up` config for AWS).

Two kinds of checks:

* Ray's own: the steps `ray up` runs before it touches AWS -- ``prepare_config`` (merge with
  ``aws/defaults.yaml``, setup-command merge, Docker check, min/max workers), the JSON-schema and
  consistency check ``validate_config``, and ``commands._bootstrap_config`` itself with the two
  AWS calls in it replaced: the EC2 instance catalog (resource autodetection) comes from a table
  of published instance specs below, and the provider bootstrap (IAM, key pair, subnets, security
  groups) is skipped. Every boto3 client is blocked, so nothing here can reach AWS. The parts of
  the AWS bootstrap that need no AWS (default AMI, "a head profile is given") and the autoscaler
  v2 scheduler's choice of node type are run on the result.
* The project's rules: Ray/Python pinned in the image, instance profiles everywhere, spot types
  with an on-demand type of the same shape, bounded workers, a head that takes no trials, no
  dashboard port open to the internet, no secrets in the file, and a setup that installs this
  project.

The autoscaler internals used here are private; pyproject pins ray to 2.60.x.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
SPACE = ROOT / "search_spaces" / "nextvlad.yaml"  # the GPU space this cluster is sized for

# The DescribeInstanceTypes fields Ray's resource autodetection reads, for the instance types the
# file uses (AWS published specs). An instance type missing here fails the test: add its specs.
EC2_CATALOG: list[dict[str, Any]] = [
    {"InstanceType": "m5.2xlarge", "VCpuInfo": {"DefaultVCpus": 8}, "MemoryInfo": {"SizeInMiB": 32768}},
    {
        "InstanceType": "g5.12xlarge",
        "VCpuInfo": {"DefaultVCpus": 48},
        "MemoryInfo": {"SizeInMiB": 196608},
        "GpuInfo": {"Gpus": [{"Name": "A10G", "Manufacturer": "NVIDIA", "Count": 4,
                              "MemoryInfo": {"SizeInMiB": 24576}}]},
    },
    {
        "InstanceType": "p4d.24xlarge",
        "VCpuInfo": {"DefaultVCpus": 96},
        "MemoryInfo": {"SizeInMiB": 1179648},
        "GpuInfo": {"Gpus": [{"Name": "A100", "Manufacturer": "NVIDIA", "Count": 8,
                              "MemoryInfo": {"SizeInMiB": 40960}}]},
    },
]
CATALOG = {entry["InstanceType"]: entry for entry in EC2_CATALOG}
PROFILE_ARN = re.compile(r"^arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+$")
MAX_CLUSTER_WORKERS = 16  # a cost guard: raise it on purpose, not by accident


def read_cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def is_spot(node_type: dict[str, Any]) -> bool:
    return node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"


def gpus(node_type: dict[str, Any]) -> int:
    return int(node_type["resources"].get("GPU", 0))


@pytest.fixture
def raw() -> dict[str, Any]:
    return read_cluster()


@pytest.fixture
def workers(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in raw["available_node_types"].items() if k != raw["head_node_type"]}


@pytest.fixture
def offline_aws(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Block every boto3 client/resource, serve the instance catalog from EC2_CATALOG and record
    (instead of running) the AWS provider bootstrap. Runs from the repository root, as `ray up`."""
    import boto3.session
    from ray.autoscaler._private.aws import node_provider

    def no_aws(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"AWS call attempted: {args[1:2]}")

    monkeypatch.setattr(boto3.session.Session, "client", no_aws)
    monkeypatch.setattr(boto3.session.Session, "resource", no_aws)

    def catalog(region: str, aws_credentials: Any = None) -> list[dict[str, Any]]:
        return copy.deepcopy(EC2_CATALOG)

    monkeypatch.setattr(node_provider, "list_ec2_instances", catalog)
    calls: dict[str, Any] = {}

    def bootstrap(config: dict[str, Any]) -> dict[str, Any]:
        calls["bootstrap"] = copy.deepcopy(config)
        return config

    monkeypatch.setattr(node_provider.AWSNodeProvider, "bootstrap_config", staticmethod(bootstrap))
    monkeypatch.chdir(ROOT)
    return calls


@pytest.fixture
def bootstrapped(offline_aws: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` resolves it up to the AWS bootstrap."""
    from ray.autoscaler._private.commands import _bootstrap_config

    config = _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)
    assert "bootstrap" in offline_aws, "ray up's sequence changed: the provider bootstrap was not reached"
    return config


# ---------------------------------------------------------------------------------------------
# Ray's validation


def test_raw_file_matches_ray_schema(raw: dict[str, Any]) -> None:
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    validator = jsonschema.Draft7Validator(json.loads(schema_path.read_text()))
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(raw)]
    assert not errors, errors


def test_prepare_and_validate_config(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    monkeypatch.chdir(ROOT)
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)  # schema + head_node_type + sum(min_workers) <= max_workers
    # The file's own choices survive the merge with aws/defaults.yaml.
    assert config["provider"]["region"] == raw["provider"]["region"]
    assert config["head_setup_commands"] == raw["setup_commands"], "defaults' boto3 head command crept in"
    assert config["worker_setup_commands"] == raw["setup_commands"]
    assert set(config["available_node_types"]) == set(raw["available_node_types"])
    assert config["available_node_types"][config["head_node_type"]]["max_workers"] == 0


def test_ray_up_bootstrap_offline(bootstrapped: dict[str, Any], raw: dict[str, Any]) -> None:
    """`_bootstrap_config` = prepare_config, resource autodetection from the EC2 catalog,
    validate_config; then the AWS bootstrap steps that need no AWS."""
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    types = bootstrapped["available_node_types"]
    head = types[bootstrapped["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}, "autodetection gave the head schedulable resources"
    # Declared CPU/GPU equal what autodetection finds for the instance type (so the autoscaler's
    # plan matches the machine), and autodetection did run (memory and the GPU model were added).
    stripped = copy.deepcopy(bootstrapped)
    for node in stripped["available_node_types"].values():
        node["resources"] = {}
    detected = AWSNodeProvider.fillout_available_node_types_resources(stripped)["available_node_types"]
    for name, node in types.items():
        if name == bootstrapped["head_node_type"]:
            continue
        declared = raw["available_node_types"][name]["resources"]
        auto = detected[name]["resources"]
        assert {k: auto[k] for k in declared} == declared, (name, declared, auto)
        assert "memory" in node["resources"], name
        gpu_name = CATALOG[node["node_config"]["InstanceType"]]["GpuInfo"]["Gpus"][0]["Name"]
        assert node["resources"].get(f"accelerator_type:{gpu_name}") == 1, name

    resolved = copy.deepcopy(bootstrapped)
    aws_config._configure_iam_role(resolved)  # returns early: the head's profile is given
    assert "head_node" not in resolved or "IamInstanceProfile" not in resolved["head_node"]
    aws_config._check_ami(resolved)  # aborts when the region has no default AMI and none is set
    for name, node in resolved["available_node_types"].items():
        assert node["node_config"]["ImageId"].startswith("ami-"), name


# ---------------------------------------------------------------------------------------------
# Negative: Ray's validation rejects a broken copy with an error naming the problem


def _rename(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


@pytest.mark.parametrize(
    ("break_it", "error", "expected"),
    [
        (lambda c: _rename(c, "available_node_types", "available_node_type"),
         jsonschema.ValidationError, "'available_node_type' was unexpected"),
        (lambda c: _rename(c["available_node_types"]["gpu_4x_a10g_spot"], "min_workers", "min_worker"),
         jsonschema.ValidationError, "'min_worker' was unexpected"),
        (lambda c: c["available_node_types"]["gpu_4x_a10g_spot"]["resources"].__setitem__("CPU", 0.5),
         jsonschema.ValidationError, "0.5 is not of type 'integer'"),
        (lambda c: c.__setitem__("max_workers", "ten"), jsonschema.ValidationError, "'ten' is not of type 'integer'"),
        # prepare_config's Docker check runs before the schema and words it differently
        (lambda c: _rename(c["docker"], "image", "imgae"), AssertionError, "Must provide a container & image name"),
    ],
    ids=["top-level-typo", "node-type-typo", "fractional-resource", "string-max-workers", "docker-typo"],
)
def test_ray_rejects_broken_copy(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch, break_it: Any,
                                 error: type[Exception], expected: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    monkeypatch.chdir(ROOT)
    broken = copy.deepcopy(raw)
    break_it(broken)
    with pytest.raises(error) as err:
        validate_config(prepare_config(broken))
    assert expected in str(err.value)


def test_ray_rejects_unknown_head_node_type(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    monkeypatch.chdir(ROOT)
    broken = copy.deepcopy(raw)
    broken["head_node_type"] = "haed"
    with pytest.raises(ValueError, match="head_node_type` must be one of `available_node_types"):
        validate_config(prepare_config(broken))


# ---------------------------------------------------------------------------------------------
# Project rules


def test_image_pins_installed_ray_and_python_311(raw: dict[str, Any]) -> None:
    docker = raw["docker"]
    images = [docker["image"], docker.get("head_image"), docker.get("worker_image")]
    images += [n.get("docker", {}).get("worker_image") for n in raw["available_node_types"].values()]
    for image in filter(None, images):
        match = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d+)-(?P<acc>gpu|cu\d+)", image)
        assert match, f"{image}: expected rayproject/ray:<ray version>-py311-gpu"
        assert match["ray"] == ray.__version__ == "2.60.0", image
        assert match["py"] == "311", image
    assert docker.get("container_name")


def test_every_node_type_has_an_instance_profile(raw: dict[str, Any]) -> None:
    """Ray gives its default role to the head only; workers read data and write checkpoints on S3."""
    for name, node in raw["available_node_types"].items():
        arn = node["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert PROFILE_ARN.match(arn), f"{name}: IamInstanceProfile.Arn missing or malformed: {arn!r}"


def test_spot_types_have_an_on_demand_fallback_of_the_same_shape(workers: dict[str, dict[str, Any]]) -> None:
    spot = {k: v for k, v in workers.items() if is_spot(v)}
    on_demand = {k: v for k, v in workers.items() if not is_spot(v)}
    assert spot, "no spot worker types"
    for name, node in spot.items():
        same_shape = [
            (k, v) for k, v in on_demand.items()
            if v["node_config"]["InstanceType"] == node["node_config"]["InstanceType"]
            and v["resources"] == node["resources"]
        ]
        assert same_shape, f"{name}: no on-demand type of the same shape"
        for k, v in same_shape:
            assert v.get("priority", 0) < node.get("priority", 0), f"{k} must rank below {name}"
            assert v["max_workers"] >= 1, k
    gpu_shapes = {v["node_config"]["InstanceType"] for v in workers.values() if gpus(v)}
    assert {"g5.12xlarge", "p4d.24xlarge"} <= gpu_shapes
    for shape in gpu_shapes:
        markets = {is_spot(v) for v in workers.values() if v["node_config"]["InstanceType"] == shape}
        assert markets == {True, False}, f"{shape}: needs a spot and an on-demand type"


def test_worker_bounds(raw: dict[str, Any], workers: dict[str, dict[str, Any]]) -> None:
    total = raw["max_workers"]
    assert 1 <= total <= MAX_CLUSTER_WORKERS
    assert raw.get("idle_timeout_minutes", 5) <= 30, "idle GPU nodes must not linger"
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head.get("min_workers", 0) == 0 and head.get("max_workers", 0) == 0
    assert sum(v.get("min_workers", 0) for v in workers.values()) <= total
    for name, node in workers.items():
        assert "max_workers" in node, f"{name}: set max_workers explicitly (Ray's default is the global cap)"
        assert 0 <= node.get("min_workers", 0) <= node["max_workers"] <= total, name
        assert node.get("min_workers", 0) == 0, f"{name}: GPU nodes should scale to zero"
    for name, node in workers.items():  # on-demand capacity never exceeds the spot capacity it backs
        if is_spot(node):
            for other in workers.values():
                if not is_spot(other) and other["node_config"]["InstanceType"] == node["node_config"]["InstanceType"]:
                    assert other["max_workers"] <= node["max_workers"], name


def test_head_takes_no_trials(raw: dict[str, Any], workers: dict[str, dict[str, Any]]) -> None:
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU") == 0
    assert "GpuInfo" not in CATALOG[head["node_config"]["InstanceType"]], "a GPU head would sit idle"
    assert not is_spot(head), "losing the head loses the sweep driver"
    # One trial of the GPU space fits on every GPU worker type (its placement group stays on one
    # node), with CPU left for Ray Data's read tasks.
    trial = yaml.safe_load(SPACE.read_text())["trial"]
    for name, node in workers.items():
        assert gpus(node) >= trial["num_workers"] * trial["gpus_per_worker"], name
        assert node["resources"]["CPU"] >= trial["num_workers"] * trial["cpus_per_worker"] + 1, name


def test_autoscaler_picks_spot_first_and_falls_back(bootstrapped: dict[str, Any]) -> None:
    """Ray's v2 scheduler (what `ray up` runs since Ray 2.50) on the resolved config."""
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
    from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
    from ray.autoscaler.v2.utils import ResourceRequestUtil
    from ray.core.generated.autoscaler_pb2 import ResourceRequestByCount

    autoscaling = AutoscalingConfig(copy.deepcopy(bootstrapped), skip_content_hash=True)
    trial = yaml.safe_load(SPACE.read_text())["trial"]
    worker = {"CPU": trial["cpus_per_worker"], "GPU": trial["gpus_per_worker"]}

    def launches(bundle: dict[str, float], count: int, down: tuple[str, ...] = ()) -> dict[str, int]:
        reply = ResourceDemandScheduler().schedule(SchedulingRequest(
            disable_launch_config_check=True,
            node_type_configs=autoscaling.get_node_type_configs(),
            max_num_nodes=autoscaling.get_max_num_nodes(),
            resource_requests=[ResourceRequestByCount(request=ResourceRequestUtil.make(bundle), count=count)],
            recoverable_resource_availabilities={name: 0.0 for name in down},  # as after a launch failure
        ))
        assert not reply.infeasible_resource_requests
        return {launch.instance_type: launch.count for launch in reply.to_launch}

    one_trial = trial["num_workers"]
    assert launches(worker, one_trial) == {"gpu_4x_a10g_spot": 1}
    assert launches({"CPU": 0.01}, 1) == {"gpu_4x_a10g_spot": 1}, "the trial driver must go to a worker"
    assert launches(worker, one_trial, down=("gpu_4x_a10g_spot",)) == {"gpu_4x_a10g_ondemand": 1}
    assert launches(worker, 8) == {"gpu_8x_a100_spot": 1}
    assert launches(worker, 8, down=("gpu_8x_a100_spot",)) == {"gpu_8x_a100_ondemand": 1}


def test_dashboard_not_open_to_the_internet(raw: dict[str, Any]) -> None:
    """Only SSH is reachable from outside; the dashboard is used through `ray dashboard`."""
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    extra = raw["provider"].get("security_group", {}).get("IpPermissions", [])
    rules = _create_default_inbound_rules({"sg-cluster"}, extra)  # what ray up authorizes
    world = {"0.0.0.0/0", "::/0"}
    for rule in rules:
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        if cidrs & world:
            low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
            assert rule["IpProtocol"] != "-1" and low != -1, f"all ports open to the world: {rule}"
            assert (low, high) == (22, 22), f"only SSH may face the internet: {rule}"
    for node in raw["available_node_types"].values():
        assert "SecurityGroupIds" not in node["node_config"], "a custom group bypasses this check"
    docker_options = " ".join(raw["docker"].get("run_options", []) + raw["docker"].get("head_run_options", []))
    assert not re.search(r"(^|\s)(-p|--publish)\b", docker_options)


def test_no_secrets_in_the_file(raw: dict[str, Any]) -> None:
    text = CLUSTER_YAML.read_text()
    forbidden = {
        "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
        "AWS secret key setting": r"(?i)aws_secret|secret_access_key|aws_session_token",
        "W&B key value": r"WANDB_API_KEY\s*[=:]\s*[\"']?\w",
        "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    }
    for what, pattern in forbidden.items():
        assert not re.search(pattern, text), f"{what} in cluster.yaml"
    assert "aws_credentials" not in raw["provider"]
    commands = [c for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                              "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
                for c in raw.get(key, [])]
    assert not [c for c in commands if "WANDB" in c or "AWS_" in c]


def test_setup_installs_this_project(raw: dict[str, Any]) -> None:
    mounts = {remote: (CLUSTER_YAML.parent / local).resolve() for remote, local in raw["file_mounts"].items()}
    remote = next((r for r, local in mounts.items() if local == ROOT), None)
    assert remote, f"the repository is not among the file_mounts: {raw['file_mounts']}"
    assert 'name = "yt8m_search"' in (ROOT / "pyproject.toml").read_text()
    assert any(re.search(rf"pip install\b.*\s-e\s+{re.escape(remote)}(\s|$)", c) for c in raw["setup_commands"])
    # The virtualenv and run folders are not shipped: rsync applies .gitignore.
    assert ".gitignore" in raw.get("rsync_filter", [])
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".venv/" in ignored and "runs/" in ignored
    assert os.path.basename(remote) == "yt8m_search"
