"""Adversarial attacks: empirical upper bounds on robust accuracy, the counterpart of the certificates.

A certificate (:func:`certify.bounds.certified`) is a *lower* bound on robust accuracy; an attack gives
an *upper* bound. A sample certified by any bound method but broken by any attack is a soundness bug,
so the adversarial examples returned here lie **exactly** in ``{x' : |x' - x|_inf <= eps} ∩ [lo, hi]``
(checked in exact real arithmetic, not only up to float rounding) and, by construction, inside the box
that :meth:`intervals.Interval.linf_ball` builds for the certifier.

Attacks (:data:`ATTACKS`), all L-inf and untargeted at the level of the returned verdict:

* ``"fgsm"``: FGSM (Goodfellow et al. 2015), one signed-gradient step of size ``eps``, via ``torchattacks``.
* ``"pgd"``: PGD (Madry et al. 2018) via ``torchattacks``: ``config.steps`` steps of ``config.step_size``
  (default ``2.5 * eps / steps``) from a uniformly random start in the ball (``config.random_start``),
  best of ``config.restarts`` restarts per sample.
* ``"autoattack"``: AutoAttack (Croce & Hein 2020), the official ``standard`` version via
  ``pyautoattack``: APGD-CE, APGD-T, FAB-T and Square (5000 queries) in sequence, each on the points
  the previous ones did not break. Square needs image-shaped ``(B, C, H, W)`` inputs.
* ``"aa-fast"``: the documented faster subset, AutoAttack's ``custom`` version with ``['apgd-ce',
  'apgd-t']`` -- the two gradient attacks of the standard version, with its settings (100 iterations,
  one restart). It breaks almost everything the standard version breaks at a fraction of the cost,
  but is a weaker (looser) upper bound: report ``"autoattack"`` numbers as AutoAttack.
* ``"apgd-ce"`` / ``"apgd-t"``: one of those two alone (``custom`` version). There is no ``"apgd"``:
  pick the loss explicitly.

The AutoAttack family is parameter-free: it uses the official settings and takes only ``seed`` and
``batch_size`` from :class:`AttackConfig`. The targeted attacks (APGD-T, FAB-T) try
``min(9, K - 1)`` target classes for ``K`` classes (the standard 9 for ``K >= 10``) and need
``K >= 4`` (the targeted DLR loss uses the 4 largest logits).

Inputs live in ``[lo, hi]`` (scalars; default ``[0, 1]``). Both libraries assume ``[0, 1]``, so for
other domains the model is wrapped as ``z -> model(lo + z (hi - lo))`` and ``eps`` and the step size
are divided by ``hi - lo``. Models that normalise their inputs (a ``(x - mean) / std`` first layer)
need nothing special: pass the model with its normalisation inside and ``x`` in the raw domain.

Pass a model in ``eval()`` mode: the attacks run it in the mode it is in (a warning is issued if it is
training) and leave every module's mode as it was. Parameters' ``requires_grad`` and ``.grad`` are
left untouched.

Reproducible: the same ``config.seed`` (and ``batch_size``) gives bit-identical adversarial examples
on CPU (on GPU, subject to torch's deterministic-algorithm settings). The caller's global RNG state
(CPU, and the CUDA devices in use) is saved and restored around the attack. One leak remains: with
CUDA available but not yet initialised, pyautoattack's ``torch.cuda.manual_seed`` is queued by torch
and applied when CUDA starts.

``torchattacks`` and ``pyautoattack`` are optional dependencies, imported on first use.

Example:
    >>> import torch
    >>> from certify.attacks import AttackConfig, attack, robust
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    >>> x = torch.rand(5, 1, 2, 2)
    >>> y = net(x).argmax(1)
    >>> x_adv = attack(net, x, y, eps=0.1, name="pgd", config=AttackConfig(steps=10))
    >>> x_adv.shape, bool((x_adv - x).abs().max() <= 0.1), bool(x_adv.min() >= 0 and x_adv.max() <= 1)
    (torch.Size([5, 1, 2, 2]), True, True)
    >>> robust(net, x, y, eps=0.0).tolist()
    [True, True, True, True, True]
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ATTACKS", "AttackConfig", "attack", "robust"]

#: Attack names accepted by :func:`attack` and :func:`robust`.
ATTACKS = ("fgsm", "pgd", "autoattack", "aa-fast", "apgd-ce", "apgd-t")

# AutoAttack's ``attacks_to_run`` per name; None selects the official standard version.
_AUTOATTACK_SUBSETS: dict[str, list[str] | None] = {
    "autoattack": None,
    "aa-fast": ["apgd-ce", "apgd-t"],
    "apgd-ce": ["apgd-ce"],
    "apgd-t": ["apgd-t"],
}
_TARGETED = {"autoattack", "aa-fast", "apgd-t"}

@dataclass(frozen=True)
class AttackConfig:
    """Settings of :func:`attack`.

    ``steps``, ``step_size``, ``restarts`` and ``random_start`` apply to PGD (FGSM is one step of
    size ``eps``; the AutoAttack family uses its official settings). ``step_size`` is in input units
    and defaults to ``2.5 * eps / steps``. ``seed`` fixes every random choice. Samples are attacked
    ``batch_size`` at a time; the random draws depend on it, so keep it fixed to reproduce results.

    Example:
        >>> AttackConfig(steps=10).step_size_for(0.1)
        0.025
    """

    steps: int = 40
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        for field in ("steps", "restarts", "batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AttackConfig.{field} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"AttackConfig.seed must be an integer, got {self.seed!r}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"AttackConfig.step_size must be a finite number > 0 or None, got {self.step_size!r}")

    def step_size_for(self, eps: float) -> float:
        """PGD step size for radius ``eps``: ``step_size`` if set, else ``2.5 * eps / steps`` (Madry et al.)."""
        return self.step_size if self.step_size is not None else 2.5 * eps / self.steps


# ---------------------------------------------------------------------------------------- public API
def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    name: str = "pgd",
    *,
    lo: float = 0.0,
    hi: float = 1.0,
    config: AttackConfig | None = None,
    verbose: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Adversarial examples for ``model`` at ``(x, y)``, same shape and dtype as ``x``.

    Every returned point lies exactly in ``{x' : |x' - x|_inf <= eps} ∩ [lo, hi]``. Where the attack
    fails the point is still a valid member of the ball (not necessarily ``x`` itself). ``name`` is one
    of :data:`ATTACKS`; ``verbose`` lets AutoAttack log its progress; ``progress`` shows a tqdm bar over
    the batches. ``eps == 0`` returns a copy of ``x``.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2).eval()
        >>> x, y = torch.full((3, 2), 0.5), torch.tensor([0, 1, 0])
        >>> attack(net, x, y, eps=0.25, name="fgsm").sub(x).abs().max().item() <= 0.25
        True
    """
    _warn_if_training(model)
    return _attack(model, x, y, eps, name, lo, hi, config, verbose, progress)


