"""Concept inference, and the supervised judge that scores generated images.

    python infer.py --train_judge                      # ~5 min on 2 CPU cores -> checkpoints/supervised/judge.pt
    python infer.py --score "sphere & blue" --samples out/x.npz
    python infer.py --score "position=(-0.5,-0.5) & position=(0.5,0.5)" --samples out/two.npz
    python infer.py --ckpt_dir checkpoints/shapes --concept position --images a.png b.png [--joint] [--map m.png]

The judge, a small supervised CNN, reads shape, color, size and position off a `shapes` image. `--score` prints,
last, `accuracy X`: the share of samples that show the objects asked for (two or more positions ask for that many,
paper Figure 5) and in which the whole expression holds, beside the same on uniform noise (a generator that learned
nothing). Concept inference (paper section 3.5): a concept family's value behind an image is argmin_c E(x | c),
several views of one scene summing their energies (eq. 12, `--joint`); experiments.py ood|views|objects measures it.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from compose import And, Concept, Family, Not, Or, parse, pyplot
from data import COLORS, POSITION_RANGE, POSITION_SCALE, SHAPES, SIZE_RANGE, load_dataset, to_float
from model import load_checkpoint, save_checkpoint

JUDGE_PATH = "checkpoints/supervised/judge.pt"  # supervised networks live apart from the concept models
HEADS = ("shape", "color", "size", "position")
SIZE_TOL, POSITION_TOL = 0.1, 0.15  # a size / position "holds" within these
JUDGE_NOISE = 0.05  # the judge trains on renders + pixel noise of std U(0, 0.05): samples are never clean renders


class Judge(nn.Module):
    """A small VGG-style CNN with four heads: shape logits, color logits, size, position."""

    def __init__(self, n_shapes=3, n_colors=8, width=16):
        super().__init__()
        w = width

        def conv(a, b):
            return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        self.body = nn.Sequential(*conv(3, w), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
                                  *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
                                  *conv(2 * w, 4 * w), *conv(4 * w, 4 * w))  # (B, 4w, H/4, W/4)
        # positions need the map, not a global pool: flatten a 4x4 summary of it
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * w, 256), nn.ReLU())
        self.widths = (n_shapes, n_colors, 1, 2)  # of the outputs of the four heads
        self.out = nn.Linear(256, sum(self.widths))

    def forward(self, x):
        # x: (B, 3, H, W) in [0, 1] -> dict of (B, 3), (B, 8), (B,), (B, 2)
        shape, color, size, position = self.out(self.head(self.body(2 * x - 1))).split(self.widths, 1)
        return {"shape": shape, "color": color, "size": size[:, 0], "position": position}


def load_judge(path=JUDGE_PATH, device="cpu"):
    """The trained judge and its checkpoint (weights_only=True)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"judge {path} does not exist; train it with: python infer.py --train_judge")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    judge = Judge(len(ckpt["shapes"]), len(ckpt["colors"]), ckpt["width"]).to(device)
    judge.load_state_dict(ckpt["model"])
    return judge.eval().requires_grad_(False), ckpt


@torch.no_grad()
def predict(judge, x, batch=512):
    """The judge's reading of images x (N, 3, H, W): shape and color indices, size, position."""
    outs = [judge(xb) for xb in x.split(batch)]
    cat = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return dict(cat, shape=cat["shape"].argmax(1), color=cat["color"].argmax(1))


def judge_accuracy(judge, ds):
    """Shape and color accuracy, size within 0.1, mean position error (Euclidean) on a dataset."""
    p = predict(judge, ds.x)
    return {"shape": (p["shape"] == ds.labels["shape"]).float().mean().item(),
            "color": (p["color"] == ds.labels["color"]).float().mean().item(),
            "size": ((p["size"] - ds.labels["size"][:, 0]).abs() < SIZE_TOL).float().mean().item(),
            "position_error": (p["position"] - ds.labels["position"]).norm(dim=1).mean().item()}


