"""Solver: linear scaling, warm-up and steps, weight decay groups."""

import copy
import importlib

import pytest
import torch
from torch import nn

from frcnn_pipeline.config import ParameterError, SolverParams
from frcnn_pipeline.engine import solver


def test_linear_scaling_rule():
    assert solver.scaled_lr(0.02, 16, 16) == pytest.approx(0.02)
    assert solver.scaled_lr(0.02, 2, 16) == pytest.approx(0.0025)  # npu1p: 1 device × 2 images
    assert solver.scaled_lr(1e-3, 4, None) == 1e-3


def test_warmup_then_steps():
    factor = solver.lr_factor
    assert factor(0, [8, 11], 0.1, 1000, 0.001) == pytest.approx(0.001)
    assert factor(500, [], 0.1, 1000, 0.001) == pytest.approx(0.001 * 0.5 + 0.5)
    assert factor(1000, [2000, 3000], 0.1, 1000, 0.001) == 1.0
    assert factor(2000, [2000, 3000], 0.1, 1000, 0.001) == pytest.approx(0.1)
    assert factor(3500, [2000, 3000], 0.1, 1000, 0.001) == pytest.approx(0.01)


def test_epoch_milestones_and_length():
    cfg = SolverParams(step_epochs=[8, 11], steps=[5], epochs=12, max_iter=99)
    assert solver.lr_milestones(cfg, 100) == [800, 1100]
    assert solver.max_iterations(cfg, 100) == 1200
    assert solver.max_iterations(SolverParams(epochs=None, max_iter=99), 100) == 99


def test_scheduler_follows_the_factor():
    model = nn.Linear(2, 2)
    cfg = SolverParams(optimizer="sgd", momentum=0.9, weight_decay=1e-4, weight_decay_norm=0.0,
                       gamma=0.1, warmup_iters=2, warmup_factor=0.5, steps=[3], step_epochs=None)  # fmt: skip
    optimizer = solver.build_optimizer(model, cfg, lr=0.2)
    scheduler = solver.build_lr_scheduler(optimizer, cfg, iters_per_epoch=10)
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1, 0.15, 0.2, 0.02])


def test_no_weight_decay_on_norm_layers_and_optional_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))
    groups = solver.parameter_groups(model, 1e-4, 0.0, weight_decay_bias=None)
    decay = {group["weight_decay"]: {id(p) for p in group["params"]} for group in groups}
    assert decay[1e-4] == {id(model[0].weight), id(model[0].bias)}
    assert decay[0.0] == {id(p) for p in [*model[1].parameters(), *model[2].parameters()]}
    no_bias = solver.parameter_groups(model, 1e-4, 0.0, weight_decay_bias=0.0)
    assert {id(model[0].bias)} <= {id(p) for g in no_bias if g["weight_decay"] == 0.0 for p in g["params"]}


def test_optimizer_choice():
    model = nn.Linear(2, 2)
    assert isinstance(solver.build_optimizer(model, SolverParams(optimizer="sgd"), 0.1), torch.optim.SGD)
    assert isinstance(solver.build_optimizer(model, SolverParams(optimizer="adamw"), 0.1), torch.optim.AdamW)
    # Another optimizer never reaches the solver: the schema refuses it, naming the key and the choices.
    with pytest.raises(ParameterError, match=r"train\.solver\.optimizer.*'sgd'.*'adamw'"):
        SolverParams.parse({"optimizer": "lamb"}, "train.solver")


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_cpu_optimizers_are_fused_and_step_like_torchs_loop(name):
    torch.manual_seed(0)
    # No norm after a conv: its bias would get a ~1e-9 gradient, where Adam's step is all rounding.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
    reference = copy.deepcopy(model)
    cfg = SolverParams(optimizer=name, momentum=0.9, weight_decay=1e-4, weight_decay_norm=0.0)
    optimizer = solver.build_optimizer(model, cfg, lr=0.1)
    assert optimizer.defaults["fused"] is True
    groups = solver.parameter_groups(reference, 1e-4, 0.0, weight_decay_bias=None)
    loop = (
        torch.optim.SGD(groups, lr=0.1, momentum=0.9, foreach=False)
        if name == "sgd"
        else torch.optim.AdamW(groups, lr=0.1, foreach=False)
    )
    batch, target = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 6, 6)
    for _ in range(3):
        for net, opt in ((model, optimizer), (reference, loop)):
            opt.zero_grad()
            (net(batch) - target).square().mean().backward()
            opt.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_at_torch_2_3_cpu_optimizers_take_torchs_default_loop(monkeypatch, name):
    """torch 2.3 (our floor) has no fused CPU kernels: its optimizers refuse fused=True for CPU tensors
    (torch.optim checks the list below). Here torch is made to answer as 2.3 does; our check asks
    torch.optim."""
    torch_2_3_devices = ["cuda", "xpu", torch._C._get_privateuse1_backend_name()]
    for module in map(importlib.import_module, ("torch.utils._foreach_utils", "torch.optim.optimizer")):
        monkeypatch.setattr(module, "_get_fused_kernels_supported_devices", lambda: list(torch_2_3_devices))
    assert not solver.has_fused_kernels("cpu")
    model = nn.Linear(3, 2)
    cfg = SolverParams(optimizer=name, momentum=0.9, weight_decay=1e-4, weight_decay_norm=0.0)
    optimizer = solver.build_optimizer(model, cfg, lr=0.1)
    assert not optimizer.defaults["fused"]
    before = model.weight.detach().clone()
    model(torch.randn(4, 3)).square().sum().backward()
    optimizer.step()
    assert not torch.equal(model.weight, before)
    with pytest.raises(RuntimeError, match="`fused=True` requires"):  # what fused=True did there
        fused = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
        fused.step()


def test_loss_scaled_sgd_survives_a_skipped_first_step_like_torchs_loop():
    """float16 training: the GradScaler skips the first step (an overflow). torch's fused SGD creates its
    momentum buffers then (torch.empty_like) without writing them, and the next step adds whatever that memory
    held to the weights (~1e25 once, here); the loop creates nothing on a skipped step."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    reference = copy.deepcopy(model)
    cfg = SolverParams(optimizer="sgd", momentum=0.9, weight_decay=0.0, weight_decay_norm=0.0)
    optimizer = solver.build_optimizer(model, cfg, lr=0.1, loss_scaled=True)
    loop = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, foreach=False)
    for net, opt in ((model, optimizer), (reference, loop)):
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        for step in range(3):
            opt.zero_grad()
            scaler.scale(net(torch.ones(1, 2)).sum()).backward()
            if step == 0:
                net.weight.grad[0, 0] = float("inf")  # an fp16 overflow: the scaler skips this step
            scaler.step(opt)
            scaler.update()
            if step == 0:
                assert not opt.state, "a skipped step left optimizer state"
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
