"""Datasets with concept labels.

Every dataset is a `Dataset`: a tensor of inputs `x` and, for each concept family, a tensor of labels
and the names of the family's values. A concept model is trained on one family (e.g. `vertical`, whose
values are `top` and `bottom`) and learns E(x | value).

    from data import load_dataset
    ds = load_dataset("toy2d", n=50_000, seed=0)  # 16 Gaussian modes on two rings
    ds.x.shape                 # (50000, 2)
    ds.labels["vertical"]      # (50000,) long index into ds.concepts["vertical"] = ("top", "bottom")

    ds = load_dataset("shapes", n=20_000, seed=0)  # a sphere, cube or cylinder per image; held-out variants
    ds.x.shape                 # (20000, 3, 32, 32) float in [0, 1]
    ds.labels["shape"]         # (20000,) long: index into ds.concepts["shape"]; also "color"
    ds.labels["size"]          # (20000, 1) float, in ds.ranges["size"]; also "position" (20000, 2)

    ds = load_dataset("celeba", data_dir="/data/celeba", image_size=64)  # or 128; 40 attribute families
    ds.x                       # (162770, 3, 64, 64) uint8, memory-mapped from out-data/
    ds.batch(torch.arange(8))  # (8, 3, 64, 64) float in [0, 1], dequantised

This file imports nothing from the project.
"""
import contextlib
import math
import multiprocessing
import os
import time
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
import torch

# ----------------------------------------------------------------------------
# toy2d: the tests, the exact evaluation (compose.py) and the benchmarks rely on every number here.

TOY2D_STD = 0.1  # isotropic standard deviation of every mode
TOY2D_RADII = (1.0, 2.0)  # inner ring, outer ring
TOY2D_FAMILIES = {
    "vertical": ("top", "bottom"),  # sin(angle) > 0 is top
    "horizontal": ("right", "left"),  # cos(angle) > 0 is right
    "ring": ("inner", "outer"),  # radius 1.0 is inner
}
TOY2D_RANGE = (-3.0, 3.0)  # the box samplers start in and are clamped to


