"""Loss balancers: how the task losses become one update of the network.

Every balancer is an nn.Module with the same interface and no state injected from outside:

    balancer = build_balancer("gradnorm", model, alpha=0.12)
    output = model(images, split=balancer.needs_split)
    total = balancer.backward(task_losses, output.split)  # fills the network's .grad
    optimizer.step()                        # the network's own optimizer
    balancer.after_step(losses_again)       # FAMO only (`wants_losses_after_step`)
    balancer.weights                        # the task weights of the last (or next) step
    balancer.end_epoch(mean_task_losses)    # a no-op except where a method needs it (DWA)

Two families. The loss weightings (equal, gradnorm, uncertainty, dwa, rlw, famo, fixed)
leave in the network's `.grad` exactly the gradient of sum_i w_i L_i with this step's
weights. The gradient aggregations (upgrad, pcgrad, mgda, cagrad, nashmtl; TorchJD's
implementations, `JacobianDescent`) give each head the gradient of its own task's loss and
the encoder the aggregation of the tasks' gradients on it (Jacobian descent).

A step whose task losses are not all finite leaves the network's gradients untouched (so
the optimizer step changes nothing) and the weights unchanged, and is counted in
`skipped_steps`.

A balancer class declares the TrainConfig fields it reads (`reads`); they are its constructor's
keyword arguments of the same names, and the only fields `build_balancer` passes it. That
declaration is the one place it is said: `mtl.config.is_active` reads it, and with it a
search, the result tables and the trackers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from mtl.config import (
    ALPHA,
    BALANCER_LR,
    CAGRAD_C,
    FAMO_DECAY,
    TrainConfig,
    check_registry,
)
from mtl.schema import TASKS


class Network(Protocol):
    """What a balancer is built for: mtl.model.MultiTaskUNet, or a test's toy network."""

    def shared_parameters(self) -> list[nn.Parameter]:
        """W: the last shared weight tensor (GradNorm's gradient norms are taken on it)."""

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Every shared parameter (the gradient aggregations work on them all)."""


class Balancer(nn.Module):
    """Shared plumbing: the non-finite guard and the skip counter."""

    # The TrainConfig fields this balancer reads, each a keyword argument of its constructor.
    reads: tuple[str, ...] = ()
    # Whether the trainer calls `after_step` with the task losses of the same batch after
    # the optimizer step (FAMO learns its weights from how much each loss fell).
    wants_losses_after_step = False
    # Whether backward needs the network's features split from the heads
    # (mtl.model.SplitFeatures: the gradient aggregations).
    needs_split = False

    def __init__(self, num_tasks: int):
        super().__init__()
        self.num_tasks = num_tasks
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        # The tasks (indices) whose loss was not finite in the last step; () after a step
        # that was taken. A caller undoes what its forward pass changed when it is not empty.
        self.nonfinite_tasks: tuple[int, ...] = ()

    @classmethod
    def build(cls, network: Network | None, tasks: Sequence[str], **fields: float) -> Balancer:
        """This balancer for `network`, training `tasks`, with the fields it reads (None: a
        balancer that needs no parameters, for a test)."""
        shared = network.shared_parameters() if network is not None else []
        return cls(shared, num_tasks=len(tasks), **fields)

    @property
    def weights(self) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, task_losses: Sequence[torch.Tensor], split=None) -> torch.Tensor:
        """Fill the network's gradients (those of sum_i w_i L_i for a loss weighting); return
        sum_i w_i L_i. `split`: the features the losses were computed from, cut from the
        heads (MultiTaskOutput.split of a forward with split=True), where `needs_split`.

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
        return self._backward(losses, values, split)

    def _backward(
        self, losses: tuple[torch.Tensor, ...], values: torch.Tensor, split
    ) -> torch.Tensor:
        """sum_i w_i L_i with the weights as constants: the step of the balancers whose
        weights are not learned by gradient (equal, DWA, fixed); the others override it."""
        total = (self.weights * torch.stack(losses)).sum()
        total.backward()
        return total.detach()

    def after_step(self, task_losses: Sequence[torch.Tensor]) -> None:
        """The task losses of the step's batch after the optimizer step; used where
        `wants_losses_after_step`."""
        del task_losses

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

    def _backward(self, losses, values, split) -> torch.Tensor:
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

    def _backward(self, losses, values, split) -> torch.Tensor:
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


