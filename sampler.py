"""Sampling from an energy function: Langevin dynamics and the replay buffer.

Langevin dynamics (paper eq. 3) walks a batch of samples downhill on the
energy, with noise:

    x <- x - (step_size / 2) * grad_x E(x) + noise_scale * sqrt(T_k) * N(0, I)

With noise_scale = sqrt(step_size) and T_k = 1 this is textbook Langevin,
whose samples follow p(x) ~ exp(-E(x)) as steps shrink and chains grow long.
`anneal=T0` starts the chains hot (T_0 = T0) and cools them geometrically to
T = 1 by the last step, so that they spread over every basin before they
settle; `resample=True` adds importance resampling, so that each mode ends
with its share of probability and not the share of chains that fell into it.

    from sampler import langevin, run_chains, sample_chains, log_partition, ReplayBuffer
    x = langevin(energy, x0, n_steps=60, step_size=0.01, clamp=(-3, 3))         # (B, ...) samples
    out = run_chains(energy, x0, 300, 0.01, anneal=20, resample=True, clamp=(-3, 3), keep_every=6)
    out.x, out.snapshots, out.log_z                                             # samples, [x0, ...], log Z
    out = sample_chains(energy, 2000, settings)   # the same from uniform noise, settings in a dict
    log_partition(energy, settings)               # log Z over the data box

`energy` is any function x (B, ...) -> (B,): a model with a concept bound, or
a whole composition (compose.py). Only input gradients are computed: the
sampler never touches parameters, so none are computed and none are left
behind in `.grad`.

The replay buffer keeps persistent chains between training iterations (Du &
Mordatch 2019): a preallocated tensor of samples and their concept conditions.
Each draw restarts a share `reinit_prob` of chains from points the caller gives
(train.py: perturbed data points; the paper: uniform noise).

This file imports nothing from the project.
"""
import math
from dataclasses import dataclass, field

import torch


def langevin(energy, x, n_steps, step_size, noise_scale=None, clamp=None, grad_clip=None, step_end=None):
    """Plain Langevin (eq. 3, unadjusted) for `n_steps` steps from x (B, ...); returns the samples
    (B, ...). This is the sampler of training; for annealing, resampling, Metropolis tests,
    log Z or snapshots of the chains, use run_chains."""
    return run_chains(energy, x, n_steps, step_size, noise_scale, clamp=clamp, grad_clip=grad_clip,
                      step_end=step_end).x


def temperature(step_size, noise_scale=None):
    """The temperature T that Langevin steps x - step_size / 2 * grad E + noise_scale * N(0, 1) sample
    exp(-E / T) at: 1 with the default noise sqrt(step_size) (eq. 3); about 1e-6 for the image models' cold
    sampler (step 20, noise 0.005), as in the released code."""
    return 1.0 if noise_scale is None else noise_scale ** 2 / step_size


def uniform_in_box(shape, data_range, device="cpu", generator=None):
    """Points of `shape` uniform in the data box [lo, hi] (data_range = (lo, hi)): where chains
    start when they start from noise."""
    lo, hi = data_range
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)


@dataclass
class Chains:
    """What run_chains returns."""
    x: torch.Tensor  # (B, ...) the samples
    snapshots: list = field(default_factory=list)  # [x0, ...] every keep_every moves (empty unless asked)
    log_z: float = None  # with resample and a clamp box: the AIS estimate of log Z (see run_chains)


