"""Continual methods, harness and CLI on Split Digits (offline, seconds): forgetting, resume, materialize."""

from __future__ import annotations

import json
import re

import pytest
import torch

from continual.cli import default_config, eval_main, train_main
from continual.methods import HyperMask, build_method, method_defaults, percentile_mask
from continual.runner import RunConfig, run
from continual.targets import MLP


def _cfg(method: str = "hnet", **kw) -> RunConfig:
    base = dict(method=method, benchmark="split-digits", target_options={"hidden": [32]}, iterations=60,
                eval_every=30, batch_size=32, lr=2e-3,
                method_options={"emb_dim": 8, "hnet_hidden": [32], "beta": 0.05})
    base.update(kw)
    return RunConfig(**base)


def test_the_regulariser_prevents_forgetting_and_its_absence_shows_it(tmp_path):
    """The test can fail: without the output regulariser the old tasks' weights drift and accuracy drops."""
    kept = run(_cfg(lr=5e-3), tmp_path / "on", progress=False, log=lambda s: None).task_incremental
    lost = run(_cfg(lr=5e-3, method_options={"emb_dim": 8, "hnet_hidden": [32], "beta": 0.0}), tmp_path / "off",
               progress=False, log=lambda s: None).task_incremental
    assert kept.bwt() > -0.015, kept.table()
    assert lost.bwt() < -0.04, lost.table()
    assert kept.average_accuracy() > 0.97
    # forward transfer is measured too: A[t-1, t] before training task t, and the untrained model's b_j
    assert "fwt" in kept.summary() and kept.random_init is not None and kept.is_measured(0, 1)


def test_a_killed_run_resumes_to_identical_results(tmp_path):
    reference = run(_cfg(), tmp_path / "ref", progress=False, log=lambda s: None)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(), out, progress=False, log=lambda s: None, stop_after=lambda t, s: (t, s) == (2, 30))
    assert not list(out.glob("*.tmp"))
    messages: list[str] = []
    resumed = run(_cfg(), out, progress=False, log=messages.append)
    assert any("resuming" in m and "task 3/5" in m for m in messages)
    assert resumed.task_incremental == reference.task_incremental
    assert resumed.class_incremental == reference.class_incremental
    # the validation curve (accuracy against iterations) survives the kill too
    curve = (out / "validation.csv").read_text()
    assert curve == (tmp_path / "ref" / "validation.csv").read_text()
    assert curve.splitlines()[0] == "task,iteration,val_accuracy" and len(curve.splitlines()) == 1 + 5 * 2


def test_a_kill_between_tasks_also_resumes(tmp_path):
    reference = run(_cfg("hypermask", method_options={"emb_dim": 8, "hnet_hidden": [32], "sparsity": 30}),
                    tmp_path / "ref", progress=False, log=lambda s: None)
    out = tmp_path / "killed"
    cfg = _cfg("hypermask", method_options={"emb_dim": 8, "hnet_hidden": [32], "sparsity": 30})
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out, progress=False, log=lambda s: None, stop_after=lambda t, s: (t, s) == (0, 60))
    assert run(cfg, out, progress=False, log=lambda s: None).task_incremental == reference.task_incremental


def test_materialized_task_network_equals_the_functional_forward():
    torch.manual_seed(0)
    for name, opts in (("hnet", {}), ("hypermask", {"sparsity": 40})):
        method = build_method(name, MLP(64, hidden=(16,), num_outputs=2), emb_dim=4, hnet_hidden=(8,), **opts)
        method.start_task(0)
        method.end_task(0)
        method.start_task(1)
        method.eval()
        x = torch.rand(7, 1, 8, 8)
        for t in (0, 1):
            module = method.materialize(t)
            assert isinstance(module, torch.nn.Module)
            assert torch.allclose(module(x), method.logits(x, t), atol=1e-6)


