"""Train a small MLP on scikit-learn's 8x8 digits and certify its test set against L-inf noise.

Run ``python -m benchmarks.digits_demo [--eps 0.02] [--epochs N] [--seed 0] [--json PATH]``
(``--eps`` may repeat or take a comma list, e.g. ``--eps 0.005,0.01,0.02,0.05``). It

1. loads ``sklearn.datasets.load_digits`` (1797 images, 8x8, pixels scaled to [0, 1]) and splits
   it 75/25 with a fixed seed (stratified);
2. trains an ``nn.Sequential`` MLP 64-64-32-10 with Adam for a few seconds on CPU;
3. bounds the test set with ``Interval.linf_ball(x, eps, lo=0, hi=1)`` pushed through the unchanged
   network and prints a few output boxes;
4. counts the test points CERTIFIED at ``eps``: a point ``(x, y)`` is certified when the lower
   bound of every margin ``z_y - z_j`` (``j != y``) is positive over the whole box. The margins
   are bounded by folding the specification matrix ``C`` (rows ``e_y - e_j``) into the last linear
   layer, ``W' = C W``, ``b' = C b``, applied to the penultimate box in centre/radius form
   (``W' h_c + b'`` +- ``|W'| h_r``): tighter than subtracting output bounds, which is reported
   beside it ("naive": ``lower_y > upper_j``);
5. checks the consistency law on every point: certified => correctly classified, and certified =>
   a PGD attack (random start) finds no adversarial example. A violation is a soundness bug and
   raises ``AssertionError``.

With ``--rigorous`` the bounds are computed inside :func:`intervals.rigorous` (outward rounding, so
they also hold for the exact real-number network); otherwise they use ordinary float32 arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from benchmarks import parse_args_checked
from certify.attacks import logit_margins
from certify.bounds import margin_bounds, other_classes, spec_matrix
from certify.cli_checks import eps_value, nonnegative_int, positive_int
from intervals import Interval, rigorous

__all__ = [
    "build_mlp",
    "certify_margins",
    "load_data",
    "main",
    "naive_certified",
    "pgd_attack",
    "other_classes",
    "spec_matrix",
    "train",
]

DEFAULT_EPS = (0.02,)


# ---------------------------------------------------------------------------- data and model
def load_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as float32 in [0, 1] (pixels / 16): ``x_train, y_train, x_test, y_test``, stratified 75/25."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


def build_mlp(hidden: Sequence[int] = (64, 32), in_features: int = 64, num_classes: int = 10) -> nn.Sequential:
    """``Linear - ReLU - ... - Linear``: 64-64-32-10 by default; the last module is an ``nn.Linear``."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0, batch: int = 64, lr: float = 3e-3
) -> None:
    """Plain cross-entropy training with Adam on seeded mini-batches."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


# ---------------------------------------------------------------------------- certification
def certify_margins(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Sound lower bounds ``(B, K-1)`` of the margins ``z_y - z_j`` over the L-inf ``eps`` box in [0, 1].

    :func:`certify.bounds.margin_bounds`: interval bound propagation up to the last layer, whose
    weights are multiplied by the specification (``W' = C W``, rows ``W_y - W_j``); inside
    :func:`intervals.rigorous` those differences are outward-rounded intervals.
    """
    with torch.no_grad():
        return margin_bounds(model, x, y, eps, lo=0.0, hi=1.0)


def naive_certified(out: Interval, y: torch.Tensor) -> torch.Tensor:
    """The looser test on output bounds: ``lower_y > upper_j`` for every ``j != y``."""
    lower_y = out.lower.gather(1, y.unsqueeze(1)).squeeze(1)
    upper_others = out.upper.masked_fill(F.one_hot(y, out.shape[-1]).bool(), float("-inf")).amax(1)
    return lower_y > upper_others


def pgd_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 40, restarts: int = 2, seed: int = 0
) -> torch.Tensor:
    """Untargeted L-inf PGD on the cross-entropy with random starts; True where an attack succeeds.

    Success is strict, as the certificates count: a tie with another class breaks the sample.
    """
    if eps == 0:
        with torch.no_grad():
            return ~(logit_margins(model(x), y) > 0)
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
    alpha = 2.5 * eps / steps
    broken = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(restarts):
        adv = lo + (hi - lo) * torch.rand(x.shape, generator=gen)
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                adv = torch.minimum(torch.maximum(adv + alpha * grad.sign(), lo), hi)
                broken |= ~(logit_margins(model(adv), y) > 0)
        adv = adv.detach()
    return broken


# ---------------------------------------------------------------------------- report
def _parse_eps(values: Sequence[str] | None) -> list[float]:
    """``--eps`` values (repeated or comma lists), each a finite radius in [0, 1] (the pixel range)."""
    if not values:
        return list(DEFAULT_EPS)
    out = [eps_value(part.strip()) for v in values for part in str(v).split(",") if part.strip()]
    if not out:
        raise argparse.ArgumentTypeError("no value given")
    return out


def _prog() -> str:
    """The usage name: the console script's when run as ``hypercert-digits-demo``."""
    name = Path(sys.argv[0]).name
    return name if name == "hypercert-digits-demo" else "python -m benchmarks.digits_demo"


