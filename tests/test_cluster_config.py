"""``cluster.yaml`` cannot be launched here (no cloud access): check it against Ray's own schema and defaults,
and that it has the shape the README's commands rely on."""

from __future__ import annotations

import copy

import yaml

from tests.conftest import ROOT


def load() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_config_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(load()))  # merged with Ray's AWS defaults, as `ray up` does
    validate_config(cfg)  # raises on schema errors
    broken = copy.deepcopy(load())
    broken["available_node_types"]["head"]["node_config"] = "m6i"  # the validation really checks
    try:
        validate_config(prepare_config(broken))
    except Exception as exc:  # jsonschema.ValidationError
        assert "node_config" in str(exc) or "not of type" in str(exc)
    else:
        raise AssertionError("a broken config passed validation")


def test_cluster_layout_head_takes_no_work_cpu_and_gpu_groups():
    cfg = load()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
    gpu = [t for t in types.values() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    cpu = [n for n, t in types.items() if n != cfg["head_node_type"] and t not in gpu]
    assert gpu and cpu
    assert all(t["min_workers"] == 0 and t["max_workers"] > 0 for n, t in types.items() if n != cfg["head_node_type"])
    # the project is installed on every node from its lock file, and that environment's ray starts the node
    setup = " ".join(cfg["setup_commands"])
    assert "requirements.lock" in setup and "-e ." in setup and "ffmpeg" in setup
    assert cfg["file_mounts"]["~/parley"] == "." and ".venv" in cfg["rsync_exclude"]
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        assert any(".venv/bin/ray start" in c for c in cmds)


def test_dashboard_and_job_api_listen_on_loopback_only():
    """The head's dashboard (the job API: it runs any command) binds 127.0.0.1; users come in through an SSH tunnel."""
    cfg = load()
    commands = [c for key in ("head_start_ray_commands", "worker_start_ray_commands", "setup_commands",
                              "head_setup_commands", "worker_setup_commands", "initialization_commands")
                for c in cfg.get(key) or []]
    assert not any("0.0.0.0" in c for c in commands), commands
    [start] = [c for c in cfg["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=127.0.0.1" in start.split(), start
    assert "ray dashboard cluster.yaml" in (ROOT / "cluster.yaml").read_text()  # the header says how to reach it


def test_every_node_type_names_its_own_bucket_scoped_instance_profile():
    """Head and workers each carry an explicit instance profile (none falls back to Ray's default role), and the
    header and docs/cluster-iam.md hold the policies."""
    cfg = load()
    profiles = {}
    for name, node_type in cfg["available_node_types"].items():
        arn = node_type["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert arn.startswith("arn:aws:iam::") and ":instance-profile/" in arn, (name, node_type["node_config"])
        profiles[name] = arn.rsplit("/", 1)[1]
    head = cfg["head_node_type"]
    assert profiles[head] == "parley-head"
    assert all(p == "parley-worker" for n, p in profiles.items() if n != head), profiles
    text = (ROOT / "cluster.yaml").read_text()
    assert "docs/cluster-iam.md" in text and "ray-autoscaler-v1" in text
    doc = (ROOT / "docs" / "cluster-iam.md").read_text()
    for needle in ("ec2:RunInstances", "iam:PassRole", "arn:aws:s3:::BUCKET/*", '"arn:aws:s3:::BUCKET"',
                   "s3:DeleteObject", "parley-worker", "parley-head"):
        assert needle in doc, needle


def test_prepared_and_bootstrapped_config_keeps_the_profiles(monkeypatch):
    """After Ray's prepare_config/validate_config and the offline part of its AWS bootstrap (launch templates,
    network interfaces, IAM role), every node type keeps its profile and Ray never looks up or creates its default
    ``ray-autoscaler-v1`` role (any AWS call fails this test)."""
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.util import check_legacy_fields, prepare_config, validate_config

    def no_aws(*args, **kwargs):
        raise AssertionError(f"Ray called AWS (IAM default role lookup): {args[:1]}")

    for fn in ("_client", "_resource", "_get_instance_profile", "_get_role"):
        monkeypatch.setattr(aws_config, fn, no_aws)
    raw = load()
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    # bootstrap_aws's steps up to the IAM role (the key pair, subnet and security group steps need an account)
    check_legacy_fields(cfg)
    cfg["head_node"] = {}
    cfg = aws_config._configure_from_launch_template(cfg)
    cfg = aws_config._configure_from_network_interfaces(cfg)
    cfg = aws_config._configure_iam_role(cfg)
    assert "IamInstanceProfile" not in cfg["head_node"]  # where Ray puts its default role
    for name, node_type in cfg["available_node_types"].items():
        want = raw["available_node_types"][name]["node_config"]["IamInstanceProfile"]
        assert node_type["node_config"]["IamInstanceProfile"] == want, name