def toy2d_modes():
    """The 16 mode centres (16, 2) and their labels: family -> (16,) long index into TOY2D_FAMILIES[family].
    Modes 0-7 are the inner ring, 8-15 the outer one, each ring at angles (2k+1) * pi / 8, k = 0..7."""
    angles = torch.tensor([(2 * k + 1) * math.pi / 8 for k in range(8)] * 2, dtype=torch.float64)  # (16,)
    radii = torch.tensor(TOY2D_RADII, dtype=torch.float64).repeat_interleave(8)  # (16,)
    centres = torch.stack([radii * torch.cos(angles), radii * torch.sin(angles)], dim=1).float()  # (16, 2)
    labels = {"vertical": (torch.sin(angles) <= 0).long(), "horizontal": (torch.cos(angles) <= 0).long(),
              "ring": torch.arange(16) // 8}
    return centres, labels


@dataclass
class Dataset:
    name: str
    x: torch.Tensor  # (N, ...) inputs
    labels: dict  # family -> (N,) long value indices, or (N, D) float for continuous families
    concepts: dict  # family -> tuple of value names (component names for continuous families)
    data_range: tuple  # (low, high): where samplers start and what they clamp to
    ranges: dict = field(default_factory=dict)  # continuous family -> (low, high) of every component

    def __len__(self):
        return len(self.x)

    def batch(self, idx, device="cpu"):
        """The inputs at indices idx (B,), as floats on `device`. uint8 images (celeba) become (k + u) / 256,
        u ~ U[0, 1): dequantised, so the model sees a density on [0, 1], not 256 spikes it could give any low energy."""
        x = self.x[idx.to(self.x.device)].to(device, non_blocking=True)  # (B, ...)
        if x.dtype == torch.uint8:
            x = (x.float() + torch.rand(x.shape, device=device)) / 256
        return x

    def where(self, spec):
        """The data points whose discrete families take the named values: spec is "family=value,family=value"
        (e.g. "shape=cube,color=red"); "" keeps everything."""
        if not spec:
            return self
        keep = torch.ones(len(self), dtype=torch.bool)
        for part in filter(None, spec.split(",")):
            family, _, value = (t.strip() for t in part.partition("="))
            values = self.concepts.get(family)
            if values is None or family in self.ranges:
                discrete = ", ".join(f for f in self.concepts if f not in self.ranges)
                raise ValueError(f"cannot select on {family!r}: {self.name}'s discrete families are {discrete}")
            if value not in values:
                raise ValueError(f"unknown {family} {value!r}; allowed: {', '.join(values)}")
            keep &= self.labels[family] == values.index(value)
        if not keep.any():
            raise ValueError(f"no {self.name} data point has {spec}")
        return replace(self, x=self.x[keep], labels={f: v[keep] for f, v in self.labels.items()})


def make_toy2d(n=50_000, seed=0):
    """n points drawn uniformly over the 16 modes, with every family's label."""
    g = torch.Generator().manual_seed(seed)
    centres, mode_labels = toy2d_modes()
    mode = torch.randint(0, len(centres), (n,), generator=g)  # (N,)
    x = centres[mode] + TOY2D_STD * torch.randn(n, 2, generator=g)  # (N, 2)
    return Dataset("toy2d", x, {f: lab[mode] for f, lab in mode_labels.items()}, dict(TOY2D_FAMILIES), TOY2D_RANGE)

# ----------------------------------------------------------------------------
# shapes: one procedurally rendered object per image, numpy only, so the image experiments need no download.

SHAPES = ("sphere", "cube", "cylinder")
COLORS = {  # saturated and far from the grey background and from each other
    "red": (0.90, 0.10, 0.10), "green": (0.10, 0.75, 0.15), "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10), "cyan": (0.10, 0.85, 0.90), "magenta": (0.90, 0.15, 0.85),
    "orange": (1.00, 0.55, 0.05), "purple": (0.50, 0.12, 0.75),
}
HELDOUT_COLORS = {"pink": (1.00, 0.60, 0.75), "brown": (0.55, 0.33, 0.15), "lime": (0.60, 0.95, 0.20)}
HELDOUT_SHAPE = "cone"  # shape index 3 in render_shapes and in make_shapes' labels
SIZE_RANGE, HELDOUT_SIZES = (0.3, 0.7), (0.75, 0.9)  # training sizes, held-out sizes
CLUTTER_SIZES = {"small": (0.15, 0.3), "any": SIZE_RANGE}  # clutter smaller than any labelled object, or alike
CLUTTER_GAP = 1.5  # clutter centres this many times the two radii from other objects: even cubes stay apart
POSITION_RANGE = (-1.0, 1.0)
POSITION_SCALE = 0.55  # an object at x sits at W/2 * (1 + POSITION_SCALE * x): x = +-1 stays inside
SHAPES_SCENES = ("plain", "ground")
SHAPES_IMAGE_SIZES = (32, 64)
SHAPES_HELDOUT = (None, "colors", "light", "sizes", "shape")
LARGE_SIZES = (0.6, 0.7)  # cross-product data (corner=...): the only sizes outside the corner

AMBIENT = 0.55  # shading scales the color by 0.55..1, so that it stays recognisable on every face
DEFAULT_LIGHT = (-0.45, 0.85, 0.35)  # (x right, y up, z towards the viewer): from the upper left
UNSEEN_LIGHT, UNSEEN_GAIN = (0.8, 0.3, 0.5), 0.65  # from the right and dimmer: never seen in training
_unit = lambda v: np.asarray(v, dtype=np.float64) / np.linalg.norm(v)
TOP_N, SIDE_N, FRONT_N = _unit((0, 1, 0.2)), _unit((1, 0, 0.3)), _unit((0, 0, 1))  # cube/cap face normals


def _check(what, value, allowed):
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def _draw(img, X, Y, shape, rgb, cx, cy, r, light, gain):
    """Paint one object into img (S, S, 3) in place; X, Y (S, S) are pixel centres."""
    u, v = (X - cx) / r, (cy - Y) / r  # object frame, v up: the object fills [-1, 1]^2
    lit = lambda n: AMBIENT + (1 - AMBIENT) * np.clip(n @ light, 0, None)  # n (..., 3) -> (...)
    spec = 0.0
    if shape == 0:  # sphere: Lambert on the hemisphere's normals, plus a Blinn highlight
        d2 = u * u + v * v
        n = np.stack([u, v, np.sqrt(np.clip(1 - d2, 0, None))], -1)  # (S, S, 3)
        mask, shade, spec = d2 <= 1, lit(n), 0.8 * np.clip(n @ _unit(light + FRONT_N), 0, None) ** 30
    elif shape == 1:  # cube, oblique view: front square, top and right faces sheared by the depth
        e = -1 + 1.4  # top and right edge of the front face (side 1.4); a depth of 0.6 fills [-1, 1]^2
        front = (u >= -1) & (u <= e) & (v >= -1) & (v <= e)
        top = (v > e) & (v <= 1) & (u - (v - e) >= -1) & (u - (v - e) <= e)
        side = (u > e) & (u <= 1) & (v - (u - e) >= -1) & (v - (u - e) <= e)
        mask, shade = front | top | side, np.select([top, side], [lit(TOP_N), lit(SIDE_N)], lit(FRONT_N))
    else:  # cylinder (2) and cone (3): upright bodies of revolution with an elliptical base
        a, e = (0.8, 0.28) if shape == 2 else (0.85, 0.25)  # half width, half height of the ellipses
        base = (u / a) ** 2 + ((v + 1 - e) / e) ** 2 <= 1
        cap = (u / a) ** 2 + ((v - 1 + e) / e) ** 2 <= 1 if shape == 2 else np.zeros_like(base)
        # half width at height v and upward tilt of the normals: the cone narrows to its apex at v = 1
        half, tilt = (np.full_like(v, a), 0.0) if shape == 2 else (a * (1 - v) / (2 - e), 0.45)
        body = (np.abs(u) <= half) & (v >= -1 + e) & (v <= 1 - (e if shape == 2 else 0)) | base
        nx = np.clip(u / np.maximum(half, 1e-6), -1, 1)  # horizontal position across the body
        n = np.stack([nx, np.full_like(nx, tilt), np.sqrt(1 - nx ** 2)], -1)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)  # (S, S, 3)
        mask, shade = body | cap, np.where(cap, lit(TOP_N), lit(n))
    col = np.asarray(rgb) * (gain * shade)[..., None]  # (S, S, 3)
    col += np.asarray(spec)[..., None] * (1 - col)  # the highlight whitens towards 1
    img[mask] = col[mask]