class RandomWeights(Balancer):
    """Random loss weighting (RLW), Lin, Ye, Xu, Shi and Zhang 2022 ("Reasonable
    effectiveness of random weighting: a litmus test for multi-task learning", TMLR;
    arXiv:2111.10603): at every step w = softmax(e), e ~ N(0, I), a new draw.

    The draw comes from torch's generator on the losses' device, whose state every
    checkpoint saves: a resumed fold draws what the uninterrupted one would have.
    """

    def __init__(self, shared_parameters: Sequence[nn.Parameter] = (), *, num_tasks: int = 3):
        super().__init__(num_tasks)
        self.register_buffer("_weights", torch.full((num_tasks,), 1 / num_tasks))

    @property
    def weights(self) -> torch.Tensor:
        return self._weights  # the last step's draw

    def _backward(self, losses, values, split) -> torch.Tensor:
        draw = torch.randn(self.num_tasks, device=values.device, dtype=values.dtype)
        self._weights.copy_(torch.softmax(draw, dim=0))
        return super()._backward(losses, values, split)


class FAMO(Balancer):
    """Fast Adaptive Multitask Optimization, Liu, Liang, Stone and Liu 2023 (NeurIPS;
    arXiv:2306.03792), as its Algorithm and the authors' code do it.

    - Task-weight logits xi (zeros at the start), z = softmax(xi).
    - The step: the network's gradient is sum_i c z_i / L_i grad L_i with c = 1 / sum_j
      (z_j / L_j), the gradient of c sum_i z_i log L_i with c held constant (the lower
      bounds b_i of the paper are 0, an epsilon of 1e-8 is added to every L_i).
    - After the network's step, the same batch's losses L_i' give delta_i = log L_i -
      log L_i'; xi takes one step of its own Adam (lr `balancer_lr`, 0.025 in the paper)
      along J_z(xi)^T delta, with weight decay `famo_decay` (gamma, 1e-3 in the paper), so
      that tasks whose loss fell least gain weight.

    `weights` reports K z (summing to the number of tasks, as equal weights do); the weights
    of a step's gradient are c z_i / L_i.
    """

    reads = ("balancer_lr", "famo_decay")
    wants_losses_after_step = True
    EPSILON = 1e-8

    def __init__(
        self,
        shared_parameters: Sequence[nn.Parameter] = (),
        *,
        num_tasks: int = 3,
        balancer_lr: float = BALANCER_LR,
        famo_decay: float = FAMO_DECAY,
    ):
        super().__init__(num_tasks)
        self.logits = nn.Parameter(torch.zeros(num_tasks))
        self.optimizer = torch.optim.Adam([self.logits], lr=balancer_lr, weight_decay=famo_decay)
        # The losses of the step whose after_step is awaited (NaN: none awaited).
        self.register_buffer("before", torch.full((num_tasks,), math.nan))

    @property
    def weights(self) -> torch.Tensor:
        return self.num_tasks * torch.softmax(self.logits.detach(), dim=0)

    def _backward(self, losses, values, split) -> torch.Tensor:
        z = torch.softmax(self.logits.detach(), dim=0)
        scaled = z / (values + self.EPSILON)
        weights = scaled / scaled.sum()
        total = (weights * torch.stack(losses)).sum()
        total.backward()
        self.before.copy_(values)
        return total.detach()

    def after_step(self, task_losses: Sequence[torch.Tensor]) -> None:
        after = torch.stack([loss.detach().float() for loss in task_losses])
        before = self.before.clone()
        self.before.fill_(math.nan)
        if not (torch.isfinite(after).all() and torch.isfinite(before).all()):
            return  # no step to learn from (skipped, or a loss not finite after it)
        delta = torch.log(before + self.EPSILON) - torch.log(after + self.EPSILON)
        with torch.enable_grad():
            z = torch.softmax(self.logits, dim=0)
            (grad,) = torch.autograd.grad(z, self.logits, grad_outputs=delta)
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = grad
        self.optimizer.step()


class FixedWeights(Balancer):
    """Fixed task weights (the tuned baseline of Kurin et al. 2022 and Xin et al. 2022):
    `fixed_seg`, `fixed_pattern`, `fixed_intensity` are relative, normalised onto the
    simplex over the tasks trained and scaled by their number K, w_i = K v_i / sum_j v_j. So
    a search over them searches the simplex, and equal values train exactly as `equal`."""

    reads = ("fixed_seg", "fixed_pattern", "fixed_intensity")

    def __init__(
        self,
        shared_parameters: Sequence[nn.Parameter] = (),
        *,
        num_tasks: int = 3,
        fixed_seg: float = 1.0,
        fixed_pattern: float = 1.0,
        fixed_intensity: float = 1.0,
        trained_tasks: Sequence[str] = TASKS,
    ):
        super().__init__(num_tasks)
        if len(trained_tasks) != num_tasks:
            raise ValueError(f"{num_tasks} tasks but trained_tasks is {tuple(trained_tasks)}")
        given = {"seg": fixed_seg, "pattern": fixed_pattern, "intensity": fixed_intensity}
        values = torch.tensor([given[task] for task in trained_tasks], dtype=torch.float64)
        if not (values > 0).all():
            raise ValueError(f"fixed weights must be positive, got {given}")
        self.register_buffer("_weights", (num_tasks * values / values.sum()).float())

    @classmethod
    def build(cls, network: Network, tasks: Sequence[str], **fields: float) -> Balancer:
        return cls(num_tasks=len(tasks), trained_tasks=tuple(tasks), **fields)

    @property
    def weights(self) -> torch.Tensor:
        return self._weights


