"""Conditional energy networks E(x | c).

THE ENERGY CONVENTION (every file relies on it):
    p(x | c) is proportional to exp(-E(x | c)): lower energy means more likely.
    An energy function maps a batch x of shape (B, ...) to energies of shape (B,).

A concept model is trained on one concept family and conditioned on its value:
the index of a discrete value (`vertical`: 0 = `top`, 1 = `bottom`) or the raw
numbers of a continuous one (`size`: 0.45; `position`: (0.5, -0.3)).

    from model import MLPConfig, MLPEnergy, ImageConfig, ImageEnergy
    net = MLPEnergy(MLPConfig(n_values=2))
    e = net(x, c)            # x (B, 2), c (B,) long (or () for all) -> e (B,)
    net = ImageEnergy(ImageConfig(**IMAGE_PRESETS["shapes32"], n_values=8))
    e = net(x, c)            # x (B, 3, 32, 32) in [0, 1], c (B,) long -> e (B,)
    net = ImageEnergy(ImageConfig(**IMAGE_PRESETS["shapes32"], cond_dim=2))
    e = net(x, c)            # c (B, 2) float (or (2,) for all): a position

    net, ckpt = load_checkpoint("out-toy2d/vertical.pt")   # weights_only=True
    temper_checkpoint("a.pt", 0.5, "b.pt")   # b: the energy of a, halved (temperature 2)
    average_checkpoints(["s1.pt", "s2.pt"], "b.pt")   # b: the mean weights of a run's snapshots

build_concept_model sizes a network for one family of a dataset from train.py's settings.
This file imports nothing from the project.
"""
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class MLPConfig:
    in_dim: int = 2  # a 2D point
    n_freqs: int = 4  # Fourier features of the input at periods 2L, L, L/2, ... (0: raw input only)
    x_scale: float = 3.0  # L: half the width of the data box
    hidden: int = 128
    depth: int = 3  # hidden layers, each modulated by the concept (FiLM)
    n_values: int = 2  # how many values the concept family has


class MLPEnergy(nn.Module):
    """A Swish MLP on Fourier features of x, its hidden layers modulated by the concept (FiLM).

    An MLP on raw 2D coordinates learns smooth functions first (spectral bias):
    it turns the eight modes of a ring into one flat annulus and takes thousands
    of iterations to carve them out. Sines and cosines of x at a few octaves
    (Tancik et al. 2020) make such detail as easy to learn as the coarse shape.

    The concept index picks a learned embedding, which sets a per-unit gain and
    bias on every hidden layer: h <- swish(W h * (1 + gain_c) + bias_c). FiLM lets
    one network hold several concepts whose energy landscapes differ everywhere,
    which a concept appended to the input alone does poorly.
    """

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        freqs = math.pi / cfg.x_scale * 2.0 ** torch.arange(cfg.n_freqs)  # (F,)
        self.register_buffer("freqs", freqs, persistent=False)
        dims = [cfg.in_dim * (1 + 2 * cfg.n_freqs)] + [cfg.hidden] * cfg.depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.film = nn.Embedding(cfg.n_values, 2 * cfg.hidden * cfg.depth)
        nn.init.zeros_(self.film.weight)  # start unmodulated: every concept the same net
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, x, c):
        # x: (B, in_dim) float; c: (B,) long value indices, or () for one value for all
        film = self.film(c).view(-1, self.cfg.depth, 2, self.cfg.hidden)  # (B or 1, depth, 2, H)
        gain, bias = (1 + film[:, :, 0]).unbind(1), film[:, :, 1].unbind(1)  # depth x (B or 1, H)
        xf = x.unsqueeze(-1) * self.freqs  # (B, in_dim, F)
        h = torch.cat([x / self.cfg.x_scale, xf.sin().flatten(1), xf.cos().flatten(1)], 1)  # (B, in_dim * (1 + 2F))
        for layer, g, b in zip(self.layers, gain, bias):
            h = F.silu(torch.addcmul(b, layer(h), g))  # (B, H): swish(W h * gain + bias)
        return self.out(h).squeeze(-1)  # (B,)


# ----------------------------------------------------------------------------
# images