def _show_examples(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, n: int) -> None:
    with torch.no_grad():
        logits = model(x[:n])
        out = model(Interval.linf_ball(x[:n], eps, lo=0.0, hi=1.0))
    margins = certify_margins(model, x[:n], y[:n], eps)
    print(f"\nexample output bounds at eps={eps:g} (logit z_k: [lower, upper], '*' = true class)")
    for i in range(n):
        verdict = "CERTIFIED" if bool((margins[i] > 0).all()) else "not certified"
        print(
            f"  test #{i}: label {int(y[i])}, predicted {int(logits[i].argmax())}, "
            f"min margin lower bound {float(margins[i].min()):+.3f} -> {verdict}"
        )
        cells = [
            f"{'*' if k == int(y[i]) else ' '}{k}:[{float(out.lower[i, k]):+6.2f},{float(out.upper[i, k]):+6.2f}]"
            for k in range(out.shape[-1])
        ]
        for j in range(0, len(cells), 5):
            print("     " + "  ".join(cells[j : j + 5]))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog=_prog(), description=__doc__.split("\n")[0])
    p.add_argument(
        "--eps", action="append", default=None,
        help=f"L-inf radius in pixel units [0, 1]; repeat or comma-separate for a table (default {DEFAULT_EPS[0]})",
    )
    p.add_argument("--epochs", type=nonnegative_int, default=40, help="training epochs (default 40)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the initialisation and the batches")
    p.add_argument("--examples", type=nonnegative_int, default=3, help="test points whose output bounds are printed")
    p.add_argument("--pgd-steps", type=positive_int, default=40,
                   help="PGD steps per restart for the consistency check (default 40)")
    p.add_argument(
        "--threads", type=positive_int, default=1,
        help="torch intra-op threads while the demo runs (default 1: the tensors are tiny), restored afterwards",
    )
    p.add_argument("--rigorous", action="store_true", help="bound inside intervals.rigorous() (outward rounding)")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = parse_args_checked(p, argv)
    try:
        args.eps_list = _parse_eps(args.eps)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        p.error(f"--eps: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Train, bound, certify and report; returns 0 (raises ``AssertionError`` on a soundness violation)."""
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous_threads)


def _run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    x_tr, y_tr, x_te, y_te = load_data(args.seed)
    model = build_mlp()
    t0 = time.perf_counter()
    train(model, x_tr, y_tr, args.epochs, seed=args.seed)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        logits_te = model(x_te)
        train_acc = float((logit_margins(model(x_tr), y_tr) > 0).float().mean())
    correct = logit_margins(logits_te, y_te) > 0  # strict, as attacks and certificates count (a tie is wrong)
    n = len(y_te)
    print(
        f"digits: {len(y_tr)} train / {n} test (8x8, pixels in [0, 1], seed {args.seed}); "
        f"MLP 64-64-32-10 trained {args.epochs} epochs in {train_s:.1f} s"
    )
    test_acc = 100 * float(correct.float().mean())
    print(f"clean accuracy: train {100 * train_acc:.2f}%, test {int(correct.sum())}/{n} = {test_acc:.2f}%")
    if args.rigorous:
        arith = "rigorous (outward-rounded)"
    else:
        arith = "float32, round-to-nearest (use --rigorous for outward rounding)"
    print(f"bounds: interval bound propagation, arithmetic {arith}")

    ctx = rigorous if args.rigorous else nullcontext
    rows: list[dict[str, Any]] = []
    with ctx():
        if args.examples > 0:
            _show_examples(model, x_te, y_te, args.eps_list[0], min(args.examples, n))
        for eps in args.eps_list:
            margins = certify_margins(model, x_te, y_te, eps)
            certified = (margins > 0).all(1)
            with torch.no_grad():
                naive = naive_certified(model(Interval.linf_ball(x_te, eps, lo=0.0, hi=1.0)), y_te)
            broken = pgd_attack(model, x_te, y_te, eps, steps=args.pgd_steps, seed=args.seed)
            # The consistency law: certified => correct, certified => no attack succeeds.
            assert not bool((certified & ~correct).any()), f"eps={eps}: a certified point is misclassified"
            assert not bool((certified & broken).any()), f"eps={eps}: PGD broke a certified point (soundness bug)"
            rows.append(
                {
                    "eps": eps,
                    "certified": int(certified.sum()),
                    "certified_naive": int(naive.sum()),
                    "naive_only": int((naive & ~certified).sum()),
                    "pgd_robust": int((~broken).sum()),
                    "certified_fraction": float(certified.float().mean()),
                }
            )

    print(f"\ncertified test points at each eps ({n} test points, clean accuracy {test_acc:.2f}%):")
    cols = ("certified (spec in last layer)", "naive (lower_y > upper_j)", "PGD-robust (upper bound)")
    print(f"  {'eps':>8} | {cols[0]:>30} | {cols[1]:>26} | {cols[2]:>24}")

    def cell(count: int, width: int) -> str:
        return f"{count:4d}/{n} = {100 * count / n:6.2f}%".rjust(width)

    for r in rows:
        print(
            f"  {r['eps']:8.4g} | {cell(r['certified'], 30)} | {cell(r['certified_naive'], 26)} | "
            f"{cell(r['pgd_robust'], 24)}"
        )
    print(
        "consistency law held on every test point: certified => correctly classified, and certified => "
        f"PGD ({args.pgd_steps} steps x 2 random restarts) found no adversarial example"
    )

    if args.json is not None:
        first = rows[0]
        report = {
            "seed": args.seed,
            "epochs": args.epochs,
            "train_seconds": train_s,
            "rigorous": bool(args.rigorous),
            "n_train": len(y_tr),
            "n_test": n,
            "correct": int(correct.sum()),
            "clean_accuracy": float(correct.float().mean()),
            "eps": first["eps"],
            "certified": first["certified"],
            "certified_naive": first["certified_naive"],
            "results": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
