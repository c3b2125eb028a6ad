#!/usr/bin/env python3
"""Reference fixtures for mgpu's samplers, schedulers and seeded noise (src/sample/).

Install (pinned versions this was generated with):
    pip install torch==2.15.0 k-diffusion==0.1.1.post1 scipy==1.17.1 numpy==2.4.6 diffusers==0.42.1
Run from the repository root:
    python tools/parity_samplers.py
It writes small JSON files to tests/fixtures/samplers/, read by tests/sampler_parity.rs (CI
never runs Python; the fixtures are committed).

What is the reference for what:
- k-diffusion 0.1.1.post1, called directly: sample_euler (also ComfyUI's `ddim`, which is
  euler), sample_heun, sample_dpmpp_2m, get_sigmas_karras, get_sigmas_exponential.
- scipy.stats.beta.ppf: the quantiles ComfyUI's `beta` scheduler uses.
- Re-implemented below from reading ComfyUI (comfy/model_sampling.py, comfy/samplers.py,
  comfy/k_diffusion/sampling.py), because k-diffusion 0.1.1 has no flow-model variants:
  ModelSamplingFlux / ModelSamplingDiscreteFlow tables, the simple / normal / sgm_uniform / beta
  schedulers, KSampler's denoise < 1 handling, sample_euler_ancestral_RF (ComfyUI's
  euler_ancestral for CONST models) and the CONST (half-log-SNR) sample_dpmpp_2m_sde with
  offset_first_sigma_for_snr.
- diffusers 0.42.1, called directly: UniPCMultistepScheduler (uni_pc = bh1, uni_pc_bh2 = bh2;
  solver_order=2, lower_order_final, flow_prediction, use_flow_sigmas, as WanPipeline configures
  it) fed the fixture's float64 σ sequence; its own float32 sigma arrays for the diffusers-exact
  schedulers (simple_exact = FluxPipeline + FlowMatchEulerDiscreteScheduler, flow_sigmas =
  UniPCMultistepScheduler.set_timesteps with use_flow_sigmas), next to a float64 evaluation of the
  same formulas (diffusers rounds to float32; FlowMatchEuler even computes the shift in float32).
- mgpu's documented noise generator (Philox4x32-10 + Box-Muller, src/sample/noise.rs),
  re-implemented from its documentation in tools/mgpu_noise.py; the stochastic samplers get that noise through
  k-diffusion's `noise_sampler` hook, so their trajectories are comparable.

Everything runs in float64 (ComfyUI keeps σ tables in float32; the script prints how far that
is from float64). The toy model is the exact x0-prediction for Gaussian data
x0 ~ N(mean, std²) (per element) under the CONST parameterisation x_σ = σ·noise + (1 − σ)·x0.
"""

import json
import math
import os
import struct

import numpy as np
import scipy.stats
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from k_diffusion import sampling as K

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "samplers")

# ---------------------------------------------------------------- noise (mgpu's generator)
from mgpu_noise import normal_f32  # noqa: E402


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


# ---------------------------------------------------------------- model sampling (ComfyUI)


class Flux:
    """ModelSamplingFlux: 10000 entries, sigma(t) = flux_time_shift(shift, 1, t), timestep = sigma."""

    def __init__(self, shift, n=10000):
        self.shift = shift
        self.sigmas = [self.sigma(k / n) for k in range(1, n + 1)]

    def sigma(self, t):
        e = math.exp(self.shift)
        return e / (e + (1.0 / t - 1.0))

    def timestep(self, s):
        return s

    def percent_to_sigma(self, p):
        return 1.0 if p <= 0 else 0.0 if p >= 1 else self.sigma(1.0 - p)


class DiscreteFlow:
    """ModelSamplingDiscreteFlow: 1000 entries, sigma(t) = time_snr_shift(shift, t / multiplier)."""

    def __init__(self, shift, multiplier, n=1000):
        self.shift, self.multiplier = shift, multiplier
        self.sigmas = [self.sigma((k / n) * multiplier) for k in range(1, n + 1)]

    def _shift(self, t):
        return t if self.shift == 1.0 else self.shift * t / (1 + (self.shift - 1) * t)

    def sigma(self, t):
        return self._shift(t / self.multiplier)

    def timestep(self, s):
        return s * self.multiplier

    def percent_to_sigma(self, p):
        return 1.0 if p <= 0 else 0.0 if p >= 1 else self._shift(1.0 - p)


def flux_shift_for_size(w, h):
    mm = (1.15 - 0.5) / (4096 - 256)
    return (w * h / (8 * 8 * 2 * 2)) * mm + (0.5 - mm * 256)


