"""`nclab ufm`: the unconstrained feature model under cross-entropy and label smoothing.

Sub-commands ``closed-form``, ``solve``, ``condition`` and ``convergence`` print one table row per
smoothing value ``delta`` so that CE (``delta = 0``) and LS sit side by side; ``--json`` prints the
same as JSON and ``--plot FILE`` writes a PNG where there are curves.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nclab.commands import HelpFormatter
from nclab.limits import available_memory

DESCRIPTION = (
    "Regularized unconstrained feature model f(W,H,b) = mean L_delta(W h + b, y) + lambda_W/2 "
    "||W||^2 + lambda_H/2 ||H||^2 + lambda_b/2 ||b||^2 with N = n K balanced samples "
    "(Guo, Andriopoulos, Zhao, Dong, Ling, Ross (2024), 'Cross Entropy versus Label Smoothing: "
    "A Neural Collapse Perspective', arXiv 2402.03979). delta = 0 is cross-entropy, delta > 0 "
    "label smoothing. See docs/theory.md."
)

#: Problem defaults: the small UFM of the convergence experiment (``CONVERGENCE_DEFAULTS``),
#: repeated here so that ``--help`` does not import numpy; a test checks that they agree.
_DEFAULTS: dict[str, Any] = dict(
    num_classes=10, n_per_class=50, dim=32, lambda_w=5e-3, lambda_h=5e-3, lambda_b=1e-3
)


def _add_problem(p: argparse.ArgumentParser, *, dim: bool, smoothing: Sequence[float]) -> None:
    p.add_argument(
        "-K", "--num-classes", type=int, default=_DEFAULTS["num_classes"], help="classes K (>= 2)"
    )
    p.add_argument(
        "-n",
        "--n-per-class",
        type=int,
        default=_DEFAULTS["n_per_class"],
        help="samples per class n (N = nK)",
    )
    if dim:
        p.add_argument(
            "-d", "--dim", type=int, default=_DEFAULTS["dim"], help="feature dimension (>= K-1)"
        )
    p.add_argument(
        "--lambda-w", type=float, default=_DEFAULTS["lambda_w"], help="classifier penalty (> 0)"
    )
    p.add_argument(
        "--lambda-h", type=float, default=_DEFAULTS["lambda_h"], help="feature penalty (> 0)"
    )
    p.add_argument(
        "--lambda-b",
        type=float,
        default=_DEFAULTS["lambda_b"],
        help="bias penalty (>= 0; any value > 0 gives the same minimizer b = 0)",
    )
    p.add_argument(
        "--smoothing",
        type=float,
        nargs="+",
        default=list(smoothing),
        metavar="DELTA",
        help="one or more label-smoothing values in [0, 1); 0 is cross-entropy",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ufm_command", metavar="SUBCOMMAND")
    sub.required = True

    def subcommand(
        name: str, help: str, dim: bool = True, smoothing: Sequence[float] = (0.0, 0.05, 0.1, 0.2)
    ) -> argparse.ArgumentParser:
        """A subcommand with the UFM problem options (``--dim`` only with ``dim``)."""
        p = sub.add_parser(name, help=help, formatter_class=HelpFormatter)
        _add_problem(p, dim=dim, smoothing=smoothing)
        return p

    subcommand(
        "closed-form",
        "closed-form global minimizer (regime, gap, norms, p_true, objective, kappa_logit)",
        dim=False,
    )

    p = subcommand(
        "solve",
        "solve the UFM in float64 (L-BFGS or GD) and compare with the closed form",
        smoothing=(0.0, 0.1),
    )
    p.add_argument(
        "--method", choices=("lbfgs", "gd"), default="lbfgs", help="L-BFGS or fixed-step GD"
    )
    p.add_argument("--lr", type=parse_lr, default=2.0, metavar="LR", help=_LR_HELP)
    p.add_argument("--max-iters", type=int, default=20000, help="iteration cap")
    p.add_argument("--seed", type=int, default=0, help="random initialisation")
    p.add_argument("--record-every", type=int, default=1, help="NC metrics every m iterations")
    p.add_argument("--plot", metavar="FILE", help="write the history (objective gap, NC) as PNG")

    p = subcommand(
        "condition", "Hessian conditioning at the minimizer: logit space and full (W, H, b)"
    )
    p.add_argument(
        "--method",
        choices=("auto", "dense", "lanczos"),
        default="auto",
        help="dense autograd Hessian (small problems) or Lanczos on Hessian-vector products",
    )
    p.add_argument("--seed", type=int, default=0, help="rotation of the minimizer")
    p.add_argument("--tol", type=float, default=1e-12, help="ARPACK relative tolerance")
    p.add_argument(
        "--plot", metavar="FILE", help="write condition numbers and eigenvalues vs delta as PNG"
    )

    p = subcommand(
        "convergence", "GD from one initialisation for each delta: objective gap and NC1 curves"
    )
    p.add_argument(
        "--lr", type=parse_lr, default=2.0, metavar="LR", help=_LR_HELP + "; a number is shared"
    )
    p.add_argument("--max-iters", type=int, default=3000, help="GD iterations")
    p.add_argument("--tol-objective", type=float, default=1e-8, help="relative objective gap")
    p.add_argument("--tol-nc1", type=float, default=1e-3, help="NC1 tolerance")
    p.add_argument("--seed", type=int, default=0, help="shared random initialisation")
    p.add_argument("--plot", metavar="FILE", help="write the curves as PNG")


# ----------------------------------------------------------------------------- output
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0.0:
            return "0"
        mag = abs(value)
        return f"{value:.6g}" if 1e-4 <= mag < 1e6 else f"{value:.3e}"
    return str(value)


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _emit(args: argparse.Namespace, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """``rows`` as JSON with ``--json`` (every key), else as a table of ``columns``."""
    if args.json:
        _emit_json(rows)
    else:
        _print_table(rows, columns)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if hasattr(obj, "item") and not isinstance(obj, str):  # numpy scalars
        return _jsonable(obj.item())
    return obj


def _emit_json(payload: Any) -> None:
    print(json.dumps(_jsonable(payload), indent=2))


_LR_HELP = (
    "GD step size: a number, or C/lambda_max (e.g. 1/lambda_max): each delta's own step, C "
    "over the largest Hessian eigenvalue at its minimizer"
)


@dataclass(frozen=True)
class RelativeStep:
    """``--lr C/lambda_max``: the step ``C / lambda_max(delta)`` of each delta, where
    ``lambda_max`` is the largest Hessian eigenvalue at that delta's closed-form minimizer."""

    scale: float

    def __str__(self) -> str:
        return f"{self.scale:g}/lambda_max"