def train_judge(path=JUDGE_PATH, heads=HEADS, data=dict(n=40_000, seed=101), epochs=12, batch=128, lr=2e-3, seed=1):
    """Train the judge's network on `heads` (a subset of HEADS; the regressor baseline takes only position)
    of renders `data`; report it on 4,000 held-out renders of another seed."""
    torch.manual_seed(seed)
    ds, test = load_dataset("shapes", **data), load_dataset("shapes", n=4000, seed=seed + 200)
    judge = Judge()
    weight = {"shape": 1, "color": 1, "size": 20, "position": 20}  # the MSEs are small numbers
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    n, t0 = len(ds), time.time()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * (n // batch))
    for epoch in range(epochs):
        judge.train()
        for idx in torch.randperm(n).split(batch)[: n // batch]:
            x = ds.x[idx]  # (B, 3, 32, 32) clean renders, plus noise of a std drawn per image:
            out = judge((x + JUDGE_NOISE * torch.rand(len(x), 1, 1, 1) * torch.randn_like(x)).clamp(0, 1))
            loss = sum(weight[h] * (F.cross_entropy(out[h], ds.labels[h][idx]) if h in ("shape", "color") else
                                    F.mse_loss(out[h], ds.labels[h][idx].reshape(out[h].shape))) for h in heads)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        judge.eval()
        acc = {k: v for k, v in judge_accuracy(judge, test).items() if k.startswith(heads)}
        print(f"epoch {epoch + 1}/{epochs} | loss {loss.item():.4f} | held-out: "
              + " ".join(f"{k} {v:.3f}" for k, v in acc.items()) + f" | {time.time() - t0:.0f} s", flush=True)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_checkpoint({"model": judge.state_dict(), "width": 16, "shapes": list(SHAPES), "colors": list(COLORS),
                     "image_size": 32, "heads": list(heads), "data": data, "heldout": acc}, path)
    print(f"wrote {path}")
    return judge, acc


# ----------------------------------------------------------------------------
# concept inference by energy: c* = argmin_c sum_i E(x_i | c)   (paper eq. 12)

def candidate_values(ckpt, n_grid):
    """The values to try: every index of a discrete family (V,), or n_grid per number over its range (V, d)."""
    if ckpt["encoding"] == "index":
        return torch.arange(len(ckpt["values"]))
    axis = torch.linspace(*ckpt["range"], n_grid)
    axes = torch.meshgrid(*[axis] * len(ckpt["values"]), indexing="xy")
    return torch.stack([a.reshape(-1) for a in axes], 1)  # (n_grid^d, d); position: x fastest


@torch.no_grad()
def energies_over(net, x, values):
    """E(x_i | v) for every image and every value: (N, V)."""
    return torch.stack([net(x, v.expand(len(x), *v.shape)) for v in values], 1)


def infer(net, ckpt, x, joint=False, n_grid=21, refine_steps=60):
    """Inferred values of the model's concept family for images x (N, 3, H, W): one per image, (N,) or
    (N, d); with joint=True one for all, (1,) or (1, d); for x (S, K, 3, H, W) one per scene of K views.
    Discrete: the argmin over every value; continuous: the argmin over a grid, then `refine`."""
    views = x if x.dim() == 5 else x[None] if joint else x[:, None]  # (S, K, 3, H, W)
    values = candidate_values(ckpt, n_grid)
    e = energies_over(net, views.flatten(0, 1), values).view(*views.shape[:2], -1).sum(1)  # (S, V): eq. 12
    best = values[e.argmin(1)]  # (S,) or (S, d)
    return best if ckpt["encoding"] == "index" else refine(net, ckpt, views, best, refine_steps)


def refine(net, ckpt, views, start, steps=60):
    """Adam on continuous values (S, d) from `start`, kept in range, on the energy summed over views (S, K, 3, H, W)."""
    low, high = ckpt["range"]
    flat, K = views.flatten(0, 1), views.shape[1]
    c = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([c], lr=0.02 * (high - low))
    for _ in range(steps):
        opt.zero_grad()
        net(flat, c.repeat_interleave(K, 0)).sum().backward()  # each scene's value for each of its views
        opt.step()
        with torch.no_grad():
            c.clamp_(low, high)
    return c.detach()


def energy_map(net, x, n_grid=41):
    """A position model's energy over a grid of positions for one image x (3, H, W): (n_grid, n_grid), y up,
    the grid axis, and the local minima (lowest in their 3x3 neighbourhood: where it sees objects), lowest first."""
    values = candidate_values({"encoding": "numbers", "range": POSITION_RANGE, "values": ("x", "y")}, n_grid)
    e = energies_over(net, x[None], values)[0].reshape(n_grid, n_grid).flip(0)  # (n, n): rows y high -> low
    is_min = e <= -F.max_pool2d(-e[None, None], 3, stride=1, padding=1)[0, 0]  # (n, n); the pool pads with -inf
    axis = torch.linspace(*POSITION_RANGE, n_grid)
    minima = sorted((e[r, c].item(), (axis[c].item(), axis.flip(0)[r].item())) for r, c in is_min.nonzero().tolist())
    return e, axis, [p for _, p in minima]


def save_energy_map(x, e, minima, path, title):
    """The image beside its energy map (dark: low energy), local minima marked."""
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(6, 3))
    edge = 1 / POSITION_SCALE  # the image's border in position units
    ax[0].imshow(x.permute(1, 2, 0).numpy(), extent=(-edge, edge, -edge, edge))
    ax[1].imshow(e.numpy(), cmap="gray", extent=(*POSITION_RANGE, *POSITION_RANGE))
    for a, name in zip(ax, ("image (axes: position)", title)):
        a.plot([p[0] for p in minima[:2]], [p[1] for p in minima[:2]], "r+", ms=12)
        a.set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_images(paths, size):
    """PNG/JPEG files -> (N, 3, size, size) in [0, 1]; another size is resized, with a note."""
    import imageio.v3 as iio
    out = []
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"image {path} does not exist")
        try:
            img = np.asarray(iio.imread(path))  # (H, W, 3) or (H, W, 4) uint8
        except Exception as e:
            raise ValueError(f"cannot read image {path}: {type(e).__name__}") from None
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            raise ValueError(f"image {path} has shape {tuple(img.shape)}; expected RGB (H, W, 3) or RGBA (H, W, 4)")
        img = to_float(img[:, :, :3])  # (3, H, W)
        if img.shape[1:] != (size, size):
            print(f"note: {path} is {img.shape[2]}x{img.shape[1]}; resized to {size}x{size}")
            img = F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True)[0]
        out.append(img)
    return torch.stack(out)


