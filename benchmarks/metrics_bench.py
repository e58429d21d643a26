"""Benchmark of the NC metrics engine (nclab.metrics) against two baselines.

    python benchmarks/metrics_bench.py                       # N=50,000, d=512, K=10 and 100
    python benchmarks/metrics_bench.py --n 5000 --dim 64     # quick

Compared, on the same float32 features (N x d) in the same run:

- nclab: ``NCAccumulator.update`` on batches of ``--batch`` samples (one pass, float64 sufficient
  statistics), then ``compute(W)`` for every metric.
- (a) per-sample loop: class means first, then ``S += np.outer(h_i - mu_y, h_i - mu_y)`` for each
  sample in float64; timed on ``--loop-samples`` samples and extrapolated linearly to N.
- (b) seed-paper style: per class, a d x d covariance (``np.cov``) and its ``np.linalg.pinv``;
  ``Sigma_W`` as the count-weighted sum of the class covariances; ``np.linalg.pinv(Sigma_B)``;
  ``nc1 = tr(Sigma_W Sigma_B^+) / K``. It needs all features in memory.

Peak memory (tracemalloc, which sees numpy's allocations) is measured for two values of N with
features generated batch by batch, to show that the accumulator's footprint does not grow with N.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc

# BLAS threads must be fixed before numpy loads. Default 1: on a shared machine a multi-threaded
# BLAS whose threads compete with other processes runs several times slower than one thread.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=1)
THREADS = _pre.parse_known_args()[0].threads
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import numpy as np  # noqa: E402

from nclab.metrics import NCAccumulator  # noqa: E402


def make_features(rng: np.random.Generator, n: int, d: int, k: int) -> tuple[np.ndarray, ...]:
    centres = rng.standard_normal((k, d)).astype(np.float32) * 2
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present
    h = centres[y] + rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((k, d))
    return h, y, w


def timed(fn, *fn_args):
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    result = fn(*fn_args)
    return time.perf_counter() - t0, result


def run_nclab(h, y, k, batch):
    acc = NCAccumulator(k, h.shape[1])
    for lo in range(0, len(y), batch):
        acc.update(h[lo : lo + batch], y[lo : lo + batch])
    return acc


def baseline_loop(h, y, k, samples):
    """(a): rank-one update per sample (means from a first vectorised pass)."""
    d = h.shape[1]
    mu = np.stack([h[y == c].mean(axis=0, dtype=np.float64) for c in range(k)])
    s = np.zeros((d, d))
    for i in range(samples):
        diff = h[i].astype(np.float64) - mu[y[i]]
        s += np.outer(diff, diff)
    return s


def baseline_per_class(h, y, k):
    """(b): per-class covariance and pseudo-inverse, one pinv for Sigma_B; returns nc1."""
    n, d = h.shape
    sigma_w = np.zeros((d, d))
    means = np.zeros((k, d))
    for c in range(k):
        hc = h[y == c].astype(np.float64)
        means[c] = hc.mean(axis=0)
        cov = np.cov(hc, rowvar=False, bias=True)
        _ = np.linalg.pinv(cov, hermitian=True)  # per-class inverse (eigh-based, the faster one)
        sigma_w += cov * len(hc) / n
    mbar = means - means.mean(axis=0)
    sigma_b = mbar.T @ mbar / k
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / k)


def peak_mib(fn) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def stream_nclab(n, d, k, batch, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32) * 2
    acc = NCAccumulator(k, d)
    for lo in range(0, n, batch):
        y = rng.integers(0, k, min(batch, n - lo))
        y[: min(k, len(y))] = np.arange(min(k, len(y)))
        acc.update(centres[y] + rng.standard_normal((len(y), d), dtype=np.float32), y)
    acc.compute()


def whole_per_class(n, d, k, batch, seed):
    h, y, _ = make_features(np.random.default_rng(seed), n, d, k)
    baseline_per_class(h, y, k)


def bench_one(args: argparse.Namespace, k: int) -> tuple:
    """Times and nc1 values for one K; repeats are interleaved so load spikes hit all methods."""
    h, y, w = make_features(np.random.default_rng(args.seed), args.n, args.dim, k)
    m = min(args.loop_samples, args.n)
    t_stream = t_compute = t_loop_part = t_b = float("inf")
    acc, nc1_b = None, float("nan")
    for r in range(max(args.repeats, args.repeats_b)):
        if r < args.repeats:
            t, acc = timed(run_nclab, h, y, k, args.batch)
            t_stream = min(t_stream, t)
            t_compute = min(t_compute, timed(acc.compute, w)[0])
            t_loop_part = min(t_loop_part, timed(baseline_loop, h, y, k, m)[0])
        if r < args.repeats_b:
            t, nc1_b = timed(baseline_per_class, h, y, k)
            t_b = min(t_b, t)
    nc1 = acc.compute(w).nc1
    print(
        f"K={k}: stream {t_stream:.3f}s, compute {t_compute:.3f}s, loop {t_loop_part:.2f}s "
        f"for {m} samples, per-class {t_b:.2f}s",
        file=sys.stderr,
    )
    return k, t_stream, t_stream + t_compute, t_loop_part * args.n / m, t_b, nc1, nc1_b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="number of samples")
    p.add_argument("--dim", type=int, default=512, help="feature dimension d")
    p.add_argument("--classes", type=int, nargs="+", default=[10, 100], help="values of K")
    p.add_argument("--batch", type=int, default=1000, help="accumulator batch size")
    p.add_argument("--loop-samples", type=int, default=3000, help="samples timed for (a)")
    p.add_argument("--repeats", type=int, default=5, help="best-of repeats (nclab and (a))")
    p.add_argument("--repeats-b", type=int, default=2, help="best-of repeats for (b)")
    p.add_argument(
        "--mem-n", type=int, nargs=2, default=[10_000, 50_000], help="two N for peak memory"
    )
    p.add_argument("--mem-classes", type=int, default=10, help="K for the memory runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads for every method")
    args = p.parse_args(argv)
    d = args.dim

    print(
        f"# NC metrics benchmark: N={args.n}, d={d}, batch={args.batch}, threads={THREADS}, "
        f"python {platform.python_version()}, numpy {np.__version__}\n",
        file=sys.stderr,
    )
    rows = [bench_one(args, k) for k in args.classes]
    print(
        f"N = {args.n:,} float32 features, d = {d}, nclab batches of {args.batch}, "
        f"{THREADS} BLAS thread(s); best of {args.repeats} (nclab, (a)) / {args.repeats_b} ((b)).\n"
    )
    print(
        "| K | nclab Σ_W stream (s) | nclab all metrics (s) | (a) per-sample loop (s, extrap.) "
        "| (b) per-class cov + pinv (s) | nclab vs (a) | nclab vs (b) | nc1 nclab | nc1 (b) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, t_stream, t_full, t_loop, t_b, nc1, nc1_b in rows:
        print(
            f"| {k} | {t_stream:.3f} | {t_full:.3f} | {t_loop:.1f} | {t_b:.2f} "
            f"| {t_loop / t_stream:.0f}x | {t_b / t_full:.1f}x | {nc1:.6g} | {nc1_b:.6g} |"
        )

    k = args.mem_classes
    print(f"\nPeak traced memory (tracemalloc), K = {k}, d = {d}:\n")
    print(f"| N | nclab, batches of {args.batch} (MiB) | (b), all features in memory (MiB) |")
    print("|---:|---:|---:|")
    for n in args.mem_n:
        mem_a = peak_mib(lambda n=n: stream_nclab(n, d, k, args.batch, args.seed))
        mem_b = peak_mib(lambda n=n: whole_per_class(n, d, k, args.batch, args.seed))
        print(f"| {n:,} | {mem_a:.1f} | {mem_b:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
