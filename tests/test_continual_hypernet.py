"""The hypernetwork (continual.hypernet): shapes, chunking, interval embeddings, the batched
regulariser, frozen embeddings and checkpoints."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import continual.hypernet as hypernet
from continual.hypernet import HyperNetwork
from continual.targets import MLP, SmallConvNet
from intervals import Interval

SHAPES = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 2, 3, 3), "c": (5,)}
P = 12 + 4 + 36 + 5


def _hnet(chunk_size=None, num_tasks=3, seed=0, **kw) -> HyperNetwork:
    torch.manual_seed(seed)
    return HyperNetwork(SHAPES, emb_dim=6, hidden=(10, 8), chunk_size=chunk_size, chunk_emb_dim=3,
                        num_tasks=num_tasks, **kw)


def _count_trunk_calls(hnet: HyperNetwork) -> list[int]:
    calls = [0]
    hnet.trunk.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_module_examples():
    assert doctest.testmod(hypernet, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("chunk_size", [None, 7, P, 1000])
def test_output_shapes_for_every_kind_of_input(chunk_size):
    hnet = _hnet(chunk_size)
    assert hnet.param_count == P and hnet.num_tasks == 3
    out = hnet(1)
    assert list(out) == list(SHAPES) and all(tuple(out[k].shape) == s for k, s in SHAPES.items())
    same = hnet(hnet.embeddings[1])
    assert all(torch.equal(out[k], same[k]) for k in SHAPES)
    batch = hnet(hnet.stack_embeddings([0, 1, 2]))
    assert all(tuple(batch[k].shape) == (3, *s) for k, s in SHAPES.items())
    for t in range(3):  # a batch row equals the single-task forward
        single = hnet(t)
        for k in SHAPES:
            torch.testing.assert_close(batch[k][t], single[k])
    flat = hnet.forward_flat(hnet.embeddings[0])
    assert flat.shape == (P,)
    # split is the inverse of flattening in order
    torch.testing.assert_close(torch.cat([v.reshape(-1) for v in hnet.split(flat).values()]), flat)


def test_chunking_shrinks_the_head_and_keeps_the_target_size():
    shapes = {"w": (300, 200), "b": (300,)}
    plain = HyperNetwork(shapes, emb_dim=8, hidden=(20, 20))
    chunked = HyperNetwork(shapes, emb_dim=8, hidden=(20, 20), chunk_size=1000, chunk_emb_dim=4)
    assert plain.param_count == chunked.param_count == 60300
    assert chunked.num_chunks == math.ceil(60300 / 1000) == 61
    assert chunked.head.out_features == 1000 and plain.head.out_features == 60300
    own = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert own(chunked) < own(plain) / 30
    assert chunked.forward_flat(torch.randn(8)).shape == (60300,)
    assert chunked.forward_flat(torch.randn(2, 8)).shape == (2, 60300)


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_one_trunk_pass_for_all_tasks_and_chunks(chunk_size):
    hnet = _hnet(chunk_size, num_tasks=4)
    calls = _count_trunk_calls(hnet)
    snap = hnet.snapshot()
    assert calls[0] == 1 and snap.shape == (4, P) and not snap.requires_grad
    hnet.regularizer(snap)
    assert calls[0] == 2


# 7: the last chunk partly used; 19: P = 3 x 19, every chunk full; 100: a single chunk larger than P
@pytest.mark.parametrize("chunk_size", [None, 7, 19, 100])
def test_regularizer_equals_the_naive_loop_and_is_zero_after_snapshot(chunk_size):
    hnet = _hnet(chunk_size, num_tasks=4)
    snap = hnet.snapshot([0, 1, 2])
    assert hnet.regularizer(snap).item() == 0.0
    with torch.no_grad():  # a training step on the next task moves the hypernetwork
        for p in [*hnet.trunk.parameters(), *hnet.head.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    reg = hnet.regularizer(snap, [0, 1, 2])
    naive = sum(((hnet.forward_flat(hnet.embeddings[j]) - snap[j]) ** 2).sum() for j in range(3)) / 3
    torch.testing.assert_close(reg, naive)
    params = [hnet.head.weight, hnet.head.bias, *hnet.trunk.parameters()]
    for g, g_naive in zip(torch.autograd.grad(reg, params, retain_graph=True), torch.autograd.grad(naive, params),
                          strict=True):
        torch.testing.assert_close(g, g_naive)
    assert reg.item() > 0
    # a subset of tasks, in any order
    sub = hnet.snapshot([2, 0])
    torch.testing.assert_close(sub, hnet.snapshot()[[2, 0]])
    assert hnet.regularizer(sub, [2, 0]).item() == 0.0
    # no previous task: zero
    empty = hnet.snapshot([])
    assert empty.shape == (0, P) and hnet.regularizer(empty).item() == 0.0


@pytest.mark.parametrize("block", [1024, 3])  # 3: every piece split into several column blocks
@pytest.mark.parametrize("chunk_size", [None, 7, 19])
def test_head_squared_distance_matches_the_materialised_blocks_and_passes_gradcheck(chunk_size, block, monkeypatch):
    monkeypatch.setattr(hypernet, "_BLOCK_COLUMNS", block)
    hnet = _hnet(chunk_size, num_tasks=3).double()
    snap = hnet.snapshot() + 0.1 * torch.randn(3, P, dtype=torch.float64)
    pieces = hnet._head_pieces([0, 1, 2])
    fused = hypernet.head_squared_distance(pieces, snap)
    blocks = hypernet.blocks_squared_distance(hnet._output_blocks([0, 1, 2]), snap)
    torch.testing.assert_close(fused, blocks)
    with torch.no_grad():  # the value-only path (no gradients formed) agrees
        torch.testing.assert_close(hypernet.head_squared_distance(pieces, snap), fused.detach())
    for p in pieces:  # the autograd function itself, every input that gets a gradient
        target = snap[:, p.offset: p.offset + p.output()[0].numel()].reshape(p.output().shape)
        args = (p.feats.detach().requires_grad_(), p.weight.detach().requires_grad_(),
                p.bias.detach().requires_grad_(), target)
        assert torch.autograd.gradcheck(hypernet._AffineSquaredDistance.apply, args)
    box = Interval.from_center_radius(hnet.stack_embeddings([0, 1]).detach(), 0.1)
    with pytest.raises(TypeError, match="tensor features"):
        hypernet.head_squared_distance(hnet._head_pieces([0, 1], box), snap[:2])


def test_sum_of_squares_keeps_float32_accuracy_over_millions_of_entries():
    torch.manual_seed(0)
    d = torch.randn(3_000_000) * 0.01 + 0.001
    exact = (d.double() ** 2).sum()
    got = hypernet._sum_of_squares(d)
    assert got.dtype == torch.float32
    assert abs(got.double() / exact - 1) < 1e-6
    assert hypernet._sum_of_squares(d[:0]).item() == 0.0


def test_regularizer_gradients_and_frozen_embeddings():
    hnet = _hnet(num_tasks=3)
    snap = hnet.snapshot([0, 1])
    hnet.freeze_task(0)
    hnet.freeze_task(1)
    with torch.no_grad():
        hnet.head.bias.add_(0.1)
    loss = sum(v.square().sum() for v in hnet(2).values()) + hnet.regularizer(snap)
    loss.backward()
    assert hnet.embeddings[0].grad is None and hnet.embeddings[1].grad is None
    assert not hnet.embeddings[0].requires_grad
    assert hnet.embeddings[2].grad is not None and hnet.head.weight.grad is not None
    assert all(p.grad is not None for p in hnet.trunk.parameters())


def test_add_task_and_errors():
    hnet = _hnet(num_tasks=0, init_std=0.5)
    assert hnet.num_tasks == 0 and hnet.snapshot().shape == (0, P)
    assert [hnet.add_task() for _ in range(3)] == [0, 1, 2]
    assert hnet.embeddings[2].shape == (6,) and hnet.embeddings[2].requires_grad
    with pytest.raises(IndexError, match="out of range"):
        hnet(3)
    with pytest.raises(ValueError, match="embedding"):
        hnet(torch.zeros(5))
    with pytest.raises(ValueError, match="snapshot"):
        hnet.regularizer(torch.zeros(2, P + 1))
    with pytest.raises(ValueError, match="task id"):
        hnet.regularizer(torch.zeros(2, P), [0])


@pytest.mark.parametrize("chunk_size", [None, 9])
def test_checkpoint_round_trip_creates_missing_embeddings(chunk_size):
    hnet = _hnet(chunk_size, num_tasks=3)
    fresh = _hnet(chunk_size, num_tasks=0, seed=1)
    fresh.load_state_dict(hnet.state_dict())
    assert fresh.num_tasks == 3
    for t in range(3):
        for k, v in hnet(t).items():
            torch.testing.assert_close(fresh(t)[k], v, rtol=0, atol=0)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), radius=st.floats(0.0, 1.0), chunked=st.booleans(), batched=st.booleans())
def test_interval_embedding_contains_sampled_embeddings(seed, radius, chunked, batched):
    hnet = _hnet(5 if chunked else None, num_tasks=2, seed=seed % 7).double()
    g = torch.Generator().manual_seed(seed)
    centre = hnet.stack_embeddings([0, 1]).detach() if batched else hnet.embeddings[0].detach()
    rad = radius * torch.rand(centre.shape, generator=g, dtype=centre.dtype)
    box = Interval.from_center_radius(centre, rad)
    out = hnet(box)
    assert all(isinstance(v, Interval) and tuple(v.shape) == tuple(hnet(centre)[k].shape) for k, v in out.items())
    pts = [box.lower, box.upper]
    pts += [torch.where(torch.rand(centre.shape, generator=g) < 0.5, box.lower, box.upper) for _ in range(3)]
    pts += [box.lower + (box.upper - box.lower) * torch.rand(centre.shape, generator=g, dtype=centre.dtype)
            for _ in range(3)]
    with torch.no_grad():
        for p in pts:
            for k, v in hnet(p).items():
                tol = 1e-9 * (1 + v.abs())
                assert bool((out[k].lower <= v + tol).all() and (v <= out[k].upper + tol).all()), k


def test_with_target_nets_point_and_interval():
    """End to end: generated weights drive a target net; an embedding box bounds every embedding inside it."""
    torch.manual_seed(0)
    net = SmallConvNet((3, 32, 32), 4, widths=(3, 4, 5), fc=(6,)).double()
    hnet = HyperNetwork(net.param_shapes, emb_dim=5, hidden=(12,), chunk_size=64, num_tasks=2).double()
    # keep the generated weights small, like a trained hypernetwork's
    with torch.no_grad():
        hnet.head.weight.mul_(0.05)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    net.train()
    net(x, hnet(0), task=0)
    net.eval()
    out = net(x, hnet(0), task=0)
    torch.testing.assert_close(net.materialize({k: v.detach() for k, v in hnet(0).items()}, 0)(x), out)
    box = Interval.from_center_radius(hnet.embeddings[0].detach(), 0.01)
    z = net(x, hnet(box), task=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (box.lower, box.upper, box.center, box.lower + 0.02 * torch.rand(5, generator=g, dtype=torch.float64)):
            y = net(x, hnet(p), task=0)
            assert bool((z.lower <= y + 1e-9).all() and (y <= z.upper + 1e-9).all())
    mlp = MLP(6, (5,), 2)
    h2 = HyperNetwork(mlp.param_shapes, emb_dim=3, hidden=(4,), num_tasks=1)
    assert mlp(torch.randn(2, 6), h2(0)).shape == (2, 2)


def test_gradients_reach_the_embedding_box_through_interval_weights():
    """HINT trains the embedding and its radius through the interval target weights."""
    torch.manual_seed(0)
    net = MLP(4, (5,), 3)
    hnet = HyperNetwork(net.param_shapes, emb_dim=3, hidden=(6,), num_tasks=1)
    rho = torch.zeros(3, requires_grad=True)
    box = Interval.from_center_radius(hnet.embeddings[0], 0.1 * torch.softmax(rho, 0))
    z = net(torch.rand(2, 4), hnet(box))
    (z.upper - z.lower).sum().backward()
    assert hnet.embeddings[0].grad is not None and rho.grad is not None and torch.isfinite(rho.grad).all()
    assert hnet.head.weight.grad is not None


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_output_std_rescales_the_generated_weights_without_touching_the_global_rng(chunk_size):
    torch.manual_seed(0)
    plain = HyperNetwork(SHAPES, emb_dim=6, hidden=(10, 8), chunk_size=chunk_size, chunk_emb_dim=3)
    state = torch.get_rng_state()
    torch.manual_seed(0)
    scaled = HyperNetwork(SHAPES, emb_dim=6, hidden=(10, 8), chunk_size=chunk_size, chunk_emb_dim=3,
                          output_std=0.01)
    assert torch.equal(torch.get_rng_state(), state)  # same draws as without the option
    torch.testing.assert_close(scaled.trunk[0].weight, plain.trunk[0].weight)
    ratio = scaled.head.weight / plain.head.weight
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.detach().flatten()[0])))  # one factor
    embs = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    assert float(scaled.forward_flat(embs).detach().std()) == pytest.approx(0.01, rel=0.3)
    with pytest.raises(ValueError, match="output_std"):
        HyperNetwork(SHAPES, emb_dim=6, hidden=(10,), output_std=0.0)


def test_per_task_chunk_embeddings_are_owned_frozen_and_regularised_per_task():
    torch.manual_seed(0)
    hnet = HyperNetwork(SHAPES, emb_dim=6, hidden=(16,), chunk_size=7, chunk_emb_dim=3,
                        task_chunk_embeddings=True, num_tasks=3)
    assert hnet.chunk_embeddings is None and len(hnet.task_chunk_embeddings) == 3
    assert hnet.task_chunk_embeddings[1].shape == (hnet.num_chunks, 3)
    # the weights depend on the task's own chunk embeddings, not only on e_t
    with torch.no_grad():
        hnet.embeddings[1].copy_(hnet.embeddings[0])
    assert not torch.equal(hnet.forward_flat(hnet.embeddings[0], 0), hnet.forward_flat(hnet.embeddings[1], 1))
    with pytest.raises(ValueError, match="needs the task id"):
        hnet.forward_flat(hnet.embeddings[0])
    with pytest.raises(ValueError, match="embedding"):
        hnet.forward_flat(hnet.stack_embeddings([0, 1]), [0])
    # batched regulariser = per-task loop, with each task's own chunks
    snap = hnet.snapshot([0, 1])
    assert hnet.regularizer(snap, [0, 1]).item() == 0.0
    hnet.freeze_task(0)
    hnet.freeze_task(1)
    with torch.no_grad():
        hnet.head.weight.add_(0.05 * torch.randn_like(hnet.head.weight))
    reg = hnet.regularizer(snap, [0, 1])
    naive = sum(((hnet.forward_flat(hnet.embeddings[j], j) - snap[j]) ** 2).sum() for j in range(2)) / 2
    torch.testing.assert_close(reg, naive)
    # training task 2 reaches its own chunks and the shared head, never the frozen tasks' chunks
    (reg + sum(v.square().sum() for v in hnet(2).values())).backward()
    assert hnet.task_chunk_embeddings[2].grad is not None and hnet.head.weight.grad is not None
    assert hnet.task_chunk_embeddings[0].grad is None and not hnet.task_chunk_embeddings[1].requires_grad
    # checkpoints grow the per-task chunk embeddings with the tasks
    fresh = HyperNetwork(SHAPES, emb_dim=6, hidden=(16,), chunk_size=7, chunk_emb_dim=3, task_chunk_embeddings=True)
    fresh.load_state_dict(hnet.state_dict())
    for t in range(3):
        torch.testing.assert_close(fresh.forward_flat(fresh.embeddings[t], t), hnet.forward_flat(hnet.embeddings[t], t))
    with pytest.raises(ValueError, match="chunk_size"):
        HyperNetwork(SHAPES, emb_dim=6, task_chunk_embeddings=True)


def test_per_task_chunk_embeddings_with_output_std():
    hnet = HyperNetwork({"w": (50, 40)}, emb_dim=6, hidden=(16,), chunk_size=100, task_chunk_embeddings=True,
                        output_std=0.05, num_tasks=1)
    assert 0.03 < float(hnet(0)["w"].detach().std()) < 0.08
