"""Train concept EBMs by contrastive divergence with a replay buffer, one model per concept family.

    python train.py --dataset toy2d                  # every family, about 2 minutes on 2 CPU cores
    python train.py --dataset toy2d --max_iters=300  # any field of Config, as --key value or --key=value
    python train.py --dataset toy2d --resume         # continue a stopped run from its checkpoints
    python train.py --dataset shapes --concept color --out_dir out-shapes   # one image concept model
    python train.py --dataset toy2d --concept ring --frozen out-a/vertical.pt   # learn through a frozen model

Each model goes to `<out_dir>/<family>.pt` (the loop: train_concept). toy2d runs end with a figure
(`<out_dir>/toy2d.png`) and the quality table of the standard compositions.
"""
import argparse
import copy
import dataclasses
import datetime
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from compose import format_table, load_concepts, sampling_settings, save_image_grid, toy2d_report
from data import CLUTTER_GAP, load_dataset
from model import IMAGE_PRESETS, build_concept_model, ema_updater, load_checkpoint, model_args, save_checkpoint
from sampler import ReplayBuffer, langevin, run_chains, uniform_in_box


@dataclasses.dataclass
class Config:
    dataset: str = "toy2d"
    concept: str = ""  # the families to train, comma-separated (e.g. Smiling,Male); empty: every family
    out_dir: str = ""  # default: out-<dataset>
    resume: bool = False
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu (under torchrun: cuda:LOCAL_RANK)
    compile: bool = False  # torch.compile the network (helps on GPUs; barely on CPUs)
    workers: int = 0  # families trained side by side; 0: all of them (CPU, at most 8), 1 (CUDA)
    # data
    n_data: int = 50_000
    img_size: int = 32  # image datasets: shapes 32 or 64, celeba 64 or 128
    data_dir: str = ""  # celeba: the CelebA folder (img_align_celeba/, list_attr_celeba.txt)
    cache_dir: str = "out-data"  # where prepared datasets are cached (rendered shapes, decoded CelebA)
    # model
    hidden: int = 128  # mlp (2D data)
    depth: int = 3
    n_freqs: int = 4
    preset: str = ""  # image data: a size from model.IMAGE_PRESETS (default: shapes32, celeba<img_size>)
    pool: str = ""  # image data: the map-to-energy head, sum / mean / dense (default: the preset's)
    # optimisation
    max_iters: int = 2000
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.01  # the learning rate decays (cosine) to lr * min_lr_ratio at max_iters
    lr_horizon: int = 0  # > 0: decay over this many iterations instead; with --resume, it replaces the saved one
    l2: float = 0.05
    ema: float = 0.0  # > 0: also keep an exponential moving average of the weights, used for sampling afterwards
    diverge_gap: float = 0.0  # > 0: when mean E+ - E- over a log interval falls below -diverge_gap, roll back
    contrast: float = 0.0  # > 0: also push E(x+ | c+) below E(x+ | c') on the data, by this weight (other_labels)
    data_noise: float = 0.0  # std of Gaussian noise on each data batch, so that noise tells no data from samples
    # Langevin in training (paper eq. 3)
    steps: int = 20
    step_size: float = 0.01
    step_end: float = 0.0  # > 0: in each visit of a buffer chain, the step falls geometrically from step_size to
    # this, so that chains settle where a sharp model's data lie (0: constant; sampling from noise keeps it constant)
    noise_scale: float = 0.1  # sqrt(step_size): temperature 1
    grad_clip: float = 40.0  # per coordinate, on grad E
    buffer_size: int = 10_000
    reinit_prob: float = 0.05
    reinit_from_data: float = 1.0  # share of restarted chains that start near a data point, not noise
    reinit_noise: float = 0.5  # std of the perturbation of those data points
    reinit_any: bool = False  # restart from a data point of ANY concept value, not the chain's own
    sampler: str = "ula"  # the annealed chains (below) and compositions after training: ula, or mala (a Metropolis
    # test removes ULA's step-size bias, which the model otherwise learns to offset)
    annealed_share: float = 0.5  # the last share of iterations whose chains are fresh and annealed (draw_negatives)
    late_batch: int = 0  # > 0: the batch size in that share (larger: less noise where the modes' depths are set)
    frozen: str = ""  # checkpoints (comma-separated) of models kept fixed: the new one learns through their sum
    only: str = ""  # train on the data points with these discrete values, e.g. shape=cube,color=red
    corner: float = -1.0  # shapes, >= 0: the cross-product data of paper 3.4 (data.make_shapes); < 0: off
    clutter: int = 0  # shapes: unlabelled objects of other colors beside the labelled one in every image (fig. 5)
    clutter_size: str = "small"  # shapes: the clutter's sizes, "small" (0.15-0.3) or "any" (the labelled ones')
    clutter_gap: float = CLUTTER_GAP  # shapes: clutter centres at least this many times the two radii from other objects
    scene: str = "plain"  # shapes: "plain" grey, or "ground" (sky, ground, shadows, a light that varies)
    # Langevin for compositions after training (compose.py reads these from the checkpoint)
    eval_steps: int = 200
    eval_anneal: float = 20.0
    eval_step_size: float = 0.005  # 2D data: half the training step, whose ULA bias widens every mode (4% of
    # samples near no mode, against 1%); its noise follows, so the temperature stays 1. 0: the training step
    # bookkeeping
    log_interval: int = 100
    ckpt_interval: int = 250
    sample_interval: int = 500  # image data: a grid of the chains every that many iterations
    snapshots: bool = False  # also keep the weights of every checkpoint in <out_dir>/snapshots/


