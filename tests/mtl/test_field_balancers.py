"""The balancers the field compares, each against its definition: RLW's distribution, FAMO's
update worked by hand, fixed weights against equal, and the gradient aggregations' update
against TorchJD's aggregator applied to a Jacobian taken here, one task at a time."""

import math

import pytest
import torch
from torch import nn

from mtl.balancing import BALANCERS, FAMO, JacobianDescent, build_balancer
from mtl.config import tiny
from mtl.losses import task_losses
from mtl.model import MultiTaskUNet, SplitFeatures

AGGREGATIONS = sorted(n for n, c in BALANCERS.items() if issubclass(c, JacobianDescent))


def _scalar_losses(values) -> list[torch.Tensor]:
    return [torch.tensor(float(v), requires_grad=True) for v in values]


def test_rlw_draws_softmax_of_a_standard_normal_every_step():
    """Lin et al. 2022: w = softmax(e), e ~ N(0, I_K). Then log w_i - mean_j log w_j =
    e_i - mean(e), whose covariance is I - 11'/K: variance 1 - 1/K, covariance -1/K, and
    normal (skew 0, kurtosis 3). Dirichlet(1) weights, say, would have variance 1.10."""
    torch.manual_seed(0)
    rlw = build_balancer("rlw", None)
    draws = 20_000
    weights = torch.empty(draws, 3, dtype=torch.float64)
    for n in range(draws):
        rlw.backward(_scalar_losses([1.0, 2.0, 3.0]))
        weights[n] = rlw.weights
    assert (weights > 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(draws, dtype=torch.float64))
    # Each weight's mean is 1/K by symmetry (its spread is about 0.2: SE 0.0015).
    torch.testing.assert_close(weights.mean(0), torch.full((3,), 1 / 3, dtype=torch.float64),
                               atol=0.006, rtol=0)  # fmt: skip
    centred = weights.log() - weights.log().mean(1, keepdim=True)
    covariance = torch.cov(centred.T)
    expected = torch.eye(3, dtype=torch.float64) - 1 / 3
    # The sample variance of N(0, 2/3) has SE 2/3 * sqrt(2 / 20000) = 0.0067.
    torch.testing.assert_close(covariance, expected, atol=0.03, rtol=0)
    z = centred[:, 0] / math.sqrt(2 / 3)
    assert abs(z.mean()) < 0.03
    assert abs((z**3).mean()) < 0.1  # skew of a normal: 0 (SE 0.017)
    assert abs((z**4).mean() - 3) < 0.2  # kurtosis of a normal: 3 (SE 0.035)


def test_rlw_takes_the_gradient_of_the_drawn_weighted_sum():
    torch.manual_seed(3)
    rlw = build_balancer("rlw", None)
    losses = _scalar_losses([1.0, 2.0, 3.0])
    rlw.backward(losses)
    torch.testing.assert_close(torch.stack([loss.grad for loss in losses]), rlw.weights)


class Quadratic(nn.Module):
    """Two tasks on one scalar theta: L1 = (theta - 1)^2 + 1, L2 = 2 (theta + 1)^2 + 0.5."""

    def __init__(self):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def losses(self) -> list[torch.Tensor]:
        return [(self.theta - 1) ** 2 + 1, 2 * (self.theta + 1) ** 2 + 0.5]