# ----------------------------------------------------------------------------
# scoring compositions

def judge_vocabulary(ckpt):
    """The names the judge can read, as concepts without models (for parse)."""
    names = {n: Concept(None, fam, i, n) for fam in ("shape", "color") for i, n in enumerate(ckpt[fam + "s"])}
    return dict(names, size=Family(None, "size", ("size",), *SIZE_RANGE),
                position=Family(None, "position", ("x", "y"), *POSITION_RANGE))


def blobs(x, min_pixels=4, max_share=0.3):
    """Per image, the (x, y) positions (as data.render_shapes places them, y up) of the saturated connected regions
    on the grey background (objects that touch make one), largest first. A region over max_share is noise."""
    sat = (x.max(1).values - x.min(1).values) > 0.25  # (N, H, W): colored, not grey
    h, w = sat.shape[1:]
    found = []
    for m in sat.numpy():
        todo, places = set(zip(*np.nonzero(m))), []  # saturated pixels not yet in a region
        while todo:
            region, grown = set(), {min(todo)}  # flood fill from the first pixel left in row-major order
            while grown:  # add the 4-connected neighbours still to do, until there are none
                region |= grown
                todo -= grown
                grown = {(a + da, b + db) for a, b in grown for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1))} & todo
            if min_pixels <= len(region) <= max_share * h * w:  # the largest object covers ~20%
                rows, cols = np.array(list(region)).T + 0.5  # pixel centres
                places.append((len(region), (cols.mean() / (w / 2) - 1) / POSITION_SCALE,
                               (1 - rows.mean() / (h / 2)) / POSITION_SCALE))
        found.append([p[1:] for p in sorted(places, key=lambda p: -p[0])])
    return found


def distinct_places(asked):
    """The asked positions as objects: places closer than 2 * POSITION_TOL are one object."""
    distinct = []
    for p in asked:
        if all(np.hypot(p[0] - q[0], p[1] - q[1]) > 2 * POSITION_TOL for q in distinct):
            distinct.append(p)
    return distinct


