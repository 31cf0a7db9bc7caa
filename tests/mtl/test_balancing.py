"""Balancers against hand-derived numbers; GradNorm against a double-backward reference."""

import copy
import dataclasses
import inspect
import math

import pytest
import torch
from torch import nn

from mtl.balancing import (
    BALANCERS,
    DynamicWeightAverage,
    GradNorm,
    UncertaintyWeights,
    balancer_from_config,
    build_balancer,
)
from mtl.config import CHOICES, TrainConfig, is_active, small, tiny
from mtl.losses import task_losses
from mtl.model import MultiTaskUNet, SplitFeatures

SCALES = (100.0, 1.0, 0.01)  # losses of very different sizes


class Toy(nn.Module):
    """A shared layer W and three heads; task i's loss is scaled by SCALES[i]."""

    def __init__(self, scales=SCALES, same_heads=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.shared = nn.Linear(4, 6)
        self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in scales)
        if same_heads:
            for head in self.heads[1:]:
                head.load_state_dict(self.heads[0].state_dict())
        self.scales = scales
        self.x = torch.randn(16, 4)
        self.y = torch.randn(16, 1)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.shared.weight]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())

    def losses(self, split: bool = False) -> list[torch.Tensor]:
        """Separate scalar losses, as mtl.losses.task_losses returns them; with `split`, the
        heads read a leaf copy of the shared layer's output (`self.split`, as the model's)."""
        h = torch.tanh(self.shared(self.x))
        self.split = None
        if split:
            self.split = SplitFeatures(encoder=(h,), inputs=(h.detach().requires_grad_(),))
            h = self.split.inputs[0]
        return [
            s * (head(h) - self.y).pow(2).mean()
            for s, head in zip(self.scales, self.heads, strict=True)
        ]


def _grad_norms_on_w(toy: Toy) -> torch.Tensor:
    """||grad_W L_i|| for every task, each from its own backward."""
    return torch.stack(
        [
            torch.autograd.grad(loss, toy.shared.weight, retain_graph=True)[0].norm()
            for loss in toy.losses()
        ]
    )


def _network_step(toy: Toy, balancer, optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    balancer.backward(toy.losses(balancer.needs_split), toy.split)
    optimizer.step()
    if balancer.wants_losses_after_step:
        with torch.no_grad():
            balancer.after_step(toy.losses())


def test_network_gradients_are_those_of_the_weighted_sum():
    toy = Toy()
    balancer = GradNorm([toy.shared.weight], alpha=0.5)
    optimizer = torch.optim.SGD(toy.parameters(), lr=0.01)
    for _ in range(3):  # later steps have weights != 1 and r_i != 1
        weights = balancer.weights.clone()
        expected = torch.autograd.grad(
            (weights * torch.stack(toy.losses())).sum(), list(toy.parameters())
        )
        _network_step(toy, balancer, optimizer)
        for (name, p), g in zip(toy.named_parameters(), expected, strict=True):
            torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=0, msg=name)


def test_grad_norms_and_first_order_weight_gradient_match_the_paper():
    toy = Toy()
    balancer = GradNorm([toy.shared.weight], alpha=0.7, balancer_lr=0.025)
    optimizer = torch.optim.SGD(toy.parameters(), lr=0.01)
    _network_step(toy, balancer, optimizer)  # step 0 fixes L(0); then r_i != 1
    initial = balancer.initial_losses.clone()
    _network_step(toy, balancer, optimizer)

    # Reference for the third step: G_i and dL_grad/dw by double backward, create_graph=True.
    weights = balancer.weights.clone().requires_grad_(True)
    losses = toy.losses()
    grad_norms = torch.stack(
        [
            torch.autograd.grad(weights[i] * losses[i], toy.shared.weight, create_graph=True)[
                0
            ].norm()
            for i in range(3)
        ]
    )
    ratios = torch.stack(losses).detach() / initial
    target = (grad_norms.mean() * (ratios / ratios.mean()) ** 0.7).detach()
    (expected_weight_grad,) = torch.autograd.grad((grad_norms - target).abs().sum(), weights)

    _network_step(toy, balancer, optimizer)
    torch.testing.assert_close(balancer.last_grad_norms, grad_norms.detach(), atol=1e-6, rtol=1e-6)
    # The weight gradient is of order ||grad_W L_i|| (hundreds here): compare relatively.
    torch.testing.assert_close(
        balancer.task_weights.grad, expected_weight_grad, atol=1e-6, rtol=1e-6
    )