def render_shapes(labels, image_size=32, scene="plain", clutter=0, light=None, seed=0, clutter_size="small",
                  clutter_gap=CLUTTER_GAP):
    """Render one object per image -> uint8 (N, W, W, 3), W = image_size; antialiased (drawn at 2W).

    labels: numpy "shape" (N,) int index into SHAPES + (HELDOUT_SHAPE,), "color" (N, 3) RGB in [0, 1], "size"
    (N,), "position" (N, 2), x right and y UP: the centre is at W/2 * (1 + POSITION_SCALE * (x, -y)) pixels
    and every shape's radius (half extent) is 0.35 * size * W. scene "plain": flat grey, a fixed light from
    the upper left; "ground": sky, horizon, ground and soft shadows, with a light direction and brightness
    drawn per image. light "unseen": a dimmer light from the right, outside the training variation.
    clutter k: k more objects of other colors, drawn first, of CLUTTER_SIZES[clutter_size] (unlabelled), each
    centre at least clutter_gap * (r + r') from every other object's where there is room (1.5: even cubes,
    whose corners reach 1.41 r, stay apart; 1.0: spheres may touch, so objects stand as close as they can).
    """
    _check("scene", scene, SHAPES_SCENES)
    _check("light", light, (None, "unseen"))
    _check("clutter_size", clutter_size, CLUTTER_SIZES)
    if not (isinstance(clutter, int) and clutter >= 0):
        raise ValueError(f"clutter must be a non-negative int, got {clutter!r}")
    if not clutter_gap > 0:
        raise ValueError(f"clutter_gap must be a positive multiple of the two radii, got {clutter_gap!r}")
    rng = np.random.default_rng(seed)
    n, W, S = len(labels["shape"]), image_size, 2 * image_size
    X, Y = np.meshgrid(np.arange(S) + 0.5, np.arange(S) + 0.5)  # (S, S) each, Y down
    palette = np.array(list(COLORS.values()))  # (8, 3)
    t = np.clip((Y / S - 0.45) / 0.55, -1, 1)[..., None]  # (S, S, 1): horizon at 45% of the height
    sky = np.where(t < 0, (0.82, 0.84, 0.86) + t * (0.27, 0.16, 0.01), (0.56, 0.52, 0.47) - t * (0.16, 0.15, 0.14))
    out = np.empty((n, W, W, 3), dtype=np.uint8)
    L, gain = (_unit(UNSEEN_LIGHT), UNSEEN_GAIN) if light == "unseen" else (_unit(DEFAULT_LIGHT), 1.0)
    for i in range(n):
        if scene == "ground" and light is None:  # training variation: upper left to top, brightness +-15%
            L, gain = _unit((rng.uniform(-0.75, -0.1), rng.uniform(0.65, 1.0), 0.35)), rng.uniform(0.85, 1.15)
        x, y = labels["position"][i]
        objs = [(int(labels["shape"][i]), labels["color"][i], S / 2 * (1 + POSITION_SCALE * x),
                 S / 2 * (1 - POSITION_SCALE * y), 0.35 * float(labels["size"][i]) * S)]  # (shape, rgb, cx, cy, r)
        others = palette[np.abs(palette - labels["color"][i]).max(1) > 0.05]  # colors unlike the main one
        for _ in range(clutter):
            r = 0.35 * rng.uniform(*CLUTTER_SIZES[clutter_size]) * S
            cands = S / 2 * (1 + POSITION_SCALE * rng.uniform(-1, 1, (20, 2)) * (1, -1))  # (20, 2) pixel centres
            placed = np.array([o[2:] for o in objs])  # (K, 3): cx, cy, r of the objects so far
            dist = np.hypot(*(cands[:, None] - placed[None, :, :2]).transpose(2, 0, 1))  # (20, K) centre to centre
            gap = dist - clutter_gap * (placed[:, 2] + r)  # (20, K)
            free = gap.min(1)  # < 0: too close to one; far enough from all, if possible, else the least short
            cx, cy = cands[np.argmax(free >= 0) if (free >= 0).any() else np.argmax(free)]
            objs.insert(0, (int(rng.integers(3)), others[rng.integers(len(others))], cx, cy, r))
        img = np.full((S, S, 3), 0.5) if scene == "plain" else gain * sky
        if scene == "ground":  # soft shadows on the ground, cast away from the light
            for _, _, cx, cy, r in objs:
                q = np.hypot((X - cx + L[0] * r) / (1.2 * r), (Y - cy - 0.9 * r) / (0.35 * r))
                img *= 1 - 0.45 * np.clip(1.5 - q, 0, 1)[..., None]
        for obj in objs:
            _draw(img, X, Y, *obj, L, gain)
        img = img.reshape(W, 2, W, 2, 3).mean((1, 3))  # (W, W, 3): 2x2 block average
        out[i] = np.round(np.clip(img, 0, 1) * 255)
    return out