MODEL_SAMPLINGS = {
    "dev_1024": ({"kind": "flux", "shift": flux_shift_for_size(1024, 1024)}, Flux(flux_shift_for_size(1024, 1024))),
    "dev_768x1344": ({"kind": "flux", "shift": flux_shift_for_size(768, 1344)}, Flux(flux_shift_for_size(768, 1344))),
    "schnell": ({"kind": "discrete_flow", "shift": 1.0, "multiplier": 1.0}, DiscreteFlow(1.0, 1.0)),
    # Wan 2.1 text-to-video: ComfyUI's ModelSamplingDiscreteFlow, multiplier 1000, Wan's shift 5.
    "wan_shift5": ({"kind": "discrete_flow", "shift": 5.0, "multiplier": 1000.0}, DiscreteFlow(5.0, 1000.0)),
}

# ---------------------------------------------------------------- schedulers (ComfyUI)


def torch_linspace(a, b, n):
    return [float(v) for v in torch.linspace(a, b, n, dtype=torch.float64)]


def simple(ms, steps):
    ss = len(ms.sigmas) / steps
    return [ms.sigmas[-(1 + int(x * ss))] for x in range(steps)] + [0.0]


def normal(ms, steps, sgm=False):
    start, end = ms.timestep(ms.sigmas[-1]), ms.timestep(ms.sigmas[0])
    append_zero = True
    if sgm:
        ts = torch_linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(ms.sigma(end), 0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        ts = torch_linspace(start, end, steps)
    sigs = [ms.sigma(t) for t in ts]
    return sigs + [0.0] if append_zero else sigs


def beta(ms, steps, alpha=0.6, b=0.6):
    total = len(ms.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, b) * total)
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs.append(ms.sigmas[int(t)])
        last = t
    return sigs + [0.0]


def np_linspace(a, b, n):
    return [float(v) for v in np.linspace(a, b, n)]


def flow_sigma(ms, t):
    """The model's shift at flow time t (no multiplier): FLUX's time_shift(mu), or time_snr_shift."""
    if isinstance(ms, Flux):
        e = math.exp(ms.shift)
        return e / (e + (1.0 / t - 1.0) ** 1.0)
    return ms.shift * t / (1 + (ms.shift - 1) * t)


def simple_exact(ms, steps):
    """FluxPipeline's sigmas (np.linspace(1, 1/steps, steps) through the shift), float64."""
    return [flow_sigma(ms, t) for t in np_linspace(1.0, 1.0 / steps, steps)] + [0.0]


def flow_sigmas(ms, steps):
    """UniPCMultistepScheduler.set_timesteps with use_flow_sigmas, float64."""
    sig = [flow_sigma(ms, t) for t in np_linspace(1.0, 1.0 / 1000, steps + 1)[:-1]]
    if abs(sig[0] - 1) < 1e-6:
        sig[0] -= 1e-6
    return sig + [0.0]


def diffusers_sigmas(ms, name, steps):
    """diffusers' own (float32) sigma arrays for the two diffusers-exact schedulers."""
    dynamic = isinstance(ms, Flux)
    if name == "simple_exact":
        sch = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, use_dynamic_shifting=dynamic, shift=1.0 if dynamic else ms.shift,
            time_shift_type="exponential")
        sch.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=ms.shift if dynamic else None)
    else:
        sch = UniPCMultistepScheduler(
            num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=1.0 if dynamic else ms.shift, use_dynamic_shifting=dynamic,
            time_shift_type="exponential", solver_order=2, final_sigmas_type="zero")
        sch.set_timesteps(steps, mu=ms.shift if dynamic else None)
    return [float(v) for v in sch.sigmas]


def full_schedule(ms, name, steps):
    if name == "simple_exact":
        return simple_exact(ms, steps)
    if name == "flow_sigmas":
        return flow_sigmas(ms, steps)
    if name == "simple":
        return simple(ms, steps)
    if name == "normal":
        return normal(ms, steps)
    if name == "sgm_uniform":
        return normal(ms, steps, sgm=True)
    if name == "karras":
        return [float(v) for v in K.get_sigmas_karras(steps, ms.sigmas[0], ms.sigmas[-1], rho=7.0)]
    if name == "exponential":
        return [float(v) for v in K.get_sigmas_exponential(steps, ms.sigmas[0], ms.sigmas[-1])]
    if name == "beta":
        return beta(ms, steps)
    raise ValueError(name)


def schedule(ms, name, steps, denoise):
    """KSampler.set_steps."""
    if denoise > 0.9999:
        return full_schedule(ms, name, steps)
    sig = full_schedule(ms, name, int(steps / denoise))
    return sig[-(steps + 1):]


