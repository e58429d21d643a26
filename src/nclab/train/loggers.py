"""Metric loggers beside the run directory: TensorBoard and Weights & Biases behind one interface.

Every logger receives the rows of ``metrics.jsonl`` as they are appended (``write_row``) and
logs them under the same tags (:func:`row_scalars`, the one row → tags mapping) with the row's
``epoch`` as the step, so a curve has the same name and x value in ``metrics.jsonl``,
TensorBoard, W&B and Lightning's loggers:

- ``train/…``: metrics of the training set: ``train_loss`` → ``train/loss``, and the NC
  metrics of the training features (``nc1`` → ``train/nc1``, ``nc2_wh``, ``cdnv``, norms, ...);
  the learning rate is ``train/lr``.
- ``test/…``: metrics of the test set: ``test_acc`` → ``test/acc``, ``test_nc1`` →
  ``test/nc1``, and the calibration metrics (``ece`` → ``test/ece``, ``brier``, ``mce``,
  ``top5_acc``, ...), which are computed on test predictions.
- ``time/seconds`` (wall time of the epoch), ``ufm/…`` (the UFM closed form's norms),
  ``user/…`` (values a tracker's caller logs under names nclab also uses).

Both libraries are optional (``pip install 'nclab[tensorboard]'``, ``'nclab[wandb]'``) and
imported only when a run asks for them. W&B honours its own environment (``WANDB_MODE=offline``
logs with no network into ``RUN_DIR/wandb/``; upload later with ``wandb sync``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nclab.train.tags import TEST_METRICS, metric_tag, row_scalars

__all__ = [
    "TEST_METRICS",
    "MetricLogger",
    "Loggers",
    "WandbOptions",
    "WandbWriter",
    "metric_tag",
    "open_loggers",
    "require_wandb",
    "row_scalars",
]


class MetricLogger(Protocol):
    """What the run loop and the tracker need of a logger."""

    def write_row(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def require_wandb() -> None:
    """Raise ValueError, saying how to install it, when the ``wandb`` package is missing."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ValueError(
            "Weights & Biases logging needs the wandb package: pip install 'nclab[wandb]' "
            "(or drop --wandb)"
        )


@dataclass(frozen=True)
class WandbOptions:
    """Where a run goes in W&B: ``project`` (default ``nclab``), ``group`` (runs of one
    comparison share one), ``name`` (default: the run directory's name)."""

    project: str | None = None
    group: str | None = None
    name: str | None = None

    @staticmethod
    def from_config(config: Any) -> WandbOptions | None:
        """The options of a :class:`~nclab.train.TrainConfig` (None without ``wandb``)."""
        if not getattr(config, "wandb", False):
            return None
        return WandbOptions(config.wandb_project, config.wandb_group, config.wandb_name)


def _wandb_init(run_dir: Path, options: WandbOptions, config: Mapping[str, Any], job_type: str):
    import wandb

    run_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=options.project or "nclab",
        group=options.group,
        name=options.name or run_dir.resolve().name,
        job_type=job_type,
        config=dict(config),
        dir=str(run_dir),
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off"),
    )


class WandbWriter:
    """Log metrics rows to a W&B run whose files live in ``run_dir/wandb``. Each train call
    (a fresh run or a resume) is one W&B run, named after the run directory; the x axis is
    the epoch (``step`` = ``epoch``, also logged as the ``epoch`` value)."""

    def __init__(
        self, run_dir: str | os.PathLike[str], options: WandbOptions, config: Mapping[str, Any]
    ) -> None:
        require_wandb()
        self._run = _wandb_init(Path(run_dir), options, config, "train")

    def write_row(self, row: Mapping[str, Any]) -> None:
        """Log the row's scalars at step ``row["epoch"]``."""
        epoch = int(row["epoch"])
        self._run.log({"epoch": epoch, **row_scalars(row)}, step=epoch)

    def close(self) -> None:
        """Finish the W&B run (offline: its ``.wandb`` file is complete)."""
        if self._run is not None:
            self._run.finish()
            self._run = None


class Loggers:
    """Several loggers as one (empty: logs nothing)."""

    def __init__(self, loggers: list[MetricLogger]) -> None:
        self.loggers = loggers

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def write_row(self, row: Mapping[str, Any]) -> None:
        """Give the row to every logger."""
        for logger in self.loggers:
            logger.write_row(row)

    def close(self) -> None:
        """Close every logger (each one, even when one fails)."""
        loggers, self.loggers = self.loggers, []
        errors = []
        for logger in loggers:
            try:
                logger.close()
            except Exception as err:  # noqa: BLE001 - close the others, then raise the first
                errors.append(err)
        if errors:
            raise errors[0]


def open_loggers(
    run_dir: str | os.PathLike[str],
    *,
    tensorboard: bool,
    wandb: WandbOptions | None,
    config: Mapping[str, Any],
    fresh: bool,
) -> Loggers:
    """The loggers a run asked for. ``fresh``: the run starts over (TensorBoard's old event
    files are removed). ``config`` is what W&B records as the run's config."""
    out: list[MetricLogger] = []
    try:
        if tensorboard:
            from nclab.train.tensorboard import ScalarWriter

            out.append(ScalarWriter(run_dir, fresh=fresh))
        if wandb is not None:
            out.append(WandbWriter(run_dir, wandb, config))
    except BaseException:
        Loggers(out).close()
        raise
    return Loggers(out)


def log_report_to_wandb(
    report_dir: str | os.PathLike[str],
    options: WandbOptions,
    *,
    config: Mapping[str, Any] | None = None,
    verdicts: list[dict[str, Any]] | None = None,
) -> None:
    """Attach a report (its figures, ``summary.md``, ``summary.json``, ``report.html``) to a
    W&B run of job type ``report`` in ``options.group``, as one artifact; ``verdicts`` (rows
    of the verdict table) are also logged as a W&B table."""
    require_wandb()
    import wandb

    report_dir = Path(report_dir)
    run = _wandb_init(report_dir, options, config or {}, "report")
    try:
        artifact = wandb.Artifact(f"report-{_safe(options.group or report_dir.name)}", "report")
        for path in sorted(report_dir.iterdir()):
            if path.is_file() and not path.is_symlink() and path.suffix in _REPORT_FILES:
                artifact.add_file(str(path), name=path.name)
        run.log_artifact(artifact)
        if verdicts:
            columns = list(verdicts[0])
            table = wandb.Table(
                columns=columns, data=[[v.get(c) for c in columns] for v in verdicts]
            )
            run.log({"report/verdicts": table})
    finally:
        run.finish()


_REPORT_FILES = (".png", ".pdf", ".md", ".json", ".html", ".csv")


def _safe(text: str) -> str:
    """An artifact name: letters, digits, ``-``, ``_`` and ``.`` only."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:120] or "report"
