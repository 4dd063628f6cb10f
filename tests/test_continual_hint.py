"""HINT (continual.hint): sound interval weights from interval embeddings, the worst-case loss, nested
boxes and the universal embedding, schedules, checkpoints, and learning on Split Digits."""

from __future__ import annotations

import doctest
import json

import pytest
import torch
import torch.nn.functional as F
from soundness import assert_encloses, corners, points_in

import continual.hint as hint
from continual.benchmarks import make_benchmark
from continual.hint import HINT, worst_case_logits
from continual.methods import METHODS
from continual.runner import RunConfig, run
from continual.targets import MLP, SmallConvNet, ZenkeNet
from intervals import Interval


def _hint(target=None, tasks: int = 1, seed: int = 0, double: bool = True, **kw) -> HINT:
    """A small HINT with ``tasks`` tasks started (all but the last ended)."""
    torch.manual_seed(seed)
    target = MLP(6, hidden=(8,), num_outputs=3) if target is None else target
    opts = {"emb_dim": 3, "hnet_hidden": (10,), "eps": 0.5, **kw}
    m = HINT(target, **opts)
    if double:
        m = m.double()
    for t in range(tasks):
        if t:
            m.end_task(t - 1)
        m.start_task(t)
    return m


def _embedding_points(box: Interval) -> torch.Tensor:
    """Every corner of a small embedding box, its centre and random interior points."""
    return torch.cat([corners(box), points_in(box, n=12, seed=1)])


def test_module_examples():
    assert doctest.testmod(hint, raise_on_error=False).failed == 0


# ---------------------------------------------------------------------------------------------- soundness
@pytest.mark.parametrize("nested", [False, True])
def test_mlp_weight_and_logit_boxes_enclose_every_embedding_in_the_box(nested):
    m = _hint(tasks=2, nested=nested, eps=0.8)
    with torch.no_grad():
        for r in m.rho:  # uneven radii: the softmax split matters
            r.copy_(torch.randn_like(r))
    x = torch.randn(7, 6, dtype=torch.float64)
    for t in (0, 1):
        box = m.embedding_box(t)
        w_box = m.interval_weights(t)
        z_box = m.interval_logits(x, t)
        with torch.no_grad():
            for e in _embedding_points(box):
                w = m.hnet(e)
                for k, v in w.items():
                    assert_encloses(w_box[k], v, what=f"task {t} weight {k}")
                assert_encloses(z_box, m.target(x, w), what=f"task {t} logits")
            assert_encloses(z_box, m.logits(x, t), what="midpoint logits")


@pytest.mark.parametrize("kind", ["zenke", "small-conv"])
def test_conv_targets_with_interval_weights_are_sound(kind):
    if kind == "zenke":  # max pooling, no batch norm
        net = ZenkeNet((1, 16, 16), num_outputs=3, widths=(2, 3, 3, 4), fc=6)
        x = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    else:  # batch norm with per-task statistics, average pooling
        net = SmallConvNet((1, 12, 12), num_outputs=3, widths=(3, 4), kernel_sizes=(3, 3), pools=(2, 2), fc=(5,))
        x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    m = _hint(net, tasks=1, emb_dim=3, hnet_hidden=(8,), eps=0.3)
    with torch.no_grad():
        m.hnet.head.weight.mul_(0.2)  # moderate weights, like a trained hypernetwork's
    m.train()
    m.loss(x, torch.tensor([0, 1, 2, 0]), task=0, progress=1.0)  # fills the batch-norm statistics
    m.eval()
    z_box = m.interval_logits(x, 0)
    assert bool((z_box.upper > z_box.lower).any())
    with torch.no_grad():
        for e in _embedding_points(m.embedding_box(0)):
            assert_encloses(z_box, m.target(x, m.hnet(e), 0), what=f"{kind} logits")
        assert_encloses(z_box, m.logits(x, 0), what=f"{kind} midpoint logits")
        # training mode (batch statistics of the centres) is sound for the affine map it fixes too
        m.train()
        z_train = m.interval_logits(x, 0)
        for e in _embedding_points(m.embedding_box(0))[:6]:
            assert_encloses(z_train, m.target(x, m.hnet(e), 0, update_stats=False), what=f"{kind} train logits")