def test_weights_stay_positive_sum_to_three_and_shift_from_the_largest_gradient():
    toy = Toy()
    balancer = GradNorm([toy.shared.weight], alpha=0.12)
    optimizer = torch.optim.SGD(toy.parameters(), lr=0.0)  # L_i fixed: r_i = 1 throughout
    norms = _grad_norms_on_w(toy)
    largest, smallest = int(norms.argmax()), int(norms.argmin())
    for _ in range(20):
        _network_step(toy, balancer, optimizer)
        assert balancer.weights.sum().item() == pytest.approx(3.0, abs=1e-5)
        assert (balancer.weights > 0).all()
    assert balancer.weights[largest] < balancer.weights[smallest]


def test_initial_losses_are_taken_once():
    toy = Toy()
    balancer = GradNorm([toy.shared.weight])
    optimizer = torch.optim.SGD(toy.parameters(), lr=0.01)
    first = torch.stack(toy.losses()).detach()
    _network_step(toy, balancer, optimizer)
    for _ in range(5):
        _network_step(toy, balancer, optimizer)
        balancer.end_epoch([1.0, 1.0, 1.0])
    torch.testing.assert_close(balancer.initial_losses, first)
    assert not torch.allclose(torch.stack(toy.losses()).detach(), first)


def test_alpha_zero_with_equal_gradient_norms_keeps_weights_equal():
    toy = Toy(scales=(1.0, 1.0, 1.0), same_heads=True)
    balancer = GradNorm([toy.shared.weight], alpha=0.0)
    optimizer = torch.optim.SGD(toy.parameters(), lr=0.01)
    for _ in range(10):
        _network_step(toy, balancer, optimizer)
    torch.testing.assert_close(balancer.weights, torch.ones(3))


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_a_nan_loss_is_skipped_and_counted(name):
    toy = Toy()
    balancer = build_balancer(name, toy)
    optimizer = torch.optim.SGD(toy.parameters(), lr=0.01)
    _network_step(toy, balancer, optimizer)
    weights = balancer.weights.clone()
    losses = toy.losses(balancer.needs_split)
    losses[1] = losses[1] * math.nan
    optimizer.zero_grad(set_to_none=True)
    balancer.backward(losses, toy.split)
    assert all(p.grad is None for p in toy.parameters())  # the optimizer step is a no-op
    torch.testing.assert_close(balancer.weights, weights)
    assert torch.isfinite(balancer.weights).all()
    assert int(balancer.skipped_steps) == 1


def _grad_norm_batch(size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.randint(0, 256, (8, 1, size, size), dtype=torch.uint8, generator=g),
        "mask": torch.randint(0, 2, (8, 1, size, size), dtype=torch.uint8, generator=g),
        "pattern": torch.randint(0, 7, (8,), generator=g),
        "intensity": torch.randint(0, 2, (8,), generator=g).float(),
    }


