"""`FlowProbe`: the velocity field of a rectified-flow DiffusionEngine (denoiser with RectifiedFlowScaling).

Everything `DiffusionProbe` reports (gradient norms, per-sigma-bin loss, loss/cond_gain), computed once,
plus the velocity metrics below, all in rectified-flow time t = sigma / (1 + sigma), where the engine's
x = x0 + sigma * eps is x_t = x / (1 + sigma) = (1 - t) x0 + t eps and the target is v = eps - x0.

Alignment, on the training step's own x0, sigma and noise (`DiffusionEngine.training_inputs`), with the
batch's conditions without CFG dropout. The prediction is read off the denoiser output D, as the loss sees
it: D = x_t - t v_pred (RectifiedFlowScaling), so v_pred = (x_t - D) / t.

    flow/cos            mean over rows of cos(v_pred, v_tgt)
    flow/nmse           sum ||v_pred - v_tgt||^2 / sum ||v_tgt||^2
    flow/speed_ratio    mean over rows of ||v_pred|| / ||v_tgt||
    flow/cos_t{b}, flow/nmse_t{b}    the same for the rows with t in [b / 10, (b + 1) / 10)
    flow/cond_gain_cos  flow/cos minus the cos with shuffled conditions (base.shuffled_cond)

Even the exact field E[v | x_t] does not reach cos = 1: v_tgt = eps - x0 keeps a part that x_t cannot
tell (eps near t = 0, x0 near t = 1). But the exact field is calibrated, <v_pred, v_tgt - v_pred> ≈ 0, so
for it speed_ratio ≈ cos; a field scaled by c has speed_ratio ≈ c * cos (rules.flow_verdicts).

Endpoints, with `endpoint_rows` rows (whole clips for video) of fixed noise x_1 ~ N(0, I) from a seeded
torch.Generator (never the global RNG) and the first rows' conditions, unguided:

    flow/endpt_rmse@K       RMS distance between the K-step Euler endpoint and a reference endpoint
    flow/endpt_std_ratio@K  std of the K-step endpoint / std of the batch's x0 (also for the reference)

Euler runs in t from 1 (pure noise) to 0 on a uniform grid, x <- x + (t_next - t) v(x, t), calling the
network directly: with RectifiedFlowScaling its input c_in x is x_t itself and its timestep t * t_scale,
so v is defined at t = 1, where sigma is infinite. The reference is the same integration with
`endpoint_ref_steps` steps, from the same noise, in the same call. It cannot be the batch's x0: training
pairs noise and data independently, so the x0 of a row is not where its noise flows to; the meaningful
question is whether coarse integration lands where fine integration does (the error shrinks about as 1/K
for a field the sampler can follow). Because the reference follows the same field, a wrong scale or sign
does not show in endpt_rmse (flow/speed_ratio, flow/cos and endpt_std_ratio show it); a flat or rising
curve means a field that Euler steps cannot follow (stiff, or singular near t = 0 or 1). Endpoint noise
has no offset noise.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.nn import functional as F

from sgm.diagnostics.base import DEFAULT_SIGMA_BINS, ProbeResult
from sgm.diagnostics.probes import DiffusionProbe
from sgm.models.diffusion import DenoisingInputs, truncate_cond
from sgm.modules.diffusionmodules.denoiser_scaling import sigma_to_t
from sgm.modules.diffusionmodules.sampling_utils import euler_ode
from sgm.util import append_dims

DEFAULT_ENDPOINT_STEPS = (8, 16, 32, 64)
T_BINS = 10  # equal bins of t in [0, 1]

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (n, ...), t scalar) -> v (n, ...)


# ---------------------------------------------------------------------------------- velocity statistics
def row_cos(v_pred: torch.Tensor, v_tgt: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(v_pred.float().flatten(1), v_tgt.float().flatten(1), dim=1)  # (N,)


def row_speed_ratio(v_pred: torch.Tensor, v_tgt: torch.Tensor) -> torch.Tensor:
    return v_pred.float().flatten(1).norm(dim=1) / v_tgt.float().flatten(1).norm(dim=1).clamp(min=1e-12)  # (N,)


def nmse(v_pred: torch.Tensor, v_tgt: torch.Tensor) -> float:
    """||v_pred - v_tgt||^2 / ||v_tgt||^2 over all rows given."""
    v_pred, v_tgt = v_pred.float(), v_tgt.float()
    return float((v_pred - v_tgt).pow(2).sum() / v_tgt.pow(2).sum().clamp(min=1e-12))


def alignment_metrics(v_pred: torch.Tensor, v_tgt: torch.Tensor, t: torch.Tensor, bins: int = T_BINS
                      ) -> dict[str, float]:
    """flow/cos, flow/nmse, flow/speed_ratio over the rows, and cos / nmse per t bin (empty bins left out)."""
    cos = row_cos(v_pred, v_tgt)  # (N,)
    out = {"flow/cos": float(cos.mean()), "flow/nmse": nmse(v_pred, v_tgt),
           "flow/speed_ratio": float(row_speed_ratio(v_pred, v_tgt).mean())}
    index = (t.detach().float() * bins).floor().long().clamp(0, bins - 1)  # (N,) bin of each row
    for b in range(bins):
        inside = index == b
        if inside.any():
            out[f"flow/nmse_t{b}"] = nmse(v_pred[inside], v_tgt[inside])
            out[f"flow/cos_t{b}"] = float(cos[inside].mean())
    return out


# ---------------------------------------------------------------------------------- integration
def euler_t(velocity: Velocity, x_1: torch.Tensor, steps: int) -> torch.Tensor:
    """K = `steps` Euler steps of dx_t/dt = v(x_t, t) from t = 1 (x_1, pure noise) down to t = 0."""
    t_grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # (K + 1,)
    return euler_ode(lambda x, t: velocity(x, t.to(x)), x_1, t_grid)  # (n, ...) at t = 0


def network_velocity(engine, cond: dict, extra: dict) -> Velocity:
    """v(x_t, t) = F(x_t, t * t_scale): RectifiedFlowScaling's network sees c_in x = x_t and predicts v."""
    t_scale = engine.denoiser.scaling.t_scale

    def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c_noise = (t * t_scale).expand(x_t.shape[0])  # (n,)
        return engine.model(x_t, c_noise, cond, **extra)  # (n, ...)

    return velocity


