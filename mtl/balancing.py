"""Loss balancers: how the three task losses become one gradient.

Every balancer is an nn.Module with the same interface and no state injected from outside:

    balancer = build_balancer("gradnorm", model.shared_parameters(), alpha=0.12)
    total = balancer.backward(task_losses)  # fills every network parameter's .grad
    optimizer.step()                        # the network's own optimizer
    balancer.weights                        # the task weights backward will use next
    balancer.end_epoch(mean_task_losses)    # a no-op except where a method needs it (DWA)

`backward` leaves in the network's `.grad` exactly the gradient of sum_i w_i L_i with the
weights of this step, and then updates the weights for the next one. A step whose task losses
are not all finite leaves the network's gradients untouched (so the optimizer step changes
nothing) and the weights unchanged, and is counted in `skipped_steps`.

A balancer class declares the TrainConfig fields it reads (`reads`); they are its constructor's
keyword arguments of the same names, and the only fields `build_balancer` passes it. That
declaration is the one place it is said: `mtl.config.is_active` reads it, and with it a
search, the result tables and the trackers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mtl.config import ALPHA, BALANCER_LR, TrainConfig, check_registry


class Balancer(nn.Module):
    """Shared plumbing: the non-finite guard and the skip counter."""

    # The TrainConfig fields this balancer reads, each a keyword argument of its constructor.
    reads: tuple[str, ...] = ()

    def __init__(self, num_tasks: int):
        super().__init__()
        self.num_tasks = num_tasks
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        # The tasks (indices) whose loss was not finite in the last step; () after a step
        # that was taken. A caller undoes what its forward pass changed when it is not empty.
        self.nonfinite_tasks: tuple[int, ...] = ()

    @property
    def weights(self) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, task_losses: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fill the network's gradients with those of sum_i w_i L_i; return that sum.

        Pass the task losses as separate tensors, not slices of one stacked tensor: a
        gradient of one slice would flow back through every task's graph.
        """
        losses = tuple(task_losses)
        if len(losses) != self.num_tasks:
            raise ValueError(f"expected {self.num_tasks} task losses, got {len(losses)}")
        values = torch.stack([loss.detach() for loss in losses])
        # One host sync per step; the price of never feeding a NaN to the optimizers.
        finite = torch.isfinite(values)
        if not finite.all():
            self.skipped_steps += 1
            self.nonfinite_tasks = tuple((~finite).nonzero().flatten().tolist())
            return (self.weights * values).sum()
        self.nonfinite_tasks = ()
        return self._backward(losses, values)

    def _backward(self, losses: tuple[torch.Tensor, ...], values: torch.Tensor) -> torch.Tensor:
        """sum_i w_i L_i with the weights as constants: the step of the balancers whose
        weights are not learned by gradient (equal, DWA); the others override it."""
        total = (self.weights * torch.stack(losses)).sum()
        total.backward()
        return total.detach()

    def end_epoch(self, mean_task_losses: Sequence[float]) -> None:
        del mean_task_losses

    # A balancer with learned weights has its own `optimizer`, whose state belongs to the
    # balancer's state_dict (and so to every checkpoint).
    def get_extra_state(self) -> dict:
        optimizer = getattr(self, "optimizer", None)
        return {"optimizer": optimizer.state_dict()} if optimizer is not None else {}

    def set_extra_state(self, state: dict) -> None:
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


class EqualWeights(Balancer):
    """Constant weights 1: the plain sum of the task losses (the original baseline)."""

    def __init__(self, shared_parameters: Sequence[nn.Parameter] = (), *, num_tasks: int = 3):
        super().__init__(num_tasks)
        self.register_buffer("_weights", torch.ones(num_tasks))

    @property
    def weights(self) -> torch.Tensor:
        return self._weights


