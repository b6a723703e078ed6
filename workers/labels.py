"""Values of the ``parsing_png`` labels: written by :mod:`workers.parsing`, read by QC, the exporter and nerf.

Defined here, in the lowest layer and with no dependencies, so the dataset schema can re-export them
without pulling in OpenCV or MediaPipe.
"""

from __future__ import annotations

BACKGROUND, HEAD, NECK, TORSO = 0, 1, 2, 3
