"""Conditional energy networks E(x | c).

THE ENERGY CONVENTION (every file relies on it):
    p(x | c) is proportional to exp(-E(x | c)): lower energy means more likely.
    An energy function maps a batch x of shape (B, ...) to energies of shape (B,).

A concept model is trained on one concept family (e.g. `vertical`) and is
conditioned on the index of one of its values (0 = `top`, 1 = `bottom`).

    from model import MLPConfig, MLPEnergy
    net = MLPEnergy(MLPConfig(n_values=2))
    e = net(x, c)            # x (B, 2), c (B,) long (or () for all) -> e (B,)

    net, ckpt = load_checkpoint("out-toy2d/vertical.pt")   # weights_only=True

This file imports nothing from the project.
"""
import math
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


MODELS = {"mlp": (MLPConfig, MLPEnergy)}


def build_model(kind, **kwargs):
    """A network by kind name and its config's fields."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(MODELS)}")
    cfg_cls, net_cls = MODELS[kind]
    return net_cls(cfg_cls(**kwargs))


def model_args(net):
    """What a checkpoint stores to rebuild `net`: its kind and its config's fields."""
    kind = next(k for k, (_, net_cls) in MODELS.items() if isinstance(net, net_cls))
    return {"kind": kind, **asdict(net.cfg)}


def load_checkpoint(path, device="cpu"):
    """Rebuild a trained concept model from its checkpoint file.

    Returns (net, ckpt): the network in eval mode with its parameters frozen (a
    loaded model is used for sampling and inference, which need input gradients
    only), and the checkpoint dict (family, values, step, config, ...).
    Raises FileNotFoundError or ValueError with the file's name.
    """
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        args = dict(ckpt["model_args"])
        net = build_model(args.pop("kind"), **args)
        net.load_state_dict(ckpt["model"])
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # truncated file, not a checkpoint, wrong weights
        raise ValueError(f"checkpoint {path} could not be read: {type(e).__name__}: {e}") from None
    net.to(device).eval().requires_grad_(False)
    return net, ckpt