def to_float(images):
    """uint8 pixels, numpy or torch, (..., H, W, 3) -> float32 (..., 3, H, W) in [0, 1]: the networks' input."""
    x = torch.as_tensor(np.asarray(images))  # (..., H, W, 3) uint8
    return x.movedim(-1, -3).float().div(255)  # (..., 3, H, W)


def corner_side(corner):
    """Side of the top-right square [1 - side, 1]^2 that holds the share `corner` of the positions [-1, 1]^2."""
    return 2 * math.sqrt(corner)


def make_shapes(n=20_000, seed=0, image_size=32, scene="plain", clutter=0, heldout=None, corner=None,
                cache_dir="out-data", clutter_size="small", clutter_gap=CLUTTER_GAP):
    """n rendered images with shape, color, size and position labels, cached in cache_dir.

    heldout (one seed gives the same sizes and positions with and without it): "colors" (HELDOUT_COLORS, which
    concepts["color"] then names); "light" (scene "ground" under the unseen light); "sizes" (in HELDOUT_SIZES;
    ranges stay the training ones); "shape" (every object a cone: index 3 of concepts["shape"] = SHAPES +
    (HELDOUT_SHAPE,), so index k is the same shape in every variant).
    corner (cross-product generalisation, paper 3.4): every object is a red sphere; those in the top-right
    square holding the share `corner` of positions (corner_side) take every size, the others only LARGE_SIZES.
    """
    _check("heldout", heldout, SHAPES_HELDOUT)
    if corner is not None and not 0 <= corner <= 1:
        raise ValueError(f"corner must be a share of the positions in [0, 1], got {corner!r}")
    _check("scene", scene, SHAPES_SCENES)
    _check("image_size", image_size, SHAPES_IMAGE_SIZES)
    names = tuple(HELDOUT_COLORS if heldout == "colors" else COLORS)
    _check("clutter_size", clutter_size, CLUTTER_SIZES)
    path = os.path.join(cache_dir, f"shapes_n{n}_s{seed}_{image_size}_{scene}_c{clutter}_{heldout or 'none'}"
                        f"{'' if corner is None else f'_corner{corner:g}'}"
                        f"{'' if clutter_size == 'small' else f'_clutter{clutter_size}'}"
                        f"{'' if clutter_gap == CLUTTER_GAP else f'_gap{clutter_gap:g}'}.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            d = dict(f)
    else:
        rng = np.random.default_rng(seed)
        d = {"shape": rng.integers(0, len(SHAPES), n), "color": rng.integers(0, len(names), n),
             "size": rng.uniform(*(HELDOUT_SIZES if heldout == "sizes" else SIZE_RANGE), n),
             "position": rng.uniform(*POSITION_RANGE, (n, 2))}
        if heldout == "shape":
            d["shape"][:] = len(SHAPES)
        if corner is not None:
            d["shape"][:], d["color"][:] = SHAPES.index("sphere"), names.index("red")
            inside = (d["position"] >= 1 - corner_side(corner)).all(1)  # (N,) in the corner square
            d["size"] = np.where(inside, d["size"], rng.uniform(*LARGE_SIZES, n))
        rgb = np.array([(HELDOUT_COLORS | COLORS)[k] for k in names])[d["color"]]  # (N, 3)
        d["images"] = render_shapes({**d, "color": rgb}, image_size, "ground" if heldout == "light" else scene,
                                    clutter, "unseen" if heldout == "light" else None, seed=int(rng.integers(2**31)),
                                    clutter_size=clutter_size, clutter_gap=clutter_gap)
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path[:-4]}.tmp{os.getpid()}.npz"  # atomic: readers never see half a file
        np.savez(tmp, **d)
        os.replace(tmp, path)
    labels = {"shape": torch.from_numpy(d["shape"]).long(), "color": torch.from_numpy(d["color"]).long(),
              "size": torch.from_numpy(d["size"]).float()[:, None], "position": torch.from_numpy(d["position"]).float()}
    concepts = {"shape": SHAPES + (HELDOUT_SHAPE,) if heldout == "shape" else SHAPES, "color": names,
                "size": ("size",), "position": ("x", "y")}
    return Dataset("shapes", to_float(d["images"]).contiguous(), labels, concepts, (0.0, 1.0),
                   {"size": SIZE_RANGE, "position": POSITION_RANGE})