SCHEDULERS = ["simple", "normal", "karras", "exponential", "beta", "sgm_uniform"]
EXACT_SCHEDULERS = ["simple_exact", "flow_sigmas"]

# ---------------------------------------------------------------- samplers


def sample_euler_ancestral_rf(model, x, sigmas, callback, noise_sampler, eta=1.0, s_noise=1.0):
    """ComfyUI's euler_ancestral for CONST models (sample_euler_ancestral_RF)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        callback({"x": x, "i": i})
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            downstep_ratio = 1 + (sigmas[i + 1] / sigmas[i] - 1) * eta
            sigma_down = sigmas[i + 1] * downstep_ratio
            alpha_ip1 = 1 - sigmas[i + 1]
            alpha_down = 1 - sigma_down
            renoise_coeff = (sigmas[i + 1] ** 2 - sigma_down**2 * alpha_ip1**2 / alpha_down**2) ** 0.5
            sigma_down_i_ratio = sigma_down / sigmas[i]
            x = sigma_down_i_ratio * x + (1 - sigma_down_i_ratio) * denoised
            if eta > 0:
                x = (alpha_ip1 / alpha_down) * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise_coeff
    return x


def sample_dpmpp_2m_sde_const(model, x, sigmas, ms, callback, noise_sampler, eta=1.0, s_noise=1.0):
    """ComfyUI's dpmpp_2m_sde (midpoint) for CONST models: half-log-SNR λ = log((1-σ)/σ)."""
    sigmas = sigmas.clone()
    if sigmas[0] >= 1:  # offset_first_sigma_for_snr
        sigmas[0] = ms.percent_to_sigma(1e-4)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        callback({"x": x, "i": i})
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = sigmas[i].logit().neg(), sigmas[i + 1].logit().neg()
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


def sample_unipc_diffusers(model, x, sigmas, callback, variant):
    """diffusers' UniPCMultistepScheduler as WanPipeline configures it (order 2, lower-order
    final, flow prediction, flow sigmas), fed this float64 σ sequence instead of its float32 one.
    A first σ of 1 is lowered by 1e-6, as diffusers' own flow schedule does. The model's
    x0-prediction D is handed over as the velocity v = (x − D)/σ the pipeline would pass."""
    sigmas = sigmas.clone()
    if sigmas[0] >= 1:
        sigmas[0] = 1 - 1e-6
    n = len(sigmas) - 1
    sch = UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, solver_type=variant, lower_order_final=True,
        prediction_type="flow_prediction", use_flow_sigmas=True, final_sigmas_type="zero", predict_x0=True)
    sch.set_timesteps(n)
    sch.sigmas = sigmas
    sch.set_begin_index(0)
    s_in = x.new_ones([x.shape[0]])
    for i in range(n):
        denoised = model(x, sigmas[i] * s_in)
        callback({"x": x, "i": i})
        v = (x - denoised) / sigmas[i]
        x_next = sch.step(v, sch.timesteps[i], x).prev_sample
        if i == n - 1 and sigmas[-1] == 0:
            # Last step, first order, to σ = 0: the update's limit is the x0-prediction. bh2
            # reaches it; bh1 computes B(h)·0 = −inf·0 and returns NaN (mgpu returns the limit).
            if variant == "bh1":
                assert torch.isnan(x_next).all(), "diffusers' bh1 final step is expected to be NaN"
                x_next = denoised.clone()
            else:
                assert (x_next - denoised).abs().max() < 1e-12
        x = x_next
    return x


SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "ddim"]
UNIPC_SAMPLERS = {"uni_pc": "bh1", "uni_pc_bh2": "bh2"}


class Toy:
    """Exact E[x0 | x_σ] for x0 ~ N(mean, std²), x_σ = σ·n + (1−σ)·x0."""

    def __init__(self, mean, std):
        self.mean, self.var = mean, std**2
        self.calls = []

    def __call__(self, x, sigma):
        s = float(sigma.reshape(-1)[0])
        self.calls.append(s)
        a = 1.0 - s
        gain = a * self.var / (a * a * self.var + s * s)
        return self.mean + gain * (x - a * self.mean)