def run_chains(energy, x, n_steps, step_size, noise_scale=None, anneal=1.0, resample=False,
               clamp=None, grad_clip=None, keep_every=0, method="ula", leapfrog=5, groups=1, step_end=None):
    """Run `n_steps` gradient evaluations of Langevin dynamics on `energy` from `x`: a Chains.

    energy:      function x (B, ...) -> (B,)
    x:           (B, ...) starting points (not modified)
    step_size:   lambda of eq. 3: the gradient step is step_size / 2
    noise_scale: std of the noise at temperature 1 (default sqrt(step_size), eq. 3)
    anneal:      temperature of the first step; cools geometrically to 1 (1 = no annealing)
    resample:    with annealing from noise, weight the chains by importance and resample
                 them (sequential Monte Carlo, below); all chains must share one target,
                 or each of `groups` equal consecutive blocks of chains its own (one call
                 for several targets: the blocks are resampled each within itself)
    clamp:       (low, high) to keep samples in the data range, or None
    grad_clip:   clip each coordinate of the gradient to [-grad_clip, grad_clip], or None
    keep_every:  if > 0, keep a snapshot of the chains every that many moves (for GIFs)
    step_end:    ULA: the step falls geometrically from step_size to this over the chain (None:
                 constant). For training chains (train.py --step_end): the cold image sampler's
                 step of 20 cannot settle in a minimum narrower than it, and a chain started on a
                 sharpened model's data climbs out of it (EXPERIMENTS.md, the run-away)
    method:      "ula": the plain step of eq. 3 (unadjusted); "mala": the same step as a
                 proposal, accepted or rejected by Metropolis-Hastings; "hmc": Hamiltonian
                 Monte Carlo, `leapfrog` gradient steps per proposal (n_steps // leapfrog proposals)

    With resample and a clamp box, the result also holds log Z: the log of the integral of
    exp(-E / tau) over the box (annealed importance sampling; exact in expectation of Z
    with MALA or HMC, whose moves keep each p_k invariant; the start is uniform on the box).

    The step samples exp(-E / tau) with tau = noise_scale^2 / step_size (1 for textbook
    Langevin; the cold image sampler's tiny noise is a tiny tau) times the annealing
    temperature T_k. ULA is biased: with a finite step its chains follow a slightly wrong
    distribution (too wide, and clamped at the walls). MALA and HMC remove that bias: a
    proposal that raises the energy more than the noise explains is refused, and one that
    leaves the clamp box is refused too. Both cost one gradient per gradient step, as ULA.

    Why resample: Langevin chains rarely cross the high-energy gaps between modes,
    so where they end depends on where they started, not on how much probability
    each mode holds. With resampling, step k targets p_k ~ exp(-E / (tau T_k)); each
    chain carries a log-weight that grows by -(1/T_k - 1/T_(k-1)) * E / tau as the
    target sharpens (annealed importance sampling, Neal 2001), and when the
    weights grow uneven (effective sample size below half) the chains are
    redrawn in proportion to them: chains stranded in poor regions are dropped,
    chains in good modes are copied. The energies come free with the gradients.
    """
    if n_steps < 0 or step_size <= 0 or anneal < 1:
        raise ValueError(f"need n_steps >= 0, step_size > 0 and anneal >= 1, got {n_steps}, {step_size}, {anneal}")
    noise_scale = step_size ** 0.5 if noise_scale is None else noise_scale
    if method not in ("ula", "mala", "hmc") or leapfrog < 1 or (method != "ula" and noise_scale <= 0):
        raise ValueError(f"method must be 'ula', 'mala' or 'hmc' (leapfrog >= 1, noise_scale > 0 for the "
                         f"last two), got {method!r}, leapfrog {leapfrog}, noise_scale {noise_scale}")
    if step_end is not None and (method != "ula" or not 0 < step_end <= step_size):
        raise ValueError(f"step_end needs method 'ula' and 0 < step_end <= step_size, got {method!r}, {step_end}")
    if len(x) % groups:
        raise ValueError(f"{len(x)} chains cannot form {groups} equal groups")
    tau = temperature(step_size, noise_scale)  # before annealing
    n_moves = n_steps // (leapfrog if method == "hmc" else 1)  # HMC: leapfrog gradients per move
    # temperatures T_k from `anneal` down to 1, geometrically
    temps = [anneal ** (1 - k / max(n_moves - 1, 1)) for k in range(n_moves)]
    steps = [step_size * (step_end / step_size) ** (k / max(n_moves - 1, 1)) if step_end else step_size
             for k in range(n_moves)]  # constant, or from step_size down to step_end, geometrically
    x = x.detach().clone()
    e, grad = energy_and_grad(energy, x, grad_clip)
    log_w = torch.zeros(len(x), device=x.device)  # (B,) importance log-weights
    out = Chains(x, [x.clone()] if keep_every else [], 0.0 if resample and clamp is not None and groups == 1 else None)
    for k in range(n_moves):
        if resample:
            # the start is uniform noise: the target at T = inf
            log_w -= (1 / temps[k] - (1 / temps[k - 1] if k else 0.0)) * e / tau
            x, e, grad = resample_if_uneven(log_w, (x, e, grad), out, last=k == n_moves - 1, groups=groups)
        sigma = noise_scale * temps[k] ** 0.5  # the noise std of this move
        if method == "ula":
            with torch.no_grad():
                x = x - 0.5 * steps[k] * grad
                if sigma > 0:
                    x.add_(torch.randn_like(x), alpha=sigma)
                if clamp is not None:
                    x.clamp_(clamp[0], clamp[1])
            if k < n_moves - 1:  # the last step needs no gradient
                e, grad = energy_and_grad(energy, x, grad_clip)
        else:
            x, e, grad = metropolis_move(energy, x, e, grad, step_size, sigma, tau * temps[k], clamp, grad_clip,
                                         leapfrog if method == "hmc" else 1)
        if keep_every and (k + 1) % keep_every == 0:
            out.snapshots.append(x.clone())
    out.x = x
    if out.log_z is not None:
        out.log_z += x[0].numel() * math.log(clamp[1] - clamp[0])  # the start is uniform on the box
    return out