def test_percentile_mask_sparsity_and_the_hypermask_ramp():
    values = torch.randn(1000)
    mask = percentile_mask(values, 30.0)
    assert abs(float((mask == 0).float().mean()) - 0.30) < 0.01
    kept = mask > 0
    assert torch.allclose(mask[kept], torch.tanh(values[kept]).abs())  # kept values stay soft
    assert torch.equal(percentile_mask(values, 0.0), torch.tanh(values).abs())
    method = HyperMask(MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,), sparsity=50)
    assert method._sparsity_at(0, 0.0) == 0.0 and method._sparsity_at(0, 0.5) == 25.0
    assert method._sparsity_at(1, 0.0) == 50.0
    with pytest.raises(ValueError, match="sparsity"):
        HyperMask(MLP(4, hidden=(8,), num_outputs=2), sparsity=100)


def test_hypermask_leaves_the_last_target_tensor_unmasked_and_uncut():
    """As upstream (prepare_network_sparsity / apply_mask_to_weights_of_network): the output bias is
    never multiplied by a mask, and its mask (used only to weigh its drift) is not cut. With two output
    biases and sparsity 50 the cut zeroed one of them."""
    torch.manual_seed(0)
    method = HyperMask(MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,), sparsity=50)
    method.start_task(0)
    last = method.names[-1]
    masks = method.masks(0)
    raw = method.hnet(0)[last]
    assert torch.equal(masks[last], torch.tanh(raw).abs())  # soft, nothing cut
    weights = method.task_weights(0)
    assert torch.equal(weights[last], method.theta[-1])
    first = method.names[0]
    assert (masks[first] == 0).float().mean() >= 0.49  # the other tensors are still cut
    assert torch.equal(weights[first], method.theta[0] * masks[first])


def test_a_hypermask_checkpoint_from_before_the_fix_keeps_its_masked_output_bias():
    """Checkpoints carry mask_last; one without it was trained with the last tensor masked and cut, and
    must load as that network (a certificate of another network would not be about the trained one)."""
    torch.manual_seed(0)
    method = HyperMask(MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,), sparsity=50)
    method.start_task(0)
    state = method.state_dict()
    assert state["_extra_state"] == {"mask_last": False}
    legacy = {k: v for k, v in state.items() if k != "_extra_state"}
    old = HyperMask(MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,), sparsity=50)
    old.start_task(0)
    old.load_state_dict(legacy)
    assert old.mask_last
    last = old.names[-1]
    masks = old.masks(0)
    assert torch.equal(old.task_weights(0)[last], old.theta[-1] * masks[last])
    assert torch.equal(masks[last], percentile_mask(old.hnet(0)[last], 50))
    new = HyperMask(MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,), sparsity=50)
    new.start_task(0)
    new.load_state_dict(state)
    assert not new.mask_last


def test_tasks_must_start_in_order_and_options_are_checked():
    method = build_method("hnet", MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,))
    with pytest.raises(ValueError, match="in order"):
        method.start_task(1)
    with pytest.raises(ValueError, match="unknown method 'ewc'"):
        build_method("ewc", MLP(4, hidden=(8,), num_outputs=2))
    with pytest.raises(ValueError, match="bad option for method 'hnet'"):
        build_method("hnet", MLP(4, hidden=(8,), num_outputs=2), gamma=3)
    with pytest.raises(ValueError, match="beta"):
        build_method("hnet", MLP(4, hidden=(8,), num_outputs=2), beta=-1)


def test_run_config_validation():
    with pytest.raises(ValueError, match="iterations"):
        RunConfig(iterations=0)
    with pytest.raises(ValueError, match="unknown target network 'vgg'"):
        RunConfig(target="vgg")
    with pytest.raises(ValueError, match="unknown config key"):
        RunConfig.from_dict({"iters": 5})
    assert default_config("hypermask", "permuted-mnist")["method_options"]["beta"] == 5e-4


@pytest.mark.parametrize("method", ["hnet", "hypermask", "hint", "shield"])
def test_permuted_mnist_defaults_give_a_head_at_least_as_large_as_the_target(method):
    """The measured Permuted MNIST setting: a chunked head no smaller than about the target, few chunks."""
    cfg = default_config(method, "permuted-mnist")
    opts = cfg["method_options"]
    target = MLP(784 + 240 * (method == "shield"), hidden=tuple(cfg["target_options"]["hidden"]), num_outputs=10)
    hnet = build_method(method, target, **opts).hnet
    head = opts["hnet_hidden"][-1] * opts["chunk_size"]
    assert head >= 0.9 * hnet.param_count, (head, hnet.param_count)
    assert hnet.num_chunks <= 30