def test_radius_zero_reproduces_the_point_network_exactly():
    m = _hint(tasks=2, eps=0.0, double=False)
    x = torch.randn(5, 6)
    y = torch.tensor([0, 1, 2, 0, 1])
    for t in (0, 1):
        w_box, point = m.interval_weights(t), m.hnet(t)  # HNET: H(e_t)
        for k in point:
            assert torch.equal(w_box[k].lower, w_box[k].upper)
            assert torch.equal(w_box[k].center, point[k])
        assert torch.equal(m.logits(x, t), m.target(x, point))
        z = m.interval_logits(x, t)
        assert torch.equal(z.lower, z.upper) and torch.equal(z.center, m.target(x, point))
    loss, stats = m.loss(x, y, task=1, progress=0.9)
    assert stats["ce"] == stats["ce_worst"]
    expected = F.cross_entropy(m.target(x, m.hnet(1)), y) + m.beta * m.regularizer(1)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    # eps > 0 still starts every task from a point box
    assert _hint(eps=1.0).eps_at(0.0) == 0.0


def test_worst_case_cross_entropy_bounds_every_weight_point_in_the_box():
    m = _hint(tasks=1, eps=1.0)
    x = torch.randn(9, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (9,))
    z_box = m.interval_logits(x, 0)
    worst = F.cross_entropy(worst_case_logits(z_box, y), y, reduction="none")
    with torch.no_grad():
        for e in _embedding_points(m.embedding_box(0)):
            ce = F.cross_entropy(m.target(x, m.hnet(e)), y, reduction="none")
            assert bool((ce <= worst + 1e-9).all())
        ce_mid = F.cross_entropy(m.logits(x, 0), y, reduction="none")
    assert bool((ce_mid <= worst + 1e-9).all()) and bool((worst > ce_mid).any())


# ---------------------------------------------------------------------------------------------- nesting
def test_nested_boxes_always_intersect_and_the_universal_embedding_serves_every_task():
    m = _hint(tasks=4, nested=True, eps=0.6, emb_dim=5)
    with torch.no_grad():
        for e in m.hnet.embeddings:  # far-apart embeddings: the boxes still share [-sigma, sigma]^M
            e.copy_(torch.randn_like(e) * 10)
    sigma = m.sigma
    assert sigma == pytest.approx(0.6 / 10)
    common = m.universal_box()
    assert bool((common.lower <= -sigma).all() and (common.upper >= sigma).all())
    u = m.universal_embedding()
    assert bool(common.contains(u).all())
    assert m.universal_inside() == [True] * 4 and m.universal_inside([2, 0]) == [True, True]
    x = torch.randn(6, 6, dtype=torch.float64)
    z_u = m.logits_universal(x)
    w_u = m.universal_weights()
    for t in range(4):
        box = m.embedding_box(t)
        assert torch.allclose(box.radius, torch.full((5,), 0.6 / 5, dtype=torch.float64))
        assert bool(box.contains(u).all())
        assert bool(box.contains(Interval.from_center_radius(torch.zeros(5, dtype=torch.float64), sigma)).all())
        # one weight set inside every task's weight box, one output inside every task's logit box
        w_box = m.interval_weights(t)
        for k, v in w_u.items():
            assert_encloses(w_box[k], v, what=f"universal weight {k} in task {t}")
        assert_encloses(m.interval_logits(x, t), z_u, what=f"universal logits in task {t}")
    module = m.materialize_universal()
    torch.testing.assert_close(module(x), z_u)


def test_standard_mode_boxes_may_be_disjoint():
    m = _hint(tasks=2, eps=0.1)
    with torch.no_grad():
        m.hnet.embeddings[0].fill_(-5.0)
        m.hnet.embeddings[1].fill_(5.0)
    with pytest.raises(ValueError, match="do not intersect"):
        m.universal_box()
    r0, r1 = m.embedding_box(0).radius.detach(), m.embedding_box(1).radius.detach()
    # upstream's fallback: the midpoint between the disjoint bounds 5 - r1 and -5 + r0
    torch.testing.assert_close(m.universal_embedding(), ((5 - r1) + (-5 + r0)) / 2)
    assert m.universal_inside() == [False, False]  # the fallback midpoint lies in neither box
    assert bool(m.universal_box([1]).contains(m.hnet.embeddings[1].detach()).all())
    assert m.universal_inside([1]) == [True]


