"""Robustness evaluation: per-sample records, accuracies, and the consistency law checked on every run.

:func:`evaluate` runs, for each eps, every requested *bound method* (``"ibp"``, ``"crown"``,
``"crown-ibp"``: certificates) and *attack* (``"fgsm"``, ``"pgd"``, ``"autoattack"``, ...: empirical
robustness) on every sample, and returns a :class:`RobustnessReport` with per-sample records (clean
correctness, robustness under each attack, certificate under each method, worst margin lower bound)
and aggregate accuracies, printable as a table and writable as JSON and CSV.

The consistency law is checked on every sample: a certificate must imply a correct clean prediction
and survival of every attack. A violation is a soundness bug: :class:`SoundnessViolation` is raised
with the sample index, the eps, the method and the attack.

Example:
    >>> import torch
    >>> from certify.evaluation import evaluate
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    >>> x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    >>> report = evaluate(net, (x, y), eps=[0.0, 0.01], methods=["ibp", "fgsm"], progress=False)
    >>> sorted(report.summary()[0])
    ['certified', 'clean', 'eps', 'n', 'robust', 'robust_all_attacks']
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attacks import ATTACKS, AttackConfig, logit_margins, robust
from .bounds import METHODS, margin_bounds

__all__ = ["RobustnessReport", "SampleRecord", "SoundnessViolation", "evaluate", "split_methods"]


class SoundnessViolation(AssertionError):
    """A certified sample that is misclassified or broken by an attack: a bug in a bound, never acceptable."""

    def __init__(self, message: str, index: int, eps: float, method: str, attack: str | None) -> None:
        super().__init__(message)
        self.index, self.eps, self.method, self.attack = index, eps, method, attack


@dataclass
class SampleRecord:
    """What happened to one sample at one eps."""

    index: int
    eps: float
    label: int
    predicted: int
    clean_correct: bool
    robust: dict[str, bool] = field(default_factory=dict)
    certified: dict[str, bool] = field(default_factory=dict)
    worst_margin: dict[str, float] = field(default_factory=dict)


@dataclass
class RobustnessReport:
    """Per-sample :class:`SampleRecord` s for every eps, and the settings that produced them."""

    eps: list[float]
    bound_methods: list[str]
    attacks: list[str]
    records: list[SampleRecord]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        """One row per eps: ``n``, clean accuracy, robust accuracy per attack (and under all of them),
        certified accuracy per bound method (fractions in [0, 1])."""
        rows = []
        for e in self.eps:
            recs = [r for r in self.records if r.eps == e]
            n = len(recs)

            def frac(values: Iterable[bool], n: int = n) -> float:
                return sum(values) / n if n else math.nan

            rows.append({
                "eps": e,
                "n": n,
                "clean": frac(r.clean_correct for r in recs),
                "robust": {a: frac(r.robust[a] for r in recs) for a in self.attacks},
                "robust_all_attacks": frac(r.clean_correct and all(r.robust.values()) for r in recs),
                "certified": {m: frac(r.certified[m] for r in recs) for m in self.bound_methods},
            })
        return rows

    def table(self) -> str:
        """A plain-text table of :meth:`summary` (accuracies in %)."""
        cols = ["eps", "n", "clean"] + [f"{a}" for a in self.attacks]
        if len(self.attacks) > 1:
            cols.append("all attacks")
        cols += [f"certified:{m}" for m in self.bound_methods]
        lines = []
        for row in self.summary():
            cells = [f"{row['eps']:g}", str(row["n"]), f"{100 * row['clean']:.2f}"]
            cells += [f"{100 * row['robust'][a]:.2f}" for a in self.attacks]
            if len(self.attacks) > 1:
                cells.append(f"{100 * row['robust_all_attacks']:.2f}")
            cells += [f"{100 * row['certified'][m]:.2f}" for m in self.bound_methods]
            lines.append(cells)
        widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(cols)]
        fmt = "  ".join(f"{{:>{w}}}" for w in widths)
        out = [fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line) for line in lines]
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "eps": self.eps,
            "bound_methods": self.bound_methods,
            "attacks": self.attacks,
            "summary": self.summary(),
            "records": [asdict(r) for r in self.records],
        }

    def to_json(self, path: str | Path) -> Path:
        """Write settings, summary and per-sample records as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def to_csv(self, path: str | Path) -> Path:
        """Write one row per (eps, sample): label, prediction, clean/robust/certified flags, worst margins."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = ["eps", "index", "label", "predicted", "clean_correct"]
        header += [f"robust_{a}" for a in self.attacks] + [f"certified_{m}" for m in self.bound_methods]
        header += [f"worst_margin_{m}" for m in self.bound_methods]
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for r in self.records:
                w.writerow([r.eps, r.index, r.label, r.predicted, int(r.clean_correct)]
                           + [int(r.robust[a]) for a in self.attacks]
                           + [int(r.certified[m]) for m in self.bound_methods]
                           + [f"{r.worst_margin[m]:.6g}" for m in self.bound_methods])
        return path


def split_methods(methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(bound_methods, attacks)`` from one mixed list, e.g. ``["ibp", "crown", "pgd", "autoattack"]``."""
    bounds, attacks = [], []
    for m in methods:
        name = m.strip().lower()
        if name in METHODS:
            bounds.append(name)
        elif name in ATTACKS:
            attacks.append(name)
        else:
            raise ValueError(
                f"unknown method {m!r}; bound methods: {', '.join(METHODS)}; attacks: {', '.join(ATTACKS)}"
            )
        if bounds.count(name) + attacks.count(name) > 1:
            raise ValueError(f"method {m!r} is listed twice")
    if not bounds and not attacks:
        raise ValueError("no methods given")
    return bounds, attacks