def parse_lr(text: str) -> float | RelativeStep:
    """``--lr``: a number, or ``C/lambda_max`` (``1/lambda_max``, ``0.5/lambda_max``) as
    :class:`RelativeStep`; ``argparse.ArgumentTypeError`` (a one-line usage error) otherwise."""
    raw = str(text).strip()
    head, sep, tail = raw.replace(" ", "").partition("/")
    if sep and tail.lower() in ("lambda_max", "λ_max", "lambdamax"):
        try:
            scale = float(head)
        except ValueError:
            scale = math.nan
        if not (math.isfinite(scale) and scale > 0):
            raise argparse.ArgumentTypeError(
                f"{raw!r}: write C/lambda_max with a positive number C, e.g. 1/lambda_max"
            )
        return RelativeStep(scale)
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a step size: give a number (e.g. 2.0) or C/lambda_max "
            "(e.g. 1/lambda_max)"
        ) from None
    return value


def _step(args: argparse.Namespace, delta: float) -> float:
    """The GD step of ``delta``: ``--lr`` itself, or ``C / lambda_max(delta)``."""
    if not isinstance(args.lr, RelativeStep):
        return args.lr
    from nclab.ufm import condition

    lam = condition(_problem(args, delta), method="auto", seed=args.seed).lambda_max
    return args.lr.scale / lam


def _problem(args: argparse.Namespace, smoothing: float = 0.0) -> Any:
    """The :class:`nclab.ufm.UFMProblem` of the command line with label smoothing ``smoothing``."""
    from nclab.ufm import UFMProblem
    from nclab.ufm.problem import PROBLEM_FIELDS

    given = {name: getattr(args, name) for name in PROBLEM_FIELDS if hasattr(args, name)}
    return UFMProblem(**{**given, "smoothing": smoothing})


def _label(delta: float) -> str:
    return "CE" if delta == 0 else f"LS delta={delta:g}"