def positions_hold(places, asked):
    """Does every asked position have a blob within POSITION_TOL, with one blob per distinct place?"""
    near = all(any(np.hypot(p[0] - b[0], p[1] - b[1]) <= POSITION_TOL for b in places) for p in asked)
    return near and len(places) == len(distinct_places(asked))


def asked_positions(expr):
    """The position concepts of a conjunction: two or more ask for one object per distinct place."""
    return [t for t in expr.terms if isinstance(t, Concept) and t.family == "position"] if isinstance(expr, And) else []


def shows_objects(x, places, k):
    """(N,) bool, the object rule: does image x (N, 3, H, W) show k saturated blobs (places: blobs(x)) on a
    mostly plain grey (0.5) background? The judge alone is not enough: it calls smooth noise a cube and an
    empty grey image size 0.35. (Every training render is at least 75% grey; smooth noise at most 11%.)"""
    grey = ((x - 0.5).abs().amax(1) < 0.1).float().mean((1, 2)) >= 0.6  # (N,)
    return grey.cpu() & torch.tensor([len(p) == k for p in places], dtype=torch.bool)


def readings(judge, x, k=1, clutter=False):
    """What images x (N, 3, H, W) show: the judge's predictions and the blobs. clutter: samples of models trained
    on scenes with clutter (train.py --clutter), which show clutter as their data does; the k largest blobs are
    then the objects asked for, and the largest one's place is the position read. (The judge, trained on one
    object an image, reads 1% of clutter renders' positions within 0.15; the largest blob, 99%.)"""
    pred, places = predict(judge, x), blobs(x)
    if clutter:
        places = [p[:k] for p in places]
        pred = at_blobs(pred, places)
    return pred, places


def at_blobs(pred, places):
    """The judge's readings `pred` with the position read at each image's largest blob (places: blobs(x))."""
    first = [p[0] if p else (float("nan"),) * 2 for p in places]  # no blob: no position holds
    return dict(pred, position=torch.tensor(first, dtype=torch.float32))  # (N, 2)


def reads_as(family, pred, value):
    """(N,) bool: does the judge read `value` of `family`? value: one for all, () or (d,), or each, (N,) or (N, d)."""
    if family in ("shape", "color"):
        return pred[family] == value
    if family == "size":
        return (pred["size"] - value.reshape(-1)).abs() <= SIZE_TOL
    return (pred["position"] - value).norm(dim=1) <= POSITION_TOL


def holds(expr, pred, places):
    """(N,) bool: where an expression holds, given the judge's predictions and the blobs."""
    if isinstance(expr, Concept):
        return reads_as(expr.family, pred, torch.tensor(expr.value))
    if isinstance(expr, Not):
        return ~holds(expr.inner, pred, places)
    if isinstance(expr, Or):
        return torch.stack([holds(t, pred, places) for t in expr.terms]).any(0)
    positions = asked_positions(expr)
    ok = torch.ones(len(places), dtype=torch.bool)
    if len(positions) >= 2:  # several positions: several objects, counted and placed
        ok &= torch.tensor([positions_hold(p, [t.value for t in positions]) for p in places])
    for t in expr.terms:
        if len(positions) < 2 or t not in positions:
            ok &= holds(t, pred, places)
    return ok