# Sizes of the image network. `shapes32` is small enough to train on two CPU
# cores; `scenes64` and `celeba128` are the paper's (appendix A.3 and the released
# code), for a GPU; `celeba64` is celeba128 less its first block, for 64x64 faces
# (the same 4x4 map before pooling).
IMAGE_PRESETS = {
    "shapes32": dict(image_size=32, channels=(16, 32, 64, 64), pool="sum"),
    "scenes64": dict(image_size=64, channels=(64, 64, 128, 128, 256), pool="mean"),
    "celeba64": dict(image_size=64, channels=(64, 128, 256, 512, 512), pool="sum"),
    "celeba128": dict(image_size=128, channels=(64, 64, 128, 256, 512, 512), pool="sum"),
}


@dataclass
class ImageConfig:
    image_size: int = 32
    channels: tuple = (16, 32, 64, 64)  # a residual block per entry; each but the first at half the resolution
    pool: str = "sum"  # the last block's map to the energy: "sum" or "mean" (global pooling), or
    # "dense" (the whole final map flattened into the linear layer: it keeps where things are)
    coords: bool = True  # append x, y coordinate channels to the image (see ImageEnergy)
    n_values: int = 0  # a discrete concept: how many values (encoded one-hot)
    cond_dim: int = 0  # a continuous concept: how many numbers (1: a size, 2: a position)
    cond_low: float = -1.0  # the range of a continuous concept's numbers, mapped to [-1, 1]
    cond_high: float = 1.0


