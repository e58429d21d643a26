"""Time one training epoch of `nclab train`, split into its parts.

For each model: a short run (``nclab.train.train`` into a temporary directory, evaluation every
epoch) whose per-epoch timings (``RunResult.timings``) are split into

* ``train``        the SGD pass over the training set,
* ``eval_forward`` the eval-mode forward passes over the train and test sets,
* ``metrics``      NC statistics (NCAccumulator), NCC tallies, ``compute``, ECE,
* ``io``           metrics.jsonl/csv row and the atomic checkpoint,

reported as medians over the epochs after the first (warm-up). Then the metric work of one
evaluation is timed twice on the same (final) model: the default kept-features path
(statistics with the within-class scatter restricted to the class-mean span, O(N d K)) and the
streaming path (``NCAccumulator.update`` per batch with the full d x d scatter, O(N d²), and
``update_ncc`` after a second forward pass, whose time is reported separately), and the two
are checked to give the same metrics.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/train_epoch_bench.py               # mlp, FMNIST 500/class
    OMP_NUM_THREADS=1 python benchmarks/train_epoch_bench.py --models mlp cnn --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nclab.data import load_dataset
from nclab.losses import get_loss
from nclab.train import TrainConfig, load_model, train
from nclab.train.distributed import DistContext
from nclab.train.evaluate import Evaluator

PARTS = ("train", "eval_forward", "metrics", "io", "total")


def time_epochs(config: TrainConfig) -> tuple[dict[str, float], Path]:
    """Median per-epoch seconds of each part (epochs after the first)."""
    out = Path(tempfile.mkdtemp(prefix="nclab-bench-"))
    result = train(config, out, quiet=True)
    timed = result.timings[1:] or result.timings
    return {part: statistics.median(t[part] for t in timed) for part in PARTS}, out


def compare_metric_paths(config: TrainConfig, run_dir: Path, repeats: int) -> dict[str, float]:
    """Metric seconds of one evaluation: kept-features path vs streaming NCAccumulator path,
    and the largest relative difference between their metrics."""
    data = load_dataset(config.dataset, config.data_dir, per_class=config.per_class)
    model = load_model(run_dir)
    loss = get_loss(config.loss, data.num_classes, config.smoothing)

    def evaluator(limit: int) -> Evaluator:
        return Evaluator(data.x_train, data.y_train, data.x_test, data.y_test, data.num_test,
                         data.num_classes, loss, DistContext(), keep_limit_bytes=limit)  # fmt: skip

    fast, stream = evaluator(2**40), evaluator(0)
    fast_t, stream_t, extra_t = [], [], []
    for _ in range(repeats):
        a = fast(model)
        b = stream(model)
        fast_t.append(a.timings["metrics"])
        stream_t.append(b.timings["metrics"])
        extra_t.append(b.timings["forward"] - a.timings["forward"])
    worst = max(
        abs(a.metrics[k] - b.metrics[k]) / max(abs(b.metrics[k]), 1e-12)
        for k in a.metrics
        if a.metrics[k] is not None
    )
    return {
        "fast": statistics.median(fast_t),
        "streaming": statistics.median(stream_t),
        "second_forward": statistics.median(extra_t),
        "max_rel_diff": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp"], choices=["mlp", "cnn"])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs + 1 warm-up")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the path comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"# torch {torch.__version__}, threads {args.threads}, {args.dataset} "
          f"per-class {args.per_class}, {args.epochs} epochs (first = warm-up)")  # fmt: skip
    header = "| model | " + " | ".join(PARTS) + " | metrics share | img/s (train) |"
    rows, paths = [header, "|" + "---|" * (len(PARTS) + 3)], []
    for name in args.models:
        config = TrainConfig(dataset=args.dataset, per_class=args.per_class, model=name,
                             epochs=args.epochs, threads=args.threads)  # fmt: skip
        t0 = time.perf_counter()
        parts, run_dir = time_epochs(config)
        n_train = 10 * args.per_class
        share = 100 * parts["metrics"] / parts["total"]
        cells = " | ".join(f"{parts[p]:.3f}" for p in PARTS)
        rows.append(f"| {name} | {cells} | {share:.1f}% | {n_train / parts['train']:,.0f} |")
        cmp = compare_metric_paths(config, run_dir, args.repeats)
        paths.append(
            f"| {name} | {cmp['fast']:.3f} | {cmp['streaming']:.3f} | "
            f"{cmp['streaming'] / cmp['fast']:.1f}x | {cmp['second_forward']:.3f} | "
            f"{cmp['max_rel_diff']:.1e} |"
        )
        print(f"# {name}: done in {time.perf_counter() - t0:.0f}s", flush=True)
    print("\nPer-epoch seconds (median over the timed epochs):\n")
    print("\n".join(rows))
    print("\nMetric work of one evaluation (train + test features), seconds:\n")
    print(
        "| model | kept features (default) | streaming NCAccumulator.update/update_ncc "
        "| speed-up | + second forward pass (streaming only) | max rel. diff of metrics |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(paths))


if __name__ == "__main__":
    main()
