"""Curvature and gradient-noise diagnostics of a loss on a fixed probe batch (issue 16).

:func:`curvature` ``(model, loss_fn, inputs, ...) -> {tag: float}`` measures, for the scalar
``loss_fn(model, inputs)`` as a function of the model's trainable parameters θ (or of the parameters of
the ``parts`` given):

- ``plasticity/sharpness/<name>``: λ_max, the largest eigenvalue of the Hessian H = ∇²_θ L (Keskar et al.
  2017 use it as their sharpness), by Lanczos (default) or power iteration on Hessian-vector products;
  ``plasticity/sharpness/<name>/<part>`` the same for each part's diagonal block H_pp (the curvature of
  the loss when only that part moves).
- ``plasticity/hessian_trace/<name>``: tr H by Hutchinson's estimator with Rademacher probes,
  mean_k z_kᵀ H z_k (Hutchinson 1990; Avron & Toledo 2011), and ``plasticity/hessian_trace_stderr/<name>``
  its standard error from the probes' spread.
- ``plasticity/hessian_rank/<name>``: the number of eigenvalues with |λ| > ε·max|λ| (ε =
  ``rank_threshold``), read off a stochastic Lanczos quadrature (SLQ) estimate of the spectral density
  (Ghorbani et al. 2019, Sec. 2; the seed paper cites it).
- ``plasticity/grad_noise_scale/<name>``: the simple noise scale B = tr(Σ)/‖G‖² (McCandlish et al. 2018,
  Sec. 2) from per-example gradients (``torch.func.vmap`` over ``torch.func.grad``).
- ``plasticity/grad_cosine/<name>``: the mean cosine between the full-batch gradient G and the gradients
  of disjoint minibatches of ``minibatch_size`` examples: the probe batch reordered by
  ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` and cut into n // b minibatches
  (the last n mod b examples count only in G).

The probe batch is the population: G is the mean gradient over its n examples, Σ = (1/n) Σ_i (g_i − G)
(g_i − G)ᵀ the covariance of their per-example gradients, so B is exactly the noise scale of drawing
minibatches from the probe batch (a minibatch of b examples drawn with replacement has gradient covariance
Σ/b; E‖g_b − G‖² / ‖G‖² = B/b, and (B/b)·(n − b)/(n − 1) for the disjoint minibatches of the cosine, so
on average cos ≈ (1 + (B/b)(n − b)/(n − 1))^(−1/2), as the deviations g_b − G average to zero; with few
minibatches the cosine is a noisy estimate). When ‖G‖ = 0 the noise scale is ``inf``.

How well (k: Lanczos steps; m: probes; P: number of parameters):

- sharpness: a Ritz value of H, so never above λ_max (a Rayleigh quotient); Lanczos stops early once the
  residual ‖H y − θ y‖ of the top Ritz pair is ≤ ``tolerance``·|θ|, which places an eigenvalue of H within
  ``tolerance``·|θ| of θ (the residual bound for symmetric matrices; Parlett, The Symmetric Eigenvalue
  Problem, 1998, Ch. 4). Power iteration stops when
  successive estimates differ by ≤ ``tolerance``·|θ| and finds the eigenvalue of largest *magnitude*
  (λ_min when a negative one dominates); Lanczos finds the algebraically largest, in far fewer products.
- trace: unbiased; with Rademacher probes Var(zᵀ H z) = 2(‖H‖_F² − Σ_i H_ii²) (the smallest variance of
  any i.i.d. probe distribution; Hutchinson 1990, Avron & Toledo 2011), so the standard error is
  √(2(‖H‖_F² − Σ_i H_ii²)/m); ``hessian_trace_stderr`` estimates it.
- rank: each probe z gives a Gauss quadrature rule from its k Lanczos steps (nodes θ_j = Ritz values,
  weights w_j = first components² of the Ritz vectors, Σ w_j = 1), exact for polynomials of degree ≤ 2k − 1
  against the spectral measure Σ_i (zᵀu_i)²/‖z‖² δ(λ − λ_i). The estimate is P · mean_z Σ_j w_j 1[|θ_j| >
  τ], τ = ε · max_j |θ_j|. When the nodes resolve the spectrum around τ (a gap there; always when H has
  at most k − 1 distinct non-zero eigenvalues, where Lanczos ends on an invariant subspace), this equals
  Hutchinson's estimator of the rank of the spectral projector Π_{|λ|>τ}: unbiased with standard error
  √(2(r − Σ_i Π_ii²)/m) ≤ √(2r/m) for rank r, and exact when H's eigenvectors are coordinate axes (a
  diagonal Hessian). Where eigenvalues crowd around τ each node carries the weight of the eigenvalues
  around it, so the count is off by about the number of eigenvalues within a node spacing of τ; the nodes
  get denser with k. The number is a density estimate times P, a float, not an integer count.
- noise scale and cosine: exact for the probe batch (no sampling beyond the random partition into
  minibatches for the cosine); as estimates of the training set's B their error is that of a sample of n
  examples (McCandlish et al. App. A.1 discuss the bias of ‖G‖² on small batches).

Assumptions about ``loss_fn``: it returns a scalar tensor and depends on θ through ``model`` (its
submodules may be called in any way: ``model.encoder(...)``, ``model.critic(...)``). For the noise scale
and the cosine it must also be a *mean over examples*: every tensor in ``inputs`` with at least one
dimension has the example dimension first, and ``loss_fn`` on a batch equals the mean of ``loss_fn`` on
its examples one at a time (a fixed multiple of it is fine: B and the cosine do not change with the
scale). A TD loss qualifies once its bootstrap target is computed before the call and passed in
``inputs`` (held fixed: no gradient flows into it, so H is the Hessian of the regression onto that fixed
target, as in the critic update itself).

Mode. By default the model is measured in **eval mode**: dropout draws nothing and BatchNorm normalises
with its running statistics. The loss is then a deterministic function of θ (Lanczos needs one fixed
symmetric operator for all its products) in which examples do not interact (per-example gradients and
the minibatch decomposition need that), and it is the network as it is evaluated (the same mode as
:func:`~.diagnostics.measure`). ``mode="train"`` measures the training-mode loss instead: BatchNorm uses
the probe batch's statistics (so examples interact and the noise quantities are refused for a network
with BatchNorm) and dropout draws one set of masks for all Hessian-vector products (the graph is built
once) and independent masks per example for the per-example gradients.

Nothing about the model or its training changes: parameters are differentiated through detached aliases
(``torch.func.functional_call``), so ``requires_grad`` flags, ``.grad`` and any optimizer state are never
touched; every module's train/eval mode, every buffer and the CPU/CUDA RNG states are restored; the
probes come from a private generator seeded with ``seed``. The modules' forward (post) hooks are muted
while it runs: they observe outputs (continual backprop's utility statistics would otherwise count the
probe forwards, which run with gradients enabled, as training forwards). Forward pre-hooks stay (they
may compute the weights, as the legacy ``weight_norm`` does).

Calling it from an RL agent for the critic's TD loss (``parts`` as a mapping name → module; the Hessian
is taken with respect to the union of the parts' parameters)::

    with torch.no_grad():  # the bootstrap target, computed once and held fixed
        target_q = reward + discount * (min_i Q'_i(s', a') - alpha * log_prob)
    def td_loss(nets, batch):
        obs, action, target = batch
        q = nets.critic(nets.encoder(obs), action)          # (members, batch)
        return (q - target).pow(2).mean(dim=1).sum()
    curvature(nets, td_loss, (obs, action, target_q), name="critic",
              parts={"encoder": nets.encoder, "critic": nets.critic})

The cost is one forward and a backward with ``create_graph`` (kept for all products), then one
Hessian-vector product (about two backward passes) per Lanczos / power step or trace probe, plus the
per-example gradients of the probe batch (``chunk_size`` examples per vectorised call). Lanczos keeps its
k basis vectors (k·P floats) for full re-orthogonalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = ["CURVATURE_QUANTITIES", "CurvatureConfig", "curvature"]

CURVATURE_QUANTITIES = ("sharpness", "trace", "rank", "noise")

# Lanczos has found an invariant subspace when the new residual is below this share of the operator's
# scale (float32 Hessian-vector products are accurate to ~1e-7 of it).
_BREAKDOWN = 1e-5
# Bytes of per-example gradients one vectorised call may hold when chunk_size is None.
_CHUNK_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------- settings


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_settings(
    quantities: Sequence[str],
    method: str,
    iterations: int,
    tolerance: float,
    trace_probes: int,
    lanczos_steps: int,
    density_probes: int,
    rank_threshold: float,
    minibatch_size: int,
    mode: str,
    chunk_size: int | None,
    parameters: str,
) -> tuple[str, ...]:
    if isinstance(quantities, str) or not isinstance(quantities, Sequence):
        raise TypeError(f"quantities must be a sequence of names, got {quantities!r}")
    unknown = [q for q in quantities if q not in CURVATURE_QUANTITIES]
    if unknown or not quantities:
        raise ValueError(
            f"quantities must name at least one of {', '.join(CURVATURE_QUANTITIES)}, got {list(quantities)}"
        )
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    if parameters not in ("trainable", "all"):
        raise ValueError(f"parameters must be 'trainable' or 'all', got {parameters!r}")
    _check_int("iterations", iterations, 1)
    _check_int("trace_probes", trace_probes, 1)
    _check_int("lanczos_steps", lanczos_steps, 1)
    _check_int("density_probes", density_probes, 1)
    _check_int("minibatch_size", minibatch_size, 1)
    if chunk_size is not None:
        _check_int("chunk_size", chunk_size, 1)
    if isinstance(tolerance, bool) or not (isinstance(tolerance, (int, float)) and 0 <= tolerance < math.inf):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if isinstance(rank_threshold, bool) or not (
        isinstance(rank_threshold, (int, float)) and 0 < rank_threshold < 1
    ):
        raise ValueError(
            f"rank_threshold (relative to max |eigenvalue|) must be in (0, 1), got {rank_threshold!r}"
        )
    return tuple(dict.fromkeys(quantities))


@dataclass(frozen=True)
class CurvatureConfig:
    """Settings of :func:`curvature` (a nested tyro group: ``--curvature.iterations 20``).

    Defaults: 6 Lanczos steps for λ_max (within 0.2% of a 60-step value on the SAC critic, the DrQ critic,
    a small trained CNN and a trained MLP), chosen so that sharpness costs at most ~20 training updates on
    the SAC critic, the DrQ critic and ResNet-18, where one Hessian-vector product costs ~3 updates
    (``benchmarks/intervention_benchmark.py --part curvature`` prints the figures); 10 Hutchinson probes
    (standard error ~ 1/√10 of the probes' spread); one 20-step SLQ probe with ε = 1e-3 for the rank;
    minibatches of 32 for the cosine."""

    quantities: tuple[str, ...] = CURVATURE_QUANTITIES
    """what to measure: sharpness trace rank noise (noise = grad noise scale and minibatch cosine)"""
    method: Literal["lanczos", "power"] = "lanczos"
    """sharpness by Lanczos (algebraically largest eigenvalue) or power iteration (largest magnitude)"""
    iterations: int = 6
    """most Hessian-vector products for sharpness (Lanczos steps or power iterations), per part too"""
    tolerance: float = 1e-3
    """stop sharpness early at this relative residual (Lanczos) or relative change (power)"""
    trace_probes: int = 10
    """Rademacher probes of Hutchinson's trace estimator (standard error ~ 1/sqrt(probes))"""
    lanczos_steps: int = 20
    """Lanczos steps per SLQ probe for the spectral density behind the rank"""
    density_probes: int = 1
    """SLQ probes (Rademacher starting vectors) for the rank"""
    # Our choice: no paper fixes one. Where eigenvalues crowd around the threshold the count depends on it
    # (module docstring).
    rank_threshold: float = 1e-3
    """rank counts eigenvalues with |lambda| > this times max |lambda|"""
    minibatch_size: int = 32
    """examples per minibatch for the full-batch vs minibatch gradient cosine"""
    mode: Literal["eval", "train"] = "eval"
    """measure the eval-mode loss (BatchNorm running statistics, no dropout) or the train-mode loss"""
    chunk_size: int | None = None
    """examples per vectorised per-example-gradient call (None: from a 64 MiB budget)"""
    reorthogonalize: bool = True
    """Lanczos: full re-orthogonalisation (keeps steps x parameters floats)"""
    seed: int = 0
    """seed of the probes and of the minibatch partition"""

    def __post_init__(self) -> None:
        self.validate(self.minibatch_size)

    def validate(self, minibatch_size: int) -> None:
        """ValueError / TypeError naming the first bad setting (``minibatch_size`` as given)."""
        _check_settings(
            self.quantities,
            self.method,
            self.iterations,
            self.tolerance,
            self.trace_probes,
            self.lanczos_steps,
            self.density_probes,
            self.rank_threshold,
            minibatch_size,
            self.mode,
            self.chunk_size,
            "trainable",
        )

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`curvature`."""
        return {
            "quantities": tuple(self.quantities),
            "method": self.method,
            "iterations": self.iterations,
            "tolerance": self.tolerance,
            "trace_probes": self.trace_probes,
            "lanczos_steps": self.lanczos_steps,
            "density_probes": self.density_probes,
            "rank_threshold": self.rank_threshold,
            "minibatch_size": self.minibatch_size,
            "mode": self.mode,
            "chunk_size": self.chunk_size,
            "reorthogonalize": self.reorthogonalize,
            "seed": self.seed,
        }


# ----------------------------------------------------------------------------- model state


_POST_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


@contextmanager
def _preserved(model: nn.Module, mode: str, devices: list[int]) -> Iterator[None]:
    """Set ``mode`` and mute the modules' forward (post) hooks; restore every module's mode and hooks,
    every buffer and the RNG states afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    hooks = [(m, attr, getattr(m, attr)) for m in model.modules() for attr in _POST_HOOKS if hasattr(m, attr)]
    try:
        for module, attr, saved in hooks:
            setattr(module, attr, type(saved)())
        with torch.random.fork_rng(devices=devices):
            model.train(mode == "train")
            yield
    finally:
        for module, attr, saved in hooks:
            setattr(module, attr, saved)
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


class _LossCall(nn.Module):
    """``loss_fn(model, inputs)`` as a module, so ``functional_call`` can substitute the parameters of
    ``model`` (under the prefix ``model.``) wherever ``loss_fn`` reaches them."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.loss_fn(self.model, inputs)


def _scalar(loss: Any) -> torch.Tensor:
    if not torch.is_tensor(loss):
        raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar (one element), got shape {tuple(loss.shape)}")
    if not loss.is_floating_point():
        raise TypeError(f"loss_fn must return a floating-point tensor, got {loss.dtype}")
    return loss.reshape(())


# ----------------------------------------------------------------------------- inputs as leaves


def _leaves(obj: Any, out: list) -> None:
    if torch.is_tensor(obj):
        out.append(obj)
    elif isinstance(obj, Mapping):
        for value in obj.values():
            _leaves(value, out)
    elif isinstance(obj, (tuple, list)):
        for value in obj:
            _leaves(value, out)


def _rebuild(obj: Any, replace: Callable[[torch.Tensor], Any]) -> Any:
    if torch.is_tensor(obj):
        return replace(obj)
    if isinstance(obj, Mapping):
        return {k: _rebuild(v, replace) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rebuild(v, replace) for v in obj)
    return obj


def _example_count(inputs: Any) -> int:
    """The example count n shared by every tensor of ``inputs`` with a dimension (ValueError otherwise)."""
    leaves: list[torch.Tensor] = []
    _leaves(inputs, leaves)
    sizes = {tuple(t.shape) for t in leaves if t.dim() > 0}
    firsts = {shape[0] for shape in sizes}
    if not firsts:
        raise ValueError(
            "the gradient noise scale needs per-example inputs: a tensor (or tuple / list / dict of tensors) "
            "with the example dimension first; inputs have no tensor with a dimension"
        )
    if len(firsts) > 1:
        raise ValueError(
            "every tensor in inputs must have the example dimension first with the same size (per-example "
            f"gradients); got shapes {sorted(sizes)}"
        )
    return firsts.pop()


# ----------------------------------------------------------------------------- parameters


@dataclass
class _Params:
    names: list[str]  # differentiated, in order
    tensors: list[torch.Tensor]  # detached aliases of the model's parameters (share storage)
    fixed: dict[str, torch.Tensor]  # every other parameter, detached
    part_slices: dict[str, list[int]]  # part name -> indices into names

    @property
    def count(self) -> int:
        return sum(t.numel() for t in self.tensors)


def _select_params(model: nn.Module, parts: Mapping[str, nn.Module] | None, parameters: str) -> _Params:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    name_of = {id(p): n for n, p in model.named_parameters()}

    def wanted(p: nn.Parameter) -> bool:
        return parameters == "all" or p.requires_grad

    chosen: dict[int, None] = {}
    part_ids: dict[str, list[int]] = {}
    if parts is None:
        for p in model.parameters():
            if wanted(p):
                chosen[id(p)] = None
    else:
        if not isinstance(parts, Mapping) or not parts:
            raise TypeError(f"parts must be a non-empty mapping of name -> nn.Module, got {parts!r}")
        for part, module in parts.items():
            if not isinstance(part, str) or not part or "/" in part:
                raise ValueError(f"part names must be non-empty strings without '/', got {part!r}")
            if not isinstance(module, nn.Module):
                raise TypeError(f"part {part!r} must be an nn.Module, got {type(module).__name__}")
            ids = []
            for p in module.parameters():
                if id(p) not in name_of:
                    raise ValueError(f"part {part!r} holds a parameter that is not in the model")
                if wanted(p):
                    ids.append(id(p))
                    chosen[id(p)] = None
            if not ids:
                raise ValueError(
                    f"part {part!r} has no trainable parameters (requires_grad=False everywhere); "
                    "pass parameters='all' to differentiate frozen ones"
                )
            part_ids[part] = ids
    if not chosen:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters (requires_grad=False everywhere); "
            "pass parameters='all' to differentiate frozen ones (a hare & tortoise tortoise)"
        )
    by_id = {id(p): p for p in model.parameters()}
    names = [name_of[i] for i in chosen]
    index = {i: k for k, i in enumerate(chosen)}
    return _Params(
        names=names,
        tensors=[by_id[i].detach() for i in chosen],
        fixed={n: p.detach() for n, p in model.named_parameters() if id(p) not in chosen},
        part_slices={part: [index[i] for i in ids] for part, ids in part_ids.items()},
    )


# ----------------------------------------------------------------------------- Hessian-vector products


class _Hessian:
    """H v for the loss on the probe batch; the gradient's graph is built once and kept."""

    def __init__(self, call: _LossCall, inputs: Any, params: _Params):
        self.params = params
        # Fresh leaves that alias the parameters' storage: their requires_grad is ours to set.
        self.leaves = [t.detach().requires_grad_(True) for t in params.tensors]
        mapping = {"model." + n: t for n, t in zip(params.names, self.leaves)}
        mapping.update({"model." + n: t for n, t in params.fixed.items()})
        loss = _scalar(functional_call(call, mapping, (inputs,)))
        if not torch.isfinite(loss):
            raise ValueError(f"the loss on the probe batch is {loss.item()}; curvature needs a finite loss")
        self.loss = float(loss.detach())
        self.grads = torch.autograd.grad(loss, self.leaves, create_graph=True, materialize_grads=True)
        self.products = 0

    def sizes(self, indices: Sequence[int]) -> list[int]:
        return [self.leaves[i].numel() for i in indices]

    def dim(self, indices: Sequence[int]) -> int:
        return sum(self.sizes(indices))

    def hvp(self, v: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """H_II v for the parameters ``indices`` (the diagonal block when they are a subset), flat."""
        self.products += 1
        pieces = v.split(self.sizes(indices))
        grads = [self.grads[i] for i in indices]
        dot = sum((g * piece.view_as(g)).sum() for g, piece in zip(grads, pieces))
        if not dot.requires_grad:  # the gradient does not depend on θ: H = 0
            return torch.zeros_like(v)
        out = torch.autograd.grad(
            dot, [self.leaves[i] for i in indices], retain_graph=True, materialize_grads=True
        )
        return torch.cat([o.reshape(-1) for o in out]).to(v.dtype)


def _rademacher(n: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8)
    return (signs.to(like.dtype) * 2 - 1).to(like.device)


@dataclass
class _LanczosResult:
    alphas: list[float]
    betas: list[float]  # off-diagonal entries (len(alphas) - 1)
    ritz: torch.Tensor  # Ritz values, ascending (float64, CPU)
    weights: torch.Tensor  # squared first components of the Ritz vectors (quadrature weights)


def _tridiagonal_eig(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)


def _lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    tolerance: float | None,
    reorthogonalize: bool,
) -> _LanczosResult:
    """``steps`` Lanczos steps on a symmetric operator from ``start``; with ``tolerance``, stop once the
    top Ritz pair's residual β_j |s_j| is ≤ tolerance·|θ_max|."""
    q = start / start.norm()
    # Preallocated basis (rows), so re-orthogonalisation reads a view instead of re-stacking every step.
    basis = torch.empty((steps if reorthogonalize else 1, q.numel()), dtype=q.dtype, device=q.device)
    basis[0] = q
    alphas: list[float] = []
    betas: list[float] = []
    q_prev, beta_prev = None, 0.0
    scale = 0.0
    for j in range(steps):
        w = matvec(q)
        alpha = float(torch.dot(w.double(), q.double()))
        w = w - alpha * q
        if q_prev is not None:
            w = w - beta_prev * q_prev
        if reorthogonalize:
            # Classical Gram-Schmidt twice against the basis (Kahan's "twice is enough"; Parlett 1998).
            done = basis[: j + 1]
            for _ in range(2):
                w = w - done.t() @ (done @ w)
        alphas.append(alpha)
        beta = float(w.norm())
        scale = max(scale, abs(alpha), beta)
        if j == steps - 1:
            break
        if tolerance and j > 0:
            theta, vectors = _tridiagonal_eig(alphas, betas)
            if beta * abs(float(vectors[-1, -1])) <= tolerance * abs(float(theta[-1])):
                break
        if beta <= _BREAKDOWN * scale:  # invariant subspace: the quadrature is exact
            break
        betas.append(beta)
        q_prev, beta_prev = q, beta
        q = w / beta
        if reorthogonalize:
            basis[j + 1] = q
    theta, vectors = _tridiagonal_eig(alphas, betas)
    return _LanczosResult(alphas, betas, theta, vectors[0] ** 2)


def _power(
    matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, iterations: int, tolerance: float
) -> float:
    """Power iteration: the eigenvalue of largest magnitude, as the Rayleigh quotient vᵀ H v."""
    v = start / start.norm()
    estimate = 0.0
    for k in range(iterations):
        hv = matvec(v)
        new = float(torch.dot(hv.double(), v.double()))
        norm = float(hv.norm())
        if norm == 0.0:
            return 0.0
        v = hv / norm
        if k > 0 and abs(new - estimate) <= tolerance * abs(new):
            return new
        estimate = new
    return estimate


# ----------------------------------------------------------------------------- per-example gradients


def _noise(
    call: _LossCall,
    inputs: Any,
    params: _Params,
    minibatch_size: int,
    chunk_size: int | None,
    generator: torch.Generator,
    randomness: str,
) -> tuple[float, float]:
    """(B = tr Σ / ‖G‖², mean cosine of minibatch gradients with G) from per-example gradients."""
    n = _example_count(inputs)
    if minibatch_size > n:
        raise ValueError(
            f"minibatch_size {minibatch_size} is larger than the probe batch ({n} examples); "
            f"choose at most {n}"
        )
    leaves: list[torch.Tensor] = []
    _leaves(inputs, leaves)
    mapped = [t for t in leaves if t.dim() > 0]
    order = torch.randperm(n, generator=generator)
    per_example_bytes = params.count * params.tensors[0].element_size()
    chunk = chunk_size or max(1, min(n, _CHUNK_BYTES // max(per_example_bytes, 1)))
    names = params.names
    fixed = {"model." + k: v for k, v in params.fixed.items()}

    def example_loss(theta: dict[str, torch.Tensor], example: list[torch.Tensor]) -> torch.Tensor:
        lookup = {id(t): e.unsqueeze(0) for t, e in zip(mapped, example)}
        batch = _rebuild(inputs, lambda t: lookup.get(id(t), t))
        return _scalar(functional_call(call, {**fixed, **theta}, (batch,)))

    per_example = vmap(grad(example_loss), in_dims=(None, 0), randomness=randomness)
    theta = {"model." + k: t for k, t in zip(names, params.tensors)}
    batches = n // minibatch_size
    device = params.tensors[0].device
    # Per parameter tensor: the running mean of the per-example gradients and Σ‖g_i − mean‖² (Chan et al.'s
    # pairwise update across chunks, so no difference of large sums), and each minibatch's gradient sum.
    means: dict[str, torch.Tensor] = {}
    sums = [torch.zeros(max(batches, 1), t.numel(), dtype=t.dtype, device=device) for t in params.tensors]
    m2 = 0.0
    seen = 0
    for start in range(0, n, chunk):
        idx = order[start : start + chunk].to(device)
        grads = per_example(theta, [t.index_select(0, idx.to(t.device)) for t in mapped])
        count = idx.numel()
        total = seen + count
        positions = torch.arange(start, start + count, device=device)
        keep = positions < batches * minibatch_size
        for k, key in enumerate(names):
            flat = grads["model." + key].reshape(count, -1)
            chunk_mean = flat.mean(dim=0)
            m2 += float((flat - chunk_mean).pow(2).sum())
            if seen:
                delta = chunk_mean - means[key]
                m2 += float(delta.pow(2).sum()) * seen * count / total
                means[key] = means[key] + delta * (count / total)
            else:
                means[key] = chunk_mean
            if batches and keep.any():
                sums[k].index_add_(0, positions[keep] // minibatch_size, flat[keep])
        seen = total
    if not math.isfinite(m2):
        raise ValueError("a per-example gradient is not finite; the noise scale needs finite gradients")
    mean = torch.cat([means[key].reshape(-1) for key in names]).double()
    g_norm2 = float(mean.pow(2).sum())
    trace_sigma = m2 / n
    scale = trace_sigma / g_norm2 if g_norm2 > 0 else math.inf
    minibatch = torch.cat(sums, dim=1).double() / minibatch_size
    cosines = torch.nn.functional.cosine_similarity(minibatch, mean.unsqueeze(0), dim=1)
    return scale, float(cosines.mean())


# ----------------------------------------------------------------------------- the function


def curvature(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    inputs: Any,
    *,
    name: str = "network",
    parts: Mapping[str, nn.Module] | None = None,
    quantities: Sequence[str] = CURVATURE_QUANTITIES,
    method: Literal["lanczos", "power"] = "lanczos",
    iterations: int = 6,
    tolerance: float = 1e-3,
    trace_probes: int = 10,
    lanczos_steps: int = 20,
    density_probes: int = 1,
    rank_threshold: float = 1e-3,
    minibatch_size: int = 32,
    mode: Literal["eval", "train"] = "eval",
    chunk_size: int | None = None,
    reorthogonalize: bool = True,
    parameters: Literal["trainable", "all"] = "trainable",
    seed: int = 0,
) -> dict[str, float]:
    """Curvature and gradient-noise diagnostics of ``loss_fn(model, inputs)``; see the module docstring.

    Args:
        model: the module whose parameters θ the loss depends on.
        loss_fn: ``loss_fn(model, inputs) -> scalar tensor``; a mean over examples for ``"noise"``.
        inputs: the probe batch (a tensor, or a tuple / list / dict of tensors with the example dimension
            first), passed to ``loss_fn`` unchanged.
        name: the network's name in the tags (``plasticity/<metric>/<name>``).
        parts: name → submodule of ``model``. The Hessian and gradients are then taken with respect to the
            union of the parts' parameters, and sharpness is also reported per part (its diagonal block),
            as ``plasticity/sharpness/<name>/<part>``. None: all of ``model``'s parameters, no per-part
            values.
        quantities: any of ``sharpness``, ``trace``, ``rank``, ``noise`` (noise scale and cosine).
        method: ``lanczos`` (algebraically largest eigenvalue) or ``power`` (largest magnitude).
        iterations: the most Hessian-vector products for each sharpness value.
        tolerance: early stop of sharpness (relative residual for Lanczos, relative change for power).
        trace_probes: Rademacher probes of Hutchinson's estimator.
        lanczos_steps: Lanczos steps per SLQ probe (rank).
        density_probes: SLQ probes (rank).
        rank_threshold: ε: the rank counts eigenvalues with |λ| > ε · max |λ|.
        minibatch_size: examples per minibatch for the gradient cosine (at most the probe batch size).
        mode: ``eval`` (default) or ``train``: the mode the loss is measured in (module docstring).
        chunk_size: examples per vectorised per-example-gradient call (None: from a 64 MiB budget).
        reorthogonalize: full re-orthogonalisation in Lanczos (k·P floats of memory).
        parameters: ``trainable`` (requires_grad) or ``all`` (also frozen ones, e.g. a tortoise copy).
        seed: seed of the Rademacher probes and the minibatch partition.

    Returns:
        ``{tag: float}`` with the tags of the quantities asked for.

    Raises:
        TypeError / ValueError: a loss that is not a scalar tensor, a model or part without trainable
        parameters, zero iterations or probes, an unknown quantity, mode or method, a non-finite loss,
        inputs without a common example dimension (noise), BatchNorm in train mode (noise).
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, inputs), got {type(loss_fn).__name__}")
    wanted = _check_settings(
        quantities,
        method,
        iterations,
        tolerance,
        trace_probes,
        lanczos_steps,
        density_probes,
        rank_threshold,
        minibatch_size,
        mode,
        chunk_size,
        parameters,
    )
    params = _select_params(model, parts, parameters)
    if "noise" in wanted and mode == "train":
        norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:
            raise ValueError(
                "the gradient noise scale needs independent examples, but in train mode BatchNorm "
                f"({norms[0] or type(model).__name__}) couples them through batch statistics; use "
                "mode='eval' or leave 'noise' out of quantities"
            )
    devices = sorted({t.device.index or 0 for t in params.tensors if t.device.type == "cuda"})
    call = _LossCall(model, loss_fn)
    # Separate streams, so the probes do not depend on whether the noise is measured and vice versa.
    generator = torch.Generator().manual_seed(seed)
    partition = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    with _preserved(model, mode, devices), torch.enable_grad():
        hessian_quantities = [q for q in wanted if q != "noise"]
        if hessian_quantities:
            out.update(
                _hessian_metrics(
                    _Hessian(call, inputs, params),
                    hessian_quantities,
                    name,
                    method=method,
                    iterations=iterations,
                    tolerance=tolerance,
                    trace_probes=trace_probes,
                    lanczos_steps=lanczos_steps,
                    density_probes=density_probes,
                    rank_threshold=rank_threshold,
                    reorthogonalize=reorthogonalize,
                    generator=generator,
                )
            )
        if "noise" in wanted:
            randomness = "different" if mode == "train" else "error"
            scale, cosine = _noise(call, inputs, params, minibatch_size, chunk_size, partition, randomness)
            out[f"plasticity/grad_noise_scale/{name}"] = scale
            out[f"plasticity/grad_cosine/{name}"] = cosine
    return out


def _hessian_metrics(
    hessian: _Hessian,
    quantities: Sequence[str],
    name: str,
    *,
    method: str,
    iterations: int,
    tolerance: float,
    trace_probes: int,
    lanczos_steps: int,
    density_probes: int,
    rank_threshold: float,
    reorthogonalize: bool,
    generator: torch.Generator,
) -> dict[str, float]:
    out: dict[str, float] = {}
    every = list(range(len(hessian.leaves)))
    dim = hessian.dim(every)
    like = hessian.leaves[0].detach()
    ritz_max: list[float] = []

    def top_eigenvalue(indices: list[int]) -> float:
        n = hessian.dim(indices)
        start = _rademacher(n, generator, like)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return hessian.hvp(v, indices)

        if method == "power":
            return _power(matvec, start, iterations, tolerance)
        return float(_lanczos(matvec, start, iterations, tolerance, reorthogonalize).ritz[-1])

    if "sharpness" in quantities:
        value = top_eigenvalue(every)
        ritz_max.append(abs(value))
        out[f"plasticity/sharpness/{name}"] = value
        for part, indices in hessian.params.part_slices.items():
            out[f"plasticity/sharpness/{name}/{part}"] = top_eigenvalue(indices)
    if "trace" in quantities:
        values = []
        for _ in range(trace_probes):
            z = _rademacher(dim, generator, like)
            values.append(float(torch.dot(hessian.hvp(z, every).double(), z.double())))
        mean = sum(values) / len(values)
        out[f"plasticity/hessian_trace/{name}"] = mean
        if len(values) > 1:
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
            out[f"plasticity/hessian_trace_stderr/{name}"] = math.sqrt(var / len(values))
        else:
            out[f"plasticity/hessian_trace_stderr/{name}"] = math.nan
    if "rank" in quantities:
        runs = []
        for _ in range(density_probes):
            start = _rademacher(dim, generator, like)
            runs.append(
                _lanczos(lambda v: hessian.hvp(v, every), start, lanczos_steps, None, reorthogonalize)
            )
        # The threshold is relative to the spectral radius: the largest |Ritz value| seen anywhere (every
        # Ritz value lies inside the spectrum, so this is a lower bound on max |λ| that Lanczos reaches fast).
        radius = max([*ritz_max, *(float(r.ritz.abs().max()) for r in runs)])
        if radius == 0.0:
            out[f"plasticity/hessian_rank/{name}"] = 0.0
        else:
            cut = rank_threshold * radius
            masses = [float(r.weights[r.ritz.abs() > cut].sum()) for r in runs]
            out[f"plasticity/hessian_rank/{name}"] = dim * sum(masses) / len(masses)
    return out
