"""Benchmark of the NC metrics engine (nclab.metrics) against three baselines.

    python benchmarks/metrics_bench.py                       # N=50,000, d=512, K=10 and 100
    python benchmarks/metrics_bench.py --n 5000 --dim 64     # quick

Compared, on the same float32 features (N x d) in the same run, 1 thread for every method:

- nclab one-shot: ``nc_metrics(h, y, W, b)`` (the exact two-pass projected engine), all metrics.
- nclab streaming: ``NCAccumulator.update`` on batches of ``--batch`` samples (one pass, d x d
  float64 state), then ``update_ncc`` and ``compute(W, b)``.
- float64 ``X^T X``: one float64 ``X^T X`` per batch (numpy, i.e. BLAS ``syrk``), the floor of
  any exact streaming scatter; streaming ``update`` is compared with it.
- (a) per-sample loop: class means first, then ``S += np.outer(h_i - mu_y, h_i - mu_y)`` for each
  sample in float64; timed on ``--loop-samples`` samples and extrapolated linearly to N.
- (b) per-class style: per class a d x d covariance (``np.cov``) and its ``np.linalg.pinv``;
  ``Sigma_W`` as the count-weighted sum; ``np.linalg.pinv(Sigma_B)``; NC1.
- (c) float32 torch engine, in the style of the fastest public NC library: class means in a
  first pass, the within-class scatter accumulated per batch in float32
  (``(H - M_y)^T (H - M_y)``), ``Sigma_B`` from the centred means and
  ``nc1 = tr(Sigma_W torch.linalg.pinv(Sigma_B)) / K``, all in float32.

Accuracy: relative NC1 error against a float64 reference (two-pass float64 ``Sigma_W``, explicit
rank K-1 eigen-decomposition of ``Sigma_B``), on the benchmark data and on near-collapse data
(means of norm 100 around an offset of 50 in every coordinate, noise 1e-5, float32).

Memory: peak resident memory of a child process that streams N samples batch by batch minus
its resident memory after setup, for two values of N (torch allocations are invisible to
tracemalloc). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

# BLAS threads must be fixed before numpy/torch load. Default 1: on a shared machine a
# multi-threaded BLAS whose threads compete with other processes runs several times slower.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=1)
THREADS = _pre.parse_known_args()[0].threads
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nclab.metrics import NCAccumulator, nc_metrics  # noqa: E402

torch.set_num_threads(THREADS)


def make_features(rng: np.random.Generator, n: int, d: int, k: int) -> tuple[np.ndarray, ...]:
    centres = rng.standard_normal((k, d)).astype(np.float32) * 2
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present
    h = centres[y] + rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((k, d))
    b = rng.standard_normal(k)
    return h, y, w, b


def collapse_features(rng: np.random.Generator, n: int, d: int, k: int) -> tuple[np.ndarray, ...]:
    """Near collapse: means of norm 100 around 50 * 1, noise 1e-5, stored as float32."""
    centres = rng.standard_normal((k, d))
    centres *= 100.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    h = (50.0 + centres[y] + 1e-5 * rng.standard_normal((n, d))).astype(np.float32)
    return h, y


CLOCK = time.process_time  # CPU seconds of this process (--wall: wall-clock seconds)


def timed(fn, *fn_args):
    """(seconds, result) of one call, on :data:`CLOCK`."""
    t0 = CLOCK()
    result = fn(*fn_args)
    return CLOCK() - t0, result


def reference_nc1(h: np.ndarray, y: np.ndarray, k: int) -> float:
    """float64 two-pass NC1 with an explicit rank K-1 pseudo-inverse (the accuracy yardstick)."""
    x = h.astype(np.float64)
    mu = np.stack([x[y == c].mean(axis=0) for c in range(k)])
    sigma_w = np.zeros((x.shape[1], x.shape[1]))
    for lo in range(0, len(y), 4096):
        z = x[lo : lo + 4096] - mu[y[lo : lo + 4096]]
        sigma_w += z.T @ z
    sigma_w /= len(y)
    mbar = mu - mu.mean(axis=0)
    evals, evecs = np.linalg.eigh(mbar.T @ mbar / k)
    top = evecs[:, -(k - 1) :]
    return float(np.trace(top.T @ sigma_w @ top @ np.diag(1.0 / evals[-(k - 1) :])) / k)


def run_stream(h, y, k, batch, w, b):
    acc = NCAccumulator(k, h.shape[1], validate=False)
    for lo in range(0, len(y), batch):
        acc.update(h[lo : lo + batch], y[lo : lo + batch])
    return acc


def finish_stream(acc, h, y, batch, w, b):
    for lo in range(0, len(y), batch):
        acc.update_ncc(h[lo : lo + batch], y[lo : lo + batch], weight=w, bias=b)
    return acc.compute(w, b)


def gram_per_batch(h, batch):
    """One float64 X^T X per batch (numpy: BLAS syrk), summed."""
    s = np.zeros((h.shape[1], h.shape[1]))
    for lo in range(0, len(h), batch):
        x = h[lo : lo + batch].astype(np.float64)
        s += x.T @ x
    return s


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


def baseline_float32_torch(h: torch.Tensor, y: torch.Tensor, k: int, batch: int) -> float:
    """(c): float32 torch engine: means pass, per-batch float32 within-class scatter, pinv."""
    d = h.shape[1]
    sums = torch.zeros(k, d)
    counts = torch.zeros(k)
    for lo in range(0, len(y), batch):
        hb, yb = h[lo : lo + batch], y[lo : lo + batch]
        sums.index_add_(0, yb, hb)
        counts.index_add_(0, yb, torch.ones(len(yb)))
    means = sums / counts[:, None]
    sigma_w = torch.zeros(d, d)
    for lo in range(0, len(y), batch):
        z = h[lo : lo + batch] - means[y[lo : lo + batch]]
        sigma_w += z.T @ z
    sigma_w /= len(y)
    mbar = means - means.mean(dim=0)
    sigma_b = mbar.T @ mbar / k
    return float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b)) / k)


def bench_one(args: argparse.Namespace, k: int) -> dict:
    """Times and accuracies for one K; repeats are interleaved so load spikes hit all methods."""
    rng = np.random.default_rng(args.seed)
    h, y, w, b = make_features(rng, args.n, args.dim, k)
    ht, yt = torch.from_numpy(h), torch.from_numpy(y)
    m = min(args.loop_samples, args.n)
    best = dict.fromkeys(["oneshot", "update", "finish", "gram", "loop", "b", "c"], float("inf"))
    for r in range(args.repeats):
        t, one = timed(nc_metrics, h, y, w, b)
        best["oneshot"] = min(best["oneshot"], t)
        t, acc = timed(run_stream, h, y, k, args.batch, w, b)
        best["update"] = min(best["update"], t)
        t, stream = timed(finish_stream, acc, h, y, args.batch, w, b)
        best["finish"] = min(best["finish"], t)
        best["gram"] = min(best["gram"], timed(gram_per_batch, h, args.batch)[0])
        t, nc1_c = timed(baseline_float32_torch, ht, yt, k, args.batch)
        best["c"] = min(best["c"], t)
        if r < args.repeats_b:
            best["loop"] = min(best["loop"], timed(baseline_loop, h, y, k, m)[0])
            t, nc1_b = timed(baseline_per_class, h, y, k)
            best["b"] = min(best["b"], t)
    ref = reference_nc1(h, y, k)
    hc, yc = collapse_features(rng, args.n, args.dim, k)
    ref_c = reference_nc1(hc, yc, k)
    row = {
        "K": k,
        "oneshot_s": best["oneshot"],
        "stream_update_s": best["update"],
        "stream_all_s": best["update"] + best["finish"],
        "gram_s": best["gram"],
        "loop_s": best["loop"] * args.n / m,
        "b_s": best["b"],
        "c_s": best["c"],
        "err_oneshot": abs(one.nc1 - ref) / ref,
        "err_stream": abs(stream.nc1 - ref) / ref,
        "err_b": abs(nc1_b - ref) / ref,
        "err_c": abs(nc1_c - ref) / ref,
        "collapse_ref": ref_c,
        "collapse_err_oneshot": abs(nc_metrics(hc, yc).nc1 - ref_c) / ref_c,
        "collapse_err_stream": abs(
            run_stream(hc, yc, k, args.batch, None, None).compute().nc1 - ref_c
        )
        / ref_c,  # fmt: skip
        "collapse_err_c": abs(
            baseline_float32_torch(torch.from_numpy(hc), torch.from_numpy(yc), k, args.batch)
            - ref_c
        )
        / ref_c,
    }
    print(json.dumps(row), file=sys.stderr)
    return row


def stream_peak_child(n: int, d: int, k: int, batch: int, seed: int) -> None:
    """Child process: stream n samples; print its peak RSS and the growth of the peak after the
    first batch, in MiB."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32) * 2
    acc = NCAccumulator(k, d, validate=False)
    y0 = np.arange(batch) % k
    acc.update(centres[y0] + rng.standard_normal((batch, d), dtype=np.float32), y0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for lo in range(batch, n, batch):
        y = rng.integers(0, k, min(batch, n - lo))
        acc.update(centres[y] + rng.standard_normal((len(y), d), dtype=np.float32), y)
    acc.compute()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(peak / 1024, (peak - base) / 1024)


def stream_peak_mib(n: int, d: int, k: int, batch: int, seed: int) -> tuple[float, float]:
    code = (
        "import sys; sys.argv=['x']; import benchmarks.metrics_bench as m; "
        f"m.stream_peak_child({n}, {d}, {k}, {batch}, {seed})"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    peak, growth = out.stdout.strip().splitlines()[-1].split()
    return float(peak), float(growth)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000, help="number of samples")
    p.add_argument("--dim", type=int, default=512, help="feature dimension d")
    p.add_argument("--classes", type=int, nargs="+", default=[10, 100], help="values of K")
    p.add_argument("--batch", type=int, default=1000, help="streaming batch size")
    p.add_argument("--loop-samples", type=int, default=3000, help="samples timed for (a)")
    p.add_argument("--repeats", type=int, default=5, help="best-of repeats (nclab, (c))")
    p.add_argument("--repeats-b", type=int, default=2, help="best-of repeats for (a), (b)")
    p.add_argument(
        "--mem-n", type=int, nargs=2, default=[10_000, 100_000], help="two N for peak memory"
    )
    p.add_argument("--mem-classes", type=int, default=10, help="K for the memory runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="BLAS/torch threads for every method")
    p.add_argument(
        "--wall",
        action="store_true",
        help="time wall-clock seconds instead of the process's CPU seconds (with one thread, CPU "
        "seconds do not count time lost to other processes on a shared machine)",
    )
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.perf_counter if args.wall else time.process_time
    d = args.dim
    print(
        f"# NC metrics benchmark: N={args.n}, d={d}, batch={args.batch}, threads={THREADS}, "
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}\n",
        file=sys.stderr,
    )
    rows = [bench_one(args, k) for k in args.classes]
    print(
        f"N = {args.n:,} float32 features, d = {d}, streaming batches of {args.batch}, "
        f"{THREADS} thread(s); best of {args.repeats} (nclab, X^T X, (c)) / "
        f"{args.repeats_b} ((a), (b)). {'Wall-clock' if args.wall else 'CPU'} seconds.\n"
    )
    print(
        "| K | nclab one-shot, all metrics | nclab streaming, all metrics | streaming `update` "
        "| float64 X^T X per batch | (a) per-sample loop (extrap.) | (b) per-class cov + pinv "
        "| (c) float32 torch, NC1 | one-shot vs (c) | `update` / X^T X |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['K']} | {r['oneshot_s']:.3f} | {r['stream_all_s']:.3f} "
            f"| {r['stream_update_s']:.3f} | {r['gram_s']:.3f} | {r['loop_s']:.1f} "
            f"| {r['b_s']:.2f} | {r['c_s']:.3f} | {r['c_s'] / r['oneshot_s']:.2f}x "
            f"| {r['stream_update_s'] / r['gram_s']:.2f} |"
        )
    print("\nRelative NC1 error against the float64 reference:\n")
    print(
        "| K | data | reference nc1 | nclab one-shot | nclab streaming | (b) float64 pinv "
        "| (c) float32 torch |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['K']} | benchmark | - | {r['err_oneshot']:.1e} | {r['err_stream']:.1e} "
            f"| {r['err_b']:.1e} | {r['err_c']:.1e} |"
        )
        print(
            f"| {r['K']} | near collapse | {r['collapse_ref']:.3e} | "
            f"{r['collapse_err_oneshot']:.1e} | {r['collapse_err_stream']:.1e} | - "
            f"| {r['collapse_err_c']:.1e} |"
        )
    k = args.mem_classes
    print(
        f"\nPeak resident memory of streaming (child process, batches of {args.batch}), K = {k}:\n"
    )
    print("| N | peak RSS of the process (MiB) | growth after the first batch (MiB) |")
    print("|---:|---:|---:|")
    for n in args.mem_n:
        peak, growth = stream_peak_mib(n, d, k, args.batch, args.seed)
        print(f"| {n:,} | {peak:.0f} | {growth:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