# Per-dataset defaults, under the command line. Images want a cold, large-step sampler (as the released code:
# step 10-100, noise 0.005, clipped to [0, 1]), fewer Langevin steps per iteration and many more iterations.
IMAGE_DEFAULTS = dict(annealed_share=0.0, min_lr_ratio=0.1, l2=0.1, step_size=20.0, noise_scale=0.005,
                      grad_clip=0.01, reinit_from_data=0.5, reinit_noise=0.1, reinit_any=True, eval_anneal=1.0,
                      eval_step_size=0.0, log_interval=50, ema=0.99)
DATASET_DEFAULTS = {"shapes": dict(IMAGE_DEFAULTS, n_data=20_000, max_iters=4000, batch_size=64, lr=1e-3, steps=10,
                                   buffer_size=5000, snapshots=True),
                    # the paper's scale, for a GPU (the batch is per torchrun process); 40 steps as released; not tuned
                    "celeba": dict(IMAGE_DEFAULTS, img_size=64, max_iters=20_000, batch_size=128, lr=2e-4, steps=40,
                                   ckpt_interval=500)}


def value_of(key, kind):
    """The parser of one setting's value: int, float, str, or a boolean spelt true/false/1/0."""
    def parse(value):
        try:
            if kind is bool:
                return {"true": True, "1": True, "false": False, "0": False}[value.lower()]
            return kind(value)
        except (KeyError, ValueError):
            raise argparse.ArgumentTypeError(f"bad value {value!r} for --{key}: expected {kind.__name__}") from None
    return parse


