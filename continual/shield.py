"""SHIELD: certifiably robust continual learning with a hypernetwork and Interval MixUp.

SHIELD (Krukowski et al. 2025, "SHIELD: Secure Hypernetworks for Incremental Expansion Learning
Defense", arXiv 2506.08255) keeps HNET's point weights ``theta_t = H(e_t)`` and its output regulariser,
and trains every task with interval bound propagation (IBP) on input boxes:

* **Certified training.** The box ``[x~ - r, x~ + r] ∩ [lo, hi]`` goes through the target net with the
  task's weights up to the input of the ``head`` layer (:meth:`~continual.targets.TargetNet.features`);
  the specification ``C`` (rows ``e_y - e_j``) is folded into the head, ``W' = C W``, ``b' = C b``, and
  the margin lower bounds ``W' h_c + b' - |W'| h_r <= z_y - z_j`` give the worst-case cross-entropy
  (:func:`certify.training.robust_cross_entropy`: an upper bound of the loss over the whole box).
* **Interval MixUp.** One ``lambda ~ Beta(alpha, alpha)`` and one permutation per batch;
  ``x~ = lambda x + (1 - lambda) x[perm]`` with box radius ``phi(lambda) * eps_cur``: pure samples
  (``lambda`` 0 or 1) get the full radius, a 50/50 mix none (:data:`PHIS`). Both loss terms are
  mixup cross-entropies, ``lambda * L(., y) + (1 - lambda) * L(., y[perm])``.
* **Loss.** ``kappa * L_fit + (1 - kappa) * L_spec + beta * R / max(1, t)``: ``L_fit`` on the clean
  logits of ``x~``, ``L_spec`` the robust cross-entropy against both labels, ``R`` HNET's regulariser.
  Schedules within a task (``progress`` = iteration / iterations): ``eps_cur`` ramps linearly from 0 to
  ``eps`` over the first ``eps_warmup`` (half) of the task, ``kappa = max(kappa_min, 1 - progress)``.

Differences from the public SHIELD code, each on purpose: upstream forms one worst-case logit vector
for the first label (lower bound on ``y``, upper bounds elsewhere) and applies the mixup criterion to it,
so its term for ``y[perm]`` uses an *upper* bound of ``z_{y[perm]}`` (not a worst case); here each label
gets its own margins, so ``L_spec`` bounds the mixup loss over the box. Upstream's fit term uses the
midpoint of the output box; here it is the clean forward pass of ``x~``, so ``kappa = 1`` is plain
(MixUp) training. The random draws (``lambda``, the permutation) come from a generator the method owns,
reseeded at every task start from ``(seed, task)`` and saved in ``state_dict()``, so a resumed run
draws the same ``lambda`` s as an unbroken one. The input boxes are clipped to the data domain
``[lo, hi]`` (default ``[0, 1]``; ``lo=hi=None`` turns it off); upstream's boxes are not clipped, which
on MNIST (mostly 0 pixels) makes them wider than the inputs can be.

Certification of a trained task goes through :meth:`~continual.methods.ContinualMethod.materialize` and
:mod:`certify` (rigorous mode available there); :meth:`SHIELD.margins` gives the same IBP margins
straight from the hypernetwork's weights.

Example:
    >>> import torch
    >>> from continual.targets import MLP
    >>> torch.manual_seed(0) and None
    >>> m = SHIELD(MLP(4, hidden=(8,), num_outputs=3), eps=0.1, emb_dim=3, hnet_hidden=(16,), seed=0)
    >>> m.start_task(0)
    >>> x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> loss, stats = m.loss(x, y, task=0, progress=0.75)    # eps fully ramped, kappa = 0.5
    >>> loss.backward()
    >>> stats["eps_max"], stats["kappa"]
    (0.1, 0.5)
    >>> m.margins(x, y, task=0, eps=0.01).shape             # lower bounds of z_y - z_j, j != y
    torch.Size([6, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from certify.bounds import fold_spec_margins
from certify.training import robust_cross_entropy
from intervals import Interval

from .methods import HNET
from .targets import TargetNet

__all__ = ["PHIS", "SHIELD", "fold_head_margins", "mixup_radius_factor"]


# ------------------------------------------------------------------------------------- Interval MixUp
def _linear(lam: float) -> float:
    return abs(2.0 * lam - 1.0)


def _quadratic(lam: float) -> float:
    return (2.0 * lam - 1.0) ** 2


def _log(lam: float) -> float:
    # -log2(1 - d/2), d = |2 lam - 1|: the upstream "log" variant (log(lam + 1/2) / log(1/2) for lam <= 1/2,
    # mirrored above) in one symmetric formula; d = 1 gives -log2(1/2) = 1 exactly.
    return -math.log2(1.0 - abs(2.0 * lam - 1.0) / 2.0)


def _cos(lam: float) -> float:
    # |cos(pi lam)| written as |sin(pi (lam - 1/2))| so that the endpoints 0, 1/2, 1 are exact in floats.
    return abs(math.sin(math.pi * (lam - 0.5)))


#: Interval MixUp radius factors ``phi(lambda)``, all with ``phi(0) = phi(1) = 1``, ``phi(1/2) = 0``,
#: ``phi(lambda) = phi(1 - lambda)`` and values in ``[0, 1]`` (``d = |2 lambda - 1|``):
#: ``linear`` ``d``; ``quadratic`` ``d^2``; ``log`` ``-log2(1 - d/2)``; ``cos`` ``|cos(pi lambda)|``.
PHIS: dict[str, Callable[[float], float]] = {"linear": _linear, "quadratic": _quadratic, "log": _log, "cos": _cos}


def mixup_radius_factor(lam: float, kind: str = "linear") -> float:
    """``phi(lam)`` of :data:`PHIS`: the fraction of ``eps`` an Interval MixUp box with weight ``lam`` gets.

    Example:
        >>> [mixup_radius_factor(v, "linear") for v in (0.0, 0.25, 0.5, 1.0)]
        [1.0, 0.5, 0.0, 1.0]
        >>> round(mixup_radius_factor(0.25, "quadratic"), 4), round(mixup_radius_factor(0.25, "cos"), 4)
        (0.25, 0.7071)
    """
    if kind not in PHIS:
        raise ValueError(f"unknown Interval MixUp radius variant {kind!r}; available: {', '.join(PHIS)}")
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"mixup weight lambda must lie in [0, 1], got {lam}")
    # Clamped so that rounding can never hand out more than the full radius (or a negative one).
    return min(1.0, max(0.0, PHIS[kind](lam)))


# ------------------------------------------------------------------------------------- margins
def fold_head_margins(h: Interval | torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      y: torch.Tensor) -> torch.Tensor:
    """Lower bounds ``(B, K-1)`` of ``z_y - z_j`` (``j != y``, order of :func:`certify.bounds.other_classes`)
    for ``z = weight h + bias`` over the box ``h``, the specification folded into the layer.

    ``W'_j = W_y - W_j`` and ``b'_j = b_y - b_j``, then ``W' h_c + b' - |W'| h_r``: exact for one affine
    layer (round-to-nearest floats), tighter than ``lower(z_y) - upper(z_j)``. Differentiable.

    Example:
        >>> w, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2)
        >>> box = Interval.from_center_radius(torch.tensor([[2.0, 1.0]]), torch.tensor([[0.5, 0.25]]))
        >>> fold_head_margins(box, w, b, torch.tensor([0]))      # 2 - 1 - (0.5 + 0.25)
        tensor([[0.2500]])
    """
    box = h if isinstance(h, Interval) else Interval.point(h)
    return fold_spec_margins(weight, bias, box, y)


# ------------------------------------------------------------------------------------- the method
class SHIELD(HNET):
    """SHIELD: HNET's point weights ``H(e_t)`` trained with IBP on Interval MixUp boxes (arXiv 2506.08255).

    Args:
        target: the functional target net (it must end in a linear ``head``).
        eps: the largest L-inf input radius, reached after ``eps_warmup`` of each task.
        mixup: Interval MixUp on (``False``: plain IBP training on ``x`` with radius ``eps_cur``).
        mixup_alpha: ``lambda ~ Beta(alpha, alpha)``; ``0`` means ``lambda = 1`` (no mixing).
        phi: the radius factor of :data:`PHIS` (``"linear"``, ``"quadratic"``, ``"log"``, ``"cos"``).
        kappa_min: ``kappa = max(kappa_min, 1 - progress)`` weights the fit loss.
        eps_warmup: fraction of a task over which ``eps_cur`` ramps linearly 0 -> ``eps`` (0: no ramp).
        lo, hi: the input domain the boxes are clipped to (``None``: unbounded).
        seed: seed of the method's own generator (``lambda``, permutations); ``None`` draws one from
            torch's global RNG (the harness seeds it from the run seed before building the method).
        **kwargs: :class:`~continual.methods.ContinualMethod` options (``emb_dim``, ``hnet_hidden``,
            ``beta``, ``chunk_size``, ...).
    """

    name = "shield"
    #: The harness should keep the best-validation state only from this fraction of a task on: before it,
    #: eps is still ramping and a checkpoint's certified robustness is not yet that of eps (DESIGN.md).
    best_from_progress = 0.5

    def __init__(self, target: TargetNet, *, eps: float = 0.1, mixup: bool = True, mixup_alpha: float = 0.1,
                 phi: str = "linear", kappa_min: float = 0.5, eps_warmup: float = 0.5, lo: float | None = 0.0,
                 hi: float | None = 1.0, seed: int | None = None, **kwargs: Any) -> None:
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        if not isinstance(mixup, bool):
            raise ValueError(f"mixup must be True or False, got {mixup!r}")
        if not (math.isfinite(mixup_alpha) and mixup_alpha >= 0):
            raise ValueError(f"mixup_alpha must be >= 0, got {mixup_alpha}")
        if phi not in PHIS:
            raise ValueError(f"unknown Interval MixUp radius variant phi={phi!r}; available: {', '.join(PHIS)}")
        if not 0.0 <= kappa_min <= 1.0:
            raise ValueError(f"kappa_min must lie in [0, 1], got {kappa_min}")
        if not 0.0 <= eps_warmup <= 1.0:
            raise ValueError(f"eps_warmup must lie in [0, 1], got {eps_warmup}")
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"need lo < hi, got lo={lo}, hi={hi}")
        super().__init__(target, **kwargs)
        if not target.head_names:
            raise ValueError(f"{type(target).__name__} has no linear 'head' layer to fold the specification into")
        self.eps, self.mixup, self.mixup_alpha, self.phi = float(eps), mixup, float(mixup_alpha), phi
        self.kappa_min, self.eps_warmup = float(kappa_min), float(eps_warmup)
        self.lo = None if lo is None else float(lo)
        self.hi = None if hi is None else float(hi)
        # Drawn after the hypernetwork is initialised: HNET and SHIELD built after one manual_seed get equal hypernets.
        self.seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)

    # ------------------------------------------------------------------------------- randomness
    def start_task(self, task: int) -> None:
        super().start_task(task)
        # Every task's draws depend on (seed, task) only: not on which checkpoint ended the previous task.
        self._gen.manual_seed((self.seed * 1_000_003 + task) % (2**63 - 1))

    def get_extra_state(self) -> dict[str, Any]:
        """The generator behind ``lambda`` and the permutations: saved so a resumed run draws the same ones."""
        return {"seed": self.seed, "rng_state": self._gen.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._gen.set_state(state["rng_state"].detach().to("cpu", torch.uint8))

    def sample_mixup(self, batch: int) -> tuple[float, torch.Tensor | None]:
        """One batch's ``(lambda, permutation)`` from the method's generator (``(1.0, None)`` without MixUp)."""
        if not self.mixup or self.mixup_alpha == 0:
            return 1.0, None
        # torch has no seeded Beta sampler: a seed from our generator drives numpy's.
        sub_seed = int(torch.randint(0, 2**62, (), generator=self._gen).item())
        lam = float(np.random.default_rng(sub_seed).beta(self.mixup_alpha, self.mixup_alpha))
        perm = torch.randperm(batch, generator=self._gen)
        return min(1.0, max(0.0, lam)), perm

    # ------------------------------------------------------------------------------- schedules
    def eps_at(self, progress: float) -> float:
        """``eps_cur``: linear from 0 to ``eps`` over the first ``eps_warmup`` of the task, then ``eps``."""
        if self.eps_warmup == 0:
            return self.eps
        return self.eps * min(1.0, max(0.0, progress) / self.eps_warmup)

    def kappa_at(self, progress: float) -> float:
        """``max(kappa_min, 1 - progress)``: the weight of the fit loss."""
        return max(self.kappa_min, 1.0 - max(0.0, progress))

    # ------------------------------------------------------------------------------- bounds
    def _box_margins(self, box: Interval, ys: list[torch.Tensor], weights: dict[str, Any], task: int,
                     update_stats: bool) -> list[torch.Tensor]:
        h = self.target.features(box, weights, task, update_stats=update_stats)
        w, b = weights["head.weight"], weights.get("head.bias")
        return [fold_head_margins(h, w, b, y) for y in ys]

    def margins(self, x: torch.Tensor, y: torch.Tensor, task: int, eps: float | torch.Tensor,
                lo: float | None = None, hi: float | None = None) -> torch.Tensor:
        """IBP lower bounds ``(B, K-1)`` of ``z_y - z_j`` over ``{x' : |x' - x|_inf <= eps} ∩ [lo, hi]``.

        Task ``task``'s weights, the specification folded into the head; ``lo``/``hi`` default to the
        method's domain. In eval mode these bound the network of :meth:`materialize` (round-to-nearest
        floats: for a rigorous certificate use :mod:`certify` on the materialised module). Batch-norm
        statistics are never updated.
        """
        lo = self.lo if lo is None else lo
        hi = self.hi if hi is None else hi
        box = Interval.linf_ball(x, eps, lo=lo, hi=hi)
        return self._box_margins(box, [y], self.task_weights(task), task, update_stats=False)[0]

    # ------------------------------------------------------------------------------- loss
    def loss(
        self, x: torch.Tensor, y: torch.Tensor, task: int, progress: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``kappa * L_fit + (1 - kappa) * L_spec + beta * R / max(1, t)`` on one Interval MixUp batch.

        The statistics' ``certified`` is a training diagnostic: the share of the batch whose box (the
        mixed input, radius ``phi(lambda) * eps``) is certified for the label with the larger mixing
        weight; not a certificate of the clean test inputs at ``eps`` (``certify`` measures those).
        """
        weights = self.task_weights(task)
        eps_cur, kappa = self.eps_at(progress), self.kappa_at(progress)
        lam, perm = self.sample_mixup(x.shape[0])
        if perm is None:
            x_mix, y_b, radius = x, y, eps_cur
        else:
            perm = perm.to(x.device)
            x_mix, y_b = lam * x + (1.0 - lam) * x[perm], y[perm]
            # A convex combination stays in [lo, hi] up to rounding: clamp the rounding away.
            if self.lo is not None or self.hi is not None:
                x_mix = x_mix.clamp(self.lo, self.hi)
            radius = mixup_radius_factor(lam, self.phi) * eps_cur
        mixed = lam < 1.0

        logits = self.target(x_mix, weights, task)  # the clean pass updates batch-norm statistics
        fit = lam * F.cross_entropy(logits, y)
        if mixed:
            fit = fit + (1.0 - lam) * F.cross_entropy(logits, y_b)
        spec, certified = logits.new_zeros(()), float("nan")
        if kappa < 1.0:  # the box pass costs a second forward; skipped while its weight is 0
            box = Interval.linf_ball(x_mix, radius, lo=self.lo, hi=self.hi)
            labels = [y, y_b] if mixed else [y]
            margins = self._box_margins(box, labels, weights, task, update_stats=False)
            spec = lam * robust_cross_entropy(margins[0])
            if mixed:
                spec = spec + (1.0 - lam) * robust_cross_entropy(margins[1])
            certified = float((margins[0 if lam >= 0.5 else 1] > 0).all(1).float().mean())
        reg = self.regularizer(task, progress) / max(1, task)
        loss = kappa * fit + (1.0 - kappa) * spec + self.beta * reg
        with torch.no_grad():
            pred = logits.argmax(1)
            acc = lam * float((pred == y).float().mean()) + (1.0 - lam) * float((pred == y_b).float().mean())
        return loss, {"fit": fit.item(), "spec": spec.item(), "reg": reg.item(), "acc": acc, "kappa": kappa,
                      "eps_max": eps_cur, "radius": radius, "lam": lam, "certified": certified}
