"""The task-conditioned hypernetwork of von Oswald et al. (2020, "HNET"): embedding ``e_t`` -> target weights.

:class:`HyperNetwork` maps a task embedding to every weight of a target network (see
:mod:`continual.targets`): an MLP trunk (``Linear`` + ``ReLU``) and one linear head emitting the
flat weight vector, split into the named target shapes. With ``chunk_size`` set, the head emits
one chunk of ``chunk_size`` weights per learnable chunk embedding ``c_k`` (the chunked
hypernetwork of the same paper), so a large target (ResNet-18) needs no giant output layer.

Embeddings may be points or :class:`~intervals.Interval` boxes: the trunk and head are ordinary
``nn.Linear``/``nn.ReLU`` layers, which map a box to a box (IBP), so an interval embedding gives
interval target weights (HINT). The continual-learning regulariser
``R = (1/t) sum_{j<t} ||H(e_j) - H*(e_j)||^2`` (:meth:`HyperNetwork.regularizer`) runs all
previous tasks in one batched pass.

Example:
    >>> import torch
    >>> from intervals import Interval
    >>> torch.manual_seed(0) and None
    >>> hnet = HyperNetwork({"w": (3, 2), "b": (3,)}, emb_dim=4, hidden=(16,), num_tasks=2)
    >>> {k: tuple(v.shape) for k, v in hnet(0).items()}
    {'w': (3, 2), 'b': (3,)}
    >>> hnet.forward_flat(torch.stack([hnet.embeddings[0], hnet.embeddings[1]])).shape
    torch.Size([2, 9])
    >>> box = Interval.from_center_radius(hnet.embeddings[1].detach(), 0.1)
    >>> w = hnet(box)                                      # interval weights
    >>> bool(w["w"].contains(hnet(1)["w"]).all())
    True
    >>> snap = hnet.snapshot()                             # H*(e_j) before training the next task
    >>> hnet.regularizer(snap).item()
    0.0
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from intervals import Interval

__all__ = ["HeadPiece", "HyperNetwork", "blocks_squared_distance", "head_squared_distance", "write_blocks"]

EmbeddingLike = torch.Tensor | Interval


class HeadPiece(NamedTuple):
    """One application of the hypernetwork's affine head, ``F.linear(feats, weight, bias)``, whose output
    lands at ``flat[:, offset : offset + output_width]`` of the flat ``(t, P)`` output."""

    feats: EmbeddingLike  # (t, H) or (t, k, H)
    weight: torch.Tensor  # (n, H)
    bias: torch.Tensor  # (n,)
    offset: int

    def output(self) -> EmbeddingLike:
        return F.linear(self.feats, self.weight, self.bias)


class HyperNetwork(nn.Module):
    """Task embeddings and an MLP emitting every target-network weight.

    Args:
        target_shapes: ordered ``{name: shape}`` of the target weights (e.g. ``TargetNet.param_shapes``).
        emb_dim: task embedding size ``M``.
        hidden: widths of the trunk's hidden layers (``Linear`` + ``ReLU`` each).
        chunk_size: if set, the head emits ``chunk_size`` weights per chunk embedding and the
            chunks are concatenated (and trimmed) into the flat vector; ``None``: one head emits
            all ``P`` weights.
        chunk_emb_dim: size of the learnable chunk embeddings (chunked mode only; ``N(0, 1)`` init).
        task_chunk_embeddings: chunked mode only. ``False``: one set of chunk embeddings shared by
            every task (trained throughout, kept in place for old tasks by the regulariser).
            ``True``: every task owns its chunk embeddings, created with its task embedding and
            frozen with it (hypnettorch's ``cond_chunk_embs``). A new task then brings
            ``num_chunks * chunk_emb_dim`` fresh parameters of its own instead of only ``M``,
            which keeps later tasks as trainable as the first one. The weights then depend on the
            task, not only on an embedding: :meth:`forward_flat` needs ``tasks``.
        num_tasks: task embeddings to create now (more with :meth:`add_task`).
        init_std: standard deviation of the ``N(0, init_std^2)`` task-embedding initialisation.
        output_std: if set, the head is rescaled at construction so the generated weights start
            with this standard deviation (measured on a few embeddings drawn from a private,
            fixed generator: the global RNG is not touched). PyTorch's default init makes them
            about 0.1-0.2 whatever the target's fan-in, three or more times too large for wide
            layers (``1/sqrt(784) = 0.036``); HINT's interval weights then blow up and training
            collapses (Permuted MNIST). ``None``: no rescaling.

    The trunk and head use PyTorch's default ``nn.Linear`` initialisation (head rescaled by
    ``output_std`` when given).

    Example:
        >>> hnet = HyperNetwork({"w": (1000, 1000)}, emb_dim=8, hidden=(32,), chunk_size=5000)
        >>> hnet.param_count, hnet.num_chunks, hnet.head.out_features
        (1000000, 200, 5000)
    """

    def __init__(
        self,
        target_shapes: Mapping[str, Sequence[int]],
        emb_dim: int = 24,
        hidden: Sequence[int] = (100, 100),
        chunk_size: int | None = None,
        chunk_emb_dim: int = 8,
        task_chunk_embeddings: bool = False,
        num_tasks: int = 0,
        init_std: float = 1.0,
        output_std: float | None = None,
    ) -> None:
        super().__init__()
        if not target_shapes:
            raise ValueError("target_shapes is empty")
        if emb_dim < 1:
            raise ValueError(f"emb_dim must be positive, got {emb_dim}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
        if task_chunk_embeddings and chunk_size is None:
            raise ValueError("task_chunk_embeddings needs a chunked hypernetwork (set chunk_size)")
        self.target_shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict(
            (str(n), tuple(int(d) for d in s)) for n, s in target_shapes.items()
        )
        self._numels = [math.prod(s) for s in self.target_shapes.values()]
        self.emb_dim = int(emb_dim)
        self.init_std = float(init_std)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.embeddings = nn.ParameterList()
        self.chunk_emb_dim = int(chunk_emb_dim)
        # per-task chunk embeddings (task_chunk_embeddings=True); empty otherwise
        self.task_chunk_embeddings = nn.ParameterList()
        self.chunk_embeddings: nn.Parameter | None = None

        in_dim = self.emb_dim
        if self.chunk_size is not None:
            self.num_chunks = math.ceil(self.param_count / self.chunk_size)
            if not task_chunk_embeddings:
                self.chunk_embeddings = nn.Parameter(torch.randn(self.num_chunks, self.chunk_emb_dim))
            in_dim += self.chunk_emb_dim
        else:
            self.num_chunks = 1
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, int(h)), nn.ReLU()]
            in_dim = int(h)
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(in_dim, self.param_count if self.chunk_size is None else self.chunk_size)
        if output_std is not None:
            self._rescale_head(float(output_std))
        for _ in range(num_tasks):
            self.add_task()

    def _rescale_head(self, output_std: float) -> None:
        if not (output_std > 0 and math.isfinite(output_std)):
            raise ValueError(f"output_std must be a positive number, got {output_std}")
        gen = torch.Generator().manual_seed(0)
        dtype = self.head.weight.dtype
        probe = torch.randn(4, self.emb_dim, generator=gen, dtype=dtype) * self.init_std
        chunks = None
        if self.per_task_chunks:  # no task exists yet: probe with chunk embeddings drawn like a task's
            chunks = torch.randn(4, self.num_chunks, self.chunk_emb_dim, generator=gen, dtype=dtype)
        with torch.no_grad():
            current = float(self._generate(probe.to(self.head.weight.device), chunks).std())
            self.head.weight.mul_(output_std / current)
            self.head.bias.mul_(output_std / current)

    # -------------------------------------------------------------------------------- tasks
    @property
    def per_task_chunks(self) -> bool:
        """Whether every task owns its chunk embeddings (``task_chunk_embeddings=True``)."""
        return self.chunk_size is not None and self.chunk_embeddings is None

    @property
    def num_tasks(self) -> int:
        return len(self.embeddings)

    @property
    def param_count(self) -> int:
        """Number of target weights ``P`` (the length of :meth:`forward_flat`'s output)."""
        return sum(self._numels)

    def add_task(self) -> int:
        """Append a task embedding ``e_t ~ N(0, init_std^2)``; returns its task id ``t``.

        An optimizer built before this call does not know the new parameter: add it
        (``opt.add_param_group``) or build the optimizer after.
        """
        ref = self.head.weight
        emb = torch.randn(self.emb_dim, device=ref.device, dtype=ref.dtype) * self.init_std
        self.embeddings.append(nn.Parameter(emb))
        if self.per_task_chunks:
            chunks = torch.randn(self.num_chunks, self.chunk_emb_dim, device=ref.device, dtype=ref.dtype)
            self.task_chunk_embeddings.append(nn.Parameter(chunks))
        return self.num_tasks - 1

    def freeze_task(self, task: int) -> None:
        """Stop training ``e_task`` (and its own chunk embeddings, if any): done after each task in HNET."""
        t = self._task_index(task)
        self.embeddings[t].requires_grad_(False)
        if self.per_task_chunks:
            self.task_chunk_embeddings[t].requires_grad_(False)

    def _task_index(self, task: int) -> int:
        if not 0 <= int(task) < self.num_tasks:
            raise IndexError(f"task {task} out of range: the hypernetwork has {self.num_tasks} task embedding(s)")
        return int(task)

    def stack_embeddings(self, tasks: Sequence[int] | None = None) -> torch.Tensor:
        """The embeddings of ``tasks`` (default: all) as one ``(len(tasks), M)`` tensor (in the graph)."""
        tasks = range(self.num_tasks) if tasks is None else tasks
        if len(tasks) == 0:
            return self.head.weight.new_zeros(0, self.emb_dim)
        return torch.stack([self.embeddings[self._task_index(t)] for t in tasks])

    # -------------------------------------------------------------------------------- forward
    def forward_flat(self, emb: EmbeddingLike, tasks: int | Sequence[int] | None = None) -> EmbeddingLike:
        """The flat target-weight vector(s): ``(M,) -> (P,)`` or ``(T, M) -> (T, P)``.

        ``emb`` may be a tensor or an :class:`~intervals.Interval` (then the result is a box
        containing ``H(e)`` for every ``e`` in the input box). The trunk runs once, on every task
        (and every chunk) in one batch. ``tasks`` (a task id for ``(M,)``, a list of ``T`` ids for
        ``(T, M)``) picks the tasks' own chunk embeddings; it is required with
        ``task_chunk_embeddings=True`` and ignored otherwise.
        """
        if emb.dim() not in (1, 2) or emb.shape[-1] != self.emb_dim:
            raise ValueError(f"embedding must have shape (M,) or (T, M) with M={self.emb_dim}, got {tuple(emb.shape)}")
        return self._generate(emb, self._task_chunks(emb, tasks))

    def _task_chunks(self, emb: EmbeddingLike, tasks: int | Sequence[int] | None) -> torch.Tensor | None:
        """The per-task chunk embeddings of ``tasks`` (``None`` when the chunk embeddings are shared)."""
        if not self.per_task_chunks:
            return None
        if tasks is None:
            raise ValueError("this hypernetwork has per-task chunk embeddings (task_chunk_embeddings=True): "
                             "forward_flat needs the task id(s) of the embedding(s)")
        if isinstance(tasks, int):
            chunks = self.task_chunk_embeddings[self._task_index(tasks)]
        else:
            chunks = torch.stack([self.task_chunk_embeddings[self._task_index(t)] for t in tasks])
        if chunks.dim() != emb.dim() + 1 or (emb.dim() == 2 and chunks.shape[0] != emb.shape[0]):
            raise ValueError(f"got {emb.shape[0] if emb.dim() == 2 else 'one'} embedding(s) but tasks={tasks!r}")
        return chunks

    def _features(self, emb: EmbeddingLike, chunks: torch.Tensor | None) -> EmbeddingLike:
        """The trunk's output: ``(*lead, H)``, or ``(*lead, K, H)`` in chunked mode, where every chunk sees
        ``[e, c_k]`` (all chunks of all tasks in one pass)."""
        if self.chunk_size is None:
            return self.trunk(emb)
        lead = tuple(emb.shape[:-1])
        k = self.num_chunks
        e = emb.unsqueeze(-2).expand(*lead, k, self.emb_dim)
        c = (self.chunk_embeddings if chunks is None else chunks).expand(*lead, k, self.chunk_emb_dim)
        return self.trunk(torch.cat([e, c], dim=-1))

    def _generate(self, emb: EmbeddingLike, chunks: torch.Tensor | None) -> EmbeddingLike:
        out = self.head(self._features(emb, chunks))
        if self.chunk_size is None:
            return out
        out = out.reshape(*emb.shape[:-1], self.num_chunks * self.chunk_size)  # (*lead, K, chunk) -> flat
        return out.narrow(-1, 0, self.param_count)

    def split(self, flat: EmbeddingLike) -> dict[str, EmbeddingLike]:
        """Split a flat vector ``(..., P)`` into ``{name: (..., *shape)}`` (views; works on Intervals).

        Example:
            >>> hnet = HyperNetwork({"a": (2, 2), "b": (1,)}, emb_dim=2, hidden=())
            >>> {k: tuple(v.shape) for k, v in hnet.split(torch.arange(10.0).reshape(2, 5)).items()}
            {'a': (2, 2, 2), 'b': (2, 1)}
        """
        if flat.shape[-1] != self.param_count:
            raise ValueError(f"flat vector has {flat.shape[-1]} entries, expected {self.param_count}")
        lead = tuple(flat.shape[:-1])
        out: dict[str, EmbeddingLike] = {}
        offset = 0
        for (name, shape), n in zip(self.target_shapes.items(), self._numels, strict=True):
            out[name] = flat.narrow(-1, offset, n).reshape(*lead, *shape)
            offset += n
        return out

    def forward(self, task_or_embedding: int | EmbeddingLike) -> dict[str, Any]:
        """Target weights ``{name: tensor}`` (or ``{name: Interval}`` for an Interval embedding).

        ``task_or_embedding``: a task id (uses ``e_t``), an embedding ``(M,)``, a batch of
        embeddings ``(T, M)`` (then every weight has a leading ``T`` dimension), or an Interval.
        """
        emb, task = task_or_embedding, None
        if isinstance(emb, bool) or not isinstance(emb, torch.Tensor | Interval):
            task = self._task_index(int(emb))
            emb = self.embeddings[task]
        return self.split(self.forward_flat(emb, task))

    # -------------------------------------------------------------------------------- regulariser
    @torch.no_grad()
    def snapshot(self, tasks: Sequence[int] | None = None) -> torch.Tensor:
        """``H*(e_j)`` for ``tasks`` (default: every task so far), detached: ``(t, P)``, one batched pass.

        Take it before training a new task and pass it to :meth:`regularizer`.
        """
        tasks = list(range(self.num_tasks) if tasks is None else tasks)
        if not tasks:
            return self.head.weight.new_zeros(0, self.param_count)
        out = self.head.weight.new_empty(len(tasks), self.param_count)
        write_blocks(self._output_blocks(tasks), out)
        return out

    def regularizer(self, snapshot: torch.Tensor, tasks: Sequence[int] | None = None) -> torch.Tensor:
        """``(1/t) sum_{j} ||H(e_j) - H*(e_j)||^2`` over the ``t`` tasks of ``snapshot``, in one batched pass.

        Args:
            snapshot: ``(t, P)`` from :meth:`snapshot`.
            tasks: the task ids of the snapshot rows (default ``0 .. t-1``).

        Returns a scalar (0 when ``t == 0``). This already averages over the previous tasks; the
        upstream HNET code additionally divides the loss term by ``max(1, t)`` (``beta * R /
        max(1, t)``): that extra factor is left to the method. The current embeddings of the
        listed tasks are used (frozen ones get no gradient; the trunk and head do).
        """
        if snapshot.dim() != 2 or snapshot.shape[-1] != self.param_count:
            raise ValueError(f"snapshot must have shape (t, {self.param_count}), got {tuple(snapshot.shape)}")
        t = snapshot.shape[0]
        if tasks is None:
            tasks = range(t)
        if len(tasks) != t:
            raise ValueError(f"snapshot has {t} rows but {len(tasks)} task id(s) were given")
        if t == 0:
            return snapshot.new_zeros(())
        return head_squared_distance(self._head_pieces(list(tasks)), snapshot) / t

    def _head_pieces(
        self, tasks: list[int], emb: EmbeddingLike | None = None, *, center_features: bool = False
    ) -> list[HeadPiece]:
        """The head's inputs for ``H(e_j)``, ``tasks``' flat ``(t, P)`` output, as :class:`HeadPiece` pieces:
        the whole output, or in chunked mode the full chunks ``(t, K-1, chunk)`` and the used part of
        the last chunk.

        ``emb``: the tasks' ``(t, M)`` embeddings (default: their own), a tensor or an Interval (then
        the features are Intervals). ``center_features``: keep only the centre of the trunk's interval
        features. The head is affine, so the piece's output is then the centre of the output box (up
        to rounding), without the head's radius product.

        The regularisers and snapshots share it (so a regulariser is exactly 0 at its snapshot).
        It never builds the padded ``(t, K * chunk)`` output and narrows it: that narrow's backward
        zero-fills and copies a tensor of that size at every training step.
        """
        if emb is None:
            emb = self.stack_embeddings(tasks)
        feats = self._features(emb, self._task_chunks(emb, tasks))
        if center_features and isinstance(feats, Interval):
            feats = feats.center
        w, b = self.head.weight, self.head.bias
        if self.chunk_size is None:
            return [HeadPiece(feats, w, b, 0)]
        k, size = self.num_chunks, self.chunk_size
        used = self.param_count - (k - 1) * size
        pieces = [HeadPiece(feats[:, k - 1], w[:used], b[:used], (k - 1) * size)]
        if k > 1:
            pieces.append(HeadPiece(feats[:, : k - 1], w, b, 0))
        return pieces

    def _output_blocks(
        self, tasks: list[int], emb: EmbeddingLike | None = None, *, center_features: bool = False
    ) -> list[tuple[Any, int]]:
        """``H(e_j)`` for ``tasks`` as ``(block, offset)`` pieces of the flat ``(t, P)`` output (the
        outputs of :meth:`_head_pieces`; Intervals for interval features)."""
        return [(p.output(), p.offset) for p in self._head_pieces(tasks, emb, center_features=center_features)]

    # -------------------------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A checkpoint with more task embeddings than this instance: create them before loading.
        key = prefix + "embeddings."
        ids = [int(k[len(key):]) for k in state_dict if k.startswith(key) and k[len(key):].isdigit()]
        while ids and self.num_tasks <= max(ids):
            self.add_task()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        chunks = "" if self.chunk_size is None else f", chunk_size={self.chunk_size}, chunks={self.num_chunks}"
        if self.per_task_chunks:
            chunks += " (per task)"
        return f"emb_dim={self.emb_dim}, tasks={self.num_tasks}, target_weights={self.param_count}{chunks}"


def write_blocks(blocks: Sequence[tuple[torch.Tensor, int]], flat: torch.Tensor) -> None:
    """Write ``(block, offset)`` pieces of a ``(t, P)`` output (:meth:`HyperNetwork._output_blocks`) into
    ``flat`` (a ``(t, P)`` tensor or view)."""
    for block, offset in blocks:
        n = block[0].numel()
        flat[:, offset: offset + n] = block.reshape(flat.shape[0], n)


def blocks_squared_distance(blocks: Sequence[tuple[torch.Tensor, int]], flat: torch.Tensor) -> torch.Tensor:
    """``sum ||block - flat[:, piece]||^2`` over ``(block, offset)`` pieces of a ``(t, P)`` output, against
    views of ``flat`` (no copies): one fused squared-distance pass per block."""
    total = flat.new_zeros(())
    for block, offset in blocks:
        target = flat[:, offset: offset + block[0].numel()].reshape(block.shape)
        total = total + F.mse_loss(block, target, reduction="sum")
    return total


def _square_partials(d: torch.Tensor) -> list[torch.Tensor]:
    """Partial sums of ``d ** 2``: one BLAS dot per 64k-element slice. A single float32 dot over tens of
    millions of entries loses about 1e-3 relative accuracy; ``(d * d).sum()`` is accurate but costs
    another pass and a temporary of ``d``'s size."""
    return [torch.dot(s, s) for s in d.reshape(-1).split(1 << 16)]


def _sum_partials(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The partial sums added in float64, returned in ``like``'s dtype."""
    if not parts:
        return like.new_zeros(())
    return torch.stack(parts).sum(dtype=torch.float64).to(like.dtype)


def _sum_of_squares(d: torch.Tensor) -> torch.Tensor:
    """``sum(d ** 2)`` of a tensor, accurate to float32 rounding (see :func:`_square_partials`)."""
    return _sum_partials(_square_partials(d), d)


_BLOCK_COLUMNS = 1024  # output columns per block of the regulariser: a (207, 1024) float32 block is 0.8 MiB


def _blocked_squared_distance(
    feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, target: torch.Tensor, need: Sequence[bool]
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """``||feats @ weight^T + bias - target||^2`` and the gradients (of the squared distance, without the
    factor 2) w.r.t. ``feats`` (flattened to 2-D), ``weight`` and ``bias`` where ``need`` asks for them.

    The difference is built a block of output columns at a time (small enough to stay in cache):
    ``addmm``, the target subtracted in place, its sum of squares and its contributions to the
    gradients, so the ``(N, n)`` difference is never written out whole, saved or read back.
    """
    f2 = feats.reshape(-1, feats.shape[-1])
    n, lead = weight.shape[0], target.shape[:-1]
    grads: list[torch.Tensor | None] = [
        torch.zeros_like(f2) if need[0] else None,
        torch.empty_like(weight) if need[1] else None,
        torch.empty_like(bias) if need[2] else None,
    ]
    g_feats, g_weight, g_bias = grads
    parts = []
    for j in range(0, n, _BLOCK_COLUMNS):
        k = min(n, j + _BLOCK_COLUMNS)
        diff = torch.addmm(bias[j:k], f2, weight[j:k].t())
        diff.view(*lead, k - j).sub_(target[..., j:k])
        parts.extend(_square_partials(diff))
        if g_feats is not None:
            g_feats.addmm_(diff, weight[j:k])
        if g_weight is not None:
            torch.mm(diff.t(), f2, out=g_weight[j:k])
        if g_bias is not None:
            torch.sum(diff, 0, out=g_bias[j:k])
    return _sum_partials(parts, f2), grads


class _AffineSquaredDistance(torch.autograd.Function):
    """Autograd for :func:`_blocked_squared_distance`. The output is a scalar, so the gradients are
    formed in the forward pass (the blocked pass) and the backward only scales them by ``2 g``.
    ``target`` is a constant (a snapshot): it gets no gradient."""

    @staticmethod
    def forward(ctx: Any, feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        value, ctx.grads = _blocked_squared_distance(feats, weight, bias, target, ctx.needs_input_grad[:3])
        ctx.feats_shape = feats.shape
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        g_feats, g_weight, g_bias = ctx.grads
        scale = 2 * grad
        return (None if g_feats is None else g_feats.mul(scale).view(ctx.feats_shape),
                None if g_weight is None else g_weight.mul(scale),
                None if g_bias is None else g_bias.mul(scale), None)


def head_squared_distance(pieces: Sequence[HeadPiece], flat: torch.Tensor) -> torch.Tensor:
    """``sum ||piece.output() - flat[:, piece's range]||^2`` over the :class:`HeadPiece` pieces of a ``(t, P)``
    output, against views of ``flat`` (a constant, no copies), without materialising the outputs:
    the same value and gradients as :func:`blocks_squared_distance` of the pieces' outputs (up to
    float rounding), in one cache-blocked pass. The features must be tensors (not Intervals).
    """
    total = flat.new_zeros(())
    for p in pieces:
        if not isinstance(p.feats, torch.Tensor):
            raise TypeError(f"head_squared_distance needs tensor features, got {type(p.feats).__name__}")
        shape = (*p.feats.shape[:-1], p.weight.shape[0])  # the piece's output: (t, [k,] n)
        target = flat[:, p.offset: p.offset + math.prod(shape[1:])].reshape(shape)
        if torch.is_grad_enabled() and (p.feats.requires_grad or p.weight.requires_grad or p.bias.requires_grad):
            value = _AffineSquaredDistance.apply(p.feats, p.weight, p.bias, target.detach())
        else:  # no graph: the value alone (autograd functions see requires_grad even under no_grad)
            value = _blocked_squared_distance(p.feats, p.weight, p.bias, target, (False, False, False))[0]
        total = total + value
    return total