def robust(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    name: str = "pgd",
    *,
    lo: float = 0.0,
    hi: float = 1.0,
    config: AttackConfig | None = None,
    verbose: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Boolean ``(B,)``: True where ``model`` classifies both ``x`` and the attack's point correctly.

    "Correctly" is strict, as in the certificate: ``z_y > z_j`` for every ``j != y`` (a tie is a
    break). False where ``x`` itself is misclassified. A certified sample must be robust here.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2).eval()
        >>> x, y = torch.rand(4, 2), torch.zeros(4, dtype=torch.long)
        >>> robust(net, x, y, eps=0.1, name="fgsm").shape
        torch.Size([4])
    """
    _warn_if_training(model)
    x_adv = _attack(model, x, y, eps, name, lo, hi, config, verbose, progress)
    batch = (config or AttackConfig()).batch_size
    with torch.no_grad():
        return (_margins(model, x, y, batch) > 0) & (_margins(model, x_adv, y, batch) > 0)


# ---------------------------------------------------------------------------------------- driver
def _attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    name: str,
    lo: float,
    hi: float,
    config: AttackConfig | None,
    verbose: bool,
    progress: bool,
) -> torch.Tensor:
    config = config or AttackConfig()
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(ATTACKS)}")
    lo, hi = _scalar(lo, "lo"), _scalar(hi, "hi")
    eps = _check_eps(eps)
    _check_inputs(x, y, lo, hi)
    x, y = x.detach(), y.detach().long()
    if x.shape[0] == 0:
        return x.clone()
    n_classes = _check_labels(model, x, y, config.batch_size)
    _check_attack_applies(name, x, n_classes)
    if eps == 0:
        return x.clone()
    clip = _Clip(eps, lo, hi)
    # Any radius beyond the domain's width gives the same set ball ∩ [lo, hi]; capping it keeps the
    # libraries' step sizes and random starts finite.
    eps_attack = min(eps, hi - lo)
    with _quiet(verbose), _rng_forked(x, config.seed), _params_frozen(model), torch.enable_grad():
        run = _runner(model, x, name, eps_attack, lo, hi, config, n_classes, clip, verbose)
        out = torch.empty_like(x)
        starts = range(0, x.shape[0], config.batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=name, unit="batch")
        for s in starts:
            chunk = slice(s, s + config.batch_size)
            out[chunk] = run(x[chunk], y[chunk])
    clip.verify(out, x)
    return out


def _runner(
    model: nn.Module,
    x: torch.Tensor,
    name: str,
    eps: float,
    lo: float,
    hi: float,
    config: AttackConfig,
    n_classes: int,
    clip: _Clip,
    verbose: bool,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function ``(x_chunk, y_chunk) -> adversarial chunk`` for attack ``name``, already clipped."""
    if name in ("fgsm", "pgd"):
        return _torchattacks_runner(model, x, name, eps, lo, hi, config, clip)
    return _autoattack_runner(model, x, name, eps, lo, hi, config, n_classes, clip, verbose)