def sample_chains(energy, n, settings, seed=0, keep_every=0, device="cpu"):
    """run_chains from n points uniform in the data box, with the sampler settings of a dict
    (compose.sampling_settings): steps, step_size, noise_scale, anneal, resample, grad_clip,
    data_range, x_shape and, optionally, method and leapfrog. Returns the Chains."""
    g = torch.Generator(device=device).manual_seed(seed)
    x0 = uniform_in_box((n, *settings["x_shape"]), settings["data_range"], device, g)  # (n, ...)
    torch.manual_seed(seed)  # the Langevin noise
    with torch.nn.utils.parametrize.cached():  # spectral norm: W / sigma once, not every step
        return run_chains(energy, x0, settings["steps"], settings["step_size"], settings["noise_scale"],
                          anneal=settings["anneal"], resample=settings["resample"], clamp=settings["data_range"],
                          grad_clip=settings["grad_clip"], keep_every=keep_every,
                          **{k: settings[k] for k in ("method", "leapfrog") if k in settings})


def sample(energy, n, settings, seed=0, device="cpu"):
    """n samples (n, ...) of `energy`: sample_chains without the rest of the Chains."""
    return sample_chains(energy, n, settings, seed=seed, device=device).x


def log_partition(energy, settings, n=512, seed=0, ais=None):
    """log Z = log of the integral of exp(-E / T) over the data box, T the settings' temperature.
    For 2D data a quadrature on a 600x600 grid (exact to the plotting eye); otherwise (or with
    ais=True) annealed importance sampling with n chains of MALA from uniform noise: unbiased in Z."""
    lo, hi = settings["data_range"]
    if not ais and tuple(settings["x_shape"]) == (2,):
        g = torch.linspace(lo, hi, 600)
        grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)  # (360000, 2)
        with torch.no_grad():
            e = torch.cat([energy(chunk) for chunk in grid.split(40_000)])
        tau = temperature(settings["step_size"], settings.get("noise_scale"))  # 1 for the 2D models
        return (torch.logsumexp(-e / tau, 0) + 2 * math.log(g[1] - g[0])).item()
    s = dict(settings, method="mala", anneal=max(settings["anneal"], 20.0), resample=True)
    return sample_chains(energy, n, s, seed=seed).log_z

def resample_if_uneven(log_w, chains, out, last, groups=1):
    """Sequential Monte Carlo's resampling: when the importance weights of a group of chains grow
    uneven (effective sample size below half of it), or at the last move, redraw that group's
    chains (each tensor of `chains`, indexed alike) in proportion to their weights and reset its
    weights (in place); with one group, also add log mean weight to out.log_z. The chains form
    `groups` equal consecutive blocks. Returns the (possibly redrawn) chains."""
    lw = log_w.view(groups, -1)  # (G, n)
    w = torch.softmax(lw, 1)  # (G, n)
    uneven = 1 / w.pow(2).sum(1) < lw.shape[1] / 2  # (G,)
    if last:
        uneven = torch.ones_like(uneven)
    elif not uneven.any():
        return chains
    if out.log_z is not None:
        out.log_z += (torch.logsumexp(log_w, 0) - math.log(len(log_w))).item()
    keep = torch.arange(lw.shape[1], device=lw.device).expand_as(lw)  # (G, n)
    idx = torch.where(uneven[:, None], systematic_resample(w), keep)  # (G, n), within each group
    idx = (idx + lw.shape[1] * torch.arange(groups, device=lw.device)[:, None]).flatten()  # (B,)
    lw.masked_fill_(uneven[:, None], 0.0)
    return tuple(t[idx] for t in chains)


def energy_and_grad(energy, x, grad_clip=None):
    """E(x) (B,) and its gradient w.r.t. x only (clipped per coordinate): autograd skips
    every parameter-gradient computation."""
    x = x.detach().requires_grad_(True)
    e = energy(x)  # (B,)
    (grad,) = torch.autograd.grad(e.sum(), x)
    if grad_clip is not None:
        grad.clamp_(-grad_clip, grad_clip)
    return e.detach(), grad