def _figure(ncols: int) -> tuple[Any, Any, Any]:
    """``(pyplot, figure, axes)`` with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.0), constrained_layout=True)
    return plt, fig, axes


def _save(plt: Any, fig: Any, axes: Any, path: str, fontsize: int = 7) -> None:
    """Legends and grids on every axis, then ``path`` as a 120 dpi PNG."""
    for ax in axes:
        ax.legend(fontsize=fontsize)
        ax.grid(alpha=0.3)
    from pathlib import Path

    from nclab.runs.files import atomic_write

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    try:  # atomically: a full disk or a signal leaves the previous file, never a torn one
        atomic_write(Path(path), lambda f: fig.savefig(f, dpi=120, format=fmt))
    finally:
        plt.close(fig)


def _floor(values: Any, floor: float = 1e-17) -> Any:
    """``|values|`` clipped from below so that round-off zeros stay on a log axis."""
    import numpy as np

    return np.maximum(np.abs(np.asarray(values, dtype=float)), floor)


# --------------------------------------------------------------------------- commands
#: Table columns of each sub-command (``--json`` prints every key).
_COLUMNS: dict[str, list[str]] = {
    "closed-form": "smoothing regime beta threshold logit_gap w_norm h_norm p_true loss objective "
    "kappa_logit".split(),
    "solve": "smoothing regime method iterations objective objective_closed_form relative_gap "
    "w_norm w_norm_closed_form h_norm h_norm_closed_form nc1 nc2_wh nc3 seconds".split(),
    "condition": "smoothing regime method num_params p_true kappa_logit kappa_logit_numeric "
    "lambda_max lambda_min_nonzero ratio lambda_min_excl_shift ratio_excl_shift w_ratio h_ratio "
    "orbit_dim zero_modes other_zero_modes".split(),
    "convergence": "smoothing regime lr iters_to_objective_tol iters_to_nc1_tol "
    "final_objective_gap final_nc1 final_w_norm w_norm_closed_form seconds".split(),
}


def _run_closed_form(args: argparse.Namespace) -> int:
    from nclab.ufm import closed_form

    rows = [closed_form(_problem(args, d)).as_dict() for d in args.smoothing]
    _emit(args, rows, _COLUMNS["closed-form"])
    return 0


def _run_solve(args: argparse.Namespace) -> int:
    from nclab.ufm import SOLVERS

    options = dict(max_iters=args.max_iters, seed=args.seed, record_every=args.record_every)
    results = []
    for d in args.smoothing:
        step = {"lr": _step(args, d)} if args.method == "gd" else {}
        results.append(SOLVERS[args.method](_problem(args, d), **options, **step))
    _emit(args, [r.summary() for r in results], _COLUMNS["solve"])
    if args.plot:
        plt, fig, axes = _figure(2)
        for r in results:
            h = r.history
            axes[0].semilogy(
                h["iteration"], _floor(h["relative_gap"]), label=_label(r.closed_form.smoothing)
            )
            for key, style in (("nc1", "-"), ("nc2_wh", "--"), ("nc3", ":")):
                axes[1].semilogy(
                    h["nc_iteration"],
                    _floor(h[key], 1e-35),
                    style,
                    label=f"{key} {_label(r.closed_form.smoothing)}",
                )
        axes[0].set(
            xlabel="iteration", ylabel="(f - f*) / f*", title=f"UFM {args.method}: objective gap"
        )
        axes[1].set(xlabel="iteration", ylabel="metric", title="neural collapse")
        _save(plt, fig, axes, args.plot)
    return 0


def _run_condition(args: argparse.Namespace) -> int:
    from nclab.ufm import condition

    results = [
        condition(_problem(args, d), method=args.method, seed=args.seed, tol=args.tol)
        for d in args.smoothing
    ]
    if args.plot:
        _plot_condition(args, results)
    rows = [r.as_dict() for r in results]
    if args.json:
        _emit_json(rows)
        return 0
    flat = []
    for r in results:
        row = r.as_dict()
        row.update(
            w_ratio=r.w_block.ratio,
            h_ratio=r.h_block.ratio,
            lambda_min_excl_shift=r.lambda_min_excl_bias_shift,
            ratio_excl_shift=r.ratio_excl_bias_shift,
        )
        flat.append(row)
    _print_table(flat, _COLUMNS["condition"])
    return 0


def _plot_condition(args: argparse.Namespace, results: list[Any]) -> None:
    plt, fig, axes = _figure(2)
    deltas = [r.smoothing for r in results]
    series = [
        ("kappa_logit = K p*", [r.kappa_logit for r in results], "o-"),
        ("full Hessian", [r.ratio for r in results], "s-"),
        ("full, excl. bias shift", [r.ratio_excl_bias_shift for r in results], "s--"),
        ("W block", [r.w_block.ratio for r in results], "^-"),
        ("H block", [r.h_block.ratio for r in results], "v:"),
    ]
    for label, values, style in series:
        axes[0].plot(deltas, values, style, label=label)
    axes[0].set(xlabel="label smoothing delta", ylabel="lambda_max / lambda_min", yscale="log")
    axes[0].set_title("condition numbers at the global minimizer")
    axes[1].plot(deltas, [r.lambda_max for r in results], "o-", label="lambda_max")
    axes[1].plot(
        deltas, [r.lambda_min_excl_bias_shift for r in results], "s-", label="lambda_min (non-zero)"
    )
    axes[1].axhline(args.lambda_h, color="gray", lw=0.8, ls="--", label="lambda_H")
    axes[1].set(xlabel="label smoothing delta", ylabel="eigenvalue", yscale="log")
    axes[1].set_title("extreme eigenvalues (symmetry modes excluded)")
    fig.suptitle(
        f"UFM K={args.num_classes}, n={args.n_per_class}, d={args.dim}, "
        f"lambda_W={args.lambda_w:g}, lambda_H={args.lambda_h:g}, lambda_b={args.lambda_b:g}",
        fontsize=9,
    )
    _save(plt, fig, axes, args.plot)


def _run_convergence(args: argparse.Namespace) -> int:
    from nclab.ufm import convergence

    options = dict(
        max_iters=args.max_iters,
        tol_objective=args.tol_objective,
        tol_nc1=args.tol_nc1,
        seed=args.seed,
    )
    if isinstance(args.lr, RelativeStep):  # each delta its own step (same initialisation)
        results = [
            r
            for d in args.smoothing
            for r in convergence(_problem(args), smoothings=[d], lr=_step(args, d), **options)
        ]
    else:
        results = convergence(_problem(args), smoothings=args.smoothing, lr=args.lr, **options)
    _emit(args, [r.summary() for r in results], _COLUMNS["convergence"])
    if args.plot:
        plt, fig, axes = _figure(2)
        for r in results:
            axes[0].semilogy(r.iterations, _floor(r.objective_gap), label=_label(r.smoothing))
            axes[1].semilogy(r.iterations, _floor(r.nc1, 1e-35), label=_label(r.smoothing))
        axes[0].axhline(args.tol_objective, color="gray", lw=0.8, ls="--")
        axes[1].axhline(args.tol_nc1, color="gray", lw=0.8, ls="--")
        title = (
            f"GD, K={args.num_classes}, n={args.n_per_class}, d={args.dim}, "
            f"$\\lambda_W$={args.lambda_w:g}, $\\lambda_H$={args.lambda_h:g}, "
            f"lr={_lr_text(args.lr)}"
        )
        axes[0].set(xlabel="iteration", ylabel="(f - f*) / f*", title="objective gap")
        axes[1].set(xlabel="iteration", ylabel="NC1", title="NC1")
        fig.suptitle(title, fontsize=9)
        _save(plt, fig, axes, args.plot, fontsize=8)
    return 0


def _lr_text(lr: float | RelativeStep) -> str:
    return str(lr) if isinstance(lr, RelativeStep) else f"{lr:g}"


_RUNNERS = {
    "closed-form": _run_closed_form,
    "solve": _run_solve,
    "condition": _run_condition,
    "convergence": _run_convergence,
}


# ----------------------------------------------------------------------------- validation
def _check_options(args: argparse.Namespace) -> None:
    """Refuse numeric options the solvers would silently reinterpret (a cap of 0 iterations,
    a negative tolerance, ...)."""
    positive_ints = ("max_iters", "record_every")
    for name in positive_ints:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be an integer >= 1, got {value}")
    for name in ("tol", "tol_objective", "tol_nc1"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be a finite number >= 0, got {value}")


#: Float64 working arrays per method, as multiples of the parameter count P = Kd + dN + K and
#: of the logit count K·N (iterates, gradients, L-BFGS history of 30 pairs, Lanczos vectors,
#: logits/probabilities and their temporaries).
_PARAM_COPIES = {"solve": 70, "lanczos": 48, "convergence": 12}
_LOGIT_COPIES = 8


def memory_estimate(args: argparse.Namespace) -> int:
    """Bytes the UFM sub-command will need (0 for the closed form), an upper estimate."""
    if args.ufm_command == "closed-form":
        return 0
    k, n, d = args.num_classes, args.n_per_class, args.dim
    if min(k, n, d) < 1:
        return 0  # the library refuses these sizes with its own message
    samples = n * k
    params = k * d + d * samples + k
    logits = k * samples + samples  # plus the int64 labels
    if args.ufm_command == "condition":
        dense = args.method == "dense" or (args.method == "auto" and params <= 2500)
        if dense:
            return 8 * (3 * params * params + _LOGIT_COPIES * logits)
        copies = _PARAM_COPIES["lanczos"]
    else:
        copies = _PARAM_COPIES[args.ufm_command]
    needed = 8 * (copies * params + _LOGIT_COPIES * logits)
    if isinstance(getattr(args, "lr", None), RelativeStep):  # C/lambda_max: conditions first
        conditioning = 3 * params * params if params <= 2500 else _PARAM_COPIES["lanczos"] * params
        needed = max(needed, 8 * (conditioning + _LOGIT_COPIES * logits))
    return needed


def _check_memory(args: argparse.Namespace) -> None:
    needed, available = memory_estimate(args), available_memory()
    if available is not None and needed > available:
        raise ValueError(
            f"this problem (K={args.num_classes}, n={args.n_per_class}, d={args.dim}) needs "
            f"about {needed / 2**30:.3g} GiB of memory but {available / 2**30:.3g} GiB are "
            "available; choose smaller sizes"
        )


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    _check_memory(args)

    # one-thread BLAS (many small products): nclab.threads.limit_threads, run by cli.main
    return _RUNNERS[args.ufm_command](args)
