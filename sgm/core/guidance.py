"""Zero-shot posterior sampling: guided denoisers from a PRIOR denoiser and a stated
observation model, and MMPS (the default method).

Observations are y = A(x_0) + eta * eps, eps ~ N(0, I), with a differentiable forward map
A: Tensor[B, C, H, W] -> Tensor[B, *obs] (linear or not) and noise std eta. Given a prior
denoiser D(x, sigma) ≈ E[x_0 | x_sigma = x] with x_sigma = x_0 + sigma n, Tweedie's formula
applied to the posterior p(x_0 | y) gives its denoiser

    D_y(x, sigma) = E[x_0 | x_sigma = x, y] = D(x, sigma) + sigma^2 ∇_x log p(y | x_sigma = x),

so a guided denoiser plugs into any sampler in place of D (``sgm.core.sampler.edm_sampler``).
The likelihood p(y | x_sigma) = ∫ p(y | x_0) p(x_0 | x_sigma) dx_0 is intractable; the
methods approximate p(x_0 | x_sigma) by N(D, V) and A by its linearisation A' at D:

    p(y | x_sigma) ≈ N(y; A(D), Sigma_y + A' V A'^T),          Sigma_y = diag(eta^2),
    ∇_x log p(y | x_sigma) ≈ (∂D/∂x)^T A'^T (Sigma_y + A' V A'^T)^-1 (y - A(D)),

V being held fixed under the gradient (Boys et al. 2023; Rozet et al. 2024).
The methods differ in V and in how the system is solved:

    MMPS   V = sigma^2 ∂D/∂x (Tweedie's covariance), conjugate gradients (this module);
    TMPD   the same V, the system assembled and solved directly (``guidance_tmpd``);
    DPS    V = 0 with a per-member step size (``guidance_dps``).

For a Gaussian prior and linear A, Tweedie's covariance is exact, so MMPS (CG converged) and
TMPD equal the exact conditional denoiser.

Every guided denoiser is per member: all inner products, norms, step sizes and solves
reduce over one member's entries only, so a member does not depend on which others share
its batch (provided the prior denoiser has no batch coupling). Jacobians are applied as
vector-Jacobian products through the prior denoiser with ``torch.autograd.grad`` (taken
w.r.t. x only, so D may be any ``nn.Module``-like callable of (x, sigma)); A is linearised
with ``torch.func.vjp`` (reverse mode only), so A must be a functional PyTorch callable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sgm.core.sampler import Denoiser

ForwardMap = Callable[[Tensor], Tensor]
"""``A(x[B, C, H, W]) -> Tensor[B, *obs]``, noise-free and differentiable."""


@dataclass
class GuidanceCost:
    """Work done by a guided denoiser, summed over members (a batch of B members adds B).

    denoiser: evaluations of the prior denoiser D(x, sigma), one per member per call.
    jacobian: vector-Jacobian products v -> (∂D/∂x)^T v through the prior denoiser (a
        backward pass, about 2-3 evaluations' worth with a network). Products with A are
        not counted: A is assumed cheap next to the network.
    """

    denoiser: int = 0
    jacobian: int = 0

    def per_member(self, members: int) -> tuple[float, float]:
        """(denoiser evaluations, Jacobian products) per member of ``members`` drawn."""
        return self.denoiser / members, self.jacobian / members

    def reset(self) -> None:
        self.denoiser = 0
        self.jacobian = 0


def _as_float64(t: Tensor | float) -> Tensor:
    """A tensor as given, anything else (float, array) as a float64 tensor."""
    return t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)


def per_sample_dot(a: Tensor, b: Tensor) -> Tensor:
    """<a_b, b_b> of every member: Tensor[B, ...] x Tensor[B, ...] -> Tensor[B]."""
    return (a * b).flatten(1).sum(1)


def broadcast_per_sample(c: Tensor, like: Tensor) -> Tensor:
    """Tensor[B] reshaped to broadcast against like[B, ...]."""
    return c.reshape(-1, *([1] * (like.ndim - 1)))


def safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den elementwise, 0 where den == 0 (a member whose residual is exactly zero)."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), 0.0)


CURVATURE_FLOOR = 0.5
"""CG with a floor F stops a member where p^T M p < CURVATURE_FLOOR * p^T F p."""


def conjugate_gradient(op: Callable[[Tensor], Tensor], b: Tensor, iterations: int,
                       floor: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Per-member conjugate gradients for M_b u_b = b_b, M_b symmetric positive definite.

    Hestenes & Stiefel (1952), from u_0 = 0: r_0 = p_0 = b and, for k = 0, 1, ...,

        alpha_k = r_k^T r_k / p_k^T M p_k,     u_{k+1} = u_k + alpha_k p_k,
        r_{k+1} = r_k - alpha_k M p_k,         beta_k = r_{k+1}^T r_{k+1} / r_k^T r_k,
        p_{k+1} = r_{k+1} + beta_k p_k,

    with every inner product taken per member. In exact arithmetic u_k is exact once k
    reaches the number of distinct eigenvalues of M_b.

    ``floor``: a known lower bound M ⪰ F (a product w -> F w). A member whose search
    direction has p^T M p < p^T F p / 2 has met a direction where M is far from what it
    should be (for MMPS, M = Sigma_y + A' V A'^T with V a trained network's Jacobian, which
    need not be positive semi-definite); its iterations stop there, keeping u_k (truncated
    CG, Steihaug 1983), instead of dividing by a curvature near zero or negative and blowing
    up. Every step taken is thus at most twice the step of M = F.

    Args:
        op: u[B, ...] -> M u [B, ...], acting on each member separately.
        b: Tensor[B, ...], the right-hand sides.
        iterations: number of products with ``op`` (0 returns u = 0).
        floor: optional w[B, ...] -> F w [B, ...].

    Returns:
        u_k: Tensor[B, ...] like b.
    """
    u = torch.zeros_like(b)
    r = b
    p = b
    rr = per_sample_dot(r, r)
    active = torch.ones(b.shape[0], dtype=torch.bool, device=b.device)
    for _ in range(iterations):
        q = op(p)
        curvature = per_sample_dot(p, q)
        if floor is not None:
            active = active & (curvature >= CURVATURE_FLOOR * per_sample_dot(p, floor(p)))
        alpha = broadcast_per_sample(torch.where(active, safe_ratio(rr, curvature), 0.0), b)
        u = u + alpha * p
        r = r - alpha * q
        rr_next = per_sample_dot(r, r)
        p = r + broadcast_per_sample(safe_ratio(rr_next, rr), b) * p
        rr = rr_next
    return u


@dataclass(frozen=True)
class Linearisation:
    """The forward map linearised at x_hat: A(x_hat + v) ≈ A(x_hat) + A' v.

    value: A(x_hat), Tensor[B, *obs].
    jvp: v[B, C, H, W] -> A' v [B, *obs].
    vjp: w[B, *obs] -> A'^T w [B, C, H, W].
    """

    value: Tensor
    jvp: Callable[[Tensor], Tensor]
    vjp: Callable[[Tensor], Tensor]


def linearise(forward: ForwardMap, x_hat: Tensor) -> Linearisation:
    """Linearise A at x_hat (detached) with ``torch.func``; exact for a linear A.

    A'^T is the pullback of ``torch.func.vjp``; A' is obtained as the transpose of that
    linear map (a vector-Jacobian product of the pullback), so A needs reverse mode only.
    """
    x_hat = x_hat.detach()
    value, pullback = torch.func.vjp(forward, x_hat)

    def vjp(w: Tensor) -> Tensor:
        return pullback(w)[0]

    _, transpose = torch.func.vjp(vjp, torch.zeros_like(value))

    def jvp(v: Tensor) -> Tensor:
        return transpose(v)[0]

    return Linearisation(value, jvp, vjp)


class GuidedDenoiser(ABC):
    """D_y(x, sigma) ≈ E[x_0 | x_sigma = x, y]: a prior denoiser plus an observation model.

    Calling it evaluates D(x, sigma) once with a graph to x, then ``_guide`` adds the
    method's likelihood term; the output is detached. Work is counted in ``cost``.

    Args:
        denoise: the prior denoiser ``D(x[B, C, H, W], sigma[B]) -> Tensor[B, C, H, W]``.
        forward: the forward map A: Tensor[B, C, H, W] -> Tensor[B, *obs].
        y: the observation, broadcastable to A(x)[B, *obs]: one shared by all members
            (e.g. Tensor[1, *obs]) or one per member.
        noise_std: eta, a float or a tensor broadcastable to A(x) (e.g. per observation).
    """

    def __init__(
        self, denoise: Denoiser, forward: ForwardMap, y: Tensor, noise_std: Tensor | float
    ) -> None:
        self.denoise = denoise
        self.forward = forward
        self.y = _as_float64(y)
        self.noise_std = _as_float64(noise_std)
        if bool((self.noise_std < 0).any()):
            raise ValueError("noise_std must be non-negative.")
        self.cost = GuidanceCost()

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Guided denoiser: x[B, C, H, W], sigma[B] (or a scalar) -> Tensor[B, C, H, W]."""
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must be a scalar or Tensor[{batch}], got {sigma.shape}.")
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            d = self.denoise(x, sigma)
            self.cost.denoiser += batch
            return self._guide(x, sigma, d).detach()

    @abstractmethod
    def _guide(self, x: Tensor, sigma: Tensor, d: Tensor) -> Tensor:
        """D_y from x (a leaf requiring grad), sigma[B] and d = D(x, sigma) (with its graph)."""

    def _observed(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(y, eta^2) in the dtype and on the device of ``like`` = A(D)[B, *obs]."""
        y = self.y.to(like)
        var = self.noise_std.to(like) ** 2
        return y, var.expand_as(like)

    def _vjp(self, d: Tensor, x: Tensor, v: Tensor, keep: bool = True) -> Tensor:
        """(∂D/∂x)^T v: Tensor[B, C, H, W] in d's dtype (``keep`` the graph for more)."""
        self.cost.jacobian += x.shape[0]
        return torch.autograd.grad(d, x, v.to(d), retain_graph=keep)[0].to(d)


class MMPS(GuidedDenoiser):
    """Moment Matching Posterior Sampling (Rozet et al. 2024, "Learning Diffusion Priors
    from Observations by Expectation Maximization", NeurIPS, arXiv:2405.13712).

    Tweedie's second-order formula gives the covariance of p(x_0 | x_sigma) as

        V[x_0 | x_sigma] = sigma^2 ∂D/∂x

    (exact for any prior; a Jacobian, applied only through products, never formed). With
    A linearised at D, MMPS solves per member, by ``cg_iterations`` steps of conjugate
    gradients,

        (Sigma_y + A' V A'^T) u = y - A(D),

    and returns

        D_y = D + sigma^2 (∂D/∂x)^T A'^T u.

    Each CG step costs one product V A'^T w = sigma^2 (∂D/∂x)^T A'^T w (V is symmetric for
    an exact denoiser; the vector-Jacobian product is its transpose otherwise, as in the
    paper), and the update one more: a call costs 1 denoiser evaluation and
    ``cg_iterations + 1`` Jacobian products per member.

    For a Gaussian prior and linear A, V and the linearisation are exact, so once CG has
    converged D_y is the exact conditional denoiser E[x_0 | x_sigma, y]. On the 16x16
    Gaussian oracle (``benchmarks/guidance_oracle.py``), with 8 CG iterations the ensembles
    match those of the exact posterior denoiser at every step count to MC error (an RMS
    excess bias <= 0.02 posterior stds), for 4x4 block means (16 observations) and for 26
    point values alike: the spread error at few steps (+6-7 %
    in std at 16 Heun steps, +1-2 % at 32, < 0.3 % at 64) is the sampler's discretisation,
    not the guidance. Fewer iterations leave the slow directions of the residual
    under-corrected: a bias of the ensemble MEAN (for 26 points up to 0.46 posterior stds
    with 4 iterations, 1.4 with 1) that more sampling steps do not remove.

    A trained denoiser's Jacobian is least reliable where V is largest: at sigma >> sigma_data
    V = sigma^2 ∂D/∂x multiplies the network's Jacobian error by sigma^2 (6400 at sigma = 80),
    while the exact V hardly changes there (it tends to the prior covariance: for unit-variance
    data V(10) is within 1 % of V(inf)). With ``covariance_sigma`` = s_c, above s_c the
    covariance is taken at s_c instead, from the Jacobian of D(., s_c) at the point
    x_c = D + (s_c / sigma)(x - D) of the probability-flow path (one more denoiser evaluation
    per member on those steps); the mean D(x, sigma) and the residual stay at sigma. By the law
    of total variance E V(s_c) ⪯ E V(sigma): the guidance is somewhat stronger than the exact
    one on those few high-noise steps. None (the paper's form) uses V(sigma) always and is
    exact for an exact denoiser; with s_c = 3 and the exact Gaussian denoiser the members keep
    their spread and coverage, with a mean bias of 0.09 posterior sds (RMS) for 10 % point
    observations (tests/test_guidance_oracle.py), while a trained prior's blown-up members
    disappear (see ``sgm.config.workflow.SampleSettings.covariance_sigma``).

    Args:
        denoise, forward, y, noise_std: see ``GuidedDenoiser``. eta = 0 is allowed
            (noise-free observations: the system is A' V A'^T alone, definite when A' has
            full row rank).
        cg_iterations: number of CG steps (0 gives u = 0, i.e. no guidance).
        covariance_sigma: s_c above, or None.
    """

    def __init__(
        self,
        denoise: Denoiser,
        forward: ForwardMap,
        y: Tensor,
        noise_std: Tensor | float,
        cg_iterations: int = 8,
        covariance_sigma: float | None = None,
    ) -> None:
        super().__init__(denoise, forward, y, noise_std)
        if cg_iterations < 0:
            raise ValueError(f"cg_iterations must be non-negative, got {cg_iterations}.")
        if covariance_sigma is not None and not covariance_sigma > 0:
            raise ValueError(f"covariance_sigma must be positive, got {covariance_sigma}.")
        self.cg_iterations = int(cg_iterations)
        self.covariance_sigma = covariance_sigma

    def _guide(self, x: Tensor, sigma: Tensor, d: Tensor) -> Tensor:
        lin = linearise(self.forward, d)
        y, var_y = self._observed(lin.value)
        cov = self._covariance(x, sigma, d)

        def cov_y(w: Tensor) -> Tensor:
            """(Sigma_y + A' V A'^T) w."""
            return var_y * w + lin.jvp(cov(lin.vjp(w), True))

        residual = (y - lin.value).expand_as(lin.value)
        u = conjugate_gradient(cov_y, residual, self.cg_iterations,
                               floor=lambda w: var_y * w)  # M ⪰ Sigma_y when V ⪰ 0
        return d.detach() + cov(lin.vjp(u), False)

    def _covariance(self, x: Tensor, sigma: Tensor, d: Tensor) -> Callable[[Tensor, bool], Tensor]:
        """v -> V v = s^2 (∂D(., s)/∂x)^T v at s = sigma, or at s_c per member above s_c."""
        s_c = self.covariance_sigma
        if s_c is None or not bool((sigma > s_c).any()):
            s2 = broadcast_per_sample(sigma.to(d) ** 2, d)
            return lambda v, keep: s2 * self._vjp(d, x, v, keep=keep)
        high = broadcast_per_sample(sigma > s_c, d)
        s = torch.clamp(sigma, max=s_c)
        ratio = broadcast_per_sample(s / sigma, d)
        with torch.enable_grad():  # x_c = D + (s / sigma)(x - D): sigma <= s_c keeps x
            x_c = torch.where(high, d.detach() + ratio.to(d) * (x.detach() - d.detach()),
                              x.detach()).requires_grad_(True)
            d_c = torch.where(high, self.denoise(x_c, s), d)
        self.cost.denoiser += int(high.flatten(1)[:, 0].sum())
        s2 = broadcast_per_sample(s.to(d) ** 2, d)
        leaves = (x, x_c)

        def product(v: Tensor, keep: bool) -> Tensor:
            self.cost.jacobian += x.shape[0]
            parts = torch.autograd.grad(d_c, leaves, v.to(d_c), retain_graph=keep,
                                        allow_unused=True)
            grad = sum(p for p in parts if p is not None)
            return s2 * grad.to(d)

        return product

