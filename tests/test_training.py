"""Certified training: the robust loss bounds the true worst case, schedules, IBP init, resumable loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from certify.bounds import margin_bounds
from certify.training import (
    TrainConfig,
    data_fingerprint,
    ibp_init,
    ibp_loss,
    ramp,
    robust_cross_entropy,
    train_certified,
    warmup_regularizer,
)
from intervals import Interval


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :4].argmax(1)).long()  # learnable labels
    return x, y


@given(seed=st.integers(0, 1000), eps=st.floats(0.0, 0.3))
def test_robust_ce_bounds_the_loss_of_every_point_in_the_box(seed, eps):
    net = _net(seed)
    x, y = _data(8, seed)
    bound = robust_cross_entropy(margin_bounds(net, x, y, eps, lo=0.0, hi=1.0), reduction="none")
    g = torch.Generator().manual_seed(seed)
    box = Interval.linf_ball(x, eps, lo=0.0, hi=1.0)
    for _ in range(20):
        t = torch.rand(x.shape, generator=g)
        corner = torch.rand(x.shape, generator=g) < 0.5
        pts = torch.where(corner, torch.where(t < 0.5, box.lower, box.upper), box.lower + t * (box.upper - box.lower))
        with torch.no_grad():
            ce = F.cross_entropy(net(pts), y, reduction="none")
        assert (ce <= bound + 1e-5).all()


def test_robust_ce_equals_ce_of_the_worst_case_logits():
    m = torch.tensor([[1.0, -2.0, 0.5]])
    worst = torch.tensor([[0.0, -1.0, 2.0, -0.5]])
    assert torch.allclose(robust_cross_entropy(m), F.cross_entropy(worst, torch.tensor([0])))
    with pytest.raises(ValueError, match="reduction"):
        robust_cross_entropy(m, reduction="max")


def test_ibp_loss_mixes_clean_and_robust_terms():
    net = _net()
    x, y = _data(16)
    clean = F.cross_entropy(net(x), y)
    robust = robust_cross_entropy(margin_bounds(net, x, y, 0.1, lo=0.0, hi=1.0))
    assert torch.allclose(ibp_loss(net, x, y, 0.1, kappa=1.0, lo=0.0, hi=1.0), clean)
    assert torch.allclose(ibp_loss(net, x, y, 0.1, kappa=0.0, lo=0.0, hi=1.0), robust)
    assert torch.allclose(ibp_loss(net, x, y, 0.1, kappa=0.25, lo=0.0, hi=1.0), 0.25 * clean + 0.75 * robust)
    assert robust >= clean - 1e-6  # the worst case over the box includes x itself
    with pytest.raises(ValueError, match="kappa"):
        ibp_loss(net, x, y, 0.1, kappa=1.5)
    with pytest.raises(ValueError, match="eps"):
        ibp_loss(net, x, y, -0.1, kappa=0.5)


def test_ibp_init_variance_and_last_layer_kept():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 30 * 30, 200), nn.ReLU(),
                        nn.Linear(200, 10))
    last = net[-1].weight.clone()
    names = ibp_init(net, torch.Generator().manual_seed(0))
    assert names == ["0", "3"]
    assert torch.equal(net[-1].weight, last)
    for layer in (net[0], net[3]):
        fan_in = layer.weight[0].numel()
        assert math.isclose(float(layer.weight.detach().std()), math.sqrt(2 * math.pi) / fan_in, rel_tol=0.05)


def test_ibp_init_keeps_interval_radius_growth_moderate():
    """The reason for the init: the IBP radius should neither explode nor vanish through depth."""
    torch.manual_seed(0)
    net = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(256, 256), nn.ReLU())], nn.Linear(256, 10))
    box = Interval.linf_ball(torch.rand(32, 256), 0.01)
    default_growth = float(net[:-1](box).radius.detach().mean() / 0.01)
    ibp_init(net, torch.Generator().manual_seed(0))
    ibp_growth = float(net[:-1](box).radius.detach().mean() / 0.01)
    assert ibp_growth < default_growth / 10
    assert 0.05 < ibp_growth < 20


def test_warmup_regularizer_is_finite_and_differentiable():
    net = _net()
    x, _ = _data(32)
    box = Interval.linf_ball(x, 0.05, lo=0.0, hi=1.0)
    pre = net[:2](box)
    reg = warmup_regularizer(box, [pre])
    assert torch.isfinite(reg) and reg >= 0
    reg.backward()
    assert net[1].weight.grad is not None
    assert float(warmup_regularizer(box, [])) == 0.0
    # all neurons dead: balance ratios are 0/0, which must not poison the loss
    dead = Interval(-torch.ones(4, 3), -0.5 * torch.ones(4, 3))
    assert torch.isfinite(warmup_regularizer(box, [dead]))


@given(start=st.floats(0, 10), length=st.floats(0.1, 20), end=st.floats(0.0, 1.0),
       kind=st.sampled_from(["linear", "smooth"]))
def test_ramps_are_monotone_and_hit_their_ends(start, length, end, kind):
    steps = [start - 1 + i * (length + 2) / 50 for i in range(51)]
    vals = [ramp(s, start, length, end, kind) for s in steps]
    assert all(a <= b + 1e-12 for a, b in zip(vals, vals[1:], strict=False))
    assert ramp(start - 0.5, start, length, end, kind) == 0.0
    assert ramp(start + length, start, length, end, kind) == end
    assert 0.0 <= min(vals) and max(vals) <= end + 1e-12


def test_ramp_values_and_errors():
    assert ramp(5, 0, 10, 0.2) == pytest.approx(0.1)
    # auto_LiRPA's SmoothedScheduler (beta 4, mid 0.25): t^4 up to a quarter, then linear, slopes matched
    assert ramp(2.5, 0, 10, 1.0, "smooth") == pytest.approx(0.25**4 / 0.05078125)  # 0.0769 at the switch
    assert ramp(5.0, 0, 10, 1.0, "smooth") == pytest.approx(0.3846, abs=1e-4)
    assert ramp(7.5, 0, 10, 1.0, "smooth") == pytest.approx(0.6923, abs=1e-4)
    assert ramp(0.0, 0, 10, 1.0, "smooth") == 0.0
    assert ramp(1.0, 0, 10, 1.0, "smooth") < ramp(1.0, 0, 10, 1.0, "linear")  # slow start
    assert ramp(3, 2, 0, 0.5) == 0.5
    with pytest.raises(ValueError, match="ramp kind"):
        ramp(0, 0, 1, 1, "cosine")


def test_config_validation():
    with pytest.raises(ValueError, match="eps_train"):
        TrainConfig(eps_train=-1)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="init"):
        TrainConfig(init="xavier")
    with pytest.raises(ValueError, match="ramp kind"):
        TrainConfig(ramp_kind="step")
    cfg = TrainConfig(epochs=10, lr=1.0, lr_milestones=(0.5, 0.8), lr_decay=0.1, warmup_epochs=1, ramp_epochs=4,
                      eps_train=0.2, kappa_start=1.0, kappa_end=0.5)
    assert cfg.eps_at(0.5) == 0.0 and cfg.eps_at(5) == 0.2 and cfg.eps_at(3) == pytest.approx(0.1)
    assert cfg.kappa_at(0) == 1.0 and cfg.kappa_at(9) == 0.5
    assert cfg.lr_at(4.9) == 1.0 and cfg.lr_at(5) == pytest.approx(0.1) and cfg.lr_at(8) == pytest.approx(0.01)


def _cfg(**kw) -> TrainConfig:
    base = dict(eps_train=0.05, epochs=4, batch_size=16, lr=5e-3, ramp_epochs=2, reg_lambda=0.5, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_training_improves_certified_accuracy():
    x, y = _data(256)
    net = _net()
    before = float((margin_bounds(net, x, y, 0.05, lo=0.0, hi=1.0) > 0).all(1).float().mean())
    hist = train_certified(net, x, y, _cfg(epochs=15), progress=False)
    after = float((margin_bounds(net, x, y, 0.05, lo=0.0, hi=1.0) > 0).all(1).float().mean())
    assert len(hist) == 15 and hist[-1]["eps"] == 0.05
    assert after > max(before, 0.5)
    assert not net.training


def test_killed_and_resumed_training_equals_an_unbroken_run(tmp_path):
    x, y = _data(64)
    ref = _net(1)
    train_certified(ref, x, y, _cfg(), progress=False)

    class Killed(Exception):
        pass

    def kill_after_two(record):
        if record["epoch"] == 2:
            raise Killed

    ckpt = tmp_path / "run" / "ckpt.pt"
    net = _net(1)
    # the checkpoint of epoch 2 is written after the log callback: the kill loses epoch 2, as a real one would
    with pytest.raises(Killed):
        train_certified(net, x, y, _cfg(), checkpoint=ckpt, progress=False, log=kill_after_two)
    assert ckpt.exists() and not list(ckpt.parent.glob("*.tmp"))
    resumed = _net(99)  # different init: everything must come from the checkpoint
    hist = train_certified(resumed, x, y, _cfg(), checkpoint=ckpt, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    for p, q in zip(ref.parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_resume_refuses_a_different_config_or_a_corrupt_file(tmp_path):
    x, y = _data(32)
    ckpt = tmp_path / "c.pt"
    train_certified(_net(), x, y, _cfg(epochs=1), checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="different training config.*lr"):
        train_certified(_net(), x, y, _cfg(epochs=1, lr=1e-3), checkpoint=ckpt, progress=False)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt training checkpoint"):
        train_certified(_net(), x, y, _cfg(epochs=1), checkpoint=ckpt, progress=False)


def test_train_certified_input_errors():
    x, y = _data(8)
    with pytest.raises(ValueError, match="nn.Sequential"):
        train_certified(nn.Linear(16, 4), x, y, progress=False)
    with pytest.raises(ValueError, match="number of samples"):
        train_certified(_net(), x, y[:4], progress=False)


def test_resume_refuses_a_checkpoint_trained_on_other_data(tmp_path):
    """A finished checkpoint of other data must not be returned as if trained on this data."""
    x, y = _data(32)
    ckpt = tmp_path / "c.pt"
    train_certified(_net(), x, y, _cfg(epochs=1), checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match=r"different data \(32 samples, now 16\)"):
        train_certified(_net(), x[:16], y[:16], _cfg(epochs=1), checkpoint=ckpt, progress=False)
    x2, _ = _data(32, seed=5)
    with pytest.raises(ValueError, match="different data .*different values"):
        train_certified(_net(), x2, y, _cfg(epochs=1), checkpoint=ckpt, progress=False)
    y2 = y.clone()
    y2[0] = (y2[0] + 1) % 4
    with pytest.raises(ValueError, match="different data"):
        train_certified(_net(), x, y2, _cfg(epochs=1), checkpoint=ckpt, progress=False)
    # the same data resumes (here: the finished run returns at once)
    assert len(train_certified(_net(), x, y, _cfg(epochs=1), checkpoint=ckpt, progress=False)) == 1


def test_data_fingerprint_of_every_dtype(tmp_path):
    # numpy has no bfloat16: the fingerprint hashes raw bytes, so bf16 training can checkpoint
    x, y = _data(8)
    fp = {dt: data_fingerprint(x.to(dt), y)["sha256"] for dt in (torch.float32, torch.float16, torch.bfloat16)}
    assert len(set(fp.values())) == 3
    net = _net().to(torch.bfloat16)
    out = train_certified(net, x.to(torch.bfloat16), y, _cfg(epochs=1), checkpoint=tmp_path / "bf.pt", progress=False)
    assert len(out) == 1 and (tmp_path / "bf.pt").exists()


def test_train_certified_refuses_a_bad_checkpoint_path_or_data_before_training(tmp_path):
    x, y = _data(8)
    calls = []
    with pytest.raises(ValueError, match="is a directory"):
        train_certified(_net(), x, y, _cfg(epochs=1), checkpoint=tmp_path, progress=False, log=calls.append)
    with pytest.raises(ValueError, match="no training samples"):
        train_certified(_net(), x[:0], y[:0], _cfg(epochs=1), progress=False, log=calls.append)
    with pytest.raises(ValueError, match="NaN"):
        train_certified(_net(), x * float("nan"), y, _cfg(epochs=1), progress=False, log=calls.append)
    (tmp_path / "foreign.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a hypercert training checkpoint"):
        train_certified(_net(), x, y, _cfg(epochs=1), checkpoint=tmp_path / "foreign.pt", progress=False)
    assert calls == []  # no epoch ran



def test_the_warmup_regularizer_gives_finite_gradients_when_a_layer_has_no_inactive_neurons():
    """A 0 or 0/0 balance ratio was masked after the division: the value was 0 but every gradient NaN."""
    from certify.training import warmup_regularizer

    w = torch.ones(3, requires_grad=True)
    box = Interval.from_center_radius(torch.ones(4, 3), torch.full((4, 3), 0.1))
    pre = Interval.from_center_radius(torch.ones(4, 3) * w + 2.0, torch.full((4, 3), 0.1) * w)  # all active
    reg = warmup_regularizer(box, [pre])
    reg.backward()
    assert torch.isfinite(reg) and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("layer", [torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5)], ids=["batchnorm", "dropout"])
def test_models_with_train_mode_layers_are_refused_before_any_weight_changes(layer):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), layer, torch.nn.ReLU(), torch.nn.Linear(8, 2))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=f"no sound rule for {type(layer).__name__} \\(layer 1"):
        train_certified(model, torch.rand(16, 4), torch.randint(0, 2, (16,)), TrainConfig(epochs=1), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_regulariser_refuses_nested_relus_it_cannot_see():
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()), torch.nn.Linear(8, 2))
    with pytest.raises(ValueError, match="0.1 is nested"):
        train_certified(model, torch.rand(16, 4), torch.randint(0, 2, (16,)), TrainConfig(epochs=1, reg_lambda=0.5),
                        progress=False)


def test_an_interrupted_training_leaves_the_model_in_eval_mode_and_logs_the_eps_it_used():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    cfg = TrainConfig(epochs=3, batch_size=4, eps_train=0.1, warmup_epochs=0, ramp_epochs=3)
    records = []

    def stop(record):  # noqa: ANN001, ANN202
        records.append(record)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_certified(model, torch.rand(16, 4), torch.randint(0, 2, (16,)), cfg, progress=False, log=stop)
    assert not model.training
    # epoch 1 of a 3-epoch ramp, 4 batches: the last batch ran at progress 0.75 / 3 of the ramp
    assert records[0]["eps"] == pytest.approx(cfg.eps_at(0.75))
