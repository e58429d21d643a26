"""One training run: SGD with per-epoch evaluation, NC tracking, checkpoints, resume and DDP.

:func:`train` is the library entry point (``nclab train`` and ``nclab compare`` call it). See
``docs/training.md`` for the run-directory layout and the resume semantics.

Reproducibility contract (CPU): the model is initialised right after
``torch.manual_seed(config.seed)``, and the data order of epoch ``e`` is
``torch.randperm(N, generator=Generator(seed=mix(seed, e)))``, so two runs with the same seed
(CE and LS alike) start from the same weights and see the same batches, and a resumed run
reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nclab import __version__
from nclab.config import TrainConfig, config_differences
from nclab.data import DataBundle, augment_batch, class_balanced_indices, load_dataset
from nclab.layers import resolve_taps
from nclab.losses import ClassificationLoss, get_loss
from nclab.models import build_model, count_parameters
from nclab.runs import lifecycle
from nclab.runs.files import (
    RunFiles,
    append_per_class,
    append_row,
    atomic_write,
    lock_directory,
    read_json,
    read_metrics,
    read_rows,
    sync_logs,
    write_json,
)
from nclab.runs.lifecycle import RunState
from nclab.train.distributed import DistContext, setup_distributed
from nclab.train.evaluate import EvalResult, Evaluator, NonFiniteFeaturesError
from nclab.train.progress import Progress

__all__ = [
    "RunResult",
    "TrainingDivergedError",
    "build_optimizer",
    "epoch_permutation",
    "load_model",
    "lr_factor",
    "read_checkpoint",
    "train",
    "ufm_penalty",
]


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept.

    ``where`` overrides the description of what became non-finite (default: the loss at
    ``step``, or the evaluation features when ``step`` is 0). Picklable, so that it crosses
    process boundaries (``nclab compare`` workers) intact. The CLI exits with ``exit_code``."""

    exit_code = 3

    def __init__(
        self,
        epoch: int,
        step: int,
        value: float,
        checkpoint_epoch: int,
        path: Path,
        where: str | None = None,
    ):
        self.epoch, self.step, self.value = epoch, step, value
        self.checkpoint_epoch, self.checkpoint_path, self.where = checkpoint_epoch, path, where
        kept = (
            f"the last good checkpoint (after epoch {checkpoint_epoch}) is kept at {path}"
            if checkpoint_epoch
            else "no checkpoint had been written yet"
        )
        if where is None:
            where = (
                f"the loss became {value} at epoch {epoch}, step {step}"
                if step
                else f"the features became {value} in the evaluation after epoch {epoch}"
            )
        super().__init__(
            f"training diverged: {where}; {kept}. Lower --lr and start over with --overwrite"
        )

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        args = (self.epoch, self.step, self.value, self.checkpoint_epoch, self.checkpoint_path)
        return (type(self), (*args, self.where))


@dataclass
class RunResult:
    """Outcome of :func:`train`: the run directory, its config and metric rows.

    ``timings`` has one entry per epoch trained in this call: wall seconds of the training
    pass (``train``), the evaluation forward passes (``eval_forward``), the metric computation
    (``metrics``: accumulator updates, NCC tallies, compute, ECE), file writes (``io``) and the
    ``total``.
    """

    out_dir: Path
    config: TrainConfig
    rows: list[dict[str, Any]]
    completed: bool
    start_epoch: int = 0
    reused: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    timings: list[dict[str, float]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        """The last metrics row (empty dict if there is none)."""
        return self.rows[-1] if self.rows else {}

    @property
    def first_perfect_epoch(self) -> int | None:
        """First evaluated epoch with 100% training accuracy (None if never reached)."""
        return lifecycle.first_perfect_epoch(self.rows)


# ------------------------------------------------------------------------------ schedule, data


def lr_factor(config: TrainConfig, completed_epochs: int) -> float:
    """Learning-rate multiplier for the epoch after ``completed_epochs`` epochs.

    ``constant``: 1. ``multistep``: ``gamma ** #{milestones m <= completed_epochs}`` (the lr
    drops after epoch m). ``cosine``: ``(1 + cos(pi · completed_epochs / epochs)) / 2``.
    """
    t = completed_epochs
    if config.scheduler == "multistep":
        return config.gamma ** sum(1 for m in config.resolved_milestones() if m <= t)
    if config.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t / config.epochs))
    return 1.0