def run_case(sampler, sched, ms_name, steps, denoise, seed, init, toy_mean, toy_std, shape):
    ms = MODEL_SAMPLINGS[ms_name][1]
    sig_list = schedule(ms, sched, steps, denoise)
    sigmas = torch.tensor(sig_list)
    count = int(np.prod(shape))
    n0 = torch.tensor(normal_f32(seed, 0, count)).reshape(shape)
    if init is None:
        x = sigmas[0] * n0
    else:
        x = sigmas[0] * n0 + (1 - sigmas[0]) * torch.tensor(init).reshape(shape)
    nexts = [float(s) for s in sig_list[1:]]

    def noise_sampler(sigma, sigma_next):
        i = nexts.index(float(sigma_next))
        return torch.tensor(normal_f32(seed, 1 + i, count)).reshape(shape)

    toy = Toy(toy_mean, toy_std)
    traj = []
    cb = lambda d: traj.append(d["x"].reshape(-1).tolist())
    if sampler in ("euler", "ddim"):  # ComfyUI: ddim = ksampler("euler")
        out = K.sample_euler(toy, x, sigmas, callback=cb, disable=True)
    elif sampler == "heun":
        out = K.sample_heun(toy, x, sigmas, callback=cb, disable=True)
    elif sampler == "dpmpp_2m":
        out = K.sample_dpmpp_2m(toy, x, sigmas, callback=cb, disable=True)
    elif sampler == "euler_ancestral":
        out = sample_euler_ancestral_rf(toy, x, sigmas, cb, noise_sampler)
    elif sampler == "dpmpp_2m_sde":
        out = sample_dpmpp_2m_sde_const(toy, x, sigmas, ms, cb, noise_sampler)
    elif sampler in UNIPC_SAMPLERS:
        out = sample_unipc_diffusers(toy, x, sigmas, cb, UNIPC_SAMPLERS[sampler])
    else:
        raise ValueError(sampler)
    traj.append(out.reshape(-1).tolist())
    return {
        "sampler": sampler,
        "scheduler": sched,
        "model_sampling": ms_name,
        "steps": steps,
        "denoise": denoise,
        "seed": seed,
        "init": init,
        "sigmas": sig_list,
        "calls": toy.calls,
        "trajectory": traj,
    }


