"""Certified (IBP) training: the robust loss, its schedules, IBP initialisation, and a resumable loop.

* :func:`ibp_loss`: ``kappa * CE(clean logits) + (1 - kappa) * CE(worst-case logits)``, the worst case
  taken from sound margin lower bounds (Gowal et al. 2018, "On the Effectiveness of Interval Bound
  Propagation for Training Verifiably Robust Models"): for margins ``m_j <= z_y - z_j`` the logits
  ``(0, -m_j)`` dominate every logit vector in the box, so their cross-entropy bounds the worst-case one.
* :func:`ibp_init` and :func:`warmup_regularizer`: the IBP initialisation and warm-up regularisers of
  Shi et al. 2021 ("Fast Certified Robust Training with Short Warmup", NeurIPS 2021).
* :func:`ramp`: the eps (and kappa) ramps: linear (CROWN-IBP) or Shi et al.'s smoothed
  exponential-then-linear one.
* :func:`train_certified` with :class:`TrainConfig`: an IBP training loop that writes its checkpoint
  atomically after every epoch and resumes from it after a kill.

Example:
    >>> import torch
    >>> from certify.training import ibp_loss
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> loss = ibp_loss(net, x, y, eps=0.05, kappa=0.5, lo=0.0, hi=1.0)
    >>> loss.backward()
    >>> net[0].weight.grad is not None
    True
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from intervals import Interval

from .bounds import fold_margins, margin_bounds
from .model_io import atomic_save, check_output_file

__all__ = [
    "TrainConfig",
    "check_checkpoint",
    "data_fingerprint",
    "ibp_init",
    "ibp_loss",
    "ramp",
    "robust_cross_entropy",
    "train_certified",
    "warmup_regularizer",
]


# ------------------------------------------------------------------------------------------------ losses
def robust_cross_entropy(margins: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the worst-case logits built from margin lower bounds ``(B, K-1)``.

    With ``m_j <= z_y - z_j`` for every ``z`` in the box, ``CE(z, y) = log(1 + sum_j exp(-(z_y - z_j)))
    <= log(1 + sum_j exp(-m_j))``: the cross-entropy of the logits ``(0, -m_1, ..., -m_{K-1})`` for
    class 0, an upper bound of the loss over the whole box.
    """
    per_sample = torch.logsumexp(F.pad(-margins, (1, 0)), dim=1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")


def ibp_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    kappa: float = 0.5,
    *,
    lo: float | torch.Tensor | None = None,
    hi: float | torch.Tensor | None = None,
    method: str = "ibp",
) -> torch.Tensor:
    """``kappa * CE(model(x), y) + (1 - kappa) * CE(worst-case logits over the eps box)``.

    The worst case comes from :func:`certify.bounds.margin_bounds` (specification folded into the last
    layer for IBP; ``method="crown-ibp"`` gives CROWN-IBP training). ``kappa = 1`` is plain training,
    ``kappa = 0`` purely robust. Differentiable with respect to the model's parameters.
    """
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
    clean = F.cross_entropy(model(x), y) if kappa > 0 else x.new_zeros(())
    if kappa == 1.0:
        return clean
    robust = robust_cross_entropy(margin_bounds(model, x, y, eps, method, lo, hi))
    return kappa * clean + (1.0 - kappa) * robust


# ---------------------------------------------------------------------------------- initialisation
def _affine_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]


def ibp_init(model: nn.Module, generator: torch.Generator | None = None) -> list[str]:
    """Re-initialise every linear/conv weight except the last with ``N(0, 2 pi / fan_in^2)`` (Shi et al. 2021).

    With this variance the expected IBP radius ``E[|W| r]`` neither explodes nor vanishes layer after
    layer at initialisation (Kaiming initialisation grows it by about ``sqrt(fan_in)`` per layer).
    Biases are kept. Returns the names of the re-initialised modules.
    """
    layers = _affine_layers(model)
    done = []
    with torch.no_grad():
        for name, layer in layers[:-1]:
            fan_in = layer.weight[0].numel()
            std = math.sqrt(2 * math.pi) / fan_in
            layer.weight.normal_(0.0, std, generator=generator)
            done.append(name)
    return done


