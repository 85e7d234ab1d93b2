"""The Gaussian posterior baseline: a Gaussian prior fitted on the training split and its
exact posterior under the linear observation model, as marginals and as an ensemble.

Prior, per variable c (variables independent): x_c ~ N(μ_c, Σ_c), held in low-rank plus
diagonal form Σ = diag(d) + W Wᵀ, W[HW, r], so that (H W)² is never formed. Fitted from the
training anomalies X[n, HW] with sample covariance S = Xᵀ X / (n − 1) = V Λ Vᵀ (EOFs V,
eigenvalues Λ, rank ≤ n − 1), the family is

    Σ(α, k) = (1 − α) V_k Λ_k V_kᵀ + diag(s − (1 − α) diag(V_k Λ_k V_kᵀ)),    s = diag(S),

i.e. W = √(1 − α) V_k Λ_k^½. With all EOFs (k = None) it is the shrinkage towards the
diagonal Σ_α = (1 − α) S + α diag(S) (Ledoit & Wolf 2004); with k EOFs and α = 0, the leading
EOFs plus a diagonal residual. Every member of the family keeps the sample variances s.

Posterior under y = A x + η ε (Tarantola 2005 eq. 3.37), computed in observation space:

    S_y = A Σ Aᵀ + η² I = L Lᵀ,        K = Σ Aᵀ S_y⁻¹,
    mean = μ + K (y − A μ),
    var  = diag(Σ) − diag(K S_y Kᵀ) = diag(Σ) − Σ_i (Σ Aᵀ L⁻ᵀ e_i)²,

with A and Aᵀ applied through the observation model (never as a dense matrix) and Cholesky
solves. Members by Matheron's rule (Journel & Huijbregts 1978; Wilson et al. 2020, pathwise
conditioning): x̃ ~ N(μ, Σ), ε ~ N(0, I),

    x = x̃ + K (y − A x̃ − η ε),

an exact posterior draw whose covariance is the Joseph form (I − KA) Σ (I − KA)ᵀ + η² K Kᵀ,
symmetric positive semi-definite by construction; the posterior covariance itself is never
formed. Each member's normals come from its own generator seeded with
``sgm.core.sampler.member_seed(seed, time_index, member)``, so a member does not depend on how
many members or times are drawn together.

Cost and limits, per variable: the prior holds HW (r + 1) floats (r ≤ n − 1 training fields;
r = HW only for a dense covariance given to :meth:`GaussianPrior.from_covariance`, O((HW)²));
the fit's SVD needs the n × HW anomalies. The posterior forms the n_obs × n_obs matrix S_y
(O(n_obs²) memory, O(n_obs³) Cholesky) and its marginal variances cost n_obs applications of
Aᵀ and Σ: cheap for block means and points even on 256 × 256 grids (n_obs ≤ a few thousand),
but for blur n_obs = HW, so blur is limited to grids of a few thousand pixels.

References: Ledoit, O. & Wolf, M. (2004). A well-conditioned estimator for large-dimensional
covariance matrices. J. Multivariate Anal. 88, 365-411. Tarantola, A. (2005). Inverse Problem
Theory. SIAM. Wilson, J. T. et al. (2020). Efficiently sampling functions from Gaussian
process posteriors. ICML.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from sgm.core.observation import ObservationModel
from sgm.core.sampler import member_seed

_CHUNK = 256  # observations per block when forming A D Aᵀ and the marginal variances


def _per_variable(value: object, count: int, name: str) -> list:
    """One value per variable: a scalar (or None) repeated, or a sequence of ``count``."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != count:
            raise ValueError(f"{name}: expected {count} value(s), one per variable, got "
                             f"{len(value)}")
        return list(value)
    return [value] * count


def check_observations(obs_model: ObservationModel, y: Tensor) -> Tensor:
    """y as float64 after checking it is Tensor[T, C, *obs_shape] for ``obs_model``."""
    y = torch.as_tensor(y, dtype=torch.float64)
    want = (len(obs_model.variables), *obs_model.obs_shape)
    if y.ndim != 1 + len(want) or tuple(y.shape[1:]) != want:
        raise ValueError(f"y: expected shape [T, {', '.join(map(str, want))}], "
                         f"got {tuple(y.shape)}")
    return y