# ---------------------------------------------------------------------------------------------- training pieces
@pytest.mark.parametrize("nested", [False, True])
def test_loss_is_differentiable_in_the_embedding_and_its_radii(nested):
    m = _hint(tasks=2, nested=nested, double=False)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    loss, stats = m.loss(x, y, task=1, progress=0.8)
    assert stats["ce_worst"] >= stats["ce"]
    loss.backward()
    e1 = m.hnet.embeddings[1]
    assert e1.grad is not None and e1.grad.abs().sum() > 0 and torch.isfinite(e1.grad).all()
    if nested:  # fixed radii: rho is not trained
        assert not m.rho[1].requires_grad and m.rho[1].grad is None
    else:
        assert m.rho[1].grad is not None and m.rho[1].grad.abs().sum() > 0 and torch.isfinite(m.rho[1].grad).all()
    assert m.hnet.head.weight.grad is not None
    trainable = {id(p) for p in m.trainable_parameters()}
    assert id(m.hnet.embeddings[0]) not in trainable and id(m.rho[0]) not in trainable  # task 0 ended: frozen
    assert id(e1) in trainable and (id(m.rho[1]) in trainable) != nested


def test_schedules_and_option_checks():
    m = _hint(eps=2.0, kappa_decay=0.25, kappa_min=0.5)
    assert [m.eps_at(p) for p in (0.0, 0.25, 0.5, 0.9, 1.0)] == [0.0, 1.0, 2.0, 2.0, 2.0]
    assert m.kappa_at(0.0) == 1.0 and m.kappa_at(1.0) == pytest.approx(0.75)
    assert _hint(kappa_decay=5.0).kappa_at(0.5) == 0.5  # floored at kappa_min
    assert _hint(eps_warmup=0.0, eps=0.3).eps_at(0.0) == 0.3
    for bad in ({"eps": -1.0}, {"reg_on": "upper"}, {"kappa_min": 1.5}, {"kappa_decay": -0.1},
                {"eps_warmup": 2.0}):
        with pytest.raises(ValueError):
            _hint(**bad)
    with pytest.raises(ValueError, match="in order"):
        _hint(tasks=1).start_task(2)
    with pytest.raises(ValueError, match="no tasks"):
        _hint(tasks=0).universal_embedding()


@pytest.mark.parametrize("reg_on", ["mid", "lmu"])
def test_regularizer_starts_at_zero_and_sees_changes_of_old_boxes(reg_on):
    m = _hint(tasks=3, reg_on=reg_on)
    p = m.hnet.param_count
    assert tuple(m.snapshot.shape) == ((2, p) if reg_on == "mid" else (2, 3, p))
    assert m.regularizer(2).item() == 0.0 and m.regularizer(0).item() == 0.0
    with torch.no_grad():
        m.hnet.head.weight.mul_(1.1)
    reg = m.regularizer(2)
    assert reg.item() > 0
    reg.backward()
    assert m.hnet.head.weight.grad.abs().sum() > 0
    if reg_on == "lmu":  # the box's width alone is regularised too
        m2 = _hint(tasks=2, reg_on="lmu")
        with torch.no_grad():
            m2.rho[0].copy_(torch.tensor([5.0, -5.0, 0.0]))  # reshapes task 0's box
        assert m2.regularizer(1).item() > 0


@pytest.mark.parametrize("chunk_size", [None, 7, 19, 1000])
@pytest.mark.parametrize(("nested", "reg_on"), [(False, "mid"), (True, "mid"), (False, "lmu")])
def test_regularizer_equals_the_full_interval_pass_in_value_and_gradients(chunk_size, nested, reg_on):
    """The block-wise regulariser (midpoints without the head's radius product) against the plain
    definition: the whole padded interval output, its midpoints (and endpoints), and a sum of squares."""
    m = _hint(tasks=4, chunk_size=chunk_size, nested=nested, reg_on=reg_on)
    snap = m.snapshot.clone()
    with torch.no_grad():  # training the current task moves the hypernetwork
        for q in [*m.hnet.trunk.parameters(), *m.hnet.head.parameters()]:
            q.add_(0.05 * torch.randn_like(q))
    reg = m.regularizer(3)
    out = m.hnet.forward_flat(m.embedding_boxes([0, 1, 2]))
    parts = [out.center] if reg_on == "mid" else [out.lower, out.center, out.upper]
    rows = [snap] if reg_on == "mid" else [snap[:, i] for i in range(3)]
    naive = sum(((a - b) ** 2).sum() for a, b in zip(parts, rows, strict=True)) / (3 * len(parts))
    torch.testing.assert_close(reg, naive)
    params = [m.hnet.head.weight, m.hnet.head.bias, *m.hnet.trunk.parameters()]
    for g, g_naive in zip(torch.autograd.grad(reg, params, retain_graph=True), torch.autograd.grad(naive, params),
                          strict=True):
        torch.testing.assert_close(g, g_naive)
    assert reg.item() > 0