def _batches(data: Any, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches from ``(x, y)`` tensors, a :class:`certify.data.Dataset`, or an iterable of ``(x, y)``."""
    if hasattr(data, "x") and hasattr(data, "y") and isinstance(data.x, torch.Tensor):
        data = (data.x, data.y)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y disagree on the number of samples: {x.shape[0]} vs {y.shape[0]}")
        return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size))
    return data


def _check_eps(eps: float | Sequence[float]) -> list[float]:
    values = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if not values:
        raise ValueError("no eps given")
    for e in values:
        if not math.isfinite(e) or e < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {e}")
    return values


def evaluate(
    model: nn.Module,
    data: Any,
    eps: float | Sequence[float],
    methods: Sequence[str] = ("ibp", "pgd"),
    *,
    lo: float | None = None,
    hi: float | None = None,
    batch_size: int = 128,
    attack_config: AttackConfig | None = None,
    progress: bool = True,
    check_consistency: bool = True,
) -> RobustnessReport:
    """Clean, empirical (attacks) and certified (bounds) robustness of ``model`` on ``data``.

    Args:
        model: a classifier in eval mode (logits out).
        data: ``(x, y)`` tensors, a :class:`certify.data.Dataset` (its ``lo``/``hi`` are used unless
            given), or an iterable of ``(x, y)`` batches.
        eps: one L-inf radius or several, in input units.
        methods: bound methods (:data:`certify.bounds.METHODS`) and attacks
            (:data:`certify.attacks.ATTACKS`) in any order.
        lo, hi: the input domain (default ``[0, 1]``); boxes and attacks stay inside it.
        batch_size: samples per batch (memory knob for CROWN and the attacks).
        attack_config: steps, restarts, seed... of the attacks.
        check_consistency: raise :class:`SoundnessViolation` on a certified sample that an attack
            breaks or that is misclassified (on by default; leave it on).
    """
    eps_list = _check_eps(eps)
    bound_methods, attacks = split_methods(methods)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lo = float(getattr(data, "lo", 0.0)) if lo is None else float(lo)
    hi = float(getattr(data, "hi", 1.0)) if hi is None else float(hi)
    cfg = attack_config or AttackConfig()
    records: list[SampleRecord] = []
    bar = None
    total = len(data.y) if hasattr(data, "y") else (len(data[1]) if isinstance(data, tuple) else None)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=None if total is None else total * len(eps_list), desc="evaluate", unit="sample",
                   dynamic_ncols=True)
    offset = 0
    for x, y in _batches(data, batch_size):
        with torch.no_grad():
            logits = model(x)
        # strict, as attacks and certificates count: a tie with another class is not a correct answer
        pred, clean_ok = logits.argmax(1), logit_margins(logits, y) > 0
        for e in eps_list:
            certs, margins = {}, {}
            for m in bound_methods:
                with torch.no_grad():
                    mb = margin_bounds(model, x, y, e, m, lo, hi)
                margins[m] = mb.min(1).values if mb.shape[1] else torch.full((len(y),), math.inf)
                certs[m] = margins[m] > 0
            robs = {a: robust(model, x, y, e, a, lo=lo, hi=hi, config=cfg) for a in attacks}
            for i in range(len(y)):
                rec = SampleRecord(
                    index=offset + i, eps=e, label=int(y[i]), predicted=int(pred[i]),
                    clean_correct=bool(clean_ok[i]),
                    robust={a: bool(r[i]) for a, r in robs.items()},
                    certified={m: bool(c[i]) for m, c in certs.items()},
                    worst_margin={m: float(v[i]) for m, v in margins.items()},
                )
                if check_consistency:
                    _check_record(rec)
                records.append(rec)
            if bar is not None:
                bar.update(len(y))
        offset += len(y)
    if bar is not None:
        bar.close()
    settings = {"lo": lo, "hi": hi, "batch_size": batch_size, "attack_config": asdict(cfg)}
    return RobustnessReport(eps_list, bound_methods, attacks, records, settings)


def _check_record(rec: SampleRecord) -> None:
    """The consistency law: certified => clean-correct and robust under every attack."""
    for m, ok in rec.certified.items():
        if not ok:
            continue
        if not rec.clean_correct:
            raise SoundnessViolation(
                f"soundness violation: sample {rec.index} is certified by {m} at eps={rec.eps:g} but misclassified "
                f"(label {rec.label}, predicted {rec.predicted})", rec.index, rec.eps, m, None)
        for a, survived in rec.robust.items():
            if not survived:
                raise SoundnessViolation(
                    f"soundness violation: sample {rec.index} is certified by {m} at eps={rec.eps:g} but {a} found "
                    "an adversarial example", rec.index, rec.eps, m, a)