def warmup_regularizer(
    input_box: Interval, relu_inputs: list[Interval], tol: float = 0.5
) -> torch.Tensor:
    """Shi et al. 2021's warm-up regularisers on the pre-activation boxes of every ReLU.

    * tightness: penalise a layer whose mean radius grows beyond ``1 / tol`` times the input's;
    * ReLU balance: penalise unbalanced active vs. inactive neurons (ratios of their mean and variance
      of the box centres below ``tol``), which IBP otherwise drives towards dead ReLUs.

    Returns the mean over the ReLU layers (zero when there are none).
    """
    if not relu_inputs:
        return input_box.center.new_zeros(())
    r0 = input_box.radius.mean()
    total = input_box.center.new_zeros(())
    for box in relu_inputs:
        lower, upper = box.lower, box.upper
        centre, radius = box.center, box.radius
        total = total + F.relu(tol - r0 / radius.mean().clamp(min=1e-12)) / tol
        active, inactive = (lower > 0).to(centre.dtype), (upper < 0).to(centre.dtype)
        mean_act, mean_inact = (centre * active).mean(), (centre * inactive).mean()
        delta = (centre - centre.mean()) ** 2
        var_act, var_inact = (delta * active).sum(), (delta * inactive).sum()
        # a layer without active or without inactive neurons has 0 or 0/0 ratios: no balance term there.
        # Decided before dividing: a term masked out afterwards still sends 0 * inf = NaN to every weight.
        if not bool(torch.stack([mean_act, mean_inact, var_act, var_inact]).ne(0).all()):
            continue
        mean_ratio = mean_act / -mean_inact
        var_ratio = var_act / var_inact
        mean_ratio = torch.minimum(mean_ratio, 1 / mean_ratio)
        var_ratio = torch.minimum(var_ratio, 1 / var_ratio)
        total = total + (F.relu(tol - mean_ratio) + F.relu(tol - var_ratio)) / tol
    return total / len(relu_inputs)


# --------------------------------------------------------------------------------------- schedules
def ramp(step: float, start: float, length: float, end_value: float, kind: str = "linear",
         begin_value: float = 0.0) -> float:
    """Value of a ramp from ``begin_value`` (before ``start``) to ``end_value`` (after ``start + length``).

    ``kind="linear"`` (CROWN-IBP); ``kind="smooth"``: Shi et al. 2021's schedule (auto_LiRPA's
    ``SmoothedScheduler``, ``beta=4``, ``mid=0.25``): ``alpha t^4`` over the first quarter of the ramp,
    then linear, with value and slope matched at the switch (0.077 of the span there, 0.385 half-way).

    Example:
        >>> ramp(5, start=0, length=10, end_value=0.2)
        0.1
    """
    if kind not in ("linear", "smooth"):
        raise ValueError(f"unknown ramp kind {kind!r}; use 'linear' or 'smooth'")
    if length <= 0 or step >= start + length:
        return end_value if step >= start else begin_value
    if step < start:
        return begin_value
    t = (step - start) / length
    span = end_value - begin_value
    if kind == "linear":
        return begin_value + span * t
    # alpha makes the linear piece from (mid, alpha mid^beta) to (1, 1) have the slope of alpha t^beta at mid
    mid, beta = 0.25, 4.0
    alpha = 1.0 / ((1 - mid) * beta * mid ** (beta - 1) + mid**beta)
    if t < mid:
        return begin_value + span * alpha * t**beta
    at_mid = alpha * mid**beta
    return begin_value + span * (at_mid + (1 - at_mid) * (t - mid) / (1 - mid))