@pytest.mark.parametrize(("nested", "reg_on"), [(False, "mid"), (True, "lmu")])
def test_state_dict_round_trip_grows_a_fresh_instance(nested, reg_on):
    m = _hint(tasks=3, nested=nested, reg_on=reg_on, double=False, chunk_size=20)
    x, y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    m.loss(x, y, task=2, progress=0.6)[0].backward()
    state = m.state_dict()
    assert sum(k.startswith("rho.") for k in state) == 3
    torch.manual_seed(123)
    fresh = HINT(MLP(6, hidden=(8,), num_outputs=3), emb_dim=3, hnet_hidden=(10,), eps=0.5, nested=nested,
                 reg_on=reg_on, chunk_size=20)
    fresh.load_state_dict(state)  # strict: every key matched
    assert len(fresh.rho) == fresh.num_tasks == 3
    assert fresh.rho[2].requires_grad != nested
    torch.testing.assert_close(fresh.snapshot, m.snapshot, rtol=0, atol=0)
    for t in range(3):
        z, z_fresh = m.interval_logits(x, t), fresh.interval_logits(x, t)
        assert torch.equal(z.lower, z_fresh.lower) and torch.equal(z.upper, z_fresh.upper)
        assert torch.equal(m.logits(x, t), fresh.logits(x, t))
    assert torch.equal(m.loss(x, y, 2, 0.7)[0], fresh.loss(x, y, 2, 0.7)[0])


# ---------------------------------------------------------------------------------------------- learning
def _train(m: HINT, xs: torch.Tensor, ys: torch.Tensor, task: int, iters: int, gen: torch.Generator) -> None:
    opt = torch.optim.Adam(m.trainable_parameters(), lr=5e-3)
    m.train()
    for it in range(iters):
        idx = torch.randint(0, xs.shape[0], (32,), generator=gen)
        loss, _ = m.loss(xs[idx], ys[idx], task, it / iters)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    m.eval()


def test_learns_two_split_digits_tasks_and_keeps_the_first():
    bench = make_benchmark("split-digits", seed=0)
    torch.manual_seed(0)
    m = HINT(MLP(64, hidden=(32,), num_outputs=2), emb_dim=8, hnet_hidden=(32,), beta=0.05, eps=0.5,
             kappa_decay=0.5)
    gen = torch.Generator().manual_seed(0)
    data = [bench.tasks[t].tensors("train") for t in (0, 1)]
    tests = [bench.tasks[t].tensors("test") for t in (0, 1)]
    acc = {}
    for t in (0, 1):
        m.start_task(t)
        _train(m, *data[t], task=t, iters=80, gen=gen)
        m.end_task(t)
        with torch.no_grad():
            for s in range(t + 1):
                x, y = tests[s]
                acc[(t, s)] = float((m.logits(x, s).argmax(1) == y).float().mean())
    assert acc[(0, 0)] > 0.9 and acc[(1, 1)] > 0.9, acc  # chance is 0.5
    assert acc[(1, 0)] >= acc[(0, 0)] - 0.02, acc  # the regulariser keeps task 0 (0.967 without it)
    with torch.no_grad():
        x = torch.cat([tests[0][0], tests[1][0]])
        for mode in ("interval", "mid"):
            ent = m.task_entropy(x, 1, mode)
            assert ent.shape == (x.shape[0],) and bool((ent >= 0).all())
        truth = torch.cat([torch.zeros(len(tests[0][0])), torch.ones(len(tests[1][0]))]).long()
        for mode in ("interval", "mid", "vote"):
            inferred = m.infer_task(x, mode=mode)
            assert inferred.shape == (x.shape[0],) and set(inferred.tolist()) <= {0, 1}
            # chance is 0.5, the inverted rule (arg-max entropy) gives 0.34 here: the score carries the task
            assert float((inferred == truth).float().mean()) > 0.6, mode


