"""The run layer and the command line of valleys (importing it registers the built-in training methods)."""

from . import registry  # noqa: F401 - the methods' settings become TrainConfig fields at registration
