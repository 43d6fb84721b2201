"""Conditional energy networks E(x | c).

THE ENERGY CONVENTION (every file relies on it):
    p(x | c) is proportional to exp(-E(x | c)): lower energy means more likely.
    An energy function maps a batch x of shape (B, ...) to energies of shape (B,).

A concept model is trained on one concept family (e.g. `vertical`) and is
conditioned on the index of one of its values (0 = `top`, 1 = `bottom`).

    from model import MLPConfig, MLPEnergy
    net = MLPEnergy(MLPConfig(n_values=2))
    e = net(x, c)            # x (B, 2), c (B,) long -> e (B,)

    net, ckpt = load_checkpoint("out-toy2d/vertical.pt")   # weights_only=True

This file imports nothing from the project.
"""
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class MLPConfig:
    in_dim: int = 2  # a 2D point
    hidden: int = 128
    depth: int = 3  # hidden layers, each modulated by the concept (FiLM)
    n_values: int = 2  # how many values the concept family has


class MLPEnergy(nn.Module):
    """A Swish MLP whose hidden layers are modulated by the concept (FiLM).

    The concept index picks a learned embedding, which sets a per-unit gain and
    bias on every hidden layer: h <- swish(W h * (1 + gain_c) + bias_c). FiLM lets
    one network hold several concepts whose energy landscapes differ everywhere,
    which a concept appended to the input alone does poorly.
    """

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        dims = [cfg.in_dim] + [cfg.hidden] * cfg.depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.film = nn.Embedding(cfg.n_values, 2 * cfg.hidden * cfg.depth)
        nn.init.zeros_(self.film.weight)  # start unmodulated: every concept the same net
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, x, c):
        # x: (B, in_dim) float, c: (B,) long value indices
        film = self.film(c).view(len(c), self.cfg.depth, 2, self.cfg.hidden)  # (B, depth, 2, H)
        gain, bias = (1 + film[:, :, 0]).unbind(1), film[:, :, 1].unbind(1)  # depth x (B, H)
        h = x
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
