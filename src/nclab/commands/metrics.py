"""`nclab metrics FILE.npz`: neural-collapse metrics of stored features."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Compute neural-collapse metrics (NC1, CDNV, NC2, NC3, NC4, NCC accuracy, equinorm, "
    "equiangularity, norms) of features stored in an .npz file. The file must hold 'features' "
    "(N x d) and integer 'labels' (N,); optional 'weight' (K x d, as stored by torch.nn.Linear) "
    "and 'bias' (K,) enable the classifier metrics; optional 'num_classes' fixes K (otherwise K "
    "is the number of rows of 'weight', or max label + 1). --ood adds NC5 from the 'features' of "
    "an out-of-distribution .npz. The metrics do not depend on the scale of the features. "
    "Definitions: docs/metrics.md."
)

# Metric name -> short meaning, in display order.
_MEANINGS: dict[str, str] = {
    "nc1": "(1/K) tr(Sigma_W Sigma_B^+), within-class variability",
    "cdnv": "class-distance normalised variance",
    "nc2_h": "||G_H/||G_H|| - ETF||, centred class means",
    "nc2_w": "||G_W/||G_W|| - ETF||, classifier rows",
    "nc2_wh": "||W Mbar^T/||.|| - ETF||",
    "nc3": "||W/||W|| - Mbar/||Mbar||||^2, self-duality",
    "nc4": "classifier vs nearest-class-mean disagreement",
    "ncc_acc": "nearest-class-mean accuracy",
    "equinorm_h": "std/mean of class-mean norms",
    "equinorm_w": "std/mean of classifier row norms",
    "equiangle_h": "std of class-mean cosines",
    "equiangle_w": "std of classifier-row cosines",
    "maxangle_h": "mean |cos + 1/(K-1)|, class means",
    "maxangle_w": "mean |cos + 1/(K-1)|, classifier rows",
    "w_norm": "mean classifier row norm",
    "h_norm": "mean centred class-mean norm",
    "nc1_trace_ratio": "tr(Sigma_W) / tr(Sigma_B)",
    "hsu_log_mean": "mean -log||u_k - u_l||, normalised centred means",
    "hsu_log_var": "variance of the log kernel",
    "hsu_riesz_mean": "mean Riesz (d-2)-kernel of normalised centred means",
    "hsu_riesz_var": "variance of the Riesz kernel",
    "bias_collapse": "||W mu_G + b||",
    "nc1_correct": "NC1 of correctly classified samples",
    "nc1_incorrect": "NC1 of misclassified samples",
    "nc5": "mean |cos(mu_k - mu_G, mu_OOD - mu_G)|, ID/OOD orthogonality",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.npz", help="npz with 'features' and 'labels'")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--per-class",
        action="store_true",
        help="also show each class's sample count, variability and NC1",
    )
    parser.add_argument(
        "--ood",
        metavar="OOD.npz",
        help="npz with out-of-distribution 'features' (M x d): adds nc5",
    )


def _load(path: str, required: tuple[str, ...] = ("features", "labels")) -> dict[str, object]:
    """The arrays of an untrusted ``.npz`` (:func:`nclab.data.read_npz`: no unpickling, headers
    checked against the stored bytes before any allocation)."""
    from nclab.data import read_npz

    try:
        arrays = read_npz(path, ("features", "labels", "weight", "bias", "num_classes"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found; pass an .npz file holding "
            + " and ".join(f"'{name}'" for name in required)
        ) from None
    missing = [name for name in required if name not in arrays]
    if missing:
        import zipfile

        with zipfile.ZipFile(path) as archive:  # read_npz has checked it is a zip archive
            held = sorted(n.removesuffix(".npy") for n in archive.namelist())
        raise ValueError(
            f"{path} lacks array(s) {', '.join(repr(m) for m in missing)} (it has: "
            f"{', '.join(held) or 'nothing'}); save with "
            f"np.savez(path, {', '.join(f'{name}=...' for name in required)})"
        )
    return arrays


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from nclab.metrics import one_shot_accumulator

    arrays = _load(args.file)
    features, labels = arrays["features"], arrays["labels"]
    if "num_classes" in arrays:
        nc = np.asarray(arrays["num_classes"])
        if nc.size != 1 or nc.dtype.kind not in "iu":
            raise ValueError(f"'num_classes' must be a single integer, got {nc!r}")
        k = int(nc.reshape(()))
    elif "weight" in arrays:
        k = int(np.shape(arrays["weight"])[0])
    else:
        labels_arr = np.asarray(labels)
        if labels_arr.dtype.kind not in "iu":
            raise ValueError(
                f"{args.file}: 'labels' must be integers, got dtype {labels_arr.dtype}"
            )
        k = int(labels_arr.max()) + 1 if labels_arr.size else 0
    n_samples = int(np.shape(features)[0]) if np.ndim(features) else 0
    if k > max(n_samples, 1):
        raise ValueError(
            f"{args.file}: {k} classes (largest label {k - 1}, or 'num_classes'/'weight') but only "
            f"{n_samples} samples: NC metrics need every class present; relabel the classes "
            "0..K-1"
        )
    ood = None if args.ood is None else _load(args.ood, ("features",))["features"]
    weight, bias = arrays.get("weight"), arrays.get("bias")
    acc = one_shot_accumulator(features, labels, weight, bias, num_classes=k, ood_features=ood)
    metrics = acc.compute(weight, bias).as_dict()
    per_class = acc.per_class().as_dict() if args.per_class else None
    n, d = np.shape(features)

    def strict(value: float | None) -> float | None:
        return value if value is None or np.isfinite(value) else None

    if args.json:
        # strict JSON: non-finite values (e.g. an infinite CDNV) become null
        finite = {name: strict(v) for name, v in metrics.items()}
        out = {"file": args.file, "num_samples": n, "num_classes": k, "dim": d, "metrics": finite}
        if args.ood is not None:
            out["ood_file"] = args.ood
        if per_class is not None:
            out["per_class"] = {
                name: None if v is None else [strict(x) for x in v] for name, v in per_class.items()
            }
        print(json.dumps(out, indent=2, allow_nan=False))
        return 0

    print(f"{args.file}: N={n} samples, K={k} classes, d={d}")
    width = max(len(name) for name in metrics)
    for name, value in metrics.items():
        shown = "n/a" if value is None else f"{value:.6g}"
        print(f"  {name:<{width}}  {shown:>12}  {_MEANINGS.get(name, '')}")
    if metrics["nc2_w"] is None:
        print("  (n/a: add 'weight' (K x d) and 'bias' (K) to the file for classifier metrics)")
    if per_class is not None:
        print(f"\n  {'class':>5}  {'count':>8}  {'variability':>12}  {'nc1':>12}")
        for c in range(k):
            row = [f"{per_class[key][c]:.6g}" for key in ("count", "variability", "nc1")]
            print(f"  {c:>5}  {row[0]:>8}  {row[1]:>12}  {row[2]:>12}")
    return 0