def metropolis_move(energy, x, e, grad, step_size, sigma, tau, clamp, grad_clip, leapfrog):
    """One MALA (leapfrog = 1) or HMC proposal per chain, accepted by Metropolis-Hastings
    for the target exp(-E / tau). In the units of the Langevin step: momentum p ~ N(0, I),
    position steps of sigma * p, gradient kicks of step_size / 2 * grad E. With one leapfrog
    step the proposal is exactly the ULA step x - step_size/2 grad + sigma * noise, and
    the acceptance test is MALA's. A (clipped) gradient field still gives a reversible,
    volume-preserving leapfrog map, so the test stays exact with grad_clip."""
    dims = tuple(range(1, x.dim()))
    kick = step_size / sigma  # = sigma / tau: a full leapfrog kick per unit of grad E
    p0 = torch.randn_like(x)  # (B, ...)
    p = p0 - 0.5 * kick * grad  # half kick
    x_new, e_new, g_new = x, e, grad
    for i in range(leapfrog):
        x_new = x_new + sigma * p
        e_new, g_new = energy_and_grad(energy, x_new, grad_clip)
        p = p - (kick if i < leapfrog - 1 else 0.5 * kick) * g_new  # full kicks, a half one at the end
    # the Hamiltonian E / tau + |p|^2 / 2 is (nearly) conserved; accept with its change
    log_accept = (e - e_new) / tau + 0.5 * (p0.pow(2).sum(dims) - p.pow(2).sum(dims))  # (B,)
    ok = torch.log(torch.rand_like(log_accept)) < log_accept
    if clamp is not None:  # the target lives in the box: a proposal outside it is refused
        ok &= ((x_new >= clamp[0]) & (x_new <= clamp[1])).flatten(1).all(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (torch.where(ok.view(shape), x_new, x), torch.where(ok, e_new, e),
            torch.where(ok.view(shape), g_new, grad))


def systematic_resample(w):
    """Indices (G, n) drawn in proportion to each row of weights w (G, n), with one shared
    uniform offset per row: less variance than independent draws, and every chain with
    w >= 1/n survives."""
    g, n = w.shape
    u = (torch.rand(g, 1, device=w.device) + torch.arange(n, device=w.device)) / n  # (G, n)
    return torch.searchsorted(torch.cumsum(w, 1), u).clamp_(max=n - 1)


class ReplayBuffer:
    """Persistent Langevin chains: `capacity` samples with their conditions.

    sample(x_new, c_new) draws len(c_new) distinct slots; a slot never filled, or
    picked for re-initialisation (probability reinit_prob), starts afresh from
    the caller's x_new[i] under condition c_new[i]; the others continue their
    stored chain under their stored condition. After the Langevin steps,
    update() writes them back.
    """

    def __init__(self, capacity, shape, cond_shape=(), cond_dtype=torch.long, reinit_prob=0.05, device="cpu"):
        if capacity < 1 or not 0 <= reinit_prob <= 1:
            raise ValueError(f"need capacity >= 1 and 0 <= reinit_prob <= 1, got {capacity}, {reinit_prob}")
        self.capacity, self.reinit_prob = capacity, reinit_prob
        self.x = torch.zeros(capacity, *shape, device=device)  # (capacity, ...) samples
        self.c = torch.zeros(capacity, *cond_shape, dtype=cond_dtype, device=device)  # conditions
        self.filled = torch.zeros(capacity, dtype=torch.bool, device=device)

    def sample(self, x_new, c_new):
        """Draw len(c_new) chains. x_new (B, ...), c_new (B, ...): where fresh chains start.
        Returns x (B, ...), c (B, ...), slots (B,) and fresh (B,) bool."""
        n = len(c_new)
        if n > self.capacity:
            raise ValueError(f"cannot draw {n} chains from a buffer of capacity {self.capacity}")
        dev = self.x.device
        slots = torch.randperm(self.capacity, device=dev)[:n]  # (B,) distinct
        fresh = ~self.filled[slots] | (torch.rand(n, device=dev) < self.reinit_prob)  # (B,)
        # where, not masked assignment: no host synchronisation, so a GPU never waits on Python here
        x = torch.where(fresh.view(-1, *[1] * (self.x.dim() - 1)), x_new.to(dev, self.x.dtype), self.x[slots])
        c = torch.where(fresh.view(-1, *[1] * (self.c.dim() - 1)), c_new.to(dev, self.c.dtype), self.c[slots])
        return x, c, slots, fresh

    def update(self, slots, x, c):
        """Store the advanced chains back in their slots."""
        self.x[slots] = x.detach()
        self.c[slots] = c
        self.filled[slots] = True

    def state_dict(self):
        return {"x": self.x, "c": self.c, "filled": self.filled, "reinit_prob": self.reinit_prob}

    def load_state_dict(self, state):
        if state["x"].shape != self.x.shape:
            raise ValueError(f"buffer shape {tuple(state['x'].shape)} does not match {tuple(self.x.shape)}")
        self.x.copy_(state["x"])
        self.c.copy_(state["c"])
        self.filled.copy_(state["filled"])
        self.reinit_prob = float(state["reinit_prob"])