class FiLMBlock(nn.Module):
    """A pre-activation residual block whose first conv is modulated by the concept:
        h = conv1(swish(x)) * (1 + gain_c) + bias_c;   out = skip(x) + conv2(swish(h))
    Both convs are spectrally normalised: each is at most 1-Lipschitz, so the energy
    cannot grow arbitrarily steep, which keeps Langevin steps and training stable."""

    def __init__(self, c_in, c_out, cond_dim):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.conv1 = sn(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = sn(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.film = nn.Linear(cond_dim, 2 * c_out)  # concept vector -> (gain, bias) per channel
        nn.init.zeros_(self.film.weight)  # start unmodulated
        nn.init.zeros_(self.film.bias)

    def forward(self, x, cond):
        # x: (B, C_in, H, W); cond: (B or 1, cond_dim)
        gain, bias = self.film(cond)[:, :, None, None].chunk(2, dim=1)  # (B or 1, C_out, 1, 1) each
        h = torch.addcmul(bias, self.conv1(F.silu(x)), 1 + gain)  # (B, C_out, H, W)
        return self.skip(x) + self.conv2(F.silu(h))


class ImageEnergy(nn.Module):
    """E(x | c) for images: a spectrally normalised ResNet with Swish and FiLM.

    3x3 conv stem -> residual blocks (each after the first preceded by a 2x
    average pool) -> Swish -> global pooling -> linear -> one energy. The concept
    vector (one-hot for a discrete value, the numbers mapped to [-1, 1] for a
    continuous one) sets a per-channel gain and bias in every block.

    Why coordinate channels: convolutions and global pooling cannot see where
    something is, only what it is; a position concept needs absolute place, so
    two channels holding x and y (CoordConv, Liu et al. 2018) go in with the image.
    Why sum pooling for small images: under spectral normalisation every average
    pool divides the input gradient by 4; a sum over the final map undoes some of
    that, so Langevin moves pixels with moderate step sizes.
    The network runs in channels_last memory format on CPUs and under bf16 on GPUs: both
    run convolutions faster on channels-last tensors (tensor cores want channels innermost).
    On a GPU with bfloat16 it runs under bf16 autocast (`bf16`, default: wherever
    supported): convolutions in bf16 on tensor cores, the energy returned in fp32,
    so Langevin's updates of x (sampler.py) and the loss stay in fp32.
    """

    bf16 = None  # None: autocast on CUDA devices that support bfloat16; True / False: force
    channels_last = None  # None: on CPUs and under bf16; True / False: force (bench.py's naive loop turns it off)

    def __init__(self, cfg: ImageConfig):
        super().__init__()
        if (cfg.n_values > 0) == (cfg.cond_dim > 0):
            raise ValueError(f"an image model needs either n_values (discrete) or cond_dim (continuous), "
                             f"got n_values={cfg.n_values}, cond_dim={cfg.cond_dim}")
        if cfg.pool not in ("sum", "mean", "dense"):
            raise ValueError(f"pool must be 'sum', 'mean' or 'dense', got {cfg.pool!r}")
        self.cfg = cfg
        ch = list(cfg.channels)
        cond_dim = cfg.n_values or cfg.cond_dim
        self.stem = nn.utils.parametrizations.spectral_norm(nn.Conv2d(3 + 2 * cfg.coords, ch[0], 3, padding=1))
        self.blocks = nn.ModuleList(FiLMBlock(a, b, cond_dim) for a, b in zip([ch[0]] + ch[:-1], ch))
        final = cfg.image_size >> (len(ch) - 1)  # side of the last block's map
        self.out = nn.Linear(ch[-1] * (final ** 2 if cfg.pool == "dense" else 1), 1)  # not normalised: sets the scale
        lin = torch.linspace(-1, 1, cfg.image_size)
        grid = torch.stack(torch.meshgrid(lin, -lin, indexing="xy"))[None]  # (1, 2, H, W): x right, y up
        self.register_buffer("grid", grid, persistent=False)

    def concept_vector(self, c):
        """Value indices (B,) or () -> one-hot (B or 1, n); numbers (B, d) or (d,) -> (B or 1, d) in [-1, 1]."""
        if self.cfg.n_values:
            return F.one_hot(c.reshape(-1), self.cfg.n_values).float()
        lo, hi = self.cfg.cond_low, self.cfg.cond_high
        return (2 * (c.float() - lo) / (hi - lo) - 1).reshape(-1, self.cfg.cond_dim)

    def forward(self, x, c):
        # x: (B, 3, H, W) in [0, 1]; c: see concept_vector
        if x.shape[-1] != self.cfg.image_size or x.shape[-2] != self.cfg.image_size:
            raise ValueError(f"this model takes {self.cfg.image_size}x{self.cfg.image_size} images, "
                             f"got {tuple(x.shape[-2:])}")
        bf16 = self.bf16 if self.bf16 is not None else x.is_cuda and torch.cuda.is_bf16_supported()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bool(bf16)):
            return self.energy(x, c, bool(bf16)).float()  # (B,) fp32 whatever the network ran in

    def energy(self, x, c, bf16=False):
        cond = self.concept_vector(c)  # (B or 1, cond_dim)
        x = 2 * x - 1  # centred on 0
        if self.cfg.coords:
            x = torch.cat([x, self.grid.expand(len(x), -1, -1, -1)], 1)  # (B, 5, H, W)
        if self.channels_last if self.channels_last is not None else x.device.type == "cpu" or bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.stem(x)  # (B, C0, H, W)
        for i, block in enumerate(self.blocks):
            h = block(F.avg_pool2d(h, 2) if i else h, cond)  # (B, C_i, H / 2^i, W / 2^i)
        h = F.silu(h)
        if self.cfg.pool == "dense":
            h = h.flatten(1)  # (B, C_last * h * w)
        else:
            h = h.sum((2, 3)) if self.cfg.pool == "sum" else h.mean((2, 3))  # (B, C_last)
        return self.out(h).squeeze(-1)  # (B,)


MODELS = {"mlp": (MLPConfig, MLPEnergy), "image": (ImageConfig, ImageEnergy)}  # the concept models


def build_model(kind, **kwargs):
    """A network by kind name and its config's fields."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(MODELS)}")
    cfg_cls, net_cls = MODELS[kind]
    return net_cls(cfg_cls(**kwargs))


def build_concept_model(cfg, ds, family):
    """The network for one family of dataset ds, sized by train.py's Config: an MLP for 2D points,
    the image ResNet (a preset, and a pool) for images."""
    lo, hi = ds.data_range
    if ds.x.dim() == 2:
        return build_model("mlp", in_dim=ds.x.shape[1], n_freqs=cfg.n_freqs, x_scale=max(abs(lo), abs(hi)),
                           hidden=cfg.hidden, depth=cfg.depth, n_values=len(ds.concepts[family]))
    preset = dict(IMAGE_PRESETS[cfg.preset], image_size=ds.x.shape[-1], **({"pool": cfg.pool} if cfg.pool else {}))
    if family in ds.ranges:  # continuous: the numbers themselves condition the model
        low, high = ds.ranges[family]
        return build_model("image", **preset, cond_dim=len(ds.concepts[family]), cond_low=low, cond_high=high)
    return build_model("image", **preset, n_values=len(ds.concepts[family]))


SINGULAR_VECTORS = ("._u", "._v")  # state_dict names of spectral norm's power-iteration vectors: copied, never averaged


def ema_updater(raw, ema, decay):
    """A function that moves `ema`, a copy of `raw`, towards raw's live weights by 1 - decay: one
    multi-tensor kernel, not one per tensor. state_dict tensors share storage with the modules (which
    the optimizer updates in place); spectral norm's singular vectors are copied, not averaged."""
    if ema is None:
        return lambda: None
    live, avg = raw.state_dict(), ema.state_dict()
    singular = [k for k in avg if k.endswith(SINGULAR_VECTORS)]
    mixed = [[state[k] for k in avg if k not in singular] for state in (avg, live)]
    copied = [[state[k] for k in singular] for state in (avg, live)]

    def update():  # the tensor lists are built once, not every iteration
        with torch.no_grad():
            torch._foreach_lerp_(*mixed, 1 - decay)
            if singular:  # the MLP has no spectral norm, and foreach kernels refuse empty lists
                torch._foreach_copy_(*copied)
    return update


def model_args(net):
    """What a checkpoint stores to rebuild `net`: its kind and its config's fields."""
    kind = next(k for k, (_, net_cls) in MODELS.items() if isinstance(net, net_cls))
    return {"kind": kind, **asdict(net.cfg)}


def save_checkpoint(obj, path):
    """Write atomically: a run killed mid-write leaves the previous checkpoint intact."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def temper_checkpoint(src, factor, dst):
    """Write `src` to `dst` with its energy times `factor` (temperature 1/factor), as the paper's appendix
    proposes for models whose energy scales differ before a sum. The last linear layer is not spectrally
    normalised, so scaling its weight and bias scales the energy exactly; the recorded energies follow."""
    if not factor > 0:
        raise ValueError(f"factor must be > 0 (a temperature), got {factor}")
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    for weights in (ckpt[k] for k in ("model", "ema") if k in ckpt):
        for name in ("out.weight", "out.bias"):
            weights[name] = weights[name] * factor
    for key in ("data_energy", "other_energy"):
        if key in ckpt:
            ckpt[key] = [e * factor for e in ckpt[key]]
    ckpt["energy_factor"] = ckpt.get("energy_factor", 1.0) * factor  # so a file says it was tempered
    save_checkpoint(ckpt, dst)


def load_checkpoint(path, device="cpu"):
    """Rebuild a trained concept model from its checkpoint file.

    Returns (net, ckpt): the network (the moving average of its weights, if the run kept one) in
    eval mode with frozen parameters (sampling and inference need input gradients only), and the
    checkpoint dict (family, values, step, config, ...).
    Raises FileNotFoundError or ValueError with the file's name.
    """
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        args = dict(ckpt["model_args"])
        net = build_model(args.pop("kind"), **args)
        net.load_state_dict(ckpt.get("ema", ckpt["model"]))  # the averaged weights where there are some
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # truncated file, not a checkpoint, wrong weights
        raise ValueError(f"checkpoint {path} could not be read: {type(e).__name__}: {e}") from None
    net.to(device).eval().requires_grad_(False)
    return net, ckpt


def average_checkpoints(srcs, dst):
    """Write to `dst` the mean weights of `srcs`: snapshots of one run, or of runs resumed from one snapshot
    (stochastic weight averaging, Izmailov et al. 2018; model soups, Wortsman et al. 2022). Late in a run, at
    a low learning rate, each snapshot is the one before plus the noise of a few hundred updates; their mean
    keeps what they share. Everything else (step, config, recorded energies) is the last file's, and spectral
    norm's singular vectors too, as in ema_updater. The result is a light snapshot: it resumes with fresh
    chains and a fresh optimizer."""
    if len(srcs) < 2:
        raise ValueError(f"averaging needs two checkpoints or more, got {len(srcs)}")
    ckpts = [torch.load(path, map_location="cpu", weights_only=True) for path in srcs]
    kind = lambda ckpt: (ckpt["model_args"], ckpt["family"], "ema" in ckpt)  # what snapshots of one model share
    for path, ckpt in zip(srcs[1:], ckpts[1:]):
        if kind(ckpt) != kind(ckpts[0]):
            raise ValueError(f"{path} is not a snapshot of the same model as {srcs[0]}: cannot average them")
    out = {k: v for k, v in ckpts[-1].items() if k not in ("optimizer", "buffer", "rng")}
    for key in [k for k in ("model", "ema") if k in out]:
        out[key] = {name: torch.stack([c[key][name] for c in ckpts]).mean(0)
                    if t.is_floating_point() and not name.endswith(SINGULAR_VECTORS) else t
                    for name, t in out[key].items()}
    # what it is the mean of, named from the folder the files share: ["a/position_008000.pt", "b/..."]
    paths = [os.path.abspath(path) for path in srcs]
    root = os.path.commonpath([os.path.dirname(path) for path in paths])
    out["averaged"] = [os.path.relpath(path, root) for path in paths]
    save_checkpoint(out, dst)
