"""GPU check of the NC engine: exactness on the device, speed at scale, cost inside training.

    python benchmarks/gpu_check.py                      # on CUDA: the full check
    python benchmarks/gpu_check.py --tiny --device cpu  # the same steps, tiny sizes (CI)

Steps (each prints one Markdown table row; ``--json FILE`` writes every number):

1. **Exactness on the device**: the streaming and the one-shot (projected) engines on the device
   against the same engines on the CPU, largest relative difference over every metric (must be
   <= 1e-9), and a streaming ``update`` plus a second-pass batch run under
   ``torch.cuda.set_sync_debug_mode("error")`` (no host synchronisation per batch).
2. **Speed at scale**: streaming ``update`` (batches of ``--batch``) + ``compute`` and the
   one-shot ``nc_metrics`` at N = 1,000,000, d = 2,048, K = 1,000 (features generated on the
   device), with the time of one float64 ``X^T X`` per batch for reference.
3. **Cost in training**: one epoch of ResNet-18 on CIFAR-shaped synthetic data (50,000 train,
   10,000 test images of 3x32x32), SGD, with the evaluation that ``nclab train`` runs every
   epoch (forward passes + NC and calibration metrics on train and test) against the same
   epoch without it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from nclab.metrics import NCAccumulator, nc_metrics
from nclab.models import build_model
from nclab.train.distributed import DistContext
from nclab.train.evaluate import Evaluator

FULL = {"n": 1_000_000, "dim": 2048, "classes": 1000, "batch": 8192, "check_n": 200_000,
        "check_dim": 512, "check_classes": 100, "train": 50_000, "test": 10_000, "image": 32,
        "width": None, "train_batch": 512}  # fmt: skip
TINY = {"n": 3000, "dim": 32, "classes": 12, "batch": 500, "check_n": 2000, "check_dim": 16,
        "check_classes": 6, "train": 96, "test": 48, "image": 16, "width": 4,
        "train_batch": 32}  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, *args, **kwargs) -> tuple[float, Any]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    synchronize(device)
    return time.perf_counter() - t0, out


def make_features(n: int, d: int, k: int, device: torch.device, seed: int) -> tuple:
    """Clustered float32 features generated on ``device`` (means of norm ~2 sqrt(d), noise 1)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    centres = 2.0 * torch.randn(k, d, generator=gen, device=device)
    y = torch.randint(0, k, (n,), generator=gen, device=device)
    y[:k] = torch.arange(k, device=device)
    h = torch.empty(n, d, device=device)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        h[lo:hi] = centres[y[lo:hi]] + torch.randn(hi - lo, d, generator=gen, device=device)
    w = torch.randn(k, d, generator=gen, device=device, dtype=torch.float64)
    b = torch.randn(k, generator=gen, device=device, dtype=torch.float64)
    return h, y, w, b


def streaming(h, y, k, batch, w=None, b=None, *, second_pass=True):
    acc = NCAccumulator(k, h.shape[1], device=h.device, validate=False)
    for lo in range(0, h.shape[0], batch):
        acc.update(h[lo : lo + batch], y[lo : lo + batch])
    if second_pass:
        for lo in range(0, h.shape[0], batch):
            acc.update_ncc(h[lo : lo + batch], y[lo : lo + batch], weight=w, bias=b)
    return acc.compute(w, b)


def max_rel_diff(a: dict, b: dict) -> float:
    worst = 0.0
    for key, va in a.items():
        vb = b[key]
        if va is None or vb is None:
            if (va is None) != (vb is None):
                return math.inf
            continue
        if math.isfinite(va) and math.isfinite(vb):
            worst = max(worst, abs(va - vb) / max(abs(vb), 1e-300))
        elif va != vb and not (math.isnan(va) and math.isnan(vb)):
            return math.inf
    return worst


def check_exactness(sizes: dict, device: torch.device) -> dict:
    n, d, k, batch = sizes["check_n"], sizes["check_dim"], sizes["check_classes"], sizes["batch"]
    h, y, w, b = make_features(n, d, k, device, seed=1)
    cpu = [t.cpu() for t in (h, y, w, b)]
    diffs = {
        "streaming": max_rel_diff(
            streaming(h, y, k, batch, w, b).as_dict(),
            streaming(*cpu[:2], k, batch, *cpu[2:]).as_dict(),
        ),
        "one-shot": max_rel_diff(nc_metrics(h, y, w, b).as_dict(), nc_metrics(*cpu).as_dict()),
    }
    no_sync = None
    if device.type == "cuda":
        acc = NCAccumulator(k, d, device=device, validate=False).update(h[:batch], y[:batch])
        proj = NCAccumulator(k, d, mode="projected", device=device, validate=False)
        proj.update(h, y).update_ncc(h[:batch], y[:batch], weight=w, bias=b)  # freezes the means
        torch.cuda.set_sync_debug_mode("error")
        try:
            acc.update(h[batch : 2 * batch], y[batch : 2 * batch])
            proj.update_ncc(h[batch : 2 * batch], y[batch : 2 * batch], weight=w, bias=b)
            no_sync = True
        except RuntimeError:
            no_sync = False
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return {"max_rel_diff": diffs, "no_sync_per_batch": no_sync}


