"""The loss-surface studies of the command line (``valleys plane``, ``path``, ``rays``, ``landscape``,
``sharpness``), one module each, and their registry (see :mod:`valleys.app.studies.base`).

Adding a study is one new module here (a :class:`Study` subclass and its settings dataclass) plus one
:func:`register_study` line below. Nothing here imports torch: the command line's parser reads the registry.
"""

from .base import STUDIES, Study, StudyContext, StudyResult, get_study, register_study, run_study
from .landscape import LandscapeStudy
from .path import PathStudy
from .plane import PlaneStudy
from .rays import RaysStudy
from .sharpness import SharpnessStudy

__all__ = ["STUDIES", "Study", "StudyContext", "StudyResult", "get_study", "register_study", "run_study"]

register_study(PlaneStudy())
register_study(PathStudy())
register_study(RaysStudy())
register_study(LandscapeStudy())
register_study(SharpnessStudy())