# ----------------------------------------------------------------------------
# celeba: the standard local layout of CelebA (aligned and cropped faces)
#   DIR/img_align_celeba/000001.jpg ...   178x218 JPEGs
#   DIR/list_attr_celeba.txt              line 1: count; line 2: the 40 names; then "000001.jpg -1 1 ..."
#   DIR/list_eval_partition.txt           optional: "000001.jpg 0" (0 train, 1 valid, 2 test)
# Decoding 200k JPEGs per run would dominate training: the first run decodes them once, in parallel, into a
# raw uint8 file in cache_dir, which later runs (and every torchrun rank) memory-map, sharing one copy.

CELEBA_SIZES = (64, 128)
CELEBA_SPLITS = ("train", "valid", "test", "all")


def read_celeba_attributes(data_dir):
    """(file names, attribute names, labels (N, 40) bool) from list_attr_celeba.txt."""
    path = os.path.join(data_dir, "list_attr_celeba.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{data_dir} is not a CelebA folder: {path} is missing "
                                f"(expected img_align_celeba/ and list_attr_celeba.txt)")
    with open(path) as f:
        lines = f.read().split("\n")
    names, rows = lines[1].split(), [line.split() for line in lines[2:] if line.strip()]
    for parts in rows:
        if len(parts) != len(names) + 1:
            raise ValueError(f"{path}: line {parts[0]!r} has {len(parts) - 1} values, expected {len(names)}")
    attrs = np.array([[v == "1" for v in parts[1:]] for parts in rows], dtype=bool).reshape(-1, len(names))
    return [parts[0] for parts in rows], names, attrs