def score(expr, x, judge, clutter=False):
    """Share of images x (N, 3, H, W) showing the asked objects where `expr` holds; per part (clutter: readings)."""
    k = max(1, len(distinct_places([t.value for t in asked_positions(expr)])))  # the objects asked for
    pred, places = readings(judge, x, k, clutter)
    shown = shows_objects(x, places, k)  # (N,)
    atoms = expr.terms if isinstance(expr, And) else [expr]
    parts = {repr(t): (shown & holds(t, pred, places)).float().mean().item() for t in atoms}
    return (shown & holds(expr, pred, places)).float().mean().item(), parts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--train_judge", action="store_true", help="train the judge and write --judge")
    p.add_argument("--score", metavar="EXPR", help="judge samples against an expression")
    p.add_argument("--samples", help="an .npz from compose.py (key samples: (N, 3, H, W) in [0, 1])")
    p.add_argument("--clutter", action="store_true", help="--score samples of models trained among clutter")
    p.add_argument("--judge", default=JUDGE_PATH)
    p.add_argument("--ckpt_dir", help="concept inference: folder of concept checkpoints")
    p.add_argument("--concept", help="concept inference: the family to infer (e.g. position, color)")
    p.add_argument("--images", nargs="+", help="concept inference: image files")
    p.add_argument("--joint", action="store_true", help="one value for all images (several views of one scene)")
    p.add_argument("--map", help="position: also write the energy map of the first image to this PNG")
    # moved to experiments.py; still parsed, so that the old spellings say where they went
    p.add_argument("--train_regressor", action="store_true", help="moved: python experiments.py regressor")
    p.add_argument("--table", choices=("ood", "views", "objects"),
                   help="moved: python experiments.py ood|views|objects")
    p.add_argument("--models", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    moved = "error: infer.py {} moved: run python experiments.py {}\n"  # to stderr, exit status 2 (a usage error)
    if args.table:
        p.exit(2, moved.format("--table", " ".join([args.table] + (["--models", *args.models] if args.models else []))))
    if args.train_regressor:
        p.exit(2, moved.format("--train_regressor", "regressor"))
    if args.concept or args.images:
        if not (args.ckpt_dir and args.concept and args.images):
            p.error("concept inference needs --ckpt_dir DIR --concept FAMILY --images FILE [FILE ...]")
        return infer_cli(args)
    if args.train_judge:
        train_judge(args.judge)
        return
    if not args.score or not args.samples:
        p.error("give --train_judge, or --score EXPR with --samples FILE.npz")
    judge, ckpt = load_judge(args.judge)
    expr = parse(args.score, judge_vocabulary(ckpt))
    if not os.path.exists(args.samples):
        raise FileNotFoundError(f"samples file {args.samples} does not exist")
    with np.load(args.samples) as f:
        if "samples" not in f:
            raise ValueError(f"{args.samples} has no array 'samples' (keys: {', '.join(f.files)})")
        x = torch.from_numpy(f["samples"]).float()
    size = ckpt["image_size"]
    if x.dim() != 4 or x.shape[1:] != (3, size, size):
        raise ValueError(f"samples have shape {tuple(x.shape)}; the judge reads images (N, 3, {size}, {size})")
    noise = torch.rand(max(len(x), 256), *x.shape[1:], generator=torch.Generator().manual_seed(0))
    (acc, parts), (base, base_parts) = score(expr, x, judge, args.clutter), score(expr, noise, judge, args.clutter)
    print(f"{len(x)} samples of {args.score}")
    for name in parts:
        print(f"  {name:<28} {parts[name]:.3f}   (noise baseline {base_parts[name]:.3f})")
    print(f"noise_baseline {base:.3f}\naccuracy {acc:.3f}")


def infer_cli(args):
    """python infer.py --ckpt_dir DIR --concept FAMILY --images a.png b.png [--joint] [--map m.png]"""
    path = os.path.join(args.ckpt_dir, f"{args.concept}.pt")
    if not os.path.exists(path):
        have = os.listdir(args.ckpt_dir) if os.path.isdir(args.ckpt_dir) else []
        raise FileNotFoundError(f"no model of concept {args.concept!r} in {args.ckpt_dir} "
                                f"(it has: {', '.join(sorted(f[:-3] for f in have if f[-3:] == '.pt')) or 'nothing'})")
    net, ckpt = load_checkpoint(path)
    x = read_images(args.images, ckpt["config"]["x_shape"][-1])
    found = infer(net, ckpt, x, joint=args.joint)
    for name, v in [(f"all {len(x)} images", found[0])] if args.joint else zip(args.images, found):
        value = ckpt["values"][int(v)] if ckpt["encoding"] == "index" else \
            "(" + ", ".join(f"{t:.3f}" for t in v.tolist()) + ")"
        print(f"{name}: {args.concept} = {value}")
    if args.map:
        if args.concept != "position":
            raise ValueError("--map draws an energy map over positions: use it with --concept position")
        e, _, minima = energy_map(net, x[0])
        os.makedirs(os.path.dirname(os.path.abspath(args.map)), exist_ok=True)
        save_energy_map(x[0], e, minima, args.map, f"E(x | position); minima {minima[:2]}")
        print(f"wrote {args.map}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