def _mix_seed(*values: int) -> int:
    """A 63-bit generator seed derived from a tuple of integers (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_permutation(seed: int, epoch: int, n: int, ctx: DistContext | None = None) -> Tensor:
    """Training-sample order of ``epoch`` (1-based): ``randperm(n)`` from a generator seeded
    with ``(seed, epoch)``. Under DDP the permutation is padded (wrapping around) to a multiple
    of the world size and each rank takes its rank-strided share."""
    gen = torch.Generator().manual_seed(_mix_seed(seed, epoch))
    perm = torch.randperm(n, generator=gen)
    if ctx is not None and ctx.enabled:
        total = -(-n // ctx.world_size) * ctx.world_size
        perm = torch.cat([perm, perm[: total - n]])[ctx.rank :: ctx.world_size]
    return perm


# ------------------------------------------------------------------------------ model pieces


class _FeaturesAndLogits(nn.Module):
    """``x -> (features, logits)``: the module DDP wraps (the UFM penalty needs ``h``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.model.features(x)
        return h, self.model.classifier(h)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with two parameter groups: the backbone (``config.backbone_weight_decay()``) and the
    classifier (``config.classifier_weight_decay()``, 0 in UFM-penalty mode).

    PyTorch's fused implementation where it has one (parameters on CPU or CUDA): the same update
    as the per-tensor loop up to rounding, ~12% less time per SGD epoch of the quick preset on
    one CPU thread (docs/benchmarks.md). A resumed run keeps the implementation its checkpoint
    was written with (``load_state_dict`` restores the groups' ``fused`` flag)."""
    classifier = list(model.classifier.parameters())
    ids = {id(p) for p in classifier}
    backbone = [p for p in model.parameters() if id(p) not in ids]
    groups = [
        {"params": backbone, "weight_decay": config.backbone_weight_decay(), "name": "backbone"},
        {
            "params": classifier,
            "weight_decay": config.classifier_weight_decay(),
            "name": "classifier",
        },
    ]
    params = [*backbone, *classifier]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.SGD(
        [g for g in groups if g["params"]],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        fused=fused or None,
    )


def ufm_penalty(model: nn.Module, features: Tensor, config: TrainConfig, n_train: int) -> Tensor:
    """``λ_W/2 ||W||² + λ_b/2 ||b||² + λ_H/2 · (N/B) ||H_batch||²`` (the stochastic estimate of
    the UFM regulariser ``λ_H/2 ||H||²`` over all N training features)."""
    w = model.classifier.weight
    scale = n_train / features.shape[0]
    penalty = 0.5 * config.lambda_w * w.pow(2).sum()
    penalty = penalty + 0.5 * config.lambda_h * scale * features.float().pow(2).sum()
    if model.classifier.bias is not None:
        penalty = penalty + 0.5 * config.lambda_b * model.classifier.bias.pow(2).sum()
    return penalty


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but CUDA is not available; use cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def default_channels_last(model: str, input_shape: tuple[int, ...], device: torch.device) -> bool:
    """``--channels-last`` unset: on for conv nets on CUDA only. On CPU, torch 2.13's
    channels-last kernels corrupt the heap on some shapes (a strided 1x1 ``Conv2d(4 -> 8)``
    aborts with ``free(): invalid next size``)."""
    return len(input_shape) == 3 and model != "mlp" and device.type == "cuda"


@contextlib.contextmanager
def _num_threads(threads: int | None):  # noqa: ANN202 - context manager
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _rng_state() -> dict[str, Tensor]:
    """torch's generator states (CPU, and CUDA where present) as tensors. Only torch's global
    generators are drawn from (model initialisation, dropout); numpy and Python's ``random``
    are never used globally, so they are neither seeded nor saved."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, Tensor]) -> None:
    """Inverse of :func:`_rng_state` (older checkpoints' numpy/Python states are ignored)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(list(state["cuda"]))


# ------------------------------------------------------------------------------ start-up plan


@dataclass
class _Plan:
    """What to do with the run directory: start fresh, resume, or return a finished run.
    ``state`` is the checkpoint to resume from (already read and checked)."""

    action: RunState  # NEW (start fresh), RESUME or DONE
    checkpoint_epoch: int = 0
    saved: dict[str, Any] | None = None
    state: dict[str, Any] | None = None


_CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "rng", "config", "num_classes", "input_shape")
_FINAL_KEYS = ("epoch", "model", "config", "num_classes", "input_shape")


def read_checkpoint(path: Path, keys: tuple[str, ...] = _CHECKPOINT_KEYS) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train` with ``torch.load(weights_only=True)``: only
    tensors and plain values are unpickled, so a planted file cannot run code. Raises
    ``ValueError`` naming the file when it is unreadable, corrupt, unsafe or lacks ``keys``."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a regular file; start over with --overwrite")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a bad file
        raise ValueError(
            f"{path} is not a readable nclab checkpoint ({_load_failure(err)}); it is "
            "truncated, corrupt, written by an older nclab, or holds objects other than tensors "
            "and plain values (refused: they could run code). Start over with --overwrite"
        ) from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(
            f"{path} is not an nclab checkpoint (missing {', '.join(missing)}); start over "
            "with --overwrite"
        )
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"{path}: 'epoch' is {epoch!r}, not an epoch number; it is corrupt")
    return state


def _load_failure(err: Exception) -> str:
    """The informative line of a ``torch.load`` error. Its generic paragraphs (advice to retry
    with ``weights_only=False``, which would run the file's code, and a documentation link) are
    left out; the reason (e.g. "Trying to load unsupported GLOBAL posix.system ...") is kept."""
    generic = ("weights only load failed", "check the documentation", "(1)", "(2)")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    unpickler = [line.split("error:", 1)[-1] for line in lines if "WeightsUnpickler" in line]
    blocked = [line for line in lines if "unsupported global" in line.lower()]
    others = [ln for ln in lines if not ln.lower().startswith(generic + ("please file",))]
    reasons = [r for r in unpickler + blocked + others if r.strip()]
    if not reasons:
        return type(err).__name__
    reason = reasons[0].strip().split(". ")[0]  # drop the advice to allowlist the global
    return f"{type(err).__name__}: {reason[:160]}"


def _plan(files: RunFiles, config: TrainConfig, resume: bool, overwrite: bool) -> _Plan:
    """Decide how to start, reading and checking everything a resume needs (read-only, so
    every DDP rank reaches the same decision and a refusal changes no file)."""
    if files.root.exists() and not files.root.is_dir():
        raise FileExistsError(f"{files.root} exists and is not a directory; choose another --out")
    if overwrite:
        lifecycle.check_overwritable(files)
        return _Plan(RunState.NEW)
    state_now, diffs, saved = lifecycle.inspect(
        files, lambda saved: config_differences(saved, config), config.epochs
    )
    if state_now is RunState.NEW:
        return _Plan(RunState.NEW)
    if saved is None:  # run files without a config
        raise FileExistsError(
            f"{files.root} holds {diffs[0]}; it is not an empty directory: pass --overwrite to "
            "discard them, or choose another --out"
        )
    done = files.done.is_file()
    same_epochs = int(saved.get("epochs", -1)) == config.epochs
    if not resume:
        if state_now is RunState.DONE:
            return _Plan(RunState.DONE, config.epochs, saved)
        what = f"a different config ({'; '.join(diffs)})" if diffs else "a run"
        if not diffs and not same_epochs:
            what = f"a run of {saved.get('epochs')} epochs"
        raise FileExistsError(
            f"{files.root} already holds {what}; use --resume to continue it "
            "or --overwrite to start over (or choose another --out)"
        )
    if diffs:
        raise ValueError(
            f"cannot resume {files.root}: the config differs in {'; '.join(diffs)}. Only "
            "--epochs may change when resuming; use --overwrite to start over"
        )
    state = read_checkpoint(files.checkpoint) if files.checkpoint.exists() else None
    ckpt = 0 if state is None else int(state["epoch"])
    read_metrics(files.metrics)  # a malformed line that is not the last: refuse before any change
    read_metrics(files.per_class)
    if done and ckpt == 0 and same_epochs:
        return _Plan(RunState.DONE, config.epochs, saved)
    if ckpt > config.epochs:
        raise ValueError(
            f"cannot resume {files.root} with --epochs {config.epochs}: it has already trained "
            f"{ckpt} epochs; pass --epochs >= {ckpt}"
        )
    if state is not None:
        _check_checkpoint_belongs(files, state, saved, config)
        lifecycle.check_metrics_cover(files, ckpt, config.eval_every)
    if done and ckpt == config.epochs:
        return _Plan(RunState.DONE, config.epochs, saved)
    if ckpt == 0 and (done or files.final.exists()):
        raise ValueError(
            f"cannot resume {files.root}: it holds a finished run but its checkpoint "
            f"{files.checkpoint} is missing, so it cannot be extended; use --overwrite to start "
            "over"
        )
    if ckpt == 0:  # stopped before its first checkpoint: nothing to resume from
        return _Plan(RunState.NEW, saved=saved)
    return _Plan(RunState.RESUME, ckpt, saved, state=state)


def _check_checkpoint_belongs(
    files: RunFiles, state: dict[str, Any], saved: dict[str, Any], config: TrainConfig
) -> None:
    """A checkpoint copied from another run (other run id, or another config) is refused,
    naming what differs."""
    ident = saved.get("identity") if isinstance(saved.get("identity"), dict) else {}
    mine, theirs = ident.get("run_id"), state.get("run_id")
    if mine and theirs != mine:
        raise ValueError(
            f"cannot resume {files.root}: {files.checkpoint} belongs to another run (run id "
            f"{theirs or 'none'}, this run {mine}); restore this run's checkpoint or start over "
            "with --overwrite"
        )
    ckpt_config = state.get("config")
    if isinstance(ckpt_config, dict):
        try:
            differs = config_differences(ckpt_config, config)
        except (TypeError, ValueError, AttributeError):
            differs = ["its config is unreadable"]
        if differs:
            raise ValueError(
                f"cannot resume {files.root}: {files.checkpoint} was written by a run with "
                f"another config ({'; '.join(differs)}); restore this run's checkpoint or start "
                "over with --overwrite"
            )


def _apply_plan(files: RunFiles, plan: _Plan) -> None:
    """Rank 0: clear an old run (only files nclab wrote) or cut the logs back to the
    checkpoint (the directory is locked: no writer is running)."""
    if plan.action is RunState.RESUME:
        lifecycle.prepare_resume(files, plan.checkpoint_epoch)
    else:
        lifecycle.prepare_fresh(files)


def _finished_result(files: RunFiles, config: TrainConfig) -> RunResult:
    summary = read_json(files.summary) if files.summary.is_file() else {}
    rows = read_rows(files.metrics)
    return RunResult(files.root, config, rows, True, config.epochs, True, summary)


# ------------------------------------------------------------------------------ the run


@dataclass
class _Run:
    """Everything built for one run."""

    config: TrainConfig
    files: RunFiles
    ctx: DistContext
    device: torch.device
    data: DataBundle
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.SGD
    loss_fn: ClassificationLoss
    evaluator: Evaluator  # per-epoch evaluation (test subset with ``test_per_class``)
    final_evaluator: Evaluator  # the final epoch's: always the whole test set
    autocast: Any
    channels_last: bool
    local_batch: int
    x_train: Tensor
    y_train: Tensor
    ufm: dict[str, Any] | None
    progress: Progress = field(init=False)
    scalars: Any = None  # nclab.train.loggers.Loggers with --tensorboard/--wandb (rank 0)
    last_eval: EvalResult | None = None
    checkpoint_epoch: int = 0  # epoch of the last good checkpoint written or resumed from
    checkpoint_time: float = 0.0  # time.monotonic() of that checkpoint (or of the start)
    #: the state after the last epoch when no checkpoint was written then (CPU copies): written
    #: as the checkpoint when a signal stops the run (rank 0)
    pending: dict[str, Any] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)  # the data's identity
    run_id: str = ""  # identity["run_id"] of config.json (set when it is written)
    timings: list[dict[str, float]] = field(default_factory=list)


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> RunResult:
    """Train one model as described by ``config``, writing the run directory ``out_dir``.

    ``resume=True`` continues a stopped run from ``checkpoints/last.pt`` (only ``epochs`` and
    ``threads`` may differ from the saved config; a larger ``epochs`` extends a finished run;
    a finished run is returned as it is). ``overwrite=True`` discards a previous run in
    ``out_dir``. Without either, a directory holding a run refuses (``FileExistsError``) unless
    it is the same, finished run. ``quiet=True`` prints nothing.

    Raises ``ValueError`` for bad options, :class:`TrainingDivergedError` when the loss becomes
    NaN/Inf. Under ``torchrun`` (``WORLD_SIZE > 1``) trains with DistributedDataParallel; only
    rank 0 writes files.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other; pick one")
    config.validate()
    if config.bf16 and config.device == "cpu":
        raise ValueError("--bf16 autocast needs a CUDA device; drop --bf16 or use --device cuda")
    if config.tensorboard:
        from nclab.train.tensorboard import require_tensorboard

        require_tensorboard()  # before any file changes
    if config.wandb:
        from nclab.train.loggers import require_wandb

        require_wandb()
    files = RunFiles(Path(out_dir))
    lifecycle.refuse_system_folder(files.root)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(config.device, local_rank)
    if config.bf16 and device.type != "cuda":
        raise ValueError("--bf16 autocast needs a CUDA device, and none is available")
    ctx = setup_distributed(device.type == "cuda")
    try:
        lock = lock_directory(files.root) if ctx.is_main else contextlib.nullcontext()
        with _num_threads(config.threads), lock:
            return _train(config, files, ctx, device, resume, overwrite, quiet)
    finally:
        ctx.close()


def _train(
    config: TrainConfig,
    files: RunFiles,
    ctx: DistContext,
    device: torch.device,
    resume: bool,
    overwrite: bool,
    quiet: bool,
) -> RunResult:
    # Transaction: read and check everything (config, metrics log, checkpoint, dataset, model)
    # first; the run directory changes only once all of it passed.
    plan = _plan(files, config, resume, overwrite)
    if plan.action is RunState.DONE:
        return _finished_result(files, config)
    run = _build(config, files, ctx, device)
    start = 0
    if plan.action is RunState.RESUME:
        start = _restore(run, plan)
    ctx.barrier()  # every rank has read the directory before rank 0 changes it
    if ctx.is_main:
        _apply_plan(files, plan)
    ctx.barrier()
    if ctx.is_main:
        _write_config(run, plan, start)
    run.progress = Progress(config.epochs, start, quiet=quiet or not ctx.is_main)
    if (config.tensorboard or config.wandb) and ctx.is_main:
        from nclab.train.loggers import WandbOptions, open_loggers

        run.scalars = open_loggers(
            files.root,
            tensorboard=config.tensorboard,
            wandb=WandbOptions.from_config(config),
            config=read_json(files.config),
            fresh=plan.action is RunState.NEW,
        )
    run.checkpoint_time = time.monotonic()
    try:
        if start:
            run.progress.message(f"resuming {files.root} after epoch {start}")
        for epoch in range(start + 1, config.epochs + 1):
            _epoch(run, epoch)
        return _finish(run, start)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP (nclab.signals)
        if ctx.is_main:
            _save_pending(run)
        raise
    finally:
        run.progress.close()
        if run.scalars is not None:
            run.scalars.close()


def _build(config: TrainConfig, files: RunFiles, ctx: DistContext, device: torch.device) -> _Run:
    data = load_dataset(
        config.dataset,
        config.data_dir,
        per_class=config.per_class,
        seed=config.seed,
        imbalance=config.imbalance,
        imbalance_profile=config.imbalance_profile,
        label_noise=config.label_noise,
        label_noise_mode=config.label_noise_mode,
    )
    if config.augment and len(data.input_shape) != 3:
        raise ValueError(f"--augment needs image data; {config.dataset} holds flat vectors")
    if config.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} must be divisible by the number of processes "
            f"({ctx.world_size}): it is the global batch, split evenly over the ranks"
        )
    torch.manual_seed(config.seed)  # the model initialisation is the first random draw
    model = build_model(
        config.model,
        data.num_classes,
        data.input_shape,
        width=config.width,
        depth=config.depth,
        bias=config.bias,
        classifier=config.classifier,
        feature_bn=config.feature_bn,
    ).to(device)
    _check_batch_norm_batches(model, config, data.num_train, ctx.world_size)
    resolve_taps(model, config.nc_layers)  # an unknown --nc-layers name fails before training
    channels_last = config.channels_last
    if channels_last is None:
        channels_last = default_channels_last(config.model, data.input_shape, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    loss_fn = get_loss(config.loss, data.num_classes, config.smoothing)
    net: nn.Module = _FeaturesAndLogits(model)
    if ctx.enabled:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    autocast = (
        functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
        if config.bf16
        else contextlib.nullcontext
    )
    shard_train = ctx.shard(data.num_train)
    x_eval_train = data.x_train[shard_train].contiguous().to(device)
    y_eval_train = data.y_train[shard_train].contiguous().to(device)
    y_clean = data.y_train_clean
    y_clean = None if y_clean is None else y_clean[shard_train].contiguous().to(device)

    def evaluator_on(x_test: Tensor, y_test: Tensor) -> Evaluator:
        shard = ctx.shard(len(y_test))
        return Evaluator(
            x_train=x_eval_train,
            y_train=y_eval_train,
            x_test=x_test[shard].contiguous().to(device),
            y_test=y_test[shard].contiguous().to(device),
            num_test=len(y_test),
            num_classes=data.num_classes,
            loss_fn=loss_fn,
            ctx=ctx,
            autocast=autocast,
            channels_last=channels_last,
            y_train_clean=y_clean,
            nc_layers=config.nc_layers,
        )

    final_evaluator = evaluator_on(data.x_test, data.y_test)
    evaluator = final_evaluator
    if config.test_per_class is not None:
        idx = fixed_test_subset(data.y_test, config.test_per_class, data.num_classes)
        evaluator = evaluator_on(data.x_test[idx], data.y_test[idx])
    x_train = evaluator.x_train if not ctx.enabled else data.x_train.to(device)
    y_train = evaluator.y_train if not ctx.enabled else data.y_train.to(device)
    return _Run(
        config=config,
        files=files,
        ctx=ctx,
        device=device,
        data=data,
        model=model,
        net=net,
        optimizer=optimizer,
        loss_fn=loss_fn,
        evaluator=evaluator,
        final_evaluator=final_evaluator,
        autocast=autocast,
        channels_last=bool(channels_last),
        local_batch=config.batch_size // ctx.world_size,
        x_train=x_train,
        y_train=y_train,
        ufm=_ufm_prediction(config, data),
        fingerprint=lifecycle.data_fingerprint(
            {
                "x_train": data.x_train,
                "y_train": data.y_train,
                "x_test": data.x_test,
                "y_test": data.y_test,
            }
        ),
    )


def _check_batch_norm_batches(
    model: nn.Module, config: TrainConfig, num_train: int, world_size: int
) -> None:
    """BatchNorm in training mode needs at least two samples per batch (per process)."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    smallest = min(config.batch_size // world_size, num_train)
    if smallest < 2:
        raise ValueError(
            f"{config.model} normalises with BatchNorm, which needs at least 2 samples per batch, "
            f"but batches hold {smallest} (batch_size {config.batch_size}, {num_train} training "
            f"samples, {world_size} process(es)); use --batch-size 2 or more"
        )


def _ufm_prediction(config: TrainConfig, data: DataBundle) -> dict[str, Any] | None:
    """Closed-form UFM minimizer for this run's N, K, λ's and δ (UFM-penalty mode only)."""
    if not config.ufm_penalties:
        return None
    from nclab.ufm import closed_form

    n_per_class = max(1, round(data.num_train / data.num_classes))
    cf = closed_form(
        num_classes=data.num_classes,
        n_per_class=n_per_class,
        lambda_w=config.lambda_w,
        lambda_h=config.lambda_h,
        smoothing=config.smoothing if config.loss == "ls" else 0.0,
        lambda_b=config.lambda_b,
    )
    return cf.as_dict()


# ------------------------------------------------------------------------------ one epoch


def _epoch(run: _Run, epoch: int) -> None:
    config = run.config
    t0 = time.perf_counter()
    lr = config.lr * lr_factor(config, epoch - 1)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    _train_one_epoch(run, epoch)
    timing = {"epoch": epoch, "train": time.perf_counter() - t0, "eval_forward": 0.0}
    timing["metrics"] = 0.0
    row = None
    if epoch % config.eval_every == 0 or epoch == config.epochs:
        run.last_eval = _evaluate(run, epoch)
        timing["eval_forward"] = run.last_eval.timings["forward"]
        timing["metrics"] = run.last_eval.timings["metrics"]
        row = {"epoch": epoch, "lr": lr, **run.last_eval.metrics}
        row["test_size"] = _evaluator_for(run, epoch).num_test
        if run.ufm is not None:
            row["ufm_w_norm"] = run.ufm["w_norm"]
            row["ufm_h_norm"] = run.ufm["h_norm"]
        row["seconds"] = time.perf_counter() - t0
    t_io = time.perf_counter()
    if run.ctx.is_main and row is not None:
        append_row(run.files, row, sync=False)  # fsync'ed before the next checkpoint
        append_per_class(run.files, epoch, run.last_eval.per_class, sync=False)
        if run.scalars is not None:
            run.scalars.write_row(row)
    if run.ctx.is_main:
        _checkpoint(run, epoch)
    timing["io"] = time.perf_counter() - t_io
    timing["total"] = time.perf_counter() - t0
    run.timings.append(timing)
    run.progress.epoch_done(epoch, row)


def _evaluator_for(run: _Run, epoch: int) -> Evaluator:
    """The final epoch is evaluated on the whole test set, the others on the per-epoch set."""
    return run.final_evaluator if epoch == run.config.epochs else run.evaluator


def fixed_test_subset(labels: Tensor, per_class: int, num_classes: int) -> Tensor:
    """The fixed test subset of ``test_per_class``: ``per_class`` test samples of every class
    drawn with seed 0, so every seed and loss of a comparison is evaluated on the same images."""
    idx = class_balanced_indices(
        labels, per_class, 0, num_classes, option="test_per_class", split="test"
    )
    return torch.as_tensor(idx)


def _evaluate(run: _Run, epoch: int) -> EvalResult:
    """Evaluate the model after ``epoch`` (rank 0's BatchNorm statistics on every rank)."""
    run.ctx.broadcast_buffers(run.model)
    try:
        return _evaluator_for(run, epoch)(run.model)
    except NonFiniteFeaturesError:
        raise TrainingDivergedError(
            epoch, 0, float("nan"), _last_checkpoint_epoch(run), run.files.checkpoint
        ) from None


def _train_one_epoch(run: _Run, epoch: int) -> None:
    config, ctx = run.config, run.ctx
    order = epoch_permutation(config.seed, epoch, run.data.num_train, ctx).to(run.device)
    aug_gen = torch.Generator().manual_seed(_mix_seed(config.seed, epoch, 1 + ctx.rank))
    bs, n = run.local_batch, int(order.shape[0])
    steps = -(-n // bs)
    if steps > 1 and n % bs == 1:
        # A last batch of one sample breaks BatchNorm in training mode ("expected more than 1
        # value per channel"); it joins the previous batch, so every sample is still used.
        steps -= 1
    run.net.train()
    # The loss is checked for NaN/Inf on the device each step; the host reads the flag (a
    # synchronisation, and an all-reduce under DDP) every step only for one CPU process.
    check_every = 1 if run.device.type == "cpu" and not ctx.enabled else NONFINITE_CHECK_EVERY
    watch = _LossWatch(run.device)
    for step in run.progress.batches(range(steps), steps, epoch):
        idx = order[step * bs : (step + 1) * bs if step < steps - 1 else n]
        xb, yb = run.x_train[idx], run.y_train[idx]
        if config.augment:
            xb = augment_batch(xb, aug_gen)
        if run.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with run.autocast():
            h, logits = run.net(xb)
        # the labels were checked once when the data were loaded: compute() skips the per-step
        # range check of loss_fn(...), whose min()/max() reads would synchronise a GPU each step
        loss = run.loss_fn.compute(logits.float(), yb)
        if config.ufm_penalties:
            loss = loss + ufm_penalty(run.model, h, config, run.data.num_train)
        if check_every == 1:  # one CPU process: reading the loss is free, check it directly
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    epoch, step + 1, value, _last_checkpoint_epoch(run), run.files.checkpoint
                )
        else:
            watch.record(loss, step)
            if (step + 1) % check_every == 0 or step == steps - 1:
                watch.raise_if_diverged(run, epoch, step)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()


#: Steps between host reads of the device-side non-finite-loss flag (GPU or DDP runs).
NONFINITE_CHECK_EVERY = 32


class _LossWatch:
    """First non-finite loss of an epoch, recorded on the device without synchronising."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.full((), math.nan, dtype=torch.float64, device=device)

    def record(self, loss: Tensor, step: int) -> None:
        first = ~torch.isfinite(loss.detach()) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.value = torch.where(first, loss.detach().double(), self.value)

    def raise_if_diverged(self, run: _Run, epoch: int, step: int) -> None:
        """Read the flag (every rank, same steps) and raise :class:`TrainingDivergedError`
        naming the first bad step (this rank's, else the current one)."""
        bad_step = int(self.step)
        if run.ctx.any(bad_step >= 0):
            at = bad_step if bad_step >= 0 else step
            value = float(self.value) if bad_step >= 0 else math.nan
            raise TrainingDivergedError(
                epoch, at + 1, value, _last_checkpoint_epoch(run), run.files.checkpoint
            )


def _last_checkpoint_epoch(run: _Run) -> int:
    """The epoch of the last good checkpoint, for a divergence error: the state kept after the
    last completed epoch is written first (rank 0), so a diverged run keeps its last good state
    whatever the checkpoint policy."""
    if run.ctx.is_main:
        _save_pending(run)
    return run.checkpoint_epoch


# ------------------------------------------------------------------------------ checkpoints


def _checkpoint_due(run: _Run, epoch: int) -> bool:
    """The checkpoint policy: after the last epoch; every ``checkpoint_every`` epochs when set,
    else after the first epoch ending ``checkpoint_seconds`` of wall time after the last
    checkpoint (or the start). A resume recomputes the epochs after the checkpoint exactly, so
    the policy decides only how much work a SIGKILL can cost, never the results."""
    config = run.config
    if epoch == config.epochs:
        return True
    if config.checkpoint_every is not None:
        return epoch % config.checkpoint_every == 0
    return time.monotonic() - run.checkpoint_time >= config.checkpoint_seconds


def _checkpoint(run: _Run, epoch: int) -> None:
    """After ``epoch`` (rank 0, its rows already logged): write the checkpoint when it is due,
    else keep a CPU copy of the state (``run.pending``) for :func:`_save_pending`."""
    state = _checkpoint_state(run, epoch)
    if _checkpoint_due(run, epoch):
        _write_checkpoint(run, state)
    else:
        run.pending = _cpu_copy(state)


def _save_pending(run: _Run) -> None:
    """On the way out of an interrupted run: write the state kept after the last completed
    epoch, if it is newer than the last checkpoint. It was copied when that epoch ended, so
    wherever the signal struck (mid-step, mid-evaluation, mid-write) it is consistent, and the
    write is atomic: a second signal during it leaves the previous checkpoint."""
    pending, run.pending = run.pending, None
    if pending is not None and pending["epoch"] > run.checkpoint_epoch:
        _write_checkpoint(run, pending)


def _non_finite(state: dict[str, Tensor]) -> list[str]:
    """Names of the floating tensors of ``state`` holding NaN or Inf. A float64 sum per tensor
    first, read once: all finite means every value is (a NaN/Inf value makes its sum non-finite);
    otherwise (or on an overflow) each tensor is checked value by value."""
    floats = {k: t for k, t in state.items() if t.is_floating_point() and t.numel()}
    if not floats:
        return []
    sums = torch.stack([t.sum(dtype=torch.float64) for t in floats.values()])
    if bool(torch.isfinite(sums).all()):
        return []
    return [k for k, t in floats.items() if not t.isfinite().all()]


def _cpu_copy(obj: Any) -> Any:
    """``obj`` (nested dicts/lists of tensors and plain values) with every tensor copied to CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _checkpoint_state(run: _Run, epoch: int) -> dict[str, Any]:
    """The checkpoint after ``epoch`` (tensors and plain values only, referencing the live
    tensors). A model state with a non-finite value (e.g. BatchNorm running statistics) is a
    divergence: the last good checkpoint is kept instead."""
    model_state = run.model.state_dict()
    bad = _non_finite(model_state)
    if bad:
        raise TrainingDivergedError(
            epoch,
            0,
            math.nan,
            _last_checkpoint_epoch(run),
            run.files.checkpoint,
            where=f"the model state became non-finite in epoch {epoch} ({', '.join(bad[:3])})",
        )
    return {
        "epoch": epoch,
        "model": model_state,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": {"name": run.config.scheduler, "completed_epochs": epoch},
        "rng": _rng_state(),
        "config": run.config.to_dict(),
        "num_classes": run.data.num_classes,
        "input_shape": list(run.data.input_shape),
        "run_id": run.run_id,
    }


def _write_checkpoint(run: _Run, state: dict[str, Any]) -> None:
    """Write ``checkpoints/last.pt`` atomically (tmp file, fsync, ``os.replace``)."""
    run.pending = None  # older than this state: never written over it
    sync_logs(run.files)  # the rows up to this epoch reach the disk before the checkpoint
    atomic_write(run.files.checkpoint, lambda f: torch.save(state, f))
    run.checkpoint_epoch = int(state["epoch"])
    run.checkpoint_time = time.monotonic()


def _restore(run: _Run, plan: _Plan) -> int:
    """Load the checked checkpoint of ``plan`` into the model, optimizer and RNGs, after
    checking that the dataset still matches the run; ``ValueError`` (nothing changed on disk)
    when it does not fit."""
    state, path, saved = plan.state or {}, run.files.checkpoint, plan.saved or {}
    data = run.data
    now = {
        "num_classes": data.num_classes,
        "train_size": data.num_train,
        "test_size": data.num_test,
        "input_shape": list(data.input_shape),
    }
    differs = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in now.items() if saved.get(k, v) != v]
    differs += lifecycle.identity_differences(saved.get("identity"), run.fingerprint)
    if differs:
        raise ValueError(
            f"cannot resume {run.files.root}: the dataset differs from the one it was trained on "
            f"({'; '.join(differs)}); restore the original files or start over with --overwrite"
        )
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(
            f"{path} does not fit this run's model and optimizer ({reason}); it is corrupt or "
            "from another run: start over with --overwrite"
        ) from None
    run.checkpoint_epoch = int(state["epoch"])
    return run.checkpoint_epoch


def load_model(run_dir: str | os.PathLike[str], which: str = "final") -> nn.Module:
    """Rebuild the model of a run directory from ``final.pt`` (``which="final"``) or
    ``checkpoints/last.pt`` (``which="last"``), on CPU, in eval mode."""
    files = RunFiles(Path(run_dir))
    path = {"final": files.final, "last": files.checkpoint}.get(which)
    if path is None:
        raise ValueError(f"which must be 'final' or 'last', got {which!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a (finished) run?")
    state = read_checkpoint(path, _FINAL_KEYS)
    try:
        cfg = state["config"]
        model = build_model(
            cfg["model"],
            int(state["num_classes"]),
            tuple(state["input_shape"]),
            width=cfg.get("width"),
            depth=cfg.get("depth"),
            bias=cfg.get("bias", True),
            classifier=cfg.get("classifier", "linear"),
            feature_bn=cfg.get("feature_bn", False),
        )
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"{path} does not describe a model nclab can rebuild ({reason})") from None
    return model.eval()


# ------------------------------------------------------------------------------ files


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "nclab": __version__,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_config(run: _Run, plan: _Plan, start: int) -> None:
    config, data = run.config, run.data
    previous = plan.saved or {}
    kept = previous.get("identity") if plan.action is RunState.RESUME else None
    identity = lifecycle.new_identity(run.fingerprint, kept if isinstance(kept, dict) else None)
    run.run_id = identity["run_id"]
    resumed = list(previous.get("resumed", [])) if plan.action is RunState.RESUME else []
    if plan.action is RunState.RESUME:
        resumed.append({"after_epoch": start, "time": _now(), "epochs": config.epochs})
    doc: dict[str, Any] = {
        **config.to_dict(),
        "resolved": {
            "device": str(run.device),
            "world_size": run.ctx.world_size,
            "batch_size_per_rank": run.local_batch,
            "weight_decay_backbone": config.backbone_weight_decay(),
            "weight_decay_classifier": config.classifier_weight_decay(),
            "milestones": config.resolved_milestones(),
            "channels_last": run.channels_last,
            "threads": torch.get_num_threads(),
        },
        "num_classes": data.num_classes,
        "train_size": data.num_train,
        "test_size": data.num_test,
        "input_shape": list(data.input_shape),
        "class_names": list(data.class_names),
        "feature_dim": int(run.model.classifier.in_features),
        "num_parameters": count_parameters(run.model),
        "versions": _versions(),
        "hostname": socket.gethostname(),
        "start_time": previous.get("start_time", _now())
        if plan.action is RunState.RESUME
        else _now(),
        "resumed": resumed,
        "identity": {**identity, "data_files": list(getattr(data, "files", ()) or ())},
    }
    if run.ufm is not None:
        doc["ufm"] = run.ufm
        doc["ufm_w_norm"] = run.ufm["w_norm"]
        doc["ufm_h_norm"] = run.ufm["h_norm"]
    write_json(run.files.config, doc)


def _finish(run: _Run, start: int) -> RunResult:
    """Final model, test predictions, summary and the DONE marker (rank 0)."""
    files, config = run.files, run.config
    if run.last_eval is None:  # resumed at the last epoch: re-evaluate the final model
        run.last_eval = _evaluate(run, config.epochs)
    rows = read_rows(files.metrics) if run.ctx.is_main else []
    summary: dict[str, Any] = {}
    if run.ctx.is_main:
        final_state = {
            "model": run.model.state_dict(),
            "config": config.to_dict(),
            "num_classes": run.data.num_classes,
            "input_shape": list(run.data.input_shape),
            "epoch": config.epochs,
        }
        logits = run.last_eval.test_logits.float().numpy()
        labels = run.last_eval.test_labels.long().numpy()
        summary = {
            "completed": True,
            "epochs": config.epochs,
            "first_epoch_train_acc_100": lifecycle.first_perfect_epoch(rows),
            "final": rows[-1] if rows else {},
            "seconds_total": sum(float(r.get("seconds") or 0.0) for r in rows),
            "finished": _now(),
        }
        if run.ufm is not None:
            summary["ufm"] = run.ufm
        lifecycle.write_outcome(
            files,
            logits=logits,
            labels=labels,
            summary=summary,
            final=lambda f: torch.save(final_state, f),
        )
        run.progress.message(f"done: {files.root}")
    run.ctx.barrier()
    return RunResult(files.root, config, rows, True, start, False, summary, run.timings)
