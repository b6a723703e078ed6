"""``--set KEY=VALUE`` of the benchmarks (``benchmarks.common.apply_sets``): overrides reach the config, and a bad key
or value stops the benchmark with a one-line error before anything trains."""

from __future__ import annotations

import pytest

from benchmarks.common import apply_sets
from nerf.methods import preset


def test_sets_override_the_preset_and_are_returned():
    cfg, overrides = apply_sets(preset("cpu"), ["model.head.spatial.max_resolution=128", "trainer.head.lr_final=0.03"],
                                {"trainer.seed": 3})
    assert cfg.model.head.spatial.max_resolution == 128
    assert cfg.trainer.head.lr_final == pytest.approx(0.03)
    assert cfg.trainer.seed == 3
    assert overrides == {"trainer.seed": 3, "model.head.spatial.max_resolution": 128, "trainer.head.lr_final": 0.03}


@pytest.mark.parametrize("item, reason", [("model.head.nope=1", "no field 'nope'"),
                                          ("trainer.head.lr_final=0", "lr_final=0"),
                                          ("trainer.head.steps", "is not key=value")])
def test_bad_sets_stop_with_a_one_line_error(item, reason):
    with pytest.raises(SystemExit) as e:
        apply_sets(preset("cpu"), [item])
    assert str(e.value).startswith("--set:") and reason in str(e.value)
