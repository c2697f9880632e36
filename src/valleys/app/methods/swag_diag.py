"""SWAG-diagonal (Maddox et al. 2019): the diagonal part of SWAG alone."""

from __future__ import annotations

from .swa import SWASettings
from .swag import SWAG, SamplingSettings


class SWAGDiag(SWAG):
    """SWAG with ``w ~ N(w_SWA, s Sigma_diag)``, ``s = 1`` (Maddox et al. 2019); one collected epoch suffices."""

    name = "swag-diag"
    help = "as swa, plus a diagonal Gaussian; BMA over --samples draws, scale 1.0"
    views = ("swa",)
    settings = (SWASettings, SamplingSettings)
    diagonal = True
    scale = 1.0
    min_collected = 1
