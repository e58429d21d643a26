"""Wall time of the default `nclab compare` beside the same nine runs in a plain PyTorch loop.

`nclab compare` (quick preset: Fashion-MNIST 300 per class, MLP 784-256x4-10, δ in {0, 0.05,
0.1} x seeds {0, 1, 2}, 150 epochs, its default jobs and threads, per-epoch evaluation, files,
checkpoints and the final report) runs as a subprocess in a temporary folder. The baseline
trains the same nine models (same data, model, SGD settings, cosine schedule, loss with label
smoothing δ) in plain loops without evaluation or files, with the same number of worker
processes and threads per worker. The ratio of the two wall times is reported.

Usage::

    python benchmarks/compare_bench.py               # the default compare: minutes
    python benchmarks/compare_bench.py --epochs 10   # a shorter check (same for both)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from nclab.compare import PRESETS, default_jobs
from nclab.threads import training_threads


def plain_run(options: dict, smoothing: float, seed: int, threads: int) -> float:
    """Train one model in a plain loop; returns its wall seconds."""
    import torch
    import torch.nn.functional as F

    from nclab.data import load_dataset
    from nclab.models import build_model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    data = load_dataset(options["dataset"], per_class=options["per_class"], seed=seed)
    torch.manual_seed(seed)
    model = build_model(options["model"], data.num_classes, data.input_shape,
                        width=options["width"], depth=options["depth"])  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=options["lr"], momentum=options["momentum"],
                          weight_decay=options["weight_decay"])  # fmt: skip
    x, y, bs, epochs = data.x_train, data.y_train, options["batch_size"], options["epochs"]
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = options["lr"] * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        order = torch.randperm(len(y))
        for start in range(0, len(y), bs):
            idx = order[start : start + bs]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    args = parser.parse_args(argv)
    preset = PRESETS["quick"]
    options = dict(preset.train)
    extra = []
    if args.epochs is not None:
        options["epochs"] = args.epochs
        extra = ["--epochs", str(args.epochs)]
    jobs = default_jobs(preset)
    threads = training_threads(None, jobs)  # what `nclab compare` gives each job
    with tempfile.TemporaryDirectory(prefix="nclab-compare-bench-") as tmp:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "nclab.cli", "compare", "--out", tmp + "/cmp", "--quiet"]
        subprocess.run(cmd + extra, check=True)
        nclab_s = time.perf_counter() - t0
    print(f"# nclab compare: {nclab_s:.0f} s; now the plain loops", flush=True)
    t0 = time.perf_counter()
    runs = [(d, s) for d in preset.smoothings for s in preset.seeds]
    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(plain_run, [options] * len(runs), *zip(*runs, strict=True),
                      [threads] * len(runs)))  # fmt: skip
    plain_s = time.perf_counter() - t0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}, {len(runs)} runs x "
          f"{options['epochs']} epochs, {jobs} jobs x {threads} thread(s)")  # fmt: skip
    print("\n| | wall s | / plain |\n|---|---:|---:|")
    print(f"| plain PyTorch loops (no evaluation, no files) | {plain_s:.0f} | 1.00 |")
    print(f"| `nclab compare` (evaluation, files, report) | {nclab_s:.0f} "
          f"| {nclab_s / plain_s:.2f} |")  # fmt: skip
    return {"nclab": nclab_s, "plain": plain_s}


if __name__ == "__main__":
    main()
