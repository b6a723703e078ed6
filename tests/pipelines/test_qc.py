"""QC contact sheets and pose-axis projection."""

from __future__ import annotations

import numpy as np

from pipelines.qc import contact_sheet, pose_axes


def test_pose_axes_project_the_head_origin_to_the_principal_point():
    """A camera 0.5 m in front of the head, looking at it: the origin lands on (cx, cy)."""
    c2w = np.eye(4)
    c2w[2, 3] = 0.5
    pts = pose_axes(c2w, focal=1000.0, cx=256.0, cy=256.0, length=0.05)
    assert np.allclose(pts[0], [256, 256])
    assert pts[1][0] > 256 and np.isclose(pts[1][1], 256)  # +x to the right
    assert pts[2][1] < 256  # +y up in the image


def test_contact_sheet_of_real_rows(processed):
    """A 12-frame sheet of real rows is a 3x4 grid of 256-px tiles with content."""
    rows = next(iter(processed.values())).rows
    sheet = contact_sheet(rows, n=12, cols=4, tile=256)
    assert sheet.shape == (768, 1024, 3) and sheet.std() > 20