class GradNorm(Balancer):
    """GradNorm, Chen, Badrinarayanan, Lee and Rabinovich 2018 (arXiv:1711.02257), exactly.

    - L_i(0) is taken once, at the first backward (of the fold), detached.
    - G_i = ||grad_W (w_i L_i)||_2 on the shared weights W; L~_i = L_i / L_i(0);
      r_i = L~_i / mean(L~); target_i = mean(G) * r_i^alpha, treated as a constant.
    - L_grad = sum_i |G_i - target_i|. The weights receive only its first-order gradient,
      dL_grad/dw_i = sign(G_i - target_i) * ||grad_W L_i||: no create_graph, and nothing of
      L_grad reaches the network.
    - The weights have their own Adam (lr 0.025 in the paper); after each step they are
      floored at `floor` and renormalised to sum to the number of tasks.

    Cost: each grad_W L_i is taken on its own, before the main backward. Those of the two
    classification heads are cheap (W is the encoder's last layer, the heads sit right on
    it); the segmentation one runs the decoder's backward a second time, input gradients
    only (bench/balancer_cost.py measures the price). It is not recovered by subtracting the
    heads' terms from grad_W sum_i w_i L_i: under bf16 autocast that sum is dominated by the
    pattern head (hundreds of times the segmentation term) and rounded, so the difference
    would be mostly rounding error.
    """

    reads = ("alpha", "balancer_lr")

    def __init__(
        self,
        shared_parameters: Sequence[nn.Parameter],
        *,
        num_tasks: int = 3,
        alpha: float = ALPHA,
        balancer_lr: float = BALANCER_LR,
        floor: float = 1e-3,
    ):
        super().__init__(num_tasks)
        self.shared = list(shared_parameters)
        if not self.shared:
            raise ValueError("GradNorm needs the shared parameters W (model.shared_parameters())")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha, self.floor = alpha, floor
        self.task_weights = nn.Parameter(torch.ones(num_tasks))
        self.optimizer = torch.optim.Adam([self.task_weights], lr=balancer_lr)
        self.register_buffer("initial_losses", torch.full((num_tasks,), math.nan))
        self.register_buffer("last_grad_norms", torch.zeros(num_tasks))

    @property
    def weights(self) -> torch.Tensor:
        return self.task_weights.detach()

    def _backward(self, losses: tuple[torch.Tensor, ...], values: torch.Tensor) -> torch.Tensor:
        # L(0) at the first step, without asking the device whether this is the first step.
        first = torch.isnan(self.initial_losses)
        self.initial_losses.copy_(torch.where(first, values, self.initial_losses))
        weights = self.task_weights.detach().clone()  # this step's weights
        # Every task's gradient on W taken on its own: from the segmentation loss through
        # the decoder (its input gradients only), from each head's loss through that head.
        # Never recovered by subtracting the heads from the summed gradient: under bf16 the
        # sum is dominated by the pattern head and the difference is mostly rounding.
        grads = [self._grad_on_shared(loss) for loss in losses]
        total = (weights * torch.stack(losses)).sum()
        total.backward()
        self._update(values, weights, grads)
        return total.detach()

    def _grad_on_shared(self, loss: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, self.shared, retain_graph=True, allow_unused=True)
        return [
            torch.zeros_like(p) if g is None else g for p, g in zip(self.shared, grads, strict=True)
        ]

    def _update(
        self, losses: torch.Tensor, weights: torch.Tensor, grads: list[list[torch.Tensor]]
    ) -> None:
        norms = torch.stack(
            [torch.sqrt(sum((g.double() ** 2).sum() for g in task)) for task in grads]
        ).float()
        grad_norms = weights * norms  # G_i
        ratios = losses / self.initial_losses  # L~_i
        target = grad_norms.mean() * (ratios / ratios.mean()) ** self.alpha
        self.last_grad_norms.copy_(grad_norms)
        # |G_i - target_i| has subgradient 0 at 0. Differences at rounding level count as 0:
        # Adam scales any nonzero gradient to a step of size lr, noise included.
        gap = grad_norms - target
        gap = torch.where(gap.abs() <= 1e-6 * grad_norms.mean(), torch.zeros_like(gap), gap)
        self.optimizer.zero_grad(set_to_none=True)
        self.task_weights.grad = torch.sign(gap) * norms
        self.optimizer.step()
        with torch.no_grad():
            clamped = self.task_weights.clamp(min=self.floor)
            self.task_weights.copy_(clamped * self.num_tasks / clamped.sum())