def test_cli_trains_resumes_and_prints(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text('iterations = 40\neval_every = 20\nbatch_size = 32\n[target_options]\nhidden = [16]\n'
                    '[method_options]\nemb_dim = 8\nhnet_hidden = [16]\n')
    argv = ["--method", "hnet", "--out", str(tmp_path / "run"), "--config", str(toml), "--no-progress",
            "--threads", "1"]
    assert train_main(argv) == 0
    out = capsys.readouterr().out
    assert "accuracy matrix" in out and "class-incremental" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["settings"]["config"]["iterations"] == 40
    assert (tmp_path / "run" / "accuracy.csv").exists()
    assert eval_main([str(tmp_path / "run")]) == 0
    assert "task 4" in capsys.readouterr().out
    # the same command again finds the finished run and reprints it without training
    capsys.readouterr()
    assert train_main(argv) == 0
    captured = capsys.readouterr()
    assert "every task is trained" in captured.err + captured.out and "task 6/5" not in captured.err
    # the figure once (the table's summary line); the note below it only says what FWT measures
    assert len(re.findall(r"FWT [+-]\d", captured.out)) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "ewc"], "unknown method 'ewc'"),
        (["--method", "hnet", "--benchmark", "split-imagenet"], "unknown benchmark 'split-imagenet'"),
        (["--method", "hnet", "--config", "MISSING"], "config file not found"),
        (["--method", "hnet", "--config", "BADKEY"], "unknown config key(s) iters"),
        (["--method", "hnet", "--config", "BADTOML"], "bad TOML"),
        (["--method", "hnet", "--benchmark", "split-mnist", "--data-dir", "/nonexistent"], "--data-dir"),
        (["--method", "hnet", "--iterations", "0"], "iterations must be a positive integer"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, capsys, argv, message):
    (tmp_path / "badkey.toml").write_text("iters = 5\n")
    (tmp_path / "bad.toml").write_text("iterations = = 5\n")
    subst = {"MISSING": str(tmp_path / "nope.toml"), "BADKEY": str(tmp_path / "badkey.toml"),
             "BADTOML": str(tmp_path / "bad.toml")}
    argv = [subst.get(a, a) for a in argv]
    assert train_main([*argv, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("continual-train: error:") and message in err


def test_cli_refuses_a_corrupt_checkpoint_or_another_config(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--method", "hnet", "--out", str(out), "--no-progress", "--iterations", "20"]
    with pytest.raises(KeyboardInterrupt):
        cfg = RunConfig.from_dict({**default_config("hnet", "split-digits"), "iterations": 20})
        run(cfg, out, progress=False, log=lambda s: None, stop_after=lambda t, s: True)
    assert train_main([*base[:-1], "30"]) == 2
    assert "different config (differs in: iterations)" in capsys.readouterr().err
    (out / "checkpoint.pt").write_bytes(b"garbage")
    assert train_main(base) == 2
    assert "corrupt checkpoint" in capsys.readouterr().err
    assert eval_main([str(out)]) == 2
    assert "unfinished run" in capsys.readouterr().err
    assert eval_main([str(tmp_path / "empty")]) == 2


@pytest.mark.parametrize("method", ["hnet", "hypermask", "hint", "shield"])
def test_subsampled_regulariser_draws_reproducible_subsets_and_averages_them(method):
    """``reg_tasks=k`` regularises k previous tasks per step (seeded by task and progress), as the mean over them."""
    torch.manual_seed(0)
    m = build_method(method, MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,), reg_tasks=2)
    for t in range(5):
        if t:
            m.end_task(t - 1)
        m.start_task(t)
    draws = {tuple(m.regularized_tasks(4, p)) for p in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)}
    assert all(len(d) == 2 and set(d) <= {0, 1, 2, 3} for d in draws) and len(draws) > 1  # varies with the step
    assert m.regularized_tasks(4, 0.3) == m.regularized_tasks(4, 0.3)
    assert m.regularized_tasks(2, 0.3) == [0, 1]  # k >= t: every previous task
    with torch.no_grad():
        for p in m.hnet.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    per_task = []
    for j in range(4):  # the full regulariser is the mean of the per-task terms ...
        m.regularized_tasks = lambda t, p, j=j: [j]  # pin the draw to task j
        per_task.append(m.regularizer(4, 0.0).item())
        del m.regularized_tasks
    m.reg_tasks = None
    assert m.regularizer(4, 0.0).item() == pytest.approx(sum(per_task) / 4, rel=1e-5)
    m.reg_tasks = 2  # ... and a subset's is the mean over the drawn tasks
    ids = m.regularized_tasks(4, 0.3)
    assert m.regularizer(4, 0.3).item() == pytest.approx(sum(per_task[j] for j in ids) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="reg_tasks"):
        build_method(method, MLP(4, hidden=(8,), num_outputs=2), reg_tasks=0)


@pytest.mark.parametrize("drift_masking", [False, True])
def test_hypermask_drift_term_is_the_l1_change_of_theta_weighted_by_the_mask_when_asked(drift_masking):
    torch.manual_seed(0)
    m = HyperMask(MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,), drift_masking=drift_masking)
    m.start_task(0)
    m.end_task(0)
    m.start_task(1)
    assert m.loss(torch.rand(5, 4), torch.tensor([0, 1, 0, 1, 1]), 1, 0.5)[1]["drift"] == 0.0
    with torch.no_grad():
        for p in m.theta:
            p.add_(0.1 * torch.randn_like(p))
    _, stats = m.loss(torch.rand(5, 4), torch.tensor([0, 1, 0, 1, 1]), 1, 0.5)
    change = torch.cat([p.detach().flatten() for p in m.theta]) - m.theta_prev
    masks = m.masks(1)
    weight = torch.cat([masks[n].detach().flatten() for n in m.names]) if drift_masking else 1.0
    assert stats["drift"] == pytest.approx((change * weight).abs().sum().item(), rel=1e-5)
    if drift_masking:  # soft masks are below 1: the weighted change is strictly smaller
        assert stats["drift"] < change.abs().sum().item()