class JacobianDescent(Balancer):
    """Gradient aggregation (Jacobian descent) with TorchJD's aggregators (torchjd.org).

    Each head gets the gradient of its own task's loss, as it is; the encoder gets the
    aggregation of the tasks' gradients on it: the Jacobian J (one row per task, one column
    per encoder parameter) handed to the aggregator, which returns the update.

    Where the tasks part ways: the encoder's outputs, as the decoder and the heads read
    them (the forward's `split`, mtl.model.SplitFeatures). Every parameter above them is one
    task's alone (the decoder and the mask head are the segmentation's, each classification
    head its task's), so tasks can conflict only on the encoder, where the methods are
    defined to act. The encoder's outputs depend on each other (the U-Net's skips are its
    earlier stages, the bottleneck its last), which `torchjd.autojac.mtl_backward` does not
    allow for (it would follow the deeper features back into the shallower ones, twice); so
    the decoder and the heads read leaf copies of them. Each task's backward (one plain
    backward per task, through its own part only) leaves its parameters' gradient and its
    partial derivatives at the features; `torchjd.autojac.backward` takes those rows through
    the encoder in one vectorised pass (J in the parameters' `.jac`), and
    `torchjd.autojac.jac_to_grad` aggregates J into the encoder's `.grad`.

    `weights` are the aggregator's weights on the tasks' gradients in the last step (TorchJD
    returns them; 1/K each before the first step).
    """

    needs_split = True

    def __init__(self, shared_parameters: Sequence[nn.Parameter], *, num_tasks: int = 3):
        super().__init__(num_tasks)
        self.shared = list(shared_parameters)
        if not self.shared:
            raise ValueError(
                f"{type(self).__name__} needs the encoder's parameters (encoder_parameters())"
            )
        self.aggregator = self.make_aggregator()
        self.register_buffer("_weights", torch.full((num_tasks,), 1 / num_tasks))

    @classmethod
    def build(cls, network: Network, tasks: Sequence[str], **fields: float) -> Balancer:
        return cls(network.encoder_parameters(), num_tasks=len(tasks), **fields)

    def make_aggregator(self) -> nn.Module:
        raise NotImplementedError

    @property
    def weights(self) -> torch.Tensor:
        return self._weights

    def _backward(self, losses, values, split) -> torch.Tensor:
        # TorchJD is imported on the first step: its optional solvers (cvxpy) take a second
        # to import, which no other balancer should pay.
        from torchjd.autojac import backward, jac_to_grad

        if split is None:
            raise ValueError(
                f"{type(self).__name__} needs the features split from the heads: "
                "model(images, split=True), then backward(losses, output.split)"
            )
        rows: list[list[torch.Tensor]] = [[] for _ in split.inputs]
        for loss in losses:  # the tasks' graphs above the cut are disjoint: no retain_graph
            loss.backward()
            for row, leaf in zip(rows, split.inputs, strict=True):
                row.append(torch.zeros_like(leaf) if leaf.grad is None else leaf.grad)
                leaf.grad = None
        jacobians = [torch.stack(row) for row in rows]
        # One row at a time: the vectorised backward (vmap) fails on a bf16 autocast graph
        # ("expected scalar type BFloat16 but found Float", torch 2.14) and would hold K
        # rows of the encoder's activation gradients at once.
        backward(list(split.encoder), jac_tensors=jacobians, inputs=self.shared,
                 parallel_chunk_size=1)  # fmt: skip
        weights = jac_to_grad(self.shared, self.aggregator)
        if weights is not None:
            if not torch.isfinite(weights).all():
                # A solver that failed: a step skipped as one with a non-finite loss is
                # (the trainer takes no optimizer step and counts it against the fold).
                self.skipped_steps += 1
                self.nonfinite_tasks = tuple(range(self.num_tasks))
                return (self._weights * values).sum()
            self._weights.copy_(weights.detach())
        return (self._weights * values).sum()


class UPGrad(JacobianDescent):
    """UPGrad, Quinton and Rey 2024 ("Jacobian descent for multi-objective optimization",
    arXiv:2406.16232): the mean of the tasks' gradients each projected onto the dual cone
    of all of them, so that the update conflicts with none."""

    def make_aggregator(self) -> nn.Module:
        from torchjd.aggregation import UPGrad as Aggregator

        return Aggregator()