@dataclass(frozen=True)
class GaussianPrior:
    """N(μ_c, diag(d_c) + W_c W_cᵀ) for every variable c, in float64.

    mean: Tensor[C, H, W]; diag: d as Tensor[C, HW]; factor: W as Tensor[C, HW, r] (pixels in
    row-major (H, W) order; zero columns are allowed, e.g. when variables keep different
    numbers of EOFs).
    """

    mean: Tensor
    diag: Tensor
    factor: Tensor

    def __post_init__(self) -> None:
        c, h, w = self.mean.shape
        if self.diag.shape != (c, h * w) or self.factor.shape[:2] != (c, h * w):
            raise ValueError(f"GaussianPrior: mean {tuple(self.mean.shape)}, diag "
                             f"{tuple(self.diag.shape)} and factor {tuple(self.factor.shape)} "
                             "do not match")

    @classmethod
    def from_covariance(cls, mean: Tensor, cov: Tensor) -> GaussianPrior:
        """The prior with a given dense covariance Tensor[C, HW, HW]: W = U Λ^½ from its
        eigendecomposition (negative round-off clipped), d = 0. O((HW)²) memory."""
        mean = torch.as_tensor(mean, dtype=torch.float64)
        lam, vec = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
        factor = vec * lam.clamp_min(0.0).sqrt()[:, None, :]
        return cls(mean, factor.new_zeros(factor.shape[:2]), factor)

    def variance(self) -> Tensor:
        """diag(Σ_c) as Tensor[C, HW]."""
        return self.diag + (self.factor**2).sum(-1)

    def covariance(self) -> Tensor:
        """Dense Σ_c as Tensor[C, HW, HW]: O((HW)²) memory, for small grids and checks."""
        return torch.diag_embed(self.diag) + self.factor @ self.factor.mT

    def cov_apply(self, var: int, u: Tensor) -> Tensor:
        """Σ_var u for u: Tensor[..., HW] -> Tensor[..., HW]."""
        w = self.factor[var]
        return self.diag[var] * u + (u @ w) @ w.T

    def posterior(self, obs_model: ObservationModel, y: Tensor) -> GaussianPosterior:
        """The exact posterior given observations y: Tensor[T, C, *obs_shape]."""
        return GaussianPosterior(self, obs_model, y)


@dataclass(frozen=True)
class AnomalyCovariance:
    """The training split's climatology and anomaly covariance per variable, in EOF form.

    mean: μ as Tensor[C, H, W]; variance: s = diag(S) as Tensor[C, HW]; eofs: V as
    Tensor[C, HW, r] (orthonormal columns); eigenvalues: Λ as Tensor[C, r], descending, with
    r = min(n − 1, HW) for n training fields.
    """

    mean: Tensor
    variance: Tensor
    eofs: Tensor
    eigenvalues: Tensor

    @classmethod
    def fit(cls, train: Tensor) -> AnomalyCovariance:
        """From training fields Tensor[n, C, H, W] (n ≥ 2): one thin SVD of the anomalies
        X / √(n − 1) = U Λ^½ Vᵀ per variable."""
        x = torch.as_tensor(train, dtype=torch.float64)
        if x.ndim != 4 or x.shape[0] < 2:
            raise ValueError(f"train: expected Tensor[n, C, H, W] with n ≥ 2, got shape "
                             f"{tuple(x.shape)}")
        n, c, h, w = x.shape
        mean = x.mean(0)
        anom = (x - mean).reshape(n, c, h * w).transpose(0, 1) / math.sqrt(n - 1)  # [C, n, HW]
        _, sv, vh = torch.linalg.svd(anom, full_matrices=False)
        rank = min(n - 1, h * w)
        return cls(mean, (anom**2).sum(1), vh[:, :rank].mT, sv[:, :rank] ** 2)

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.shape[1])

    def prior(self, shrinkage: float | Sequence[float],
              eofs: int | None | Sequence[int | None] = None) -> GaussianPrior:
        """The prior Σ(α, k) of the module docstring, α = ``shrinkage`` in [0, 1] and k =
        ``eofs`` (None, or more than the rank: all), each one value for every variable or one
        per variable."""
        c = self.mean.shape[0]
        alphas = [float(a) for a in _per_variable(shrinkage, c, "shrinkage")]
        ks = [self.rank if k is None else min(int(k), self.rank)
              for k in _per_variable(eofs, c, "eofs")]
        if any(not 0.0 <= a <= 1.0 for a in alphas):
            raise ValueError(f"shrinkage must lie in [0, 1], got {alphas}")
        if any(k < 0 for k in ks):
            raise ValueError(f"eofs must be non-negative, got {ks}")
        factor = self.eofs.new_zeros(c, self.eofs.shape[1], max(ks))
        for v, (a, k) in enumerate(zip(alphas, ks, strict=True)):
            factor[v, :, :k] = self.eofs[v, :, :k] * ((1.0 - a) * self.eigenvalues[v, :k]).sqrt()
        diag = (self.variance - (factor**2).sum(-1)).clamp_min(0.0)
        return GaussianPrior(self.mean, diag, factor)