def _famo_by_hand(steps: int, lr: float, beta: float, gamma: float) -> list[tuple]:
    """FAMO's Algorithm on Quadratic, in plain floats: theta and the logits xi after each
    step. The logits' Adam (the authors' code: Adam with weight decay gamma, torch's
    defaults otherwise) is written out."""
    theta, xi = 0.0, [0.0, 0.0]
    m, v = [0.0, 0.0], [0.0, 0.0]
    b1, b2, eps = 0.9, 0.999, 1e-8
    history = []
    for t in range(1, steps + 1):
        losses = [(theta - 1) ** 2 + 1, 2 * (theta + 1) ** 2 + 0.5]
        grads = [2 * (theta - 1), 4 * (theta + 1)]
        e = [math.exp(x) for x in xi]
        z = [x / sum(e) for x in e]
        c = 1 / sum(zi / (li + 1e-8) for zi, li in zip(z, losses, strict=True))
        theta -= lr * sum(
            c * zi / (li + 1e-8) * gi for zi, li, gi in zip(z, losses, grads, strict=True)
        )
        after = [(theta - 1) ** 2 + 1, 2 * (theta + 1) ** 2 + 0.5]
        delta = [
            math.log(b + 1e-8) - math.log(a + 1e-8) for b, a in zip(losses, after, strict=True)
        ]
        mean = sum(zi * di for zi, di in zip(z, delta, strict=True))
        g = [
            zi * (di - mean) + gamma * x for zi, di, x in zip(z, delta, xi, strict=True)
        ]  # J_z' delta
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        xi = [x - beta * (mi / (1 - b1**t)) / (math.sqrt(vi / (1 - b2**t)) + eps)
              for x, mi, vi in zip(xi, m, v, strict=True)]  # fmt: skip
        history.append((theta, xi))
    return history


def test_famo_follows_the_papers_update_on_a_two_task_quadratic():
    """Step 1 by hand: L = (2, 2.5), dL = (-2, 4), z = (1/2, 1/2), c = 1/(1/4 + 1/5) = 20/9,
    gradient (20/9)(1/4 * -2 + 1/5 * 4) = 2/3, theta = -0.1 * 2/3 = -1/15. The losses fall
    to (2.1378, 2.2422): task 1's rose, so delta_1 = log 2 - log 2.1378 < 0 < delta_2, and
    Adam's first step (lr * sign) moves the logits to (+0.025, -0.025): task 1 gains weight.
    Steps 2 to 5 follow the same rule, written out in _famo_by_hand."""
    model = Quadratic()
    famo = FAMO(num_tasks=2, balancer_lr=0.025, famo_decay=1e-3).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    by_hand = _famo_by_hand(5, lr=0.1, beta=0.025, gamma=1e-3)
    assert by_hand[0][0] == pytest.approx(-1 / 15)
    assert by_hand[0][1] == pytest.approx([0.025, -0.025], rel=1e-6)
    for theta, xi in by_hand:
        optimizer.zero_grad(set_to_none=True)
        famo.backward(model.losses())
        optimizer.step()
        with torch.no_grad():
            famo.after_step(model.losses())
        assert model.theta.item() == pytest.approx(theta, rel=1e-9)
        assert famo.logits.tolist() == pytest.approx(xi, rel=1e-6, abs=1e-9)
    torch.testing.assert_close(famo.weights, 2 * torch.softmax(famo.logits.detach(), 0))


def test_famo_matches_torchjds_implementation():
    """A second reading of the paper (TorchJD's scalarizer, adapted from the authors' code)
    takes the same steps."""
    from torchjd.scalarization import FAMO as TorchJDFAMO

    ours, theirs = Quadratic(), Quadratic()
    famo = FAMO(num_tasks=2, balancer_lr=0.025, famo_decay=1e-3).double()
    reference = TorchJDFAMO(2, lr=0.025, weight_decay=1e-3).double()
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, theirs)]
    for _ in range(5):
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        famo.backward(ours.losses())
        reference(torch.stack(theirs.losses())).backward()
        for optimizer in optimizers:
            optimizer.step()
        with torch.no_grad():
            famo.after_step(ours.losses())
            reference.update(torch.stack(theirs.losses()))
        torch.testing.assert_close(ours.theta, theirs.theta, rtol=1e-9, atol=0)
        torch.testing.assert_close(famo.logits, reference._w, rtol=1e-7, atol=1e-10)


def test_famo_learns_nothing_from_a_step_it_did_not_take():
    famo = FAMO(num_tasks=2)
    famo.backward(_scalar_losses([1.0, math.nan]))  # skipped: no step
    famo.after_step(_scalar_losses([1.0, 2.0]))
    assert famo.logits.tolist() == [0.0, 0.0]


