"""Per-frame expression features of an identity, read from a real dataset."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.jean_data import FEATURE_SETS, blendshape_index, expression_features, read_expression_rows
from tests.conftest import SMALL_IDENTITY


def test_rows_and_feature_sets(small_dataset):
    rows = read_expression_rows(str(small_dataset), SMALL_IDENTITY, crops=True)
    n = len(rows["frame"])
    assert 20 <= n <= 30  # frames with a face of the 30 read
    assert (np.diff(rows["frame"]) > 0).all()  # one clip, in frame order
    assert rows["blendshapes"].shape == (n, 52) and rows["expression"].shape == (n, 57)
    assert rows["mel"].shape == (n, 16, 80)
    assert np.isfinite(rows["blendshapes"]).all() and rows["blendshapes"].std(0).max() > 0.01
    widths = {name: expression_features(rows, name).shape for name in FEATURE_SETS}
    assert widths == {"geometric": (n, 111), "blendshapes": (n, 52), "ict": (n, 57), "crop": (n, 64 * 64)}
    jaw = rows["blendshapes"][:, blendshape_index(["jawOpen"])[0]]
    # the jawOpen blendshape follows the measured mouth opening
    assert np.corrcoef(jaw, rows["mouth_opening"])[0, 1] > 0.5


def test_bad_names(small_dataset):
    with pytest.raises(KeyError):
        read_expression_rows(str(small_dataset), "nobody")
    rows = read_expression_rows(str(small_dataset), SMALL_IDENTITY)
    with pytest.raises(ValueError, match="unknown expression features 'emoca'"):
        expression_features(rows, "emoca")
    with pytest.raises(ValueError, match="crops=True"):
        expression_features(rows, "crop")