# ------------------------------------------------------------------------------------- training loop
@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_certified` (defaults: the DM-small MNIST eps=0.1 recipe).

    The eps used in the loss ramps from 0 to ``eps_train`` over ``ramp_epochs`` after
    ``warmup_epochs`` of clean training; kappa ramps from ``kappa_start`` to ``kappa_end`` alongside.
    The learning rate is multiplied by ``lr_decay`` at each fraction of training in ``lr_milestones``.
    """

    eps_train: float = 0.15
    epochs: int = 40
    batch_size: int = 100
    lr: float = 5e-4
    lr_milestones: tuple[float, ...] = (0.6, 0.8)
    lr_decay: float = 0.2
    warmup_epochs: float = 0.0
    ramp_epochs: float = 16.0
    ramp_kind: str = "linear"
    kappa_start: float = 1.0
    kappa_end: float = 0.5
    reg_lambda: float = 0.0
    reg_tol: float = 0.5
    grad_clip: float = 10.0
    weight_decay: float = 0.0
    init: str = "ibp"
    lo: float = 0.0
    hi: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.eps_train < 0 or not math.isfinite(self.eps_train):
            raise ValueError(f"eps_train must be a finite number >= 0, got {self.eps_train}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {self.epochs} and {self.batch_size}")
        if self.init not in ("ibp", "default"):
            raise ValueError(f"init must be 'ibp' or 'default', got {self.init!r}")
        if not (0 <= self.kappa_end <= 1 and 0 <= self.kappa_start <= 1):
            raise ValueError("kappa_start and kappa_end must lie in [0, 1]")
        ramp(0, 0, 1, 1, self.ramp_kind)  # validates the kind

    def eps_at(self, epoch_float: float) -> float:
        return ramp(epoch_float, self.warmup_epochs, self.ramp_epochs, self.eps_train, self.ramp_kind)

    def kappa_at(self, epoch_float: float) -> float:
        return ramp(epoch_float, self.warmup_epochs, self.ramp_epochs, self.kappa_end, "linear", self.kappa_start)

    def lr_at(self, epoch_float: float) -> float:
        passed = sum(epoch_float >= m * self.epochs for m in self.lr_milestones)
        return self.lr * self.lr_decay**passed


def _relu_trace(model: nn.Sequential, box: Interval) -> tuple[Interval, list[Interval]]:
    """The box before ``model``'s last layer, and the pre-activation box of every ReLU on the way.

    The recorded boxes are copies: an ``nn.ReLU(inplace=True)`` changes its input box in place.
    """
    relu_inputs: list[Interval] = []
    h = box.snapshot()
    for layer in model[:-1]:
        if isinstance(layer, nn.ReLU):
            relu_inputs.append(h.snapshot())
        h = layer(h)
    return h, relu_inputs


def _regularized_ibp_loss(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, eps: float, kappa: float, cfg: TrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's loss with the warm-up regulariser (needs every ReLU's box, so the trace is explicit)."""
    box = Interval.linf_ball(x, eps, lo=cfg.lo, hi=cfg.hi)
    h, relu_inputs = _relu_trace(model, box)
    margins = fold_margins(model[-1], h, y)
    clean_logits = model(x)
    loss = kappa * F.cross_entropy(clean_logits, y) + (1 - kappa) * robust_cross_entropy(margins)
    intensity = cfg.reg_lambda * (1 - eps / cfg.eps_train) if cfg.eps_train > 0 else 0.0
    if intensity > 0:
        loss = loss + intensity * warmup_regularizer(box, relu_inputs, cfg.reg_tol)
    stats = {
        "clean_acc": float((clean_logits.argmax(1) == y).float().mean()),
        "ibp_certified": float((margins > 0).all(1).float().mean()),
    }
    return loss, stats


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["lr_milestones"] = list(d["lr_milestones"])
    return d


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """What identifies a training set: its shapes, dtypes and a SHA-256 of every value of ``x`` and ``y``.

    Hashing all of MNIST's 60,000 float32 images takes well under a second, a rounding error beside
    an epoch, so every sample counts: a checkpoint is resumed only on exactly the data it was trained on.

    Example:
        >>> a = data_fingerprint(torch.zeros(3, 2), torch.tensor([0, 1, 0]))
        >>> a == data_fingerprint(torch.zeros(3, 2), torch.tensor([0, 1, 1])), a["n"]
        (False, 3)
    """
    digest = hashlib.sha256()
    for t in (x, y):
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        # the raw bytes: numpy has no bfloat16, and a byte view hashes every dtype alike
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"n": int(x.shape[0]), "x_shape": list(x.shape[1:]), "sha256": digest.hexdigest()}


def _check_data(path: Path, saved: dict[str, Any] | None, data: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint trained on other data (it would return that model as if trained on this)."""
    if saved is None:  # written before fingerprints were recorded: nothing to compare
        warnings.warn(f"checkpoint {path} does not record its training data; resuming it unchecked", stacklevel=3)
        return
    if saved != data:
        what = (f"{saved['n']} samples, now {data['n']}" if saved["n"] != data["n"]
                else f"shape {saved['x_shape']}, now {data['x_shape']}" if saved["x_shape"] != data["x_shape"]
                else "the same number of samples but different values")
        raise ValueError(f"checkpoint {path} was trained on different data ({what}); use a new checkpoint path "
                         "or the same data")


def _load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig,
                     data: dict[str, Any]) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ValueError(f"corrupt training checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != "hypercert-train-checkpoint":
        raise ValueError(f"{path} is not a hypercert training checkpoint (written by train_certified)")
    if state["config"] != _config_dict(cfg):
        changed = sorted(k for k in state["config"] if state["config"][k] != _config_dict(cfg).get(k))
        raise ValueError(f"checkpoint {path} was written with a different training config (differs in: "
                         f"{', '.join(changed)}); use a new checkpoint path or the same settings")
    _check_data(path, state.get("data"), data)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not match the model: {str(exc).splitlines()[0]}") from None
    try:
        opt.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise ValueError(f"checkpoint {path}: its optimizer state does not match the model ({exc})") from None
    return state


def check_checkpoint(checkpoint: str | Path | None, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     config: TrainConfig) -> None:
    """Everything :func:`train_certified` checks before its first batch, without training: the data, the
    checkpoint path, and an existing checkpoint's format, config, data and fit to ``model`` (which is
    left unchanged). Scripts call it before other long preparations; raises ``ValueError``."""
    _check_training_data(x, y)
    if checkpoint is None:
        return
    path = Path(checkpoint)
    check_output_file(path, "checkpoint", "checkpoint.pt")
    if path.exists():
        probe = copy.deepcopy(model)
        opt = torch.optim.Adam(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        _load_checkpoint(path, probe, opt, config, data_fingerprint(x, y))


def _check_training_data(x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse data that would fail (or silently mislead) only after training started."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y disagree on the number of samples: {x.shape[0]} vs {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("no training samples (x is empty)")
    if not x.is_floating_point() or not torch.isfinite(x).all():
        raise ValueError("x must be a floating-point tensor without NaN or infinite values")
    if y.dtype not in (torch.int64, torch.int32, torch.uint8) or y.dim() != 1 or int(y.min()) < 0:
        raise ValueError(f"y must be non-negative integer class labels of shape (N,), got {y.dtype} {tuple(y.shape)}")


def _check_trainable(model: nn.Sequential, cfg: TrainConfig) -> None:
    """Refuse, before any weight is touched, models this loop cannot train as configured."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0):
            raise ValueError(f"train_certified trains in train mode, where a box has no sound rule for "
                             f"{type(m).__name__} (layer {name}: batch statistics / random masks); use a model "
                             "without batch norm and dropout (e.g. dm-small, dm-large)")
    if cfg.reg_lambda > 0:
        nested = [name for name, m in model.named_modules() if isinstance(m, nn.ReLU) and "." in name]
        if nested:
            raise ValueError(f"the warm-up regulariser reads the ReLUs at the top level of the nn.Sequential, "
                             f"and {nested[0]} is nested: flatten the model or set reg_lambda=0")


def train_certified(
    model: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig | None = None,
    *,
    checkpoint: str | Path | None = None,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """IBP-train ``model`` (an ``nn.Sequential`` ending in ``nn.Linear``) on ``(x, y)``; returns per-epoch logs.

    With ``checkpoint``, the model, optimiser, epoch and history are written there atomically after
    every epoch, and an existing checkpoint written with the same config *and the same data*
    (:func:`data_fingerprint`) is resumed: the batches are drawn from a generator seeded by ``(seed,
    epoch)``, so a killed and resumed run equals an unbroken one. A checkpoint of another config, of
    other data or of another model is refused (``ValueError``), as is an unusable checkpoint path,
    before the first batch. ``config.init == "ibp"`` applies :func:`ibp_init` (on a fresh start only).
    """
    cfg = config or TrainConfig()
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise ValueError("train_certified needs an nn.Sequential whose last layer is nn.Linear")
    _check_trainable(model, cfg)
    _check_training_data(x, y)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    path = None if checkpoint is None else Path(checkpoint)
    check_output_file(path, "checkpoint", "checkpoint.pt")  # now, not after the first epoch
    fingerprint = data_fingerprint(x, y) if path is not None else {}
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if path is not None and path.exists():
        state = _load_checkpoint(path, model, opt, cfg, fingerprint)
        start_epoch, history = int(state["epoch"]), list(state["history"])
    elif cfg.init == "ibp":
        ibp_init(model, torch.Generator().manual_seed(cfg.seed))
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, desc="IBP training",
                   unit="batch", dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            perm = torch.randperm(n, generator=gen)
            t0, sums, count = time.perf_counter(), {"loss": 0.0, "clean_acc": 0.0, "ibp_certified": 0.0}, 0
            for step in range(steps_per_epoch):
                at = epoch + step / steps_per_epoch
                eps, kappa = cfg.eps_at(at), cfg.kappa_at(at)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr_at(at)
                idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                loss, stats = _regularized_ibp_loss(model, x[idx], y[idx], eps, kappa, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sums["loss"] += loss.item()
                for k in ("clean_acc", "ibp_certified"):
                    sums[k] += stats[k]
                count += 1
                if bar is not None:
                    bar.update(1)
                    if step % 20 == 0:
                        bar.set_postfix(eps=f"{eps:.3f}", kappa=f"{kappa:.2f}", loss=f"{loss.item():.3f}")
            # the eps and kappa of the epoch's last batch (the largest eps it used); the loss and accuracies
            # are running means over the epoch's training batches, taken before each step
            record = {"epoch": epoch + 1, "eps": eps, "kappa": kappa,
                      "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
            record.update({k: v / max(count, 1) for k, v in sums.items()})
            history.append(record)
            if log is not None:
                log(record)
            if path is not None:
                atomic_save({"format": "hypercert-train-checkpoint", "config": _config_dict(cfg), "data": fingerprint,
                             "epoch": epoch + 1, "history": history, "model": model.state_dict(),
                             "optimizer": opt.state_dict()}, path)
    finally:  # also after an error or Ctrl-C: the model is left ready for evaluation
        model.eval()
        if bar is not None:
            bar.close()
    return history