def _batch(n: int = 4, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g),
        "mask": torch.randint(0, 2, (n, 1, size, size), dtype=torch.uint8, generator=g),
        "pattern": torch.tensor([0, 2, 4, 6][:n]),
        "intensity": torch.tensor([0.0, 1.0, 0.0, 1.0][:n]),
    }


def _train(balancer_name: str, steps: int = 3, **fields) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = MultiTaskUNet.from_config(tiny()).train()
    balancer = build_balancer(balancer_name, model, **fields)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = _batch()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(task_losses(model(batch["image"]), batch, "dice"))
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("weight", [1.0, 1 / 3, 0.2])
def test_fixed_weights_at_equal_values_train_exactly_as_equal(weight):
    equal = _train("equal")
    fixed = _train("fixed", fixed_seg=weight, fixed_pattern=weight, fixed_intensity=weight)
    assert all(torch.equal(a, b) for a, b in zip(equal, fixed, strict=True))
    unequal = _train("fixed", fixed_seg=2.0)
    assert not all(torch.equal(a, b) for a, b in zip(equal, unequal, strict=True))


def test_fixed_weights_lie_on_the_simplex_times_the_tasks():
    weights = build_balancer("fixed", None, fixed_seg=1.0, fixed_pattern=3.0, fixed_intensity=4.0)
    torch.testing.assert_close(weights.weights, torch.tensor([3 / 8, 9 / 8, 12 / 8]))
    two = build_balancer("fixed", None, tasks=("pattern", "intensity"), fixed_pattern=3.0,
                         fixed_intensity=1.0)  # fmt: skip
    torch.testing.assert_close(two.weights, torch.tensor([1.5, 0.5]))


class Chain(nn.Module):
    """Two shared layers whose outputs the heads read as a U-Net's do: the 'segmentation'
    head reads both (a skip and the bottleneck), the two others the deeper one only. The
    third head is the second's times -1/2, on the same targets: their gradients on the
    shared layers point apart (conflict), and the plain mean of the three favours some task
    at another's cost. `seg=False`: the two conflicting heads alone."""

    def __init__(self, seg: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(4, 5), nn.Linear(5, 6)
        self.seg = nn.Linear(11, 1) if seg else None
        self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(2))
        with torch.no_grad():
            self.heads[1].weight.copy_(-0.5 * self.heads[0].weight)
            for head in self.heads:
                head.bias.zero_()
        self.x = torch.randn(16, 4)
        self.y = torch.randn(16, 1)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.second.weight]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [*self.first.parameters(), *self.second.parameters()]

    def task_parameters(self) -> list[list[nn.Parameter]]:
        heads = [list(h.parameters()) for h in self.heads]
        return heads if self.seg is None else [list(self.seg.parameters()), *heads]

    def losses(self, split: bool = False) -> tuple[list[torch.Tensor], SplitFeatures | None]:
        h1 = torch.tanh(self.first(self.x))
        h2 = torch.tanh(self.second(h1))
        cut = None
        if split:
            leaves = (h1.detach().requires_grad_(), h2.detach().requires_grad_())
            cut = SplitFeatures((h1, h2), leaves)
            h1, h2 = leaves
        losses = [(head(h2) - self.y).pow(2).mean() for head in self.heads]
        if self.seg is not None:
            losses.insert(0, (self.seg(torch.cat([h1, h2], 1)) - self.y).pow(2).mean())
        return losses, cut


def _jacobian_by_hand(model: Chain) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """J on the shared parameters (one task's backward at a time, no split), and each task's
    gradient on its own parameters."""
    losses, _ = model.losses()
    rows, own = [], []
    for loss, params in zip(losses, model.task_parameters(), strict=True):
        grads = torch.autograd.grad(loss, model.encoder_parameters(), retain_graph=True)
        rows.append(torch.cat([g.flatten() for g in grads]))
        own.append(list(torch.autograd.grad(loss, params, retain_graph=True)))
    return torch.stack(rows), own