def load_celeba_image(path, image_size):
    """One face: center crop to a square, resize (antialiased) -> (3, S, S) uint8."""
    import imageio.v3 as iio  # only CelebA needs it: toy2d and shapes run without
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CelebA image {path} is missing (listed in list_attr_celeba.txt)")
    try:
        img = iio.imread(path, plugin="pillow")
    except Exception as e:  # truncated or not an image
        first_line = str(e).strip().split("\n")[0]
        raise ValueError(f"cannot read CelebA image {path}: {type(e).__name__}: {first_line}") from None
    if img.ndim == 2:  # a greyscale JPEG
        img = np.repeat(img[:, :, None], 3, axis=2)
    h, w = img.shape[:2]
    side = min(h, w)  # 178 for CelebA: the crop keeps the face and drops forehead and chin margins
    top, left = (h - side) // 2, (w - side) // 2
    crop = torch.from_numpy(np.ascontiguousarray(img[top:top + side, left:left + side, :3]))
    crop = crop.permute(2, 0, 1)[None].float()  # (1, 3, side, side)
    out = torch.nn.functional.interpolate(crop, size=(image_size, image_size), mode="bilinear", antialias=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)  # (3, S, S)


def _load_celeba_chunk(args):
    paths, image_size = args
    torch.set_num_threads(1)
    return torch.stack([load_celeba_image(p, image_size) for p in paths]).numpy()


def make_celeba(data_dir="", image_size=64, split="train", cache_dir="out-data"):
    """CelebA faces, x (N, 3, S, S) uint8 memory-mapped from the cache, and their 40 binary attributes, each
    a family ("not_<Name>", "<Name>"). split: the official partition ("train", "valid", "test"; every
    image when list_eval_partition.txt is absent) or "all"."""
    if not data_dir:
        raise ValueError("the celeba dataset needs --data_dir: a folder with img_align_celeba/ and "
                         "list_attr_celeba.txt")
    _check("image_size", image_size, CELEBA_SIZES)
    _check("split", split, CELEBA_SPLITS)
    files, names, attrs = read_celeba_attributes(data_dir)
    part_path = os.path.join(data_dir, "list_eval_partition.txt")
    if split != "all" and os.path.isfile(part_path):
        with open(part_path) as f:
            part = dict(line.split() for line in f if line.strip())
        keep = np.array([part.get(name) == str(CELEBA_SPLITS.index(split)) for name in files])
        files, attrs = [n for n, k in zip(files, keep) if k], attrs[keep]
    if not files:
        raise ValueError(f"{data_dir} lists no image for split {split!r}")
    n, per_image = len(files), 3 * image_size * image_size
    tag = zlib.crc32(os.path.abspath(data_dir).encode())  # one cache per source folder
    path = os.path.join(cache_dir, f"celeba_{tag:08x}_{split}_{image_size}_n{n}.u8")
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"  # atomic: a killed run leaves no half-written cache
        out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n, per_image))
        img_dir, chunk = os.path.join(data_dir, "img_align_celeba"), 256
        jobs = [([os.path.join(img_dir, f) for f in files[i:i + chunk]], image_size) for i in range(0, n, chunk)]
        workers = min(os.cpu_count() or 1, len(jobs))
        print(f"celeba: decoding {n} images to {image_size}x{image_size} once, into {path}", flush=True)
        t0, done = time.time(), 0
        with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
            results = pool.imap(_load_celeba_chunk, jobs) if workers > 1 else map(_load_celeba_chunk, jobs)
            for i, imgs in enumerate(results):  # (chunk, 3, S, S) each, in order
                out[i * chunk:i * chunk + len(imgs)] = imgs.reshape(len(imgs), -1)
                done += len(imgs)
                if i % 40 == 39 or done == n:
                    print(f"celeba: {done}/{n} images, {time.time() - t0:.0f} s", flush=True)
        out.flush()
        os.replace(tmp, path)
    x = torch.from_file(path, shared=False, size=n * per_image, dtype=torch.uint8).view(n, 3, image_size, image_size)
    labels = {name: torch.from_numpy(attrs[:, j]).long() for j, name in enumerate(names)}  # (N,) each
    return Dataset("celeba", x, labels, {name: (f"not_{name}", name) for name in names}, (0.0, 1.0))


DATASETS = {"toy2d": make_toy2d, "shapes": make_shapes, "celeba": make_celeba}


def load_dataset(name, **kwargs):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[name](**kwargs)
