"""Continual-learning methods on hypernetwork-generated weights, behind one small interface.

A :class:`ContinualMethod` owns a :class:`~continual.hypernet.HyperNetwork` and a functional
:class:`~continual.targets.TargetNet`, and says

* what happens when a task starts (:meth:`~ContinualMethod.start_task`: a new embedding, a snapshot
  of the hypernetwork's outputs for the previous tasks) and ends (:meth:`~ContinualMethod.end_task`:
  freeze the embedding);
* what one training step computes (:meth:`~ContinualMethod.loss`);
* which weights a task uses (:meth:`~ContinualMethod.task_weights`), hence its logits and the
  ordinary ``nn.Module`` of :meth:`~ContinualMethod.materialize`.

Methods (:data:`METHODS`):

* ``"hnet"``: HNET (von Oswald et al. 2020): the target weights are ``H(e_t)``; the loss is
  ``CE + beta * R`` with the output regulariser ``R = (1/t) sum_{j<t} ||H(e_j) - H*(e_j)||^2`` (one
  batched pass), ``H*`` the hypernetwork before task ``t``. (The paper's optional look-ahead term is
  left out, as in its default runs.)
* ``"hypermask"``: HyperMask (Książek & Spurek 2023, arXiv 2310.00113): the target owns shared weights
  ``theta``; the hypernetwork emits one tensor per target tensor and the mask ``m_t = |tanh(H(e_t))|``
  keeps, per tensor, the values above its ``s``-th percentile (kept values stay soft, the rest are 0;
  ``s`` ramps from 0 to ``sparsity`` during task 0 only). The target runs with ``theta * m_t``; the loss
  is ``CE + beta * R / max(1, t) + lam * ||theta - theta_prev||_1`` (with ``drift_masking``, upstream's
  ``norm_regularizer_masking``: ``lam * ||(theta - theta_prev) * m_t||_1``).

Example:
    >>> import torch
    >>> from continual.methods import build_method
    >>> from continual.targets import MLP
    >>> torch.manual_seed(0) and None
    >>> m = build_method("hnet", MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(16,))
    >>> m.start_task(0)
    >>> loss, stats = m.loss(torch.rand(5, 4), torch.tensor([0, 1, 0, 1, 1]), task=0, progress=0.0)
    >>> loss.backward(); m.end_task(0)
    >>> m.logits(torch.rand(2, 4), task=0).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .hypernet import HyperNetwork
from .targets import TargetNet

__all__ = ["METHODS", "ContinualMethod", "HINT", "HNET", "HyperMask", "SHIELD", "build_method", "method_defaults",
           "percentile_mask"]


class ContinualMethod(nn.Module):
    """Common machinery: the hypernetwork, the target net, the regulariser snapshot.

    Subclasses implement :meth:`task_weights` and may extend :meth:`loss`, :meth:`start_task`,
    :meth:`end_task`. Everything that must survive a restart is in ``state_dict()`` (the snapshot and
    the task counter included), so a checkpointed method resumes exactly.

    Args:
        target: the functional target network (:mod:`continual.targets`).
        emb_dim, hnet_hidden, chunk_size, chunk_emb_dim: the hypernetwork's task-embedding size,
            trunk widths and optional chunked head (see :class:`~continual.hypernet.HyperNetwork`).
            The head's size (``hnet_hidden[-1] * chunk_size`` weights) is what later tasks learn
            through: on Permuted MNIST 78,000-weight chunks behind a ``[25, 25]`` trunk (von
            Oswald et al.'s own setting, a head about as large as the target) learn every task to
            97-98%, 4000-weight chunks behind ``[100, 100]`` to 95-96% (README).
        beta: weight of the output regulariser.
        reg_tasks: regularise ``k`` previous tasks drawn per step instead of all (``None``).
        hnet_output_std: start the generated weights at this standard deviation (``None``:
            PyTorch's default head init).
        task_chunk_embeddings: give every task its own chunk embeddings (chunked head only).
        target_shapes: the shapes the hypernetwork emits (default: the target's parameters).
    """

    name = "base"

    def __init__(self, target: TargetNet, *, emb_dim: int = 24, hnet_hidden: tuple[int, ...] = (100, 100),
                 beta: float = 0.01, chunk_size: int | None = None, chunk_emb_dim: int = 8,
                 reg_tasks: int | None = None, hnet_output_std: float | None = None,
                 task_chunk_embeddings: bool = False, target_shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if reg_tasks is not None and (not isinstance(reg_tasks, int) or reg_tasks < 1):
            raise ValueError(f"reg_tasks must be a positive integer or None (all previous tasks), got {reg_tasks!r}")
        self.target = target
        self.beta = float(beta)
        self.reg_tasks = reg_tasks
        self.hnet = HyperNetwork(target_shapes or target.param_shapes, emb_dim=emb_dim, hidden=hnet_hidden,
                                 chunk_size=chunk_size, chunk_emb_dim=chunk_emb_dim, output_std=hnet_output_std,
                                 task_chunk_embeddings=task_chunk_embeddings)
        # H*(e_j) for j < current task, taken when the task starts; a buffer so checkpoints carry it
        self.register_buffer("snapshot", torch.zeros(0, self.hnet.param_count))

    # ------------------------------------------------------------------------------- task hooks
    def start_task(self, task: int) -> None:
        """Add task ``task``'s embedding (tasks start in order) and snapshot the outputs for earlier ones."""
        if task != self.hnet.num_tasks:
            raise ValueError(f"tasks must start in order: expected task {self.hnet.num_tasks}, got {task}")
        self.snapshot = self.hnet.snapshot() if task > 0 else torch.zeros(0, self.hnet.param_count)
        self.hnet.add_task()

    def end_task(self, task: int) -> None:
        """Freeze task ``task``'s embedding: later tasks must not move it."""
        self.hnet.freeze_task(task)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        # the snapshot's row count is the task index at checkpoint time: take the saved shape
        key = prefix + "snapshot"
        if key in state_dict:
            self.snapshot = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------------------- forward
    def task_weights(self, task: int) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def logits(self, x: Any, task: int, *, update_stats: bool = True) -> Any:
        """The target net's logits for ``x`` with task ``task``'s weights (and batch-norm statistics)."""
        return self.target(x, self.task_weights(task), task, update_stats=update_stats)

    def materialize(self, task: int) -> nn.Module:
        """Task ``task``'s network as an ordinary ``nn.Module`` (eval mode; weights copied)."""
        with torch.no_grad():
            weights = {k: v.detach() for k, v in self.task_weights(task).items()}
        return self.target.materialize(weights, task)

    def regularized_tasks(self, task: int, progress: float = 0.0) -> list[int]:
        """The previous tasks the regulariser compares at this step: all ``j < task``, or, with
        ``reg_tasks=k``, ``k`` of them drawn without replacement (as hypnettorch's ``batch_size``
        option of ``calc_fix_target_reg``), so the per-step cost stops growing with the task count.

        The draw depends only on ``(task, progress)``, so a resumed run draws the same tasks.
        Averaging over a uniform subset keeps the regulariser's expectation equal to the full one, but
        not its effect under Adam: the extra variance inflates Adam's second-moment estimate, so the
        subsampled pull may be weaker. Use it only where the full term is too costly (large chunked
        hypernetworks) and watch BWT (Permuted MNIST, ``k = 1``: HNET BWT -1.6 points, one old task
        losing 7; SHIELD forgot about as much with ``k = 1`` as with the full term, -7.9 and -7.4).

        Example:
            >>> from continual.targets import MLP
            >>> m = HNET(MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,), reg_tasks=2)
            >>> len(m.regularized_tasks(5, 0.25)), m.regularized_tasks(5, 0.25) == m.regularized_tasks(5, 0.25)
            (2, True)
        """
        if self.reg_tasks is None or self.reg_tasks >= task:
            return list(range(task))
        gen = torch.Generator().manual_seed(task * 1_000_003 + int(round(progress * 2**31)))
        return sorted(torch.randperm(task, generator=gen)[: self.reg_tasks].tolist())

    def regularizer(self, task: int, progress: float = 0.0) -> torch.Tensor:
        """``(1/t) sum_{j<t} ||H(e_j) - H*(e_j)||^2`` (zero on the first task; see :meth:`regularized_tasks`)."""
        if task == 0 or self.snapshot.shape[0] == 0:
            return self.snapshot.new_zeros(())
        ids = self.regularized_tasks(task, progress)
        return self.hnet.regularizer(self.snapshot_rows(ids), ids)

    def snapshot_rows(self, ids: list[int]) -> torch.Tensor:
        """The snapshot's rows for tasks ``ids``: the snapshot itself when that is all of them in order
        (the usual case, no indexed copy of a ``(t, P)`` tensor per step), else the indexed rows."""
        return self.snapshot if ids == list(range(self.snapshot.shape[0])) else self.snapshot[ids]

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, task: int, progress: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch of task ``task``; ``progress`` in [0, 1] is how far the task's training is."""
        logits = self.logits(x, task)
        ce = F.cross_entropy(logits, y)
        reg = self.regularizer(task, progress)
        loss = ce + self.beta * reg
        return loss, {"ce": ce.item(), "reg": reg.item(), "acc": (logits.argmax(1) == y).float().mean().item()}


class HNET(ContinualMethod):
    """HNET: target weights ``H(e_t)``, output regulariser against forgetting (von Oswald et al. 2020)."""

    name = "hnet"

    def task_weights(self, task: int) -> dict[str, torch.Tensor]:
        return self.hnet(task)


def percentile_mask(values: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``|tanh(values)|`` with the entries below its ``sparsity``-th percentile set to 0 (others kept soft).

    Example:
        >>> percentile_mask(torch.tensor([0.1, -2.0, 0.5, 3.0]), 50.0)
        tensor([0.0000, 0.9640, 0.0000, 0.9951])
    """
    soft = torch.tanh(values).abs()
    if sparsity <= 0:
        return soft
    if sparsity >= 100:
        return torch.zeros_like(soft)
    flat = soft.detach().flatten()
    k = max(1, math.ceil(flat.numel() * sparsity / 100.0))
    threshold = flat.kthvalue(k).values
    return torch.where(soft > threshold, soft, torch.zeros_like(soft))


class HyperMask(ContinualMethod):
    """HyperMask: shared target weights ``theta`` times per-task semi-binary masks from the hypernetwork."""

    name = "hypermask"

    def __init__(self, target: TargetNet, *, sparsity: float = 0.0, lam: float = 1e-3, drift_masking: bool = False,
                 **kwargs: Any) -> None:
        if not 0 <= sparsity < 100:
            raise ValueError(f"sparsity must be a percentage in [0, 100), got {sparsity}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        super().__init__(target, **kwargs)
        self.sparsity, self.lam = float(sparsity), float(lam)
        # upstream's ``norm_regularizer_masking`` (its Permuted MNIST setting): the L1 drift term weighs
        # each shared weight's change by the current task's mask, so weights the task hardly uses may move
        self.drift_masking = bool(drift_masking)
        # names carry dots (``layer1.0.conv1.weight``): a ParameterList in param_shapes order avoids them
        self.names = list(target.param_shapes)
        self.theta = nn.ParameterList(nn.Parameter(w) for w in target.init_weights().values())
        self.register_buffer("theta_prev", torch.cat([p.detach().flatten() for p in self.theta]))
        self._current_sparsity = float(sparsity)
        # False: the last target tensor stays unmasked, as upstream; True only for older checkpoints
        self.mask_last = False

    def start_task(self, task: int) -> None:
        super().start_task(task)
        self.theta_prev = torch.cat([p.detach().flatten() for p in self.theta])

    def _sparsity_at(self, task: int, progress: float) -> float:
        """``s`` ramps 0 -> sparsity over task 0 only; later tasks use the full value."""
        return self.sparsity * min(max(progress, 0.0), 1.0) if task == 0 else self.sparsity

    def masks(self, task: int, sparsity: float | None = None) -> dict[str, torch.Tensor]:
        """Task ``task``'s masks ``|tanh(H(e_t))|``, cut at the ``sparsity`` percentile, except the last
        target tensor's (the output bias): as upstream, it is never cut, and it is used only to weigh
        that tensor's drift (``drift_masking``), never applied (:meth:`task_weights`)."""
        s = self.sparsity if sparsity is None else sparsity
        out = self.hnet(task)
        last = None if self.mask_last else self.names[-1]
        return {n: torch.tanh(h).abs() if n == last else percentile_mask(h, s) for n, h in out.items()}

    def task_weights(self, task: int, sparsity: float | None = None) -> dict[str, torch.Tensor]:
        return self._masked(self.masks(task, sparsity))

    def _masked(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # upstream's apply_mask_to_weights_of_network leaves the last tensor unmasked: with two classes
        # per task, a cut mask on the two output biases zeroed one of them
        last = None if self.mask_last else self.names[-1]
        return {n: p if n == last else p * masks[n] for n, p in zip(self.names, self.theta, strict=True)}

    # Checkpoints carry ``mask_last``: one written before it existed was trained with the last tensor
    # masked and cut like the others, and is loaded so (its networks stay the ones it was trained as).
    def get_extra_state(self) -> dict[str, bool]:
        return {"mask_last": self.mask_last}

    def set_extra_state(self, state: Any) -> None:
        self.mask_last = bool(state["mask_last"])

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        state_dict.setdefault(prefix + "_extra_state", {"mask_last": True})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, task: int, progress: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        masks = self.masks(task, self._sparsity_at(task, progress))
        logits = self.target(x, self._masked(masks), task)
        ce = F.cross_entropy(logits, y)
        reg = self.regularizer(task, progress) / max(1, task)
        drift = ce.new_zeros(())
        if task > 0:
            change = torch.cat([p.flatten() for p in self.theta]) - self.theta_prev
            if self.drift_masking:
                change = change * torch.cat([masks[n].flatten() for n in self.names])
            drift = change.abs().sum()
        loss = ce + self.beta * reg + self.lam * drift
        return loss, {"ce": ce.item(), "reg": reg.item(), "drift": drift.item(),
                      "acc": (logits.argmax(1) == y).float().mean().item()}


#: Method names and classes.
METHODS: dict[str, type[ContinualMethod]] = {"hnet": HNET, "hypermask": HyperMask}


def method_defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of method ``name``'s constructor, its base classes' included.

    Two run configs that differ only in spelling a default out (``chunk_emb_dim=8`` given or left out)
    build the same method; the harness uses this to treat them as the same run.

    Example:
        >>> method_defaults("hnet")["chunk_emb_dim"]
        8
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    defaults: dict[str, Any] = {}
    for cls in reversed(METHODS[name].__mro__):
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty:
                defaults[p.name] = p.default
    return defaults


def build_method(name: str, target: TargetNet, **kwargs: Any) -> ContinualMethod:
    """The method ``name`` (one of :data:`METHODS`) over ``target``, with its hyper-parameters as keywords."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    try:
        return METHODS[name](target, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad option for method {name!r}: {exc}") from None


from .shield import SHIELD  # noqa: E402  (continual.shield imports HNET from this module: register last)

METHODS["shield"] = SHIELD

from .hint import HINT  # noqa: E402  (continual.hint imports ContinualMethod from this module: register last)

METHODS["hint"] = HINT