class GaussianPosterior:
    """The exact posterior of a :class:`GaussianPrior` given y[T, C, *obs_shape].

    ``mean``: Tensor[T, C, H, W]; :attr:`std`: the marginal standard deviations
    Tensor[C, H, W] (the same for every time); :meth:`sample`: members.
    """

    def __init__(self, prior: GaussianPrior, obs_model: ObservationModel, y: Tensor) -> None:
        c, h, w = prior.mean.shape
        if len(obs_model.variables) != c or obs_model.grid != (h, w):
            raise ValueError(f"prior of {c} variable(s) on {(h, w)} does not match the "
                             f"observation model ({len(obs_model.variables)} on {obs_model.grid})")
        y = check_observations(obs_model, y).to(prior.mean.device)
        self.prior = prior
        self.obs_model = obs_model
        self.n_obs = math.prod(obs_model.obs_shape)
        self._y = y.reshape(y.shape[0], c, self.n_obs)
        self._eta = obs_model.noise_std().tolist()
        self._chol = [self._obs_cholesky(v) for v in range(c)]
        mu = prior.mean.reshape(c, h * w)
        mean = [mu[v] + self._gain(v, self._y[:, v] - self._a(mu[v])) for v in range(c)]
        self.mean = torch.stack(mean, 1).reshape(-1, c, h, w)

    def _a(self, u: Tensor) -> Tensor:
        """A u: Tensor[..., HW] -> Tensor[..., n_obs] (one variable)."""
        return self.obs_model.operator.apply(u.reshape(*u.shape[:-1], *self.obs_model.grid)
                                             ).reshape(*u.shape[:-1], self.n_obs)

    def _at(self, z: Tensor) -> Tensor:
        """Aᵀ z: Tensor[..., n_obs] -> Tensor[..., HW] (one variable)."""
        return self.obs_model.operator.adjoint(z.reshape(*z.shape[:-1], *self.obs_model.obs_shape)
                                               ).reshape(*z.shape[:-1], -1)

    def _eye(self) -> Tensor:
        return torch.eye(self.n_obs, dtype=torch.float64, device=self.prior.mean.device)

    def _obs_cholesky(self, var: int) -> Tensor:
        """L with L Lᵀ = A Σ Aᵀ + η² I = (A W)(A W)ᵀ + A D Aᵀ + η² I, formed block by block."""
        aw = self._a(self.prior.factor[var].T)  # [r, n_obs]
        eye = self._eye()
        s = aw.T @ aw + self._eta[var] ** 2 * eye
        for i in range(0, self.n_obs, _CHUNK):
            s[i : i + _CHUNK] += self._a(self.prior.diag[var] * self._at(eye[i : i + _CHUNK]))
        chol, info = torch.linalg.cholesky_ex(0.5 * (s + s.T))
        if int(info) != 0:
            raise ValueError(f"variable {self.obs_model.variables[var]!r}: A Σ Aᵀ + η² I is not "
                             "positive definite (zero noise on directions the prior does not "
                             "span?)")
        return chol

    def _gain(self, var: int, innovation: Tensor) -> Tensor:
        """K d = Σ Aᵀ S_y⁻¹ d: Tensor[B, n_obs] -> Tensor[B, HW]."""
        z = torch.cholesky_solve(innovation.T, self._chol[var]).T
        return self.prior.cov_apply(var, self._at(z))

    @cached_property
    def std(self) -> Tensor:
        """Marginal posterior std Tensor[C, H, W]: diag(Σ) − Σ_i (Σ Aᵀ L⁻ᵀ e_i)², clipped at 0."""
        var = self.prior.variance()
        eye = self._eye()
        for v, chol in enumerate(self._chol):
            for i in range(0, self.n_obs, _CHUNK):
                cols = torch.linalg.solve_triangular(chol.T, eye[:, i : i + _CHUNK], upper=True)
                var[v] -= (self.prior.cov_apply(v, self._at(cols.T)) ** 2).sum(0)
        return var.clamp_min(0.0).sqrt().reshape(self.prior.mean.shape)

    def sample(self, members: int, seed: int, time_index: Sequence[int] | None = None) -> Tensor:
        """Members by Matheron's rule: Tensor[M, T, C, H, W] (float64).

        Member m at time t uses its own generator, seeded with ``member_seed(seed,
        time_index[t], m)``; ``time_index`` (default 0 … T − 1) names the times of y globally,
        so a time gets the same members whether it is drawn alone or with others.
        """
        t_count, c, n_obs = self._y.shape
        times = list(range(t_count)) if time_index is None else [int(t) for t in time_index]
        if len(times) != t_count:
            raise ValueError(f"time_index: expected {t_count} values, got {len(times)}")
        if members < 1:
            raise ValueError(f"members must be positive, got {members}")
        mu = self.prior.mean.reshape(c, -1)
        hw, r = mu.shape[1], self.prior.factor.shape[-1]
        out = torch.empty(members, t_count, c, hw, dtype=torch.float64, device=mu.device)
        for t, ti in enumerate(times):
            normals = torch.stack([
                torch.randn(c, hw + r + n_obs, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(member_seed(seed, ti, m)))
                for m in range(members)
            ]).to(mu.device)  # [M, C, HW + r + n_obs]
            for v in range(c):
                z_d, z_w, eps = normals[:, v].split([hw, r, n_obs], dim=-1)
                x = mu[v] + self.prior.diag[v].sqrt() * z_d + z_w @ self.prior.factor[v].T
                innovation = self._y[t, v] - self._a(x) - self._eta[v] * eps
                out[:, t, v] = x + self._gain(v, innovation)
        return out.reshape(members, t_count, *self.prior.mean.shape)
