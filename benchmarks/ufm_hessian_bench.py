"""Benchmark: extreme eigenvalues of the full UFM Hessian at the global minimizer by Lanczos.

Default size K = 100 classes, n = 10 samples per class, d = 128 (140,900 parameters), where a
dense Hessian (160 GB) is out of reach.  For each smoothing value the script

1. builds the closed-form minimizer (``nclab.ufm.minimizer``) and analytic numpy Hessian-vector
   products (``HessianVectorProduct``),
2. projects out the rotation-symmetry directions ``(W A, -A H, 0)`` (``RotationSymmetry``, an
   implicit projector: 7,722 directions here, never stored) and the bias shift ``(0, 0, 1)``
   (an exact eigenvector with eigenvalue ``lambda_b``),
3. runs ARPACK (``scipy.sparse.linalg.eigsh``) for ``lambda_max`` (which="LA") and for the smallest
   eigenvalue on the complement (which="SA" on ``P H P + lambda_max (I - P)``, no shift-invert),
4. validates: Ritz residuals ``||H v - lambda v|| / lambda``, orthogonality of the Ritz vectors to
   the symmetry subspace, a repeat with another rotation of the minimizer / start vector, and an
   *unprojected* run (which returns the zero symmetry modes instead),
5. also reports the W-block and H-block extremes.

Run:  ``OMP_NUM_THREADS=1 python benchmarks/ufm_hessian_bench.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.sparse.linalg import LinearOperator, eigsh  # noqa: E402

from nclab.ufm import (  # noqa: E402
    HessianVectorProduct,
    RotationSymmetry,
    UFMProblem,
    closed_form,
    condition,
    lanczos_extremes,
    minimizer,
)
from nclab.ufm.problem import PROBLEM_FIELDS  # noqa: E402


def bench_one(args: argparse.Namespace, delta: float) -> dict:
    given = {name: getattr(args, name) for name in PROBLEM_FIELDS if hasattr(args, name)}
    problem = UFMProblem(**{**given, "smoothing": delta})
    cf = closed_form(problem)
    t0 = time.perf_counter()
    x = problem.pack(*minimizer(problem, seed=0))
    hvp = HessianVectorProduct(problem, x)
    sym = RotationSymmetry(problem, x, include_bias_shift=True)
    t_setup = time.perf_counter() - t0

    t0 = time.perf_counter()
    lam_max, lam_min, n_hvp, v_top, v_bot = lanczos_extremes(
        hvp, sym, tol=args.tol, ncv=args.ncv, seed=0, return_vectors=True
    )
    t_lanczos = time.perf_counter() - t0
    lam_min_nonzero = min(lam_min, args.lambda_b) if args.lambda_b > 0 else lam_min

    # --- validation -------------------------------------------------------------------------
    def residual(v: np.ndarray, value: float) -> float:
        return float(np.linalg.norm(hvp.hvp(v) - value * v) / abs(value))

    res_top, res_bot = residual(v_top, lam_max), residual(v_bot, lam_min)
    sym_overlap = max(
        float(np.linalg.norm(sym.project(v_top))), float(np.linalg.norm(sym.project(v_bot)))
    )
    # another rotation of the minimizer and another Lanczos start vector
    x2 = problem.pack(*minimizer(problem, seed=1))
    hvp2 = HessianVectorProduct(problem, x2)
    sym2 = RotationSymmetry(problem, x2, include_bias_shift=True)
    lam_max2, lam_min2, _ = lanczos_extremes(hvp2, sym2, tol=args.tol, ncv=args.ncv, seed=7)
    # without the projection the smallest eigenvalue is a symmetry zero mode
    op = LinearOperator((hvp.size,) * 2, matvec=lambda v: hvp.hvp(np.ravel(v)), dtype=np.float64)
    t0 = time.perf_counter()
    unprojected = float(eigsh(op, k=1, which="SA", tol=1e-8, ncv=args.ncv,
                              return_eigenvectors=False)[0])  # fmt: skip
    t_unproj = time.perf_counter() - t0
    # W / H blocks (and the whole pipeline as `condition` runs it)
    t0 = time.perf_counter()
    cond = condition(problem, method="lanczos", tol=args.tol)
    t_condition = time.perf_counter() - t0

    return {
        "smoothing": delta,
        "num_params": problem.num_params,
        "orbit_dim": sym.orbit_dim,
        "p_true": cf.p_true,
        "kappa_logit": cf.kappa_logit,
        "lambda_max": lam_max,
        "lambda_min_excl_bias_shift": lam_min,
        "lambda_min_nonzero": lam_min_nonzero,
        "ratio": lam_max / lam_min_nonzero,
        "ratio_excl_bias_shift": lam_max / lam_min,
        "w_block": [cond.w_block.lambda_max, cond.w_block.lambda_min, cond.w_block.ratio],
        "h_block": [cond.h_block.lambda_max, cond.h_block.lambda_min, cond.h_block.ratio],
        "hvp_count": n_hvp,
        "seconds_setup": t_setup,
        "seconds_lanczos": t_lanczos,
        "seconds_condition_total": t_condition,
        "ritz_residual_max": res_top,
        "ritz_residual_min": res_bot,
        "ritz_symmetry_overlap": sym_overlap,
        "repeat_rel_diff_max": abs(lam_max2 - lam_max) / lam_max,
        "repeat_rel_diff_min": abs(lam_min2 - lam_min) / lam_min,
        "unprojected_smallest": unprojected,
        "seconds_unprojected": t_unproj,
        "agrees_with_condition": bool(
            abs(cond.lambda_max - lam_max) <= 1e-8 * lam_max
            and abs(cond.lambda_min_excl_bias_shift - lam_min) <= 1e-8 * lam_min
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-K", "--num-classes", type=int, default=100)
    p.add_argument("-n", "--n-per-class", type=int, default=10)
    p.add_argument("-d", "--dim", type=int, default=128)
    p.add_argument("--lambda-w", type=float, default=5e-4)
    p.add_argument("--lambda-h", type=float, default=5e-4)
    p.add_argument("--lambda-b", type=float, default=1e-3)
    p.add_argument("--smoothing", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--tol", type=float, default=1e-10)
    p.add_argument("--ncv", type=int, default=40)
    p.add_argument("--json-out", help="also write the results to this JSON file")
    args = p.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")  # fmt: skip
    t_all = time.perf_counter()
    rows = []
    for delta in args.smoothing:
        row = bench_one(args, delta)
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    total = time.perf_counter() - t_all
    print(f"total wall time: {total:.1f} s")
    cols = ("smoothing", "lambda_max", "lambda_min_nonzero", "ratio", "lambda_min_excl_bias_shift",
            "ratio_excl_bias_shift", "hvp_count", "seconds_lanczos")  # fmt: skip
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"rows": rows, "total_seconds": total, "args": vars(args)}, fh, indent=1)


if __name__ == "__main__":
    main()