def check_speed(sizes: dict, device: torch.device) -> dict:
    n, d, k, batch = sizes["n"], sizes["dim"], sizes["classes"], sizes["batch"]
    h, y, w, b = make_features(n, d, k, device, seed=2)
    timed(device, streaming, h[: 4 * batch], y[: 4 * batch], k, batch)  # warm-up
    t_update, _ = timed(device, streaming, h, y, k, batch, second_pass=False)
    t_stream, _ = timed(device, streaming, h, y, k, batch, w, b)
    timed(device, nc_metrics, h[: 4 * batch], y[: 4 * batch], w, b, num_classes=k)
    t_oneshot, _ = timed(device, nc_metrics, h, y, w, b)

    def grams():
        s = torch.zeros(d, d, dtype=torch.float64, device=device)
        for lo in range(0, n, batch):
            x = h[lo : lo + batch].double()
            s.addmm_(x.T, x)
        return s

    t_gram, _ = timed(device, grams)
    return {"n": n, "dim": d, "classes": k, "batch": batch, "stream_update_s": t_update,
            "stream_all_metrics_s": t_stream, "oneshot_s": t_oneshot, "gram_s": t_gram}  # fmt: skip


def check_training(sizes: dict, device: torch.device) -> dict:
    k, s = 10, sizes["image"]
    gen = torch.Generator(device=device).manual_seed(3)
    protos = torch.randn(k, 3, s, s, generator=gen, device=device)

    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n, device=device) % k
        return protos[y] + 0.5 * torch.randn(n, 3, s, s, generator=gen, device=device), y

    x_tr, y_tr = images(sizes["train"])
    x_te, y_te = images(sizes["test"])
    model = build_model("resnet18", k, (3, s, s), width=sizes["width"]).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if device.type == "cuda"
        else __import__("contextlib").nullcontext
    )
    evaluator = Evaluator(x_tr, y_tr, x_te, y_te, sizes["test"], k, loss_fn, DistContext(),
                          autocast=autocast, channels_last=device.type == "cuda")  # fmt: skip
    bs = sizes["train_batch"]

    def epoch(track: bool) -> None:
        model.train()
        perm = torch.randperm(sizes["train"], device=device)
        for lo in range(0, sizes["train"], bs):
            idx = perm[lo : lo + bs]
            with autocast():
                loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if track:
            evaluator(model)

    epoch(True)  # warm-up (cuDNN autotuning, buffers)
    t_plain, _ = timed(device, epoch, False)
    t_tracked, _ = timed(device, epoch, True)
    return {"train_images": sizes["train"], "test_images": sizes["test"], "epoch_s": t_plain,
            "epoch_with_nc_s": t_tracked, "overhead": t_tracked / t_plain - 1.0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (CI on CPU)")
    p.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    p.add_argument("--skip-training", action="store_true", help="omit step 3")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sizes = TINY if args.tiny else FULL
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# gpu_check on {name}, torch {torch.__version__}, {'tiny' if args.tiny else 'full'}")
    out: dict[str, Any] = {"device": name, "tiny": args.tiny}
    out["exactness"] = exact = check_exactness(sizes, device)
    print(f"| exactness vs CPU | streaming {exact['max_rel_diff']['streaming']:.1e} | one-shot "
          f"{exact['max_rel_diff']['one-shot']:.1e} | no sync per batch: "
          f"{exact['no_sync_per_batch']} |")  # fmt: skip
    out["speed"] = speed = check_speed(sizes, device)
    print(f"| N={speed['n']:,} d={speed['dim']} K={speed['classes']} | streaming update "
          f"{speed['stream_update_s']:.2f} s | streaming all metrics "
          f"{speed['stream_all_metrics_s']:.2f} s | one-shot {speed['oneshot_s']:.2f} s | "
          f"float64 X^T X per batch {speed['gram_s']:.2f} s |")  # fmt: skip
    if not args.skip_training:
        out["training"] = tr = check_training(sizes, device)
        print(
            f"| ResNet-18 epoch, {tr['train_images']:,} images | {tr['epoch_s']:.2f} s | with "
            f"NC tracking {tr['epoch_with_nc_s']:.2f} s | overhead {100 * tr['overhead']:.0f}% |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    worst = max(exact["max_rel_diff"].values())
    if worst > 1e-9 or exact["no_sync_per_batch"] is False:
        print(f"FAILED: device and CPU engines differ by {worst:.1e} or a batch synchronised",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