def test_per_task_chunk_embeddings_train_and_resume_exactly(tmp_path):
    opts = {"emb_dim": 8, "hnet_hidden": [32], "beta": 0.05, "chunk_size": 200, "task_chunk_embeddings": True}
    reference = run(_cfg(method_options=opts), tmp_path / "ref", progress=False, log=lambda s: None)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(method_options=opts), out, progress=False, log=lambda s: None,
            stop_after=lambda t, s: (t, s) == (2, 30))
    resumed = run(_cfg(method_options=opts), out, progress=False, log=lambda s: None)
    assert resumed.task_incremental == reference.task_incremental
    assert reference.task_incremental.average_accuracy() > 0.9


def test_resume_treats_a_spelt_out_default_as_the_same_config_and_a_changed_one_as_different(tmp_path):
    out = tmp_path / "run"
    base = {**default_config("hnet", "split-digits"), "iterations": 20}
    base["method_options"] = {k: v for k, v in base["method_options"].items() if k != "chunk_emb_dim"}
    with pytest.raises(KeyboardInterrupt):
        run(RunConfig.from_dict(base), out, progress=False, log=lambda s: None, stop_after=lambda t, s: True)
    assert "chunk_emb_dim" not in json.loads((out / "config.json").read_text())["method_options"]
    spelt = {**base, "method_options": {**base["method_options"], "chunk_emb_dim": 8}}
    run(RunConfig.from_dict(spelt), out, progress=False, log=lambda s: None)
    assert (out / "results.json").exists()
    changed = {**base, "method_options": {**base["method_options"], "chunk_emb_dim": 4}}
    with pytest.raises(ValueError, match=r"different config \(differs in: method_options\)"):
        run(RunConfig.from_dict(changed), out, progress=False, log=lambda s: None)


def test_method_defaults_include_the_base_class_keywords_and_name_an_unknown_method():
    shield = method_defaults("shield")
    assert shield["chunk_emb_dim"] == 8 and shield["beta"] == 0.01 and "mixup_alpha" in shield
    with pytest.raises(ValueError, match="unknown method 'nope'; available: hnet"):
        method_defaults("nope")