class UncertaintyWeights(Balancer):
    """Kendall, Gal and Cipolla 2018 (arXiv:1705.07115): learned homoscedastic uncertainty.

    Total = sum_i exp(-s_i) L_i + s_i with s_i = log sigma_i^2 learned by its own Adam, so the
    task weights are w_i = exp(-s_i) (they need not sum to the number of tasks).
    """

    reads = ("balancer_lr",)

    def __init__(
        self,
        shared_parameters: Sequence[nn.Parameter] = (),
        *,
        num_tasks: int = 3,
        balancer_lr: float = BALANCER_LR,
    ):
        super().__init__(num_tasks)
        self.log_variances = nn.Parameter(torch.zeros(num_tasks))
        self.optimizer = torch.optim.Adam([self.log_variances], lr=balancer_lr)

    @property
    def weights(self) -> torch.Tensor:
        return torch.exp(-self.log_variances.detach())

    def _backward(self, losses: tuple[torch.Tensor, ...], values: torch.Tensor) -> torch.Tensor:
        weights = self.weights
        total = (weights * torch.stack(losses)).sum()
        total.backward()
        # d/ds_i [exp(-s_i) L_i + s_i] = 1 - exp(-s_i) L_i, with L_i detached from the network.
        self.optimizer.zero_grad(set_to_none=True)
        self.log_variances.grad = 1 - weights * values
        self.optimizer.step()
        return total.detach()


class DynamicWeightAverage(Balancer):
    """Dynamic Weight Average, Liu, Johns and Davison 2019 (arXiv:1803.10704).

    w_i(t) = K exp(r_i / T) / sum_j exp(r_j / T) with r_i = L_i(t-1) / L_i(t-2), the ratio of
    the mean training losses of the two previous epochs; weights 1 for the first two epochs.
    """

    def __init__(
        self,
        shared_parameters: Sequence[nn.Parameter] = (),
        *,
        num_tasks: int = 3,
        temperature: float = 2.0,
    ):
        super().__init__(num_tasks)
        self.temperature = temperature
        self.register_buffer("_weights", torch.ones(num_tasks))
        self.register_buffer("history", torch.full((2, num_tasks), math.nan))  # L(t-2), L(t-1)

    @property
    def weights(self) -> torch.Tensor:
        return self._weights

    def end_epoch(self, mean_task_losses: Sequence[float]) -> None:
        latest = torch.as_tensor(
            mean_task_losses, dtype=self.history.dtype, device=self.history.device
        )
        if not torch.isfinite(latest).all():
            return  # keep the last good history rather than poison the next weights
        self.history.copy_(torch.stack([self.history[1], latest]))
        if torch.isfinite(self.history).all():
            ratios = self.history[1] / self.history[0]
            self._weights.copy_(self.num_tasks * torch.softmax(ratios / self.temperature, 0))


# TrainConfig.balancer: name -> class.
BALANCERS: dict[str, type[Balancer]] = {
    "equal": EqualWeights,
    "gradnorm": GradNorm,
    "uncertainty": UncertaintyWeights,
    "dwa": DynamicWeightAverage,
}
check_registry("balancer", BALANCERS)


def build_balancer(
    name: str,
    shared_parameters: Sequence[nn.Parameter],
    *,
    num_tasks: int = 3,
    **fields: float,
) -> Balancer:
    """The balancer `name`, given balancer fields of TrainConfig by name (alpha=...,
    balancer_lr=...): it gets those it reads, ignores the others (so that one call builds
    every balancer alike), and a field not given keeps its default."""
    if name not in BALANCERS:
        raise ValueError(f"unknown balancer {name!r}; expected one of {', '.join(BALANCERS)}")
    known = sorted({field for cls in BALANCERS.values() for field in cls.reads})
    if unknown := sorted(set(fields) - set(known)):
        raise TypeError(f"no balancer reads {', '.join(unknown)}; they read {', '.join(known)}")
    cls = BALANCERS[name]
    return cls(
        list(shared_parameters),
        num_tasks=num_tasks,
        **{field: value for field, value in fields.items() if field in cls.reads},
    )


def balancer_from_config(
    config: TrainConfig, shared_parameters: Sequence[nn.Parameter]
) -> Balancer:
    """The balancer `config` names, with the configuration's values of the fields it reads."""
    cls = BALANCERS[config.balancer]
    fields = {field: getattr(config, field) for field in cls.reads}
    return cls(list(shared_parameters), num_tasks=len(config.tasks), **fields)
