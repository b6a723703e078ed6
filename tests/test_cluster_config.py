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