def test_the_optimizer_is_fused_where_torch_has_one_and_stays_so_after_loading_an_unfused_state():
    from continual.runner import _load_optimizer, build_optimizer

    method = build_method("hnet", MLP(4, hidden=(8,), num_outputs=2), emb_dim=3, hnet_hidden=(8,))
    method.start_task(0)
    opt = build_optimizer(method, _cfg())
    fused = opt.param_groups[0]["fused"]
    assert fused or not torch.__version__ >= "2.4"  # CPU fused Adam from torch 2.4 (TorchVersion compares versions)
    # a checkpoint written by the plain Adam of an earlier version: same moments, other flags
    plain = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    for p in method.trainable_parameters():
        p.grad = torch.ones_like(p)
    plain.step()
    _load_optimizer(opt, plain.state_dict())
    assert opt.param_groups[0]["fused"] == fused
    moments = [s["exp_avg"] for s in opt.state.values()]
    assert moments and all(torch.allclose(m, torch.full_like(m, 0.1)) for m in moments)
    opt.step()  # and it still steps


def test_continual_eval_prints_every_recorded_matrix(tmp_path, capsys):
    """Robust matrices recorded by benchmarks.continual_robust are printed by continual-eval, by name."""
    from continual.metrics import AccuracyMatrix, RunResults

    results = RunResults(AccuracyMatrix([[0.99, None], [0.98, 0.97]]), train_seconds=[1.0, 1.0],
                         settings={"config": {"method": "shield"}},
                         matrices={"certified ibp eps=0.01": AccuracyMatrix([[0.91, None], [0.9, 0.88]]),
                                   "pgd eps=0.01": AccuracyMatrix([[0.95, None], [0.94, 0.93]])})
    (tmp_path / "run").mkdir()
    results.to_json(tmp_path / "run" / "results.json")
    assert eval_main([str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "certified ibp eps=0.01 accuracy" in out and "pgd eps=0.01 accuracy" in out
    assert "88.00" in out and "93.00" in out


def test_hint_kappa_schedule_follows_the_iteration_count(tmp_path):
    """The paper's kappa = max(0.5, 1 - 5e-5 it): kappa_decay = 5e-5 * iterations unless the user set it."""
    from benchmarks.continual_repro import _apply, _parse_option
    from continual.cli import _config, _train_parser, follow_iterations

    def cfg(*argv: str) -> RunConfig:
        return _config(_train_parser().parse_args(["--method", "hint", "--benchmark", "permuted-mnist",
                                                   "--out", str(tmp_path / "run"), *argv]))

    assert cfg().method_options["kappa_decay"] == 0.25 and cfg().iterations == 5000  # the default, untouched
    assert cfg("--iterations", "2000").method_options["kappa_decay"] == 0.1
    toml = tmp_path / "k.toml"
    toml.write_text("[method_options]\nkappa_decay = 0.4\n")
    assert cfg("--iterations", "2000", "--config", str(toml)).method_options["kappa_decay"] == 0.4
    toml.write_text("iterations = 1000\n")
    assert cfg("--config", str(toml)).method_options["kappa_decay"] == 0.05
    # SHIELD's kappa runs on task progress (DESIGN.md): not rescaled
    shield = default_config("shield", "permuted-mnist")
    shield["iterations"] = 100
    assert follow_iterations(shield)["method_options"] == default_config("shield", "permuted-mnist")["method_options"]
    # continual_repro: an explicit --option wins
    data = default_config("hint", "permuted-mnist")
    data["iterations"] = 2000
    _apply(data, *_parse_option("method_options.kappa_decay=0.25"))
    assert follow_iterations(data, explicit={"kappa_decay"})["method_options"]["kappa_decay"] == 0.25


def test_without_validation_data_the_latest_state_is_kept(tmp_path):
    """With val_fraction 0 every check scored 0 and the strict '>' kept the first check's weights,
    discarding the rest of the task's training."""
    cfg = RunConfig(method="hnet", benchmark="split-digits", benchmark_options={"num_tasks": 1, "val_fraction": 0.0},
                    target_options={"hidden": [8]}, iterations=20, eval_every=10, batch_size=16,
                    method_options={"emb_dim": 4, "hnet_hidden": [8]})
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run", progress=False, log=lambda s: None, stop_after=lambda t, s: s == 20)
    best = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["best"]
    assert best["step"] == 20