class PCGrad(JacobianDescent):
    """PCGrad, Yu, Kumar, Gupta, Levine, Hausman and Finn 2020 (NeurIPS; arXiv:2001.06782):
    each task's gradient is projected off the normal plane of every gradient it conflicts
    with, in a random order, and the projections are summed."""

    def make_aggregator(self) -> nn.Module:
        from torchjd.aggregation import PCGrad as Aggregator

        return Aggregator()


class MGDA(JacobianDescent):
    """MGDA, Désidéri 2012, as Sener and Koltun 2018 solve it (NeurIPS; arXiv:1810.04650,
    Frank-Wolfe): the minimum-norm point of the convex hull of the tasks' gradients."""

    def make_aggregator(self) -> nn.Module:
        from torchjd.aggregation import MGDA as Aggregator

        return Aggregator()


class CAGrad(JacobianDescent):
    """CAGrad, Liu, Liu, Jin, Stone and Liu 2021 (NeurIPS; arXiv:2110.14048): the update
    that maximises the worst task's improvement within a ball of radius c ||g_0|| around
    the mean gradient g_0 (`cagrad_c`; 0.4 in the paper's dense-prediction benchmarks)."""

    reads = ("cagrad_c",)

    def __init__(
        self,
        shared_parameters: Sequence[nn.Parameter],
        *,
        num_tasks: int = 3,
        cagrad_c: float = CAGRAD_C,
    ):
        self.c = cagrad_c
        super().__init__(shared_parameters, num_tasks=num_tasks)

    def make_aggregator(self) -> nn.Module:
        from torchjd.aggregation import CAGrad as Aggregator

        return Aggregator(c=self.c)


class NashMTL(JacobianDescent):
    """Nash-MTL, Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik and Fetaya 2022 (ICML;
    arXiv:2202.01017): the weights of the Nash bargaining solution of the tasks, with the
    settings of the authors' code (20 solver iterations a step, the update's norm clipped
    at 1). As for every aggregation here, each head gets its own task's gradient as it is
    (the authors' code scales a head's by its task's weight).

    Its solver starts from the last step's weights: they are saved with the balancer, so a
    resumed fold continues as the uninterrupted one does.
    """

    def make_aggregator(self) -> nn.Module:
        import warnings

        from torchjd.aggregation import NashMTL as Aggregator

        # cvxpy says at every solve that the problem (TorchJD's formulation) is not DPP, so
        # not compiled once: nothing a user can act on.
        warnings.filterwarnings("ignore", message="You are solving a parameterized problem")
        return Aggregator(n_tasks=self.num_tasks)

    def get_extra_state(self) -> dict:
        alpha = self.aggregator.weighting.prvs_alpha
        return {"previous_alpha": alpha.tolist(), "dtype": str(alpha.dtype)}

    def set_extra_state(self, state: dict) -> None:
        import numpy as np

        alpha = np.asarray(state["previous_alpha"], dtype=state.get("dtype", "float64"))
        self.aggregator.weighting.prvs_alpha = alpha


# TrainConfig.balancer: name -> class.
BALANCERS: dict[str, type[Balancer]] = {
    "equal": EqualWeights,
    "gradnorm": GradNorm,
    "uncertainty": UncertaintyWeights,
    "dwa": DynamicWeightAverage,
    "rlw": RandomWeights,
    "famo": FAMO,
    "fixed": FixedWeights,
    "upgrad": UPGrad,
    "pcgrad": PCGrad,
    "mgda": MGDA,
    "cagrad": CAGrad,
    "nashmtl": NashMTL,
}
check_registry("balancer", BALANCERS)


def build_balancer(
    name: str, network: Network, *, tasks: Sequence[str] = TASKS, **fields: float
) -> Balancer:
    """The balancer `name` for `network`, training `tasks`, given balancer fields of
    TrainConfig by name (alpha=..., balancer_lr=...): it gets those it reads, ignores the
    others (so that one call builds every balancer alike), and a field not given keeps its
    default."""
    if name not in BALANCERS:
        raise ValueError(f"unknown balancer {name!r}; expected one of {', '.join(BALANCERS)}")
    known = sorted({field for cls in BALANCERS.values() for field in cls.reads})
    if unknown := sorted(set(fields) - set(known)):
        raise TypeError(f"no balancer reads {', '.join(unknown)}; they read {', '.join(known)}")
    cls = BALANCERS[name]
    return cls.build(
        network,
        tuple(tasks),
        **{field: value for field, value in fields.items() if field in cls.reads},
    )


def balancer_from_config(config: TrainConfig, network: Network) -> Balancer:
    """The balancer `config` names, for the tasks it trains, with the configuration's values
    of the fields it reads."""
    cls = BALANCERS[config.balancer]
    fields = {field: getattr(config, field) for field in cls.reads}
    return cls.build(network, config.tasks, **fields)
