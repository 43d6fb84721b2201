"""Datasets with concept labels.

Every dataset is a `Dataset`: a tensor of inputs `x` and, for each concept
family, a tensor of labels, together with the names of the family's values.
A concept model is trained on one family (e.g. `vertical`, whose values are
`top` and `bottom`) and learns E(x | value).

    from data import load_dataset
    ds = load_dataset("toy2d", n=50_000, seed=0)
    ds.x.shape                 # (50000, 2)
    ds.labels["vertical"]      # (50000,) long: 0 = top, 1 = bottom
    ds.concepts["vertical"]    # ("top", "bottom")

Datasets (see ../shared/DESIGN.md):
  toy2d   16 Gaussian modes on two rings, three binary concept families.

This file imports nothing from the project (see the layout in README.md).
"""
import math
from dataclasses import dataclass

import torch

# ----------------------------------------------------------------------------
# toy2d: fixed by DESIGN.md; the tests, the exact evaluation and the benchmarks
# rely on every number here.

TOY2D_STD = 0.1  # isotropic standard deviation of every mode
TOY2D_RADII = (1.0, 2.0)  # inner ring, outer ring
TOY2D_FAMILIES = {
    "vertical": ("top", "bottom"),  # sin(angle) > 0 is top
    "horizontal": ("right", "left"),  # cos(angle) > 0 is right
    "ring": ("inner", "outer"),  # radius 1.0 is inner
}
TOY2D_RANGE = (-3.0, 3.0)  # the box samplers start in and are clamped to


def toy2d_modes():
    """The 16 mode centres and their labels.

    Returns centres (16, 2) and labels, a dict family -> (16,) long tensor of
    value indices into TOY2D_FAMILIES[family]. Modes 0-7 are the inner ring,
    8-15 the outer one, each ring at angles (2k+1) * pi / 8, k = 0..7.
    """
    angles = torch.tensor([(2 * k + 1) * math.pi / 8 for k in range(8)], dtype=torch.float64)
    centres, labels = [], {f: [] for f in TOY2D_FAMILIES}
    for ring, radius in enumerate(TOY2D_RADII):
        xy = torch.stack([radius * torch.cos(angles), radius * torch.sin(angles)], dim=1)
        centres.append(xy)
        labels["vertical"].append((torch.sin(angles) <= 0).long())  # 0 = top
        labels["horizontal"].append((torch.cos(angles) <= 0).long())  # 0 = right
        labels["ring"].append(torch.full((8,), ring, dtype=torch.long))  # 0 = inner
    centres = torch.cat(centres).float()  # (16, 2)
    return centres, {f: torch.cat(v) for f, v in labels.items()}


# ----------------------------------------------------------------------------


@dataclass
class Dataset:
    name: str
    x: torch.Tensor  # (N, ...) inputs
    labels: dict  # family -> (N,) long value indices
    concepts: dict  # family -> tuple of value names
    data_range: tuple  # (low, high): where samplers start and what they clamp to

    def __len__(self):
        return len(self.x)


def make_toy2d(n=50_000, seed=0):
    """n points drawn uniformly over the 16 modes, with every family's label."""
    g = torch.Generator().manual_seed(seed)
    centres, mode_labels = toy2d_modes()
    mode = torch.randint(0, len(centres), (n,), generator=g)  # (N,)
    x = centres[mode] + TOY2D_STD * torch.randn(n, 2, generator=g)  # (N, 2)
    labels = {f: lab[mode] for f, lab in mode_labels.items()}
    return Dataset("toy2d", x, labels, dict(TOY2D_FAMILIES), TOY2D_RANGE)


DATASETS = {"toy2d": make_toy2d}


def load_dataset(name, **kwargs):
    """Build a dataset by name; an unknown name is a ValueError listing the known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name](**kwargs)