def _update(model: Chain, balancer) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    losses, cut = model.losses(split=True)
    balancer.backward(losses, cut)
    return torch.cat([p.grad.flatten() for p in model.encoder_parameters()])


def _aggregator(name: str, tasks: int):
    from torchjd import aggregation

    return {
        "upgrad": lambda: aggregation.UPGrad(),
        "pcgrad": lambda: aggregation.PCGrad(),
        "mgda": lambda: aggregation.MGDA(),
        "cagrad": lambda: aggregation.CAGrad(c=0.4),
        "nashmtl": lambda: aggregation.NashMTL(n_tasks=tasks),
    }[name]()


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_the_update_is_the_aggregator_applied_to_the_jacobian(name):
    model = Chain()
    jacobian, own = _jacobian_by_hand(model)
    assert (jacobian @ jacobian.T < 0).any()  # the tasks conflict: the aggregators differ
    balancer = build_balancer(name, model)
    torch.manual_seed(5)  # PCGrad projects in a random order
    update = _update(model, balancer)
    torch.manual_seed(5)
    expected = _aggregator(name, 3)(jacobian)
    torch.testing.assert_close(update, expected, rtol=1e-5, atol=1e-7)
    for params, grads in zip(model.task_parameters(), own, strict=True):
        for p, g in zip(params, grads, strict=True):
            torch.testing.assert_close(p.grad, g)  # each head: its own task's gradient
    assert torch.isfinite(balancer.weights).all()


def test_pcgrad_projects_each_conflicting_gradient_off_the_other():
    """Two tasks: g1' = g1 - (g1.g2 / |g2|^2) g2 where g1.g2 < 0, and alike for g2; the
    update is g1' + g2', and each projection has no negative inner product with the other
    task's gradient (it is 0)."""
    model = Chain(seg=False)
    jacobian, _ = _jacobian_by_hand(model)
    g1, g2 = jacobian
    assert g1 @ g2 < 0
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    update = _update(model, build_balancer("pcgrad", model, tasks=("pattern", "intensity")))
    torch.testing.assert_close(update, p1 + p2, rtol=1e-5, atol=1e-7)
    assert p1 @ g2 >= -1e-6 and p2 @ g1 >= -1e-6


@pytest.mark.parametrize("name", ["upgrad", "mgda"])
def test_the_update_conflicts_with_no_tasks_gradient(name):
    model = Chain()
    jacobian, _ = _jacobian_by_hand(model)
    mean = jacobian.mean(0)
    assert (jacobian @ mean < 0).any()  # the plain mean would make some task worse
    update = _update(model, build_balancer(name, model))
    assert update.norm() > 0
    assert (jacobian @ update >= -1e-6 * update.norm() * jacobian.norm(dim=1)).all()


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_a_bf16_autocast_step_in_channels_last_stays_finite(name):
    torch.manual_seed(0)
    model = MultiTaskUNet.from_config(tiny()).train().channels_last()
    balancer = build_balancer(name, model)
    batch = _batch()
    with torch.autocast("cpu", torch.bfloat16):
        output = model(batch["image"], split=True)
    total = balancer.backward(task_losses(output, batch, "dice"), output.split)
    assert torch.isfinite(total)
    assert torch.isfinite(balancer.weights).all()
    for name_, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name_
    assert all(p.grad is not None for p in model.encoder_parameters())


def test_an_aggregation_without_the_split_features_says_what_it_needs():
    model = Chain()
    losses, _ = model.losses()
    with pytest.raises(ValueError, match="split=True"):
        build_balancer("upgrad", model).backward(losses)


def test_an_aggregation_whose_solver_fails_skips_the_step(monkeypatch):
    model = Chain()
    balancer = build_balancer("mgda", model)
    monkeypatch.setattr(balancer.aggregator.weighting, "forward",
                        lambda gramian: torch.full((3,), math.nan))  # fmt: skip
    losses, cut = model.losses(split=True)
    balancer.backward(losses, cut)
    assert balancer.nonfinite_tasks == (0, 1, 2) and int(balancer.skipped_steps) == 1
    assert torch.isfinite(balancer.weights).all()