def _torchattacks_runner(
    model: nn.Module, x: torch.Tensor, name: str, eps: float, lo: float, hi: float, config: AttackConfig, clip: _Clip
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    torchattacks = _import("torchattacks")
    unit = _UnitBox(model, lo, hi, x.shape[1:], x.dtype)
    scale = hi - lo
    if name == "fgsm":
        atk = torchattacks.FGSM(unit, eps=eps / scale)
        restarts = 1  # deterministic: a restart would repeat the same step
    else:
        atk = torchattacks.PGD(
            unit, eps=eps / scale, alpha=config.step_size_for(eps) / scale, steps=config.steps,
            random_start=config.random_start,
        )
        restarts = config.restarts if config.random_start else 1  # without a random start restarts coincide
    atk.set_device(x.device)

    def run(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        zc = unit.to_unit(xc)
        best = score = None
        for _ in range(restarts):
            cand = clip(unit.from_unit(atk(zc, yc)), xc)
            with torch.no_grad():
                cand_score = -_margins(model, cand, yc, cand.shape[0])
            if best is None:
                best, score = cand, cand_score
            else:  # keep, per sample, the restart that got closest to (or past) the decision boundary
                better = cand_score > score
                best[better] = cand[better]
                score = torch.maximum(score, cand_score)
            if bool((score >= 0).all()):
                break  # every sample is broken: further restarts cannot help
        return best

    return run


def _autoattack_runner(
    model: nn.Module,
    x: torch.Tensor,
    name: str,
    eps: float,
    lo: float,
    hi: float,
    config: AttackConfig,
    n_classes: int,
    clip: _Clip,
    verbose: bool,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    pyautoattack = _import("pyautoattack")
    # Square (standard version only) needs the image shape; APGD gets flat vectors, which sidesteps
    # AutoAttack's re-batching of a lone sample (it unsqueezes 3-d tensors as if they were images).
    shape = x.shape[1:] if name == "autoattack" else (x[0].numel(),)
    # pyautoattack is float32 throughout (FAB's projection fails on float64 logits).
    unit = _UnitBox(model, lo, hi, x.shape[1:], x.dtype, view=shape, float32_logits=True)
    subset = _AUTOATTACK_SUBSETS[name]
    aa = pyautoattack.AutoAttack(
        unit, attacks=subset, version="standard" if subset is None else "custom", eps=eps / (hi - lo),
        norm="Linf", seed=config.seed, device=x.device,
    )
    # The custom subsets get the standard version's settings (its constructor defaults differ: APGD-CE
    # with 5 restarts); the targeted attacks cannot try more target classes than there are.
    aa.apgd.n_restarts = aa.apgd_targeted.n_restarts = aa.fab.n_restarts = 1
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, n_classes - 1)
    aa.verbose = verbose

    def run(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        tracer = sys.gettrace()
        try:
            # float32 inputs too: its attacks write their float32 results into a copy of the input.
            z_adv, _ = aa.run_standard_evaluation(unit.to_unit(xc).float(), yc, batch_size=xc.shape[0])
        finally:
            sys.settrace(tracer)  # its dynamic-defence check clears any tracer (coverage, debuggers)
        return clip(unit.from_unit(z_adv), xc)

    return run


# ---------------------------------------------------------------------------------------- [0, 1] wrapper
class _UnitBox(nn.Module):
    """``z in [0, 1]^view -> model(lo + z (hi - lo))`` with ``z`` reshaped to the model's input shape.

    Both libraries hard-code the domain ``[0, 1]``; this maps it onto ``[lo, hi]``. ``train()``/``eval()``
    are no-ops so the libraries' mode switches (torchattacks sets eval, then train) never reach the
    caller's model.
    """

    def __init__(
        self,
        model: nn.Module,
        lo: float,
        hi: float,
        shape: torch.Size,
        dtype: torch.dtype,
        view: tuple[int, ...] | torch.Size | None = None,
        float32_logits: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.lo, self.hi, self.shape, self.dtype = lo, hi, tuple(shape), dtype
        self.view = tuple(view) if view is not None else self.shape
        self.identity = lo == 0.0 and hi == 1.0  # then the libraries see exactly the caller's inputs
        self.float32_logits = float32_logits

    def train(self, mode: bool = True) -> _UnitBox:
        return self  # see the class docstring

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.from_unit(z))
        return logits.float() if self.float32_logits else logits

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        z = x if self.identity else ((x - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
        return z.reshape(x.shape[0], *self.view)

    def from_unit(self, z: torch.Tensor) -> torch.Tensor:
        # pyautoattack casts inputs to float32; the model gets the caller's dtype back.
        z = z.reshape(z.shape[0], *self.shape).to(self.dtype)
        return z if self.identity else self.lo + z * (self.hi - self.lo)


# ---------------------------------------------------------------------------------------- exact ball
def _two_sum(a: torch.Tensor, b: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Knuth's TwoSum on float64: ``s + err == a + b`` exactly (barring overflow)."""
    s = a + b
    bv = s - a
    return s, (a - (s - bv)) + (b - bv)


def _exceeds(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Elementwise ``a - b > eps`` in exact real arithmetic (``eps >= 0`` a finite float64).

    Widening to float64 is exact and TwoSum gives ``s + err == a - b``. Then ``s`` alone decides
    unless ``eps / 2 <= s <= 2 eps``, where ``s - eps`` is exact (Sterbenz) and ``s - eps > -err``
    settles it.
    """
    s, err = _two_sum(a.double(), -b.double())
    near = (s >= eps / 2) & (s <= 2 * eps)
    return torch.where(near, (s - eps) > -err, s > eps)


def _round_toward(s: torch.Tensor, err: torch.Tensor | float, dtype: torch.dtype, up: bool) -> torch.Tensor:
    """The float of ``dtype`` nearest to the exact ``s + err`` on the side given by ``up``.

    ``s`` is a float64 and ``|err| <= ulp(s) / 2``: a ``dtype`` float strictly between ``s`` and
    ``s + err`` cannot exist, so rounding ``s`` one way and then looking at the sign of ``err`` where
    ``s`` itself is representable is exact.
    """
    direction = torch.full_like(s, math.inf if up else -math.inf).to(dtype)
    f = s.to(dtype)
    wrong_side = f.double() < s if up else f.double() > s
    f = torch.where(wrong_side, torch.nextafter(f, direction), f)
    on_s = f.double() == s
    beyond = (err > 0) if up else (err < 0)
    return torch.where(on_s & beyond, torch.nextafter(f, direction), f)


class _Clip:
    """Projection onto ``{x' : |x' - x|_inf <= eps} ∩ [lo, hi]``, exact in real arithmetic.

    Each bound is the innermost of: the last float inside the exact ball, the last float inside the
    domain, and the round-to-nearest bound of :meth:`intervals.Interval.linf_ball` (``x ± eps`` clamped
    to the domain, which may sit an ulp inside the exact ball). So the points are in the exact ball and
    in the box the certifier bounds. ``x`` itself satisfies all three, so ``lower <= x <= upper``.
    """

    def __init__(self, eps: float, lo: float, hi: float) -> None:
        self.eps, self.lo, self.hi = eps, lo, hi

    def bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x64 = x.double()
        zero = torch.zeros_like(x64)
        upper = torch.minimum(
            _round_toward(*_two_sum(x64, self.eps), x.dtype, up=False),
            _round_toward(torch.full_like(x64, self.hi), zero, x.dtype, up=False),
        )
        lower = torch.maximum(
            _round_toward(*_two_sum(x64, -self.eps), x.dtype, up=True),
            _round_toward(torch.full_like(x64, self.lo), zero, x.dtype, up=True),
        )
        upper = torch.minimum(upper, (x + self.eps).clamp(max=self.hi))
        lower = torch.maximum(lower, (x - self.eps).clamp(min=self.lo))
        return lower, upper

    def __call__(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        lower, upper = self.bounds(x)
        raw = torch.where(torch.isnan(raw), x, raw.detach().to(x.dtype))  # NaN would survive min/max
        return torch.minimum(torch.maximum(raw, lower), upper)

    def verify(self, x_adv: torch.Tensor, x: torch.Tensor) -> None:
        """Raise unless every point is in the exact ball ∩ domain (a bug here breaks the consistency law)."""
        outside = (
            _exceeds(x_adv, x, self.eps)
            | _exceeds(x, x_adv, self.eps)
            | (x_adv.double() > self.hi)
            | (x_adv.double() < self.lo)
            | torch.isnan(x_adv)
        )
        if bool(outside.any()):
            raise AssertionError(f"internal error: {int(outside.sum())} adversarial coordinate(s) outside the ball")


# ---------------------------------------------------------------------------------------- validation
def _scalar(v: float | torch.Tensor, what: str) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            shape = tuple(v.shape)
            raise ValueError(f"{what} must be a scalar (per-element domains are not supported), got shape {shape}")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{what} must be a real number, got {type(v).__name__}")
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {v}")
    return float(v)


def _check_eps(eps: float | torch.Tensor) -> float:
    if isinstance(eps, torch.Tensor):
        if eps.numel() != 1:
            raise ValueError(f"eps must be a scalar (per-sample radii are not supported), got shape {tuple(eps.shape)}")
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ValueError(f"eps must be a real number, got {type(eps).__name__}")
    if math.isnan(eps):
        raise ValueError("eps is NaN")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if math.isinf(eps):
        raise ValueError("eps must be finite (any eps >= hi - lo already covers the whole domain)")
    return float(eps)


def _check_inputs(x: torch.Tensor, y: torch.Tensor, lo: float, hi: float) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension first, shape (B, ...), got shape {tuple(x.shape)}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be a 1-d tensor of {x.shape[0]} labels (one per row of x), got {shape}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    if not lo < hi:
        raise ValueError(f"the input domain [lo, hi] must have lo < hi, got [{lo}, {hi}]")
    if bool(torch.isnan(x).any()):
        raise ValueError("x contains NaN")
    x64 = x.detach().double()  # exact comparison with the float64 domain bounds
    if bool((x64 < lo).any() | (x64 > hi).any()):
        raise ValueError(f"x lies outside the input domain [lo, hi] = [{lo}, {hi}]")


def _check_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> int:
    """Number of classes ``K`` from one forward pass; labels must lie in ``[0, K)``."""
    with torch.no_grad():
        logits = model(x[:batch])
    if logits.dim() != 2 or logits.shape[0] != min(batch, x.shape[0]) or logits.shape[1] < 2:
        raise ValueError(f"the model must return logits of shape (B, K) with K >= 2, got {tuple(logits.shape)}")
    k = logits.shape[1]
    if bool((y < 0).any() | (y >= k).any()):
        raise ValueError(f"labels must lie in [0, {k}) for a model with {k} classes")
    return k


def _check_attack_applies(name: str, x: torch.Tensor, n_classes: int) -> None:
    if name in _TARGETED and n_classes < 4:
        raise ValueError(
            f"{name!r} needs at least 4 classes (targeted DLR loss), the model has {n_classes}; use 'apgd-ce' or 'pgd'"
        )
    if name == "autoattack" and x.dim() != 4:
        raise ValueError(
            f"'autoattack' (Square) needs image inputs of shape (B, C, H, W), got {tuple(x.shape)}; "
            "use 'aa-fast' or reshape inside the model"
        )


def _warn_if_training(model: nn.Module) -> None:
    if model.training:
        warnings.warn(
            "the model is in training mode: attacks run it as it is (dropout, batch statistics); "
            "pass model.eval() to attack the deployed model",
            UserWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------- helpers
def logit_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per row of ``logits``: positive exactly where ``y`` wins strictly."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -math.inf).amax(dim=1)
    return true - others


def _margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    """:func:`logit_margins` of ``model(x)``, computed ``batch`` samples at a time."""
    out = [logit_margins(model(x[s : s + batch]), y[s : s + batch]) for s in range(0, x.shape[0], batch)]
    return torch.cat(out) if out else x.new_zeros(0)


def _import(module: str):
    try:
        return __import__(module)
    except ImportError as e:  # optional dependencies: only the attacks need them
        raise ImportError(f"certify.attacks needs {module!r}: pip install torchattacks pyautoattack") from e


@contextlib.contextmanager
def _rng_forked(x: torch.Tensor, seed: int) -> Iterator[None]:
    """Seed the generators the libraries draw from, restoring the caller's state afterwards.

    Forked: the CPU generator, the input's CUDA device, and the current CUDA device when CUDA is
    initialised (pyautoattack seeds the current device whatever the input's device).
    """
    devices: list[int] = []
    if x.device.type == "cuda":
        devices.append(x.device.index if x.device.index is not None else torch.cuda.current_device())
    if torch.cuda.is_available() and torch.cuda.is_initialized() and torch.cuda.current_device() not in devices:
        devices.append(torch.cuda.current_device())
    with torch.random.fork_rng(devices=devices):
        # Not torch.manual_seed: it would also (lazily) seed every CUDA device, outside the fork.
        torch.default_generator.manual_seed(seed)
        if x.device.type == "cuda":
            with torch.cuda.device(x.device):
                torch.cuda.manual_seed(seed)
        yield


@contextlib.contextmanager
def _params_frozen(model: nn.Module) -> Iterator[None]:
    """Input gradients only: FAB's ``backward`` would otherwise accumulate into the parameters' ``.grad``."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence AutoAttack's logger and both libraries' prints, or route the logger to stderr when verbose."""
    logger = logging.getLogger("auto-attack")
    old_disabled, old_level = logger.disabled, logger.level
    handler = None
    if verbose:
        logger.setLevel(logging.DEBUG)
        if not logger.hasHandlers():
            handler = logging.StreamHandler()
            logger.addHandler(handler)
    else:
        logger.disabled = True
    try:
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.disabled = old_disabled
        logger.setLevel(old_level)
        if handler is not None:
            logger.removeHandler(handler)
