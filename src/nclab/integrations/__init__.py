"""Integrations of nclab with training frameworks (optional extras; see docs/integrations.md).

- :mod:`nclab.integrations.lightning`: :class:`~nclab.integrations.lightning.NCCallback`, a
  PyTorch Lightning callback built on :class:`nclab.track.NCTracker`
  (``pip install 'nclab[lightning]'``).

Each submodule imports its framework on import, so import the one you use.
"""