def test_gradient_norms_on_the_shared_layer_are_exact_in_fp32():
    torch.manual_seed(0)
    model = MultiTaskUNet.from_config(tiny())
    (shared,) = model.shared_parameters()
    balancer = GradNorm([shared])
    batch = _grad_norm_batch(64)
    losses = task_losses(model(batch["image"]), batch, "dice")
    direct = torch.stack(
        [torch.autograd.grad(loss, shared, retain_graph=True)[0].norm() for loss in losses]
    )
    balancer.backward(losses)
    torch.testing.assert_close(balancer.last_grad_norms, direct, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("seg_loss", ["dice", "bce"])
def test_gradient_norms_under_bf16_autocast_are_each_tasks_own(seg_loss):
    """The flatten head makes the pattern gradient on W 28x (BCE) to 72x (Dice) the
    segmentation one: the setting in which recovering G_seg from the summed bf16 gradient
    went 8% off (Dice). GradNorm's norms are those of each task's own gradient in the same
    bf16 forward (within 1%), and near the fp32 ones."""
    torch.manual_seed(0)
    config = small().replace(head="flatten")
    model = MultiTaskUNet.from_config(config).train()
    (shared,) = model.shared_parameters()
    batch = _grad_norm_batch(config.image_size)

    def own_norms(losses):
        return torch.stack(
            [torch.autograd.grad(loss, shared, retain_graph=True)[0].norm() for loss in losses]
        )

    fp32 = own_norms(task_losses(model(batch["image"]), batch, seg_loss))
    assert fp32[1] > 20 * fp32[0]  # the pattern term dominates
    with torch.autocast("cpu", torch.bfloat16):
        output = model(batch["image"])
    bf16 = own_norms(task_losses(output, batch, seg_loss))
    model.zero_grad(set_to_none=True)
    balancer = GradNorm([shared])
    with torch.autocast("cpu", torch.bfloat16):
        output = model(batch["image"])
    balancer.backward(task_losses(output, batch, seg_loss))
    torch.testing.assert_close(balancer.last_grad_norms, bf16, rtol=0.01, atol=0)
    # bf16's own rounding, which depends on the CPU's instructions: within 1% where it has
    # native bf16 (AVX-512), 2.0% for the mask's norm on an AVX2-only CPU (AMD EPYC).
    torch.testing.assert_close(balancer.last_grad_norms, fp32, rtol=0.05, atol=0)


def test_dwa_follows_the_loss_ratios_of_the_two_previous_epochs():
    dwa = DynamicWeightAverage(num_tasks=3, temperature=2.0)
    dwa.end_epoch([1.0, 1.0, 1.0])
    torch.testing.assert_close(dwa.weights, torch.ones(3))  # one epoch: no ratio yet
    dwa.end_epoch([0.5, 1.0, 2.0])  # ratios 0.5, 1, 2
    e = torch.exp(torch.tensor([0.25, 0.5, 1.0]))
    torch.testing.assert_close(dwa.weights, 3 * e / e.sum())


def test_uncertainty_weights_are_exp_minus_log_variance():
    toy = Toy(scales=(10.0, 1.0, 0.001))
    balancer = UncertaintyWeights([toy.shared.weight], balancer_lr=0.1)
    optimizer = torch.optim.SGD(toy.parameters(), lr=0.0)
    losses = torch.stack(toy.losses()).detach()
    _network_step(toy, balancer, optimizer)
    # Adam's first step is lr * sign(grad); grad_s = 1 - exp(-s) L = 1 - L at s = 0.
    expected_s = -0.1 * torch.sign(1 - losses)
    torch.testing.assert_close(balancer.weights, torch.exp(-expected_s), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_each_balancer_trains_the_tiny_model_and_round_trips(name):
    torch.manual_seed(0)
    model = MultiTaskUNet.from_config(tiny())
    balancer = build_balancer(name, model, alpha=0.5, balancer_lr=0.05)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randint(0, 256, (4, 1, 64, 64), dtype=torch.uint8, generator=g),
        "mask": torch.randint(0, 2, (4, 1, 64, 64), dtype=torch.uint8, generator=g),
        "pattern": torch.tensor([0, 2, 4, 6]),
        "intensity": torch.tensor([0.0, 1.0, 0.0, 1.0]),
    }

    def step(balancer):
        optimizer.zero_grad(set_to_none=True)
        output = model(batch["image"], split=balancer.needs_split)
        total = balancer.backward(task_losses(output, batch, "bce"), output.split)
        optimizer.step()
        if balancer.wants_losses_after_step:
            with torch.no_grad():
                balancer.after_step(task_losses(model(batch["image"]), batch, "bce"))
        return total

    for epoch in range(3):
        for _ in range(2):
            assert torch.isfinite(step(balancer))
        balancer.end_epoch([0.5 + epoch, 1.0, 0.7])
    assert torch.isfinite(balancer.weights).all()

    state = copy.deepcopy(balancer.state_dict())
    restored = build_balancer(name, model, alpha=0.5, balancer_lr=0.05)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.weights, balancer.weights)
    if name == "gradnorm":
        torch.testing.assert_close(restored.initial_losses, balancer.initial_losses)
    # The restored balancer continues exactly as the original would.
    model_state, optimizer_state = (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
    )
    rng = torch.get_rng_state()  # a checkpoint's, for RLW's draws
    step(balancer)
    model.load_state_dict(model_state)
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(rng)
    step(restored)
    torch.testing.assert_close(restored.weights, balancer.weights)