def write(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")


def main():
    os.makedirs(OUT, exist_ok=True)
    header = "generated by tools/parity_samplers.py; do not edit"

    # Noise: exact float32 bit patterns of the documented generator.
    noise_cases = []
    for seed, stream, count in [(0, 0, 16), (42, 0, 33), (42, 1, 16), (2**64 - 1, 7, 16), (2**32 + 5, 2**32 + 3, 16)]:
        vals = normal_f32(seed, stream, count)
        noise_cases.append({"seed": seed, "stream": stream, "f32_bits": [f32_bits(v) for v in vals]})
    write("noise.json", {"about": header, "cases": noise_cases})

    # Beta quantiles from scipy (Boost's ibeta_inv).
    beta_cases = []
    for a, b in [(0.6, 0.6), (0.5, 0.5), (2.0, 5.0), (0.3, 3.0), (7.0, 0.8)]:
        for q in [1e-12, 1e-6, 0.001, 0.01, 0.05, 0.1, 0.2, 0.25, 1 / 3, 0.4, 0.5, 0.6, 2 / 3, 0.75, 0.8, 0.9, 0.95, 0.99, 0.999, 1 - 1e-6]:
            beta_cases.append([a, b, q, float(scipy.stats.beta.ppf(q, a, b))])
    write("beta_ppf.json", {"about": header, "cases": beta_cases})

    # Model sampling tables and schedules.
    tables = {}
    for name, (spec, ms) in MODEL_SAMPLINGS.items():
        n = len(ms.sigmas)
        idx = sorted({0, 1, 2, n // 3, n // 2, n - 2, n - 1})
        tables[name] = {**spec, "len": n, "entries": [[i, ms.sigmas[i]] for i in idx]}
        t32 = torch.arange(1, n + 1, 1) / n  # ComfyUI computes the table in float32
        if isinstance(ms, Flux):
            f32_table = math.exp(ms.shift) / (math.exp(ms.shift) + (1 / t32.float() - 1))
        else:
            t = t32.float()
            f32_table = ms.shift * t / (1 + (ms.shift - 1) * t) if ms.shift != 1.0 else t
        diff = (f32_table.double() - torch.tensor(ms.sigmas)).abs().max().item()
        print(f"{name}: ComfyUI's float32 table differs from float64 by at most {diff:.2e}")
    sched_cases = []
    for ms_name, (_, ms) in MODEL_SAMPLINGS.items():
        for sched in SCHEDULERS + EXACT_SCHEDULERS:
            if ms_name == "wan_shift5" and sched not in EXACT_SCHEDULERS + ["simple"]:
                continue
            for steps in [1, 3, 10, 20]:
                for denoise in [1.0, 0.45]:
                    sched_cases.append({"model_sampling": ms_name, "scheduler": sched, "steps": steps, "denoise": denoise, "sigmas": schedule(ms, sched, steps, denoise)})
    write("schedules.json", {"about": header, "model_samplings": tables, "cases": sched_cases})

    # diffusers' own sigma arrays (float32) against the float64 formulas above, and against
    # ComfyUI's table-based `simple`, for several step counts and shifts.
    exact_ms = {
        "dev_1024": MODEL_SAMPLINGS["dev_1024"],
        "dev_768x1344": MODEL_SAMPLINGS["dev_768x1344"],
        "schnell": MODEL_SAMPLINGS["schnell"],
        "wan_shift3": ({"kind": "discrete_flow", "shift": 3.0, "multiplier": 1000.0}, DiscreteFlow(3.0, 1000.0)),
        "wan_shift5": MODEL_SAMPLINGS["wan_shift5"],
        "wan_shift8": ({"kind": "discrete_flow", "shift": 8.0, "multiplier": 1000.0}, DiscreteFlow(8.0, 1000.0)),
    }
    exact_cases = []
    for ms_name, (spec, ms) in exact_ms.items():
        for sched in EXACT_SCHEDULERS:
            for steps in [1, 4, 6, 7, 20, 28, 30, 50]:
                ours = full_schedule(ms, sched, steps)
                theirs = diffusers_sigmas(ms, sched, steps)
                f32 = max(abs(a - b) for a, b in zip(ours, theirs))
                vs = {k: max(abs(a - b) for a, b in zip(full_schedule(ms, k, steps), ours)) for k in ["simple", "sgm_uniform"]}
                print(f"{ms_name:13} {sched:12} {steps:2} steps: float64 vs diffusers' float32 {f32:.1e}; "
                      f"vs ComfyUI simple {vs['simple']:.1e}, sgm_uniform {vs['sgm_uniform']:.1e}")
                exact_cases.append({"model_sampling": ms_name, "ms": spec, "scheduler": sched, "steps": steps,
                                    "sigmas": ours, "diffusers_f32": theirs})
    write("diffusers_schedules.json", {"about": header, "cases": exact_cases})

    # Trajectories on the toy model.
    shape = [1, 2, 2, 2]
    toy_mean = torch.tensor([0.5, -0.3, 1.2, 0.0, -1.0, 0.25, 0.8, -0.6]).reshape(shape)
    toy_std = torch.tensor([0.8, 1.1, 0.3, 0.5, 0.9, 1.4, 0.2, 0.7]).reshape(shape)
    init = [0.3, -0.2, 0.9, 0.1, -0.8, 0.4, 0.6, -0.5]
    cases, seed = [], 1000
    plan = [(s, sch, "dev_1024", 5, 1.0, None) for s in SAMPLERS for sch in SCHEDULERS]
    plan += [(s, sch, "dev_768x1344", 4, 0.6, init) for s in SAMPLERS for sch in ["simple", "beta"]]
    plan += [(s, "simple", "schnell", 4, 1.0, None) for s in SAMPLERS]
    # UniPC on every scheduler, the diffusers-exact schedulers with every sampler, Wan.
    plan += [(s, sch, "dev_1024", 5, 1.0, None) for s in UNIPC_SAMPLERS for sch in SCHEDULERS + EXACT_SCHEDULERS]
    plan += [(s, sch, "dev_1024", 5, 1.0, None) for s in SAMPLERS for sch in EXACT_SCHEDULERS]
    plan += [(s, "flow_sigmas", "wan_shift5", n, 1.0, None) for s in UNIPC_SAMPLERS for n in (1, 2, 3, 6, 12)]
    plan += [(s, "flow_sigmas", "wan_shift5", 8, 0.6, init) for s in UNIPC_SAMPLERS]
    plan += [("uni_pc_bh2", "simple", "schnell", 4, 1.0, None), ("euler", "simple_exact", "wan_shift5", 6, 1.0, None)]
    for sampler, sched, ms_name, steps, denoise, ini in plan:
        seed += 1
        cases.append(run_case(sampler, sched, ms_name, steps, denoise, seed, ini, toy_mean, toy_std, shape))
    write("trajectories.json", {
        "about": header,
        "shape": shape,
        "toy_mean": toy_mean.reshape(-1).tolist(),
        "toy_std": toy_std.reshape(-1).tolist(),
        "model_samplings": {k: v[0] for k, v in MODEL_SAMPLINGS.items()},
        "cases": cases,
    })


if __name__ == "__main__":
    main()