def parse_config(argv):
    """Config from `--key value` / `--key=value` pairs over the dataset's defaults; errors name the setting."""
    p = argparse.ArgumentParser(description="Train concept EBMs (see train.py's docstring).", allow_abbrev=False,
                                exit_on_error=False)
    for f in dataclasses.fields(Config):
        kind = type(f.default)  # a bare --flag sets a boolean
        p.add_argument(f"--{f.name}", type=value_of(f.name, kind),
                       **(dict(nargs="?", const=True) if kind is bool else {}))
    try:
        args, rest = p.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise ValueError(str(e)) from None
    if rest:
        if not rest[0].startswith("--"):
            raise ValueError(f"unexpected argument {rest[0]!r}; settings are given as --key value")
        known = ", ".join("--" + f.name for f in dataclasses.fields(Config))
        raise ValueError(f"unknown setting {rest[0].split('=')[0]}; known settings: {known}")
    given = {k: v for k, v in vars(args).items() if v is not None}
    cfg = Config(**{**DATASET_DEFAULTS.get(given.get("dataset", Config.dataset), {}), **given})
    cfg.preset = cfg.preset or (f"celeba{cfg.img_size}" if cfg.dataset == "celeba" else "shapes32")
    cfg.out_dir = cfg.out_dir or f"out-{cfg.dataset}"
    counts = ("max_iters", "batch_size", "steps", "buffer_size", "n_data", "log_interval", "ckpt_interval",
              "sample_interval")
    problems = [(getattr(cfg, key) < 1, f"--{key} must be at least 1, got {getattr(cfg, key)}") for key in counts] + [
        (cfg.preset not in IMAGE_PRESETS,
         f"unknown --preset {cfg.preset!r}; known presets: {', '.join(IMAGE_PRESETS)}"),
        (cfg.pool not in ("", "sum", "mean", "dense"), f"unknown --pool {cfg.pool!r}; known: sum, mean, dense"),
        (cfg.lr_horizon < 0, f"--lr_horizon must be 0 (the run's --max_iters) or more, got {cfg.lr_horizon}"),
        (not 0 <= cfg.annealed_share <= 1, f"--annealed_share must be in [0, 1], got {cfg.annealed_share}"),
        (not 0 <= cfg.step_end <= cfg.step_size,
         f"--step_end must be 0 (a constant step) or in (0, --step_size {cfg.step_size:g}], got {cfg.step_end:g}"),
        (cfg.eval_step_size < 0, f"--eval_step_size must be 0 (the --step_size) or more, got {cfg.eval_step_size:g}"),
        (cfg.late_batch < 0, f"--late_batch must be 0 (the --batch_size) or more, got {cfg.late_batch}"),
        (cfg.sampler not in ("ula", "mala"), f"--sampler must be ula or mala, got {cfg.sampler!r}"),
        (cfg.device not in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {cfg.device!r}")]
    for bad, message in problems:  # the first problem is the one reported
        if bad:
            raise ValueError(message)
    return cfg


def near_data(cfg, ds, x):
    """Data points x (B, ...) plus N(0, reinit_noise^2), kept in the data box: chains that start near the data."""
    return (x + cfg.reinit_noise * torch.randn_like(x)).clamp(*ds.data_range)


def restart_points(cfg, ds, idx, device):
    """Where restarted chains start (B, ...): uniform noise in the data box (the paper's) or, for a share
    reinit_from_data, a perturbed data point: the chain's own (idx) or, with reinit_any, any. Why near the
    data: a chain stays in the mode it first falls into, so the buffer then holds the modes as the data does."""
    x_own = ds.batch(idx, device)  # (B, ...)
    x_noise = uniform_in_box(x_own.shape, ds.data_range, device)
    near = torch.rand(len(idx), device=device) < cfg.reinit_from_data  # (B,)
    x_start = ds.batch(torch.randint(len(ds), (len(idx),), device=device), device) if cfg.reinit_any else x_own
    return torch.where(near.view(-1, *[1] * (x_own.dim() - 1)), near_data(cfg, ds, x_start), x_noise)  # no host sync, unlike x[near]


def draw_negatives(cfg, ds, buffer, energy, idx, by_value, annealed, device):
    """Step 2: the chains x- (B, ...) and the data points (B,) whose labels they carry. Early: persistent chains
    from the buffer, `steps` more steps each; they keep their mode, so the restarts, not the model, set each mode's
    share. Late (annealed): for each of the V values (by_value: its data indices), B fresh chains from noise,
    annealed and resampled (sampler.run_chains): they split between the modes by the model's own masses."""
    # spectral norm's W / sigma once per chain; `energy` is the unwrapped network (no DDP gradient sync)
    with torch.nn.utils.parametrize.cached():
        if not annealed:
            x_neg, i_neg, slots, _ = buffer.sample(restart_points(cfg, ds, idx, device), idx)  # (B, ...), (B,)
            x_neg = langevin(lambda x: energy(x, i_neg), x_neg, cfg.steps, cfg.step_size, cfg.noise_scale,
                             clamp=ds.data_range, grad_clip=cfg.grad_clip, step_end=cfg.step_end or None)
            buffer.update(slots, x_neg, i_neg)
            return x_neg, i_neg
        n = len(idx)  # chains per value, all in one batch; a value's chains share one target, for resampling
        i_neg = torch.cat([m[torch.randint(len(m), (1,), device=device)].expand(n) for m in by_value])  # (V n,)
        start = uniform_in_box((len(i_neg), *ds.x.shape[1:]), ds.data_range, device)  # (V n, ...)
        x_neg = run_chains(lambda x: energy(x, i_neg), start, cfg.steps, cfg.step_size, cfg.noise_scale,
                           anneal=cfg.eval_anneal, resample=True, clamp=ds.data_range, grad_clip=cfg.grad_clip,
                           groups=len(by_value), method=cfg.sampler).x  # each value's chains resampled among themselves
        return x_neg, i_neg


WARMUP = 500  # iterations over which an optimizer that starts afresh on trained weights (a light resume) warms up


def learning_rate(cfg, step, horizon, scale=1.0, warm_from=None):
    """Cosine decay from lr to lr * min_lr_ratio over `horizon` iterations, then flat to average out the
    gradient noise (a resumed run keeps its horizon). `scale` halves at each rollback. After a light resume
    (warm_from: its step) the rate rises linearly over WARMUP iterations: a fresh Adam divides by a second
    moment seen over a few steps only, and its first steps would throw a trained model off."""
    decay = 0.5 * (1 + math.cos(math.pi * min(step / horizon, 1.0)))  # 1 -> 0
    warm = 1.0 if warm_from is None else min(1.0, (step + 1 - warm_from) / WARMUP)
    return warm * scale * cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay)


def typical_energies(net, ds, c_data, family, device):
    """The mean energy of each value on (up to 1024 of) its own data, and on the data of the other values
    (continuous: one of each, over the data under its own labels and under a neighbour's). compose.py's
    negation measures 'unlike b' between the two, in the model's own energy scale."""
    n = min(1024, len(ds))
    if family in ds.ranges:
        i = torch.arange(n)
        on, off = [(i, c_data[i])], [(i, c_data[(i + 1) % len(ds)])]  # (n,) indices, (n, d) labels
    else:
        values = range(len(ds.concepts[family]))
        own = [torch.nonzero(c_data == v).squeeze(1)[:n] for v in values]  # data indices of each value
        others = [torch.nonzero(c_data != v).squeeze(1)[:n] for v in values]  # and of every other value
        on = [(i, torch.full((len(i),), v, device=device)) for v, i in zip(values, own)]
        off = [(i, torch.full((len(i),), v, device=device)) for v, i in zip(values, others)]
    with torch.no_grad():  # E(x_i | c) in chunks, averaged
        return [[torch.cat([net(ds.batch(j, device), cj) for j, cj in zip(i.split(256), c.split(256))]).mean().item()
                 for i, c in pairs] for pairs in (on, off)]


def check_same_data(ckpt, cfg, ds, what):
    """A checkpoint used by this run (resumed or frozen) must come from its dataset and input shape."""
    was, now = (ckpt["config"]["dataset"], ckpt["config"]["x_shape"]), (cfg.dataset, list(ds.x.shape[1:]))
    if was != now:
        raise ValueError(f"{what}: it was trained on {was[0]} {tuple(was[1])}, this run is {now[0]} {tuple(now[1])}")


def load_run(path, device, raw, ema, opt, buffer, cfg, ds, log, resumed=False):
    """Put a saved run, from any device, back into raw, ema, opt and buffer; return its bookkeeping.
    A light snapshot (weights only) resumes too, with fresh chains and a fresh optimizer."""
    _, ckpt = load_checkpoint(path, device)
    check_same_data(ckpt, cfg, ds, f"cannot resume {path}")
    raw.load_state_dict(ckpt["model"])
    if ema is not None:
        ema.load_state_dict(ckpt.get("ema", ckpt["model"]))
    if "optimizer" in ckpt:
        opt.load_state_dict(ckpt["optimizer"])
    fresh = ckpt.get("chains") != "data_index" or "buffer" not in ckpt
    if fresh:  # a light snapshot, or an older checkpoint whose chains kept labels rather than data points
        # A trained model's chains start near its data (perturbed data points, each under its own label). From
        # noise, a few steps a visit would take thousands of iterations to reach the data, and the model,
        # trained on such negatives meanwhile, learns to tell noise from data and no longer samples.
        idx = torch.randint(len(ds), (buffer.capacity,), device=device)  # (capacity,)
        x = torch.cat([ds.batch(i, device) for i in idx.split(1024)])  # (capacity, ...)
        buffer.update(torch.arange(buffer.capacity, device=device), near_data(cfg, ds, x), idx)
        log(f"[{ckpt['family']}] note: {path} holds no replay buffer this version can use: "
            f"the chains start afresh, near the data")
    else:
        buffer.load_state_dict(ckpt["buffer"])  # every rank resumes rank 0's chains; their seeds part them
    rank = dist.get_rank() if dist.is_initialized() else 0
    if "rng" in ckpt and rank == 0:  # random states are CPU byte tensors, whatever map_location did
        torch.set_rng_state(ckpt["rng"].cpu())
        if "cuda_rng" in ckpt and device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu(), device)
    else:  # only rank 0's random state is saved: the others draw a fresh stream
        torch.manual_seed(cfg.seed + rank + 7919 * ckpt["step"])
    run = {"step": ckpt["step"], "elapsed": ckpt["elapsed"], "family": ckpt["family"],
           "horizon": cfg.lr_horizon or ckpt.get("lr_horizon", ckpt["config"]["max_iters"]),
           "lr_scale": ckpt.get("lr_scale", 1.0), "rollbacks": ckpt.get("rollbacks", 0),
           "warm_from": None if "optimizer" in ckpt else ckpt["step"],
           # a trained model tells fresh noise from data at once: the guard waits ~5 draws of each chain
           "guard_from": ckpt["step"] + (5 * cfg.buffer_size // cfg.batch_size if fresh else 0)}
    if resumed:
        log(f"[{run['family']}] resumed from {path} at step {run['step']}" + (
            f"; the learning rate keeps its schedule over {run['horizon']} iterations"
            if run["horizon"] != cfg.max_iters else ""))
    return run


def run_config(cfg, ds):
    """The run's settings as stored in a checkpoint, with what compose.py needs to sample."""
    return {**dataclasses.asdict(cfg), "data_range": list(ds.data_range), "x_shape": list(ds.x.shape[1:])}


def save_run(path, cfg, ds, family, run, raw, ema, opt, buffer, c_data):
    """Write the run atomically; with --snapshots also its weights alone in <out_dir>/snapshots/ (for
    `python bench.py --curve DIR`: quality against training time; they resume too)."""
    data_energy, other_energy = typical_energies((ema if ema is not None else raw).eval(), ds, c_data, family,
                                                 c_data.device)
    raw.train()
    ckpt = {"model": raw.state_dict(), **({"ema": ema.state_dict()} if ema is not None else {}),
            "model_args": model_args(raw), "family": family, "values": list(ds.concepts[family]),
            "encoding": "numbers" if family in ds.ranges else "index", "range": list(ds.ranges.get(family, ())),
            "data_energy": data_energy, "other_energy": other_energy, "step": run["step"],
            "elapsed": time.time() - run["started"], "chains": "data_index", "lr_horizon": run["horizon"],
            "lr_scale": run["lr_scale"], "rollbacks": run["rollbacks"], "config": run_config(cfg, ds)}
    heavy = {"optimizer": opt.state_dict(), "buffer": buffer.state_dict(), "rng": torch.get_rng_state(),
             **({"cuda_rng": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}
    save_checkpoint({**ckpt, **heavy}, path)
    if cfg.snapshots:
        os.makedirs(os.path.join(cfg.out_dir, "snapshots"), exist_ok=True)
        save_checkpoint(ckpt, os.path.join(cfg.out_dir, "snapshots", f"{family}_{run['step']:06d}.pt"))


def check_replicas(raw, family, log):
    """Under DDP, a check that it did its job: every replica ends with rank 0's weights, bit for bit."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    flat = torch.cat([p.detach().flatten() for p in raw.parameters()])  # (P,)
    first = flat.clone()
    dist.broadcast(first, 0)
    gap = (flat - first).abs().max()  # how far this replica is from rank 0's: the largest over ranks, below
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    if gap.item() != 0:  # NaN weights fail too
        raise RuntimeError(f"[{family}] the replicas' weights differ after training (by up to {gap.item():.3g}, "
                           f"weights up to {first.abs().max().item():.3g}): DDP went out of sync")
    log(f"[{family}] ddp: weights identical on all {dist.get_world_size()} ranks")


def build_run(cfg, ds, family, device):
    """What a run trains: the network, the moving average of its weights (or None), Adam, and the replay
    buffer, whose chains each keep the data point they took their labels from (a label in every family)."""
    if device.type == "cuda" and ds.x.nbytes < 2**30:  # small data on the GPU once; CelebA's memory map stays
        ds.x = ds.x.to(device)
    raw = build_concept_model(cfg, ds, family).to(device)
    if ds.x.dim() == 4:  # faster convolutions on CPUs, and under bf16 on GPUs (model.ImageEnergy)
        raw = raw.to(memory_format=torch.channels_last)
    # CD's weights oscillate (chains and model chase each other): their average samples better afterwards (ICD)
    ema = copy.deepcopy(raw).requires_grad_(False) if cfg.ema else None
    # Adam with beta1 = 0, as in the paper; on a GPU fused: one kernel for every parameter, not a dozen per tensor
    opt = torch.optim.Adam(raw.parameters(), lr=cfg.lr, betas=(0.0, 0.999), fused=device.type == "cuda")
    buffer = ReplayBuffer(cfg.buffer_size, ds.x.shape[1:], (), torch.long, reinit_prob=cfg.reinit_prob, device=device)
    return raw, ema, opt, buffer


def load_frozen(cfg, ds, family, device):
    """The --frozen models (continual learning, paper 3.3) as one energy of (x (B, ...), data indices (B,)):
    the sum of their energies, each under its family's labels (0 without --frozen)."""
    frozen = []  # [(model, its family's labels (N, ...))]
    for path in filter(None, cfg.frozen.split(",")):
        net, ckpt = load_checkpoint(path, device)
        check_same_data(ckpt, cfg, ds, f"--frozen {path}")
        if ckpt["family"] == family:
            raise ValueError(f"--frozen {path} is a model of {family!r}, the family being trained")
        frozen.append((net, ds.labels[ckpt["family"]].to(device)))
    return lambda x, i: sum(f(x, labels[i]) for f, labels in frozen)


def read_stats(stats, seen, world):
    """The mean loss, E+ and E- since the last look, from their sums (under DDP over all ranks: all decide alike)."""
    if world > 1:
        dist.all_reduce(stats)
    means = (stats / (seen * world)).tolist()  # the one host synchronisation, at log and checkpoint steps
    stats.zero_()
    return means


def other_labels(c, c_data, n_values):
    """Labels (B, ...) unlike c (B, ...), for --contrast: a discrete value is moved to one of the others at random,
    a continuous one replaced by the label of a random data point. CD alone only asks E(. | c) to tell data from
    its samples; this term also asks it to tell the data of c from the same images under another label (a
    logistic loss, as in conditional EBMs that ignore their condition), which sets how much c weighs in a sum."""
    if not n_values:  # a continuous family
        return c_data[torch.randint(len(c_data), (len(c),), device=c.device)]
    return (c + torch.randint(1, n_values, c.shape, device=c.device)) % n_values


ROLLBACKS = 3  # a run that diverges more often than this stops, keeping its last good checkpoint


def take_stock(cfg, ds, path, run, state, c_data, means, chains, log, iters_after):
    """At a log or checkpoint step, with the mean loss, E+ and E- (means): stop on a non-finite loss; on
    divergence go back to the last checkpoint at half the learning rate (returns the new run, or None after
    ROLLBACKS rollbacks: stop); else log, draw the chains (images) and save (returns run)."""
    family, step, (loss, e_pos, e_neg) = run["family"], run["step"], means
    last, rank = step == cfg.max_iters, dist.get_rank() if dist.is_initialized() else 0
    if not math.isfinite(loss):
        raise RuntimeError(f"[{family}] loss is {loss} at step {step}: training diverged; "
                           f"try a smaller --lr or a larger --l2 (last checkpoint: {path})")
    # the data's energy running away below the samples': the model no longer samples its data
    if cfg.diverge_gap > 0 and e_pos - e_neg < -cfg.diverge_gap and step > run["guard_from"] and os.path.exists(path):
        if run["rollbacks"] == ROLLBACKS:
            log(f"[{family}] diverged again at step {step} after {ROLLBACKS} rollbacks: stopping; "
                f"{path} holds the last good weights")
            return None
        new = load_run(path, c_data.device, *state, cfg, ds, log)
        # the lost stretch still counts as time spent; the speed is measured afresh
        new.update(lr_scale=run["lr_scale"] / 2, rollbacks=run["rollbacks"] + 1, started=run["started"],
                   since=(time.time(), new["step"]))
        log(f"[{family}] E+ - E- = {e_pos - e_neg:+.3f} at step {step}: diverging; rolled back to step {new['step']}, "
            f"learning rate x{new['lr_scale']:g} (rollback {new['rollbacks']} of {ROLLBACKS})", flush=True)
        return new
    if step % cfg.log_interval == 0 or last:
        rate = (step - run["since"][1]) / (time.time() - run["since"][0])  # iterations per second, for the ETA
        minutes_left = (cfg.max_iters - step + iters_after) / rate / 60
        log(f"[{family}] iter {step:>5}/{cfg.max_iters} | loss {loss:+.4f} | E+ {e_pos:+.3f} | "
            f"E- {e_neg:+.3f} | {rate:.1f} it/s | left {minutes_left:.1f} min", flush=True)
    if rank == 0 and ds.x.dim() == 4 and (step % cfg.sample_interval == 0 or last):
        x_neg, c_neg = chains[0][:64], chains[1][:64]  # grouped by value (continuous: by the first number)
        save_image_grid(x_neg[(c_neg if c_neg.dim() == 1 else c_neg[:, 0]).argsort()],
                        os.path.join(cfg.out_dir, f"{family}_samples.png"))
    if rank == 0 and (step % cfg.ckpt_interval == 0 or last):
        save_run(path, cfg, ds, family, run, *state, c_data)
    return run


def data_batch(cfg, ds, idx, device):
    """Step 1: the data x+ (B, ...) at indices idx (B,); with --data_noise, plus Gaussian noise of that std. Image
    chains end on a step that adds noise (std 0.005): a model can tell smooth renders from such samples by that
    alone, and drive its data's energy away from theirs, which the chains cannot follow (the run-away)."""
    x = ds.batch(idx, device)
    return (x + cfg.data_noise * torch.randn_like(x)).clamp(*ds.data_range) if cfg.data_noise else x


def train_concept(cfg, ds, family, device, iters_after=0):
    """Train one concept model on `family`. Each iteration:
      1. x+ (B, ...), c+ (B,): a batch of data and its labels in the family
      2. x- (B, ...), c-: chains of Langevin steps on E(. | c-): from the replay buffer, or fresh and
         annealed late in the run (draw_negatives)
      3. loss = mean E(x+|c+) - mean E(x-|c-) + l2 * (mean E(x+)^2 + mean E(x-)^2) (Du & Mordatch 2019):
         data energies down, sample energies up; the l2 term keeps them from drifting off zero.
         With --contrast W, also W * mean softplus(E(x+|c+) - E(x+|c')), c' another label (other_labels).
    With --frozen, E is the sum of the new model and the frozen ones (load_frozen). iters_after: the
    iterations queued after it, for the ETA. Under torchrun every process runs this; rank 0 logs and writes."""
    path = os.path.join(cfg.out_dir, f"{family}.pt")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    log = print if rank == 0 else (lambda *a, **k: None)
    c_data = ds.labels[family].to(device)  # (N,) or (N, d)
    raw, ema, opt, buffer = state = build_run(cfg, ds, family, device)
    frozen_energy = load_frozen(cfg, ds, family, device)  # (x (B, ...), data indices (B,)) -> (B,); 0 without it
    if cfg.annealed_share > 0 and family in ds.ranges:
        raise ValueError(f"--annealed_share needs a discrete family; {family} is continuous")
    n_values = 0 if family in ds.ranges else len(ds.concepts[family])  # for --contrast
    by_value = [torch.nonzero(c_data == v).squeeze(1) for v in range(len(ds.concepts[family]))] \
        if cfg.annealed_share > 0 else []  # the data indices of each value
    run = {"step": 0, "elapsed": 0.0, "family": family, "horizon": cfg.lr_horizon or cfg.max_iters, "lr_scale": 1.0,
           "rollbacks": 0, "guard_from": 0, "warm_from": None}
    if cfg.resume and os.path.exists(path):
        run = load_run(path, device, *state, cfg, ds, log, resumed=True)
    if run["step"] >= cfg.max_iters:
        return log(f"[{family}] already trained ({run['step']} iterations)")
    # DDP averages gradients over processes in backward; wrapping gives every copy rank 0's weights
    net = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else raw
    update_ema = ema_updater(raw, ema, cfg.ema)
    if cfg.compile:
        raw.compile()  # in place: DDP, Langevin and the state dict all see the same module
    log(f"[{family}] {sum(p.numel() for p in raw.parameters()) / 1e6:.2f}M parameters on {device}, "
        f"batch {cfg.batch_size} x {world} process(es), {cfg.steps} Langevin steps, "
        f"iterations {run['step']} -> {cfg.max_iters}", flush=True)
    stats, seen = torch.zeros(3, device=device), 0  # loss, E+, E- summed on the device since the last look
    run.update(started=time.time() - run["elapsed"], since=(time.time(), run["step"]))  # clocks: time spent, speed
    while run["step"] < cfg.max_iters:
        annealed = cfg.annealed_share > 0 and run["step"] >= (1 - cfg.annealed_share) * run["horizon"]  # late
        idx = torch.randint(len(ds), (cfg.late_batch if annealed and cfg.late_batch else cfg.batch_size,),
                            device=device)
        x_pos = data_batch(cfg, ds, idx, device)  # 1. (B, ...)
        x_neg, i_neg = draw_negatives(cfg, ds, buffer, lambda x, i: raw(x, c_data[i]) + frozen_energy(x, i),
                                      idx, by_value, annealed, device)  # 2. (B, ...), (B,)
        # 3. one forward for all parts (DDP wants one forward per backward); frozen parts carry no gradient
        parts = [(x_pos, c_data[idx]), (x_neg, c_data[i_neg])]  # with --contrast, also x+ under other labels
        parts += [(x_pos, other_labels(c_data[idx], c_data, n_values))] if cfg.contrast else []
        e_pos, e_neg, *e_off = net(torch.cat([x for x, _ in parts]), torch.cat([c for _, c in parts])).split(
            [len(x) for x, _ in parts])  # (B,), (B,) or (V B,) when annealed, and [(B,)] with --contrast
        contrast = cfg.contrast * F.softplus(e_pos - e_off[0]).mean() if cfg.contrast else 0.0
        e_pos, e_neg = e_pos + frozen_energy(x_pos, idx), e_neg + frozen_energy(x_neg, i_neg)
        loss = e_pos.mean() - e_neg.mean() + cfg.l2 * (e_pos.pow(2).mean() + e_neg.pow(2).mean()) + contrast
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, run["step"], run["horizon"], run["lr_scale"], run["warm_from"])
        opt.step()
        update_ema()
        stats += torch.stack([loss, e_pos.mean(), e_neg.mean()]).detach()
        run["step"], seen = run["step"] + 1, seen + 1
        if run["step"] % cfg.log_interval and run["step"] % cfg.ckpt_interval and run["step"] < cfg.max_iters:
            continue  # no look at the numbers: the loop never waits on the GPU in between
        means, seen = read_stats(stats, seen, world), 0
        run = take_stock(cfg, ds, path, run, state, c_data, means, (x_neg, c_data[i_neg]), log, iters_after)
        if run is None:  # it diverged once too often
            break
    check_replicas(raw, family, log)
    log(f"[{family}] wrote {path}")


def train_worker(cfg, family, device, threads):
    """One family in its own process (see main)."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed + sum(map(ord, family)))
    train_concept(cfg, dataset_for(cfg), family, device)


def dataset_for(cfg):
    """The run's training data (with --only, the part of it that has those values)."""
    for name, off in (("corner", cfg.corner < 0), ("clutter", cfg.clutter == 0),
                      ("clutter_size", cfg.clutter_size == "small"), ("clutter_gap", cfg.clutter_gap == CLUTTER_GAP),
                      ("scene", cfg.scene == "plain")):
        if not off and cfg.dataset != "shapes":
            raise ValueError(f"--{name} is a setting of the shapes dataset, not of {cfg.dataset!r}")
    settings = {  # an unknown name: load_dataset's error lists the known ones
        "toy2d": dict(n=cfg.n_data, seed=cfg.seed),
        "shapes": dict(n=cfg.n_data, seed=cfg.seed, image_size=cfg.img_size, cache_dir=cfg.cache_dir,
                       corner=cfg.corner if cfg.corner >= 0 else None, clutter=cfg.clutter,
                       clutter_size=cfg.clutter_size, clutter_gap=cfg.clutter_gap, scene=cfg.scene),
        # every image of the training split: --n_data does not apply
        "celeba": dict(data_dir=cfg.data_dir, image_size=cfg.img_size, cache_dir=cfg.cache_dir)}
    return load_dataset(cfg.dataset, **settings.get(cfg.dataset, {})).where(cfg.only)


def setup_device(cfg):
    """The device, and the process group under `torchrun --standalone --nproc_per_node=N train.py ...`: each
    process takes GPU LOCAL_RANK (NCCL; CPUs: gloo), its own batches (batch_size x N in all) and replay buffer."""
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is visible")
    if "RANK" not in os.environ:
        return torch.device("cuda" if cuda else "cpu")
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    if cuda and local_world > torch.cuda.device_count():
        raise ValueError(f"--nproc_per_node={local_world} but only {torch.cuda.device_count()} GPU(s) are visible: "
                         f"start at most one process per GPU")
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    # long: the other ranks wait while rank 0 decodes CelebA (main); NCCL is told its GPU, not left to guess
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2),
                            **({"device_id": device} if cuda else {}))
    return device


def resolve_family(name, ds):
    """A concept family by name, case-insensitively (`--concept smiling` is Smiling)."""
    match = [f for f in ds.concepts if f.lower() == name.lower()]
    if not match:
        raise ValueError(f"unknown concept family {name!r} for {ds.name}; known: {', '.join(ds.concepts)}")
    return match[0]


def main(argv):
    cfg = parse_config(argv)
    device = setup_device(cfg)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(cfg.seed + rank)  # each rank its own chains and batches (DDP syncs the weights)
    # rank 0 prepares the dataset cache (render or decode) while the others wait, then they read it
    if rank > 0:
        try:
            dist.barrier()
        except RuntimeError:  # rank 0 died: its own message says why
            raise RuntimeError("rank 0 failed while preparing the data (its error is above); stopping") from None
    ds = dataset_for(cfg)
    if rank == 0 and dist.is_initialized():
        dist.barrier()
    families = [resolve_family(name, ds) for name in cfg.concept.split(",")] if cfg.concept else list(ds.concepts)
    if cfg.dataset == "celeba" and not cfg.concept:
        raise ValueError(f"choose the attribute to train with --concept; CelebA's 40: {', '.join(ds.concepts)}")
    os.makedirs(cfg.out_dir, exist_ok=True)
    t0 = time.time()
    # 2D points: tiny MLPs bound by Python and kernel launches, not arithmetic: on a GPU no faster, and on a
    # CPU ~2x faster as one single-threaded process per family; images use every core
    small = ds.x.dim() == 2
    if small and cfg.device == "auto" and device.type == "cuda" and not dist.is_initialized():
        device = torch.device("cpu")  # and the same run (and quality) on every machine
        print("2D models train on the CPU, one process per family: faster than a GPU for networks this small")
    workers = cfg.workers or (min(len(families), 8) if device.type == "cpu" and small else 1)
    if workers > 1 and not dist.is_initialized():
        with torch.multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.starmap(train_worker, [(cfg, fam, device, max(1, (os.cpu_count() or 1) // workers))
                                        for fam in families])
    else:
        for i, fam in enumerate(families):
            train_concept(cfg, ds, fam, device, iters_after=cfg.max_iters * (len(families) - i - 1))
    if rank == 0:
        print(f"trained {len(families)} model(s) in {time.time() - t0:.1f} s")
    if rank == 0 and cfg.dataset == "toy2d" and len(families) == len(ds.concepts):
        fig = os.path.join(cfg.out_dir, "toy2d.png")
        print(format_table(toy2d_report(load_concepts(cfg.out_dir), fig, sampling_settings(run_config(cfg, ds)))))
        print(f"wrote {fig}; total time {time.time() - t0:.1f} s")
    if dist.is_initialized():  # every rank done before any tears the group down
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        rank = os.environ.get("RANK", "0")  # under torchrun every rank reports its own error
        sys.exit(f"error: {e}" if rank == "0" else f"error (rank {rank}): {e}")