def test_unknown_balancer_lists_the_choices():
    with pytest.raises(ValueError, match="expected one of equal, gradnorm, uncertainty, dwa, rlw"):
        build_balancer("pcgard", Toy())


def test_unknown_balancer_fields_are_refused():
    with pytest.raises(TypeError, match="no balancer reads alhpa; they read alpha, balancer_lr"):
        build_balancer("gradnorm", Toy(), alhpa=0.5)


def test_the_config_names_every_balancer_of_the_registry():
    assert tuple(BALANCERS) == CHOICES["balancer"]


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_a_balancer_reads_exactly_the_config_fields_its_constructor_takes(name):
    """`reads` is what build_balancer passes: each a TrainConfig field and a keyword of the
    constructor, and no other TrainConfig field is a keyword of it."""
    cls = BALANCERS[name]
    keywords = set(inspect.signature(cls.__init__).parameters)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(cls.reads) <= fields
    assert keywords & fields == set(cls.reads)


def test_a_balancer_gets_the_configuration_values_it_reads():
    toy = Toy()
    config = TrainConfig(balancer="gradnorm", alpha=0.7, balancer_lr=0.3)
    gradnorm = balancer_from_config(config, toy)
    assert gradnorm.alpha == 0.7 and gradnorm.optimizer.param_groups[0]["lr"] == 0.3
    uncertainty = balancer_from_config(config.replace(balancer="uncertainty"), toy)
    assert uncertainty.optimizer.param_groups[0]["lr"] == 0.3
    famo = balancer_from_config(config.replace(balancer="famo", famo_decay=0.02), toy)
    assert famo.optimizer.param_groups[0]["lr"] == 0.3
    assert famo.optimizer.param_groups[0]["weight_decay"] == 0.02
    assert balancer_from_config(config.replace(balancer="cagrad", cagrad_c=0.7), toy).c == 0.7
    fixed = config.replace(balancer="fixed", fixed_seg=2.0, fixed_pattern=1.0, tasks="seg,pattern")
    assert balancer_from_config(fixed, toy).weights.tolist() == pytest.approx([4 / 3, 2 / 3])
    # One call builds every balancer alike: a field a balancer does not read is ignored.
    assert build_balancer("equal", toy, alpha=0.7, balancer_lr=0.3).weights.tolist() == [1.0] * 3


def test_the_declared_fields_decide_what_is_active(monkeypatch):
    assert is_active("alpha", "gradnorm") and not is_active("alpha", "uncertainty")
    assert is_active("balancer_lr", "uncertainty") and not is_active("balancer_lr", "dwa")
    assert is_active("lr", "equal")  # no balancer reads lr: it means something to every fold
    assert not is_active("alpha", "no such balancer")
    monkeypatch.setattr(DynamicWeightAverage, "reads", ("alpha",))
    assert is_active("alpha", "dwa")
    monkeypatch.setattr(GradNorm, "reads", ("balancer_lr",))
    monkeypatch.setattr(DynamicWeightAverage, "reads", ())
    assert is_active("alpha", "equal")  # read by none now
