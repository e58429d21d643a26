"""Moved to :mod:`nclab.runs.files` (kept importable while other modules move over)."""

from nclab.runs.files import *  # noqa: F403
from nclab.runs.files import __all__  # noqa: F401
