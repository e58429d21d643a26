"""Cost of ``--nc-layers all``: one ``nclab train`` epoch with and without it, same script.

For each model, runs alternate (off, on, off, on, ...) so that a change of machine load hits
both alike; each run reports the median per-epoch timings after the first epoch
(``RunResult.timings``: ``total``, ``eval_forward``, ``metrics``), and the table gives the
medians over the repeats and the ratio on/off of the whole epoch.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/layers_bench.py                  # mlp and cnn
    OMP_NUM_THREADS=1 python benchmarks/layers_bench.py --models mlp --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from nclab.train import TrainConfig, train

SETTINGS = {
    # Fashion-MNIST 500/class (5,000) + the 10,000 test images; MLP 784-512x3
    "mlp": dict(model="mlp", per_class=500),
    # Fashion-MNIST 100/class + a 100/class test subset; CNN 4 blocks of width 16
    "cnn": dict(model="cnn", width=16, per_class=100, test_per_class=100),
}


def epoch_seconds(config: TrainConfig) -> tuple[dict[str, float], dict]:
    with tempfile.TemporaryDirectory(prefix="nclab-bench-") as out:
        result = train(config, out, quiet=True)
    timed = result.timings[1:] or result.timings
    parts = ("total", "eval_forward", "metrics")
    return {p: statistics.median(t[p] for t in timed) for p in parts}, result.rows[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print("| model | taps | epoch s off | epoch s on | ratio on/off | eval_forward off/on | "
          "metrics s off/on |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        row: dict = {}
        for _ in range(args.repeats):
            for mode in ("off", "on"):
                config = TrainConfig(
                    **SETTINGS[name], epochs=args.epochs, threads=1, device="cpu",
                    nc_layers="all" if mode == "on" else None,
                )  # fmt: skip
                timing, last = epoch_seconds(config)
                runs[mode].append(timing)
                row = last if mode == "on" else row
        taps = [k.split("/", 1)[1] for k in row if k.startswith("layer_nc1/")]
        med = {m: {p: statistics.median(t[p] for t in ts) for p in ts[0]} for m, ts in runs.items()}
        off, on = med["off"], med["on"]
        print(
            f"| {name} | {len(taps)} | {off['total']:.3f} | {on['total']:.3f} | "
            f"{on['total'] / off['total']:.2f}x | "
            f"{off['eval_forward']:.3f}/{on['eval_forward']:.3f} | "
            f"{off['metrics']:.3f}/{on['metrics']:.3f} |"
        )
        print(f"<!-- {name}: taps {taps} -->")


if __name__ == "__main__":
    main()