def test_the_runner_trains_and_resumes_hint_exactly(tmp_path, monkeypatch):
    """Through the harness (HINT registered for this test only): a killed run resumes to the same numbers."""
    monkeypatch.setitem(METHODS, "hint", HINT)
    cfg = dict(method="hint", benchmark="split-digits", benchmark_options={"num_tasks": 2},
               target_options={"hidden": [16]}, iterations=20, eval_every=10, batch_size=32, lr=5e-3,
               method_options={"emb_dim": 4, "hnet_hidden": [16], "beta": 0.05, "eps": 0.5, "kappa_decay": 0.5})
    reference = run(RunConfig(**cfg), tmp_path / "ref", progress=False, log=lambda s: None)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(RunConfig(**cfg), out, progress=False, log=lambda s: None, stop_after=lambda t, s: (t, s) == (1, 10))
    messages: list[str] = []
    resumed = run(RunConfig(**cfg), out, progress=False, log=messages.append)
    assert any("resuming" in m and "task 2/2" in m for m in messages), messages
    assert resumed.task_incremental == reference.task_incremental
    assert reference.task_incremental.average_accuracy() > 0.6


def test_hint_rejects_per_task_chunk_embeddings():
    with pytest.raises(ValueError, match="task_chunk_embeddings"):
        HINT(MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,), chunk_size=5, task_chunk_embeddings=True)


def test_continual_train_and_eval_report_the_universal_embedding_after_every_task(tmp_path, capsys):
    from continual.cli import eval_main, train_main

    toml = tmp_path / "c.toml"
    toml.write_text('iterations = 20\neval_every = 10\nbatch_size = 32\n[benchmark_options]\nnum_tasks = 2\n'
                    '[target_options]\nhidden = [16]\n[method_options]\nemb_dim = 4\nhnet_hidden = [16]\n'
                    'nested = true\neps = 2.0\n')
    run_dir = tmp_path / "run"
    argv = ["--method", "hint", "--out", str(run_dir), "--config", str(toml), "--no-progress", "--threads", "1"]
    assert train_main(argv) == 0
    assert "universal embedding" in capsys.readouterr().out
    universal = json.loads((run_dir / "results.json").read_text())["matrices"]["universal"]["values"]
    # one row per task, over the tasks seen so far (task 1's entry is empty after task 0)
    assert len(universal) == 2 and universal[1][0] is not None and universal[1][1] is not None
    assert universal[0][1] is None
    inside = json.loads((run_dir / "results.json").read_text())["matrices"]["universal inside box"]["values"]
    assert inside == [[1.0, None], [1.0, 1.0]]  # nested mode: always inside every box
    assert eval_main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "universal embedding (ONE weight set" in out and "universal embedding inside task j's box" in out


def test_kappa_jump_and_best_after_warmup_follow_the_public_code():
    """Options matching upstream's train loop: kappa drops to kappa_min at the end of the eps ramp, and a
    task's best state is taken only at full eps. Both are off by default."""
    m = _hint(kappa_decay=0.25, double=False)
    assert m.kappa_at(0.6) == pytest.approx(0.85) and m.best_from_progress == 0.0
    j = _hint(kappa_decay=0.25, kappa_jump=True, best_after_warmup=True, double=False)
    assert j.kappa_at(0.4) == pytest.approx(0.9) and j.kappa_at(0.5) == 0.5 and j.kappa_at(1.0) == 0.5
    assert j.best_from_progress == 0.5
    with pytest.raises(ValueError, match="kappa_jump must be true or false"):
        _hint(kappa_jump="yes")


@pytest.mark.parametrize(("after_warmup", "best_step"), [(False, 10), (True, 20)])
def test_the_runner_keeps_no_best_state_from_the_eps_ramp_with_best_after_warmup(
    tmp_path, monkeypatch, after_warmup, best_step
):
    """Validation accuracy falls from the check in the eps ramp (step 10) to the one at full eps (20):
    by default the ramp's state is kept; with best_after_warmup only full-eps checks count."""
    import continual.runner as runner

    accuracies = [0.0, 1.0, 0.5]  # the untrained model's (forward transfer), then the checks at 10 and 20
    monkeypatch.setattr(runner, "_accuracy", lambda *a, **k: accuracies.pop(0))
    cfg = RunConfig(method="hint", benchmark="split-digits", benchmark_options={"num_tasks": 1},
                    target_options={"hidden": [16]}, iterations=40, eval_every=10, batch_size=32,
                    method_options={"emb_dim": 4, "hnet_hidden": [16], "eps": 0.5, "best_after_warmup": after_warmup})
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run", progress=False, log=lambda s: None, stop_after=lambda t, s: s == 20)
    best = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["best"]
    assert best["step"] == best_step
