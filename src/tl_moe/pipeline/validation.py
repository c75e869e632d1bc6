"""The input checks under their former module name: ``from tl_moe.pipeline.validation import ...`` keeps
working. They live in :mod:`tl_moe.pipeline.checks` (one module per input); the memory estimate and the
free-memory probe in :mod:`tl_moe.pipeline.memory`."""

from tl_moe.pipeline.checks import *  # noqa: F403
from tl_moe.pipeline.checks import __all__  # noqa: F401