# ---------------------------------------------------------------------------------- probe
class FlowProbe(DiffusionProbe):
    """DiffusionProbe's metrics plus the flow/* velocity diagnostics (module docstring)."""

    def __init__(
        self,
        sigma_bins: Sequence[float] = DEFAULT_SIGMA_BINS,  # edges of the sigma bins of loss/sigma_*
        endpoint_steps: Sequence[int] = DEFAULT_ENDPOINT_STEPS,  # K of flow/endpt_rmse@K
        endpoint_ref_steps: int = 128,  # Euler steps of the reference endpoint
        endpoint_rows: int = 16,  # rows (whole clips for video) integrated to their endpoint
        endpoint_seed: int = 0,  # seed of the endpoint noise's own torch.Generator
    ) -> None:
        super().__init__(sigma_bins)
        self.endpoint_steps = tuple(int(k) for k in endpoint_steps)
        if any(k < 1 for k in self.endpoint_steps) or endpoint_ref_steps < 1 or endpoint_rows < 1:
            raise ValueError(f"FlowProbe needs positive endpoint_steps, endpoint_ref_steps and endpoint_rows, got "
                             f"{self.endpoint_steps}, {endpoint_ref_steps}, {endpoint_rows}")
        self.endpoint_ref_steps = endpoint_ref_steps
        self.endpoint_rows = endpoint_rows
        self.endpoint_seed = endpoint_seed

    def measure(self, engine, batch: dict, want_images: bool = False) -> ProbeResult:
        inputs = engine.training_inputs(batch)
        metrics, denoised, clean = self.diffusion_metrics(engine, batch, inputs)
        with torch.no_grad():
            metrics |= self.alignment(inputs, denoised)
            metrics |= self.endpoints(engine, inputs, clean)
        return ProbeResult(metrics, num_frames=inputs.num_frames)

    def alignment(self, draws: DenoisingInputs, denoised: dict[str, torch.Tensor]) -> dict[str, float]:
        x0, sigma = draws.x0, draws.sigma
        t = sigma_to_t(sigma)  # (N,)
        t_b = append_dims(t, x0.ndim)  # (N, 1, ...)
        x_t = draws.x_noisy / (1.0 + append_dims(sigma, x0.ndim))  # (N, ...) = (1 - t) x0 + t eps
        v_tgt = draws.noise - x0  # (N, ...) rectified-flow target
        v_pred = (x_t - denoised["true"]) / t_b  # D = x_t - t v_pred
        v_shuffled = (x_t - denoised["shuffled"]) / t_b
        out = alignment_metrics(v_pred, v_tgt, t)
        out["flow/cond_gain_cos"] = out["flow/cos"] - float(row_cos(v_shuffled, v_tgt).mean())
        return out

    def endpoints(self, engine, draws: DenoisingInputs, clean: dict) -> dict[str, float]:
        rows, frames = draws.x0.shape[0], draws.num_frames
        n = max(1, min(self.endpoint_rows, rows) // frames) * frames  # whole clips
        cond = truncate_cond(clean, n, frames, rows // frames)  # the first n rows' conditions
        extra = truncate_cond(draws.model_kwargs, n, frames, rows // frames)  # e.g. image_only_indicator (b, T)
        generator = torch.Generator().manual_seed(self.endpoint_seed)
        x_1 = torch.randn((n, *draws.x0.shape[1:]), generator=generator).to(draws.x0)  # (n, ...) t = 1
        velocity = network_velocity(engine, cond, extra)
        data_std = float(draws.x0.float().std())
        reference = euler_t(velocity, x_1, self.endpoint_ref_steps)  # (n, ...)
        out = {f"flow/endpt_std_ratio@{self.endpoint_ref_steps}": float(reference.float().std()) / data_std}
        for steps in self.endpoint_steps:
            x = euler_t(velocity, x_1, steps)
            out[f"flow/endpt_rmse@{steps}"] = float((x.float() - reference.float()).pow(2).mean().sqrt())
            out[f"flow/endpt_std_ratio@{steps}"] = float(x.float().std()) / data_std
        return out


__all__ = ["FlowProbe", "alignment_metrics", "euler_t", "network_velocity"]
