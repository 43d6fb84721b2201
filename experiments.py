"""The paper's experiments, one command each: python experiments.py NAME [options].

    python experiments.py continual --ckpt_dir out-continual   # 3.3: shape, color and place never seen together
    python experiments.py crossproduct --ckpt_dir out-cross    # 3.4: unseen (size, position) pairs, EBMs vs holistic
    python experiments.py regressor       # Table 1's supervised baseline -> checkpoints/supervised/regressor.pt
    python experiments.py ood [--models A.pt B.pt]   # Table 1: position error on renders of unseen factors
    python experiments.py views [--models A.pt]      # Figure 9a: error against the number of views combined
    python experiments.py objects [--models A.pt] [--and B.pt]   # Figure 10: two objects, two energy minima
    python experiments.py partition [--ckpt_dir out-toy2d]   # A.6: partition functions and disjunctions
    python experiments.py samplers [--ckpt_dir out-toy2d]    # ULA, MALA and HMC at equal cost

What they measure lives in compose.py, infer.py and bench.py. Figures go to assets/; results: EXPERIMENTS.md.
"""
import argparse
import os
import re
import statistics
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn

from bench import bench_shapes, exact_toy2d_concepts, exact_toy2d_settings
from compose import (TOY2D_SUITE, Concept, balance, image_grid, load_concepts, log_partition, parse, pyplot,
                     sample, sampling_settings, toy2d_quality)
from data import (COLORS, LARGE_SIZES, POSITION_RANGE, SHAPES, SIZE_RANGE, corner_side, load_dataset, make_toy2d,
                  render_shapes, to_float)
from infer import (POSITION_TOL, blobs, candidate_values, energies_over, energy_map, infer, load_judge, predict,
                   refine, save_energy_map, score, shows_objects, train_judge)
from model import load_checkpoint, save_checkpoint
from train import Config, dataset_for

# continual learning (paper 3.3): position learned on red cubes, then shape on red objects through it,
# then color on cubes through both; only the first expression was seen whole in training (bench.py's table)
CONTINUAL_SUITE = ["cube & red & position=(0.5,0.5)", "sphere & blue & position=(-0.5,0.5)",
                   "cylinder & green & position=(0.5,-0.5)", "sphere & yellow & position=(-0.5,-0.5)"]


def save_figure(fig, path, dpi=100):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------
# cross-product generalisation (paper 3.4): a position EBM trained on large red spheres
# (--corner 0) and a size EBM per fraction f (--corner f: every size only in a top-right
# corner holding f of the positions), composed, against one holistic generator per f
CROSS_TEST_CORNER = 0.1  # the test places lie outside this corner: unseen with sizes < 0.6 for every f < 1


class Generator(nn.Sequential):
    """G(c) -> image, the holistic baseline (not an EBM): every concept in one network, trained by MSE to the
    data. The paper's architecture, with 0.13M parameters against the shapes32 EBM's 0.15M."""

    def __init__(self, image_size=32, cond_dim=3, channels=(128, 64, 16)):  # c: every concept number, (x, y, size)
        ch, s = list(channels), image_size >> len(channels)  # a 2x-upsampling block per entry, from an s x s map
        super().__init__(OrderedDict(
            dense=nn.Linear(cond_dim, ch[0] * s * s), silu=nn.SiLU(), map=nn.Unflatten(1, (ch[0], s, s)),
            blocks=nn.Sequential(*[nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(a, b, 3, padding=1),
                                                 nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU())
                                   for a, b in zip(ch, ch[1:] + ch[-1:])]),
            rgb=nn.Conv2d(ch[-1], 3, 3, padding=1), sigmoid=nn.Sigmoid()))  # (B, 3, image_size, image_size) in [0, 1]
        self.args = {"image_size": image_size, "cond_dim": cond_dim, "channels": tuple(channels)}  # for checkpoints


def load_holistic(path):
    """A trained Generator (eval mode, frozen) and its checkpoint (no concept model: not model.py's)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    args = dict(ckpt["model_args"])
    if args.pop("kind") != "generator":
        raise ValueError(f"{path} is not a holistic generator's checkpoint")
    gen = Generator(**args)
    gen.load_state_dict(ckpt["model"])
    return gen.eval().requires_grad_(False), ckpt


def train_holistic(ds, path, iters=600, batch=64, lr=2e-3, seed=0):
    """The holistic baseline: (x, y, size) -> image, by MSE on the data ds; saved to path."""
    torch.manual_seed(seed)
    gen = Generator(image_size=ds.x.shape[-1])
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters, eta_min=lr / 20)
    c = torch.cat([ds.labels["position"], ds.labels["size"]], 1)  # (N, 3)
    t0 = time.time()
    for it in range(1, iters + 1):
        idx = torch.randint(len(ds), (batch,))
        loss = nn.functional.mse_loss(gen(c[idx]), ds.batch(idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if it % 250 == 0:
            print(f"[holistic] iter {it}/{iters} | mse {loss.item():.5f} | {time.time() - t0:.0f} s", flush=True)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_checkpoint({"model": gen.state_dict(), "model_args": {"kind": "generator", **gen.args},
                     "family": "holistic", "iters": iters}, path)
    return gen


def crossproduct_test(n=128, seed=701):
    """n unseen combinations: positions (n, 2) outside the CROSS_TEST_CORNER square, sizes (n, 1) below LARGE_SIZES."""
    g = torch.Generator().manual_seed(seed)
    pos = 2 * torch.rand(4 * n, 2, generator=g) - 1  # (4n, 2), then keep n outside the corner
    pos = pos[(pos < 1 - corner_side(CROSS_TEST_CORNER)).any(1)][:n]
    size = SIZE_RANGE[0] + (LARGE_SIZES[0] - SIZE_RANGE[0]) * torch.rand(n, 1, generator=g)  # (n, 1)
    return pos, size


def crossproduct_study(out_dir, n=128, figure="assets/crossproduct.png"):
    """Size and position error (the judge's) and the share showing one object, at unseen combinations: out_dir/
    position.pt with each f<fraction>[-through]/size.pt (-through: learned through position); holistic/f<frac>.pt."""
    judge, _ = load_judge()
    pos, size = crossproduct_test(n)
    position, _ = load_checkpoint(os.path.join(out_dir, "position.pt"))
    spheres = {"shape": [SHAPES.index("sphere")] * n, "color": [COLORS["red"]] * n, "position": pos.numpy()}
    truth = to_float(render_shapes(dict(spheres, size=size[:, 0].numpy())))  # (n, 3, 32, 32): a perfect generator
    large = to_float(render_shapes(dict(spheres, size=np.full(n, 0.65, np.float32))))  # ignoring the asked size
    rows = [("renders of the truth", None, truth), ("large spheres, asked place", None, large)]  # (name, f, x)
    folders = sorted((float(d[1:].removesuffix("-through")), d) for d in os.listdir(out_dir)
                     if re.fullmatch(r"f[0-9.]+(-through)?", d))
    if not folders:
        raise FileNotFoundError(f"{out_dir} holds no fraction folder f<fraction>/ (see README: cross-product)")
    for f, d in folders:
        size_net, ckpt = load_checkpoint(os.path.join(out_dir, d, "size.pt"))
        t0 = time.time()
        expr = (Concept(position, "position", pos.tolist(), "position")
                & Concept(size_net, "size", size.tolist(), "size"))  # one combination per sample
        rows.append((f"EBMs, {d}", f, sample(expr, n, sampling_settings(ckpt["config"]), seed=0)))
        if not d.endswith("-through"):  # (a -through folder has the data of f<fraction>/, whose baseline is in)
            path = os.path.join(out_dir, "holistic", f"{d}.pt")
            if not os.path.exists(path):  # trained on the size model's own training data
                run = Config(**{k: v for k, v in ckpt["config"].items() if k in Config.__dataclass_fields__})
                train_holistic(dataset_for(run), path)
            gen, _ = load_holistic(path)
            rows.append((f"holistic, {d}", f, gen(torch.cat([pos, size], 1))))
        print(f"{d} done in {time.time() - t0:.0f} s", flush=True)
    print(f"{'generator':<24} {'size error':>10} {'position error':>14} {'one object':>10}   ({n} unseen combinations)")
    results = []  # (name, f, size error, position error); one object: the share the object rule passes (infer.py)
    for name, f, x in rows:
        p, one = predict(judge, x), shows_objects(x, blobs(x), 1).float().mean().item()
        results.append((name, f, (p["size"] - size[:, 0]).abs().mean().item(), position_error(p["position"], pos)))
        print(f"{name:<24} {results[-1][2]:>10.3f} {results[-1][3]:>14.3f} {one:>10.3f}")
    pictures = [("truth", None, truth)] + rows[2:]
    fig = pyplot().figure(figsize=(11, 0.75 * len(pictures) + 0.5))
    grid = fig.add_gridspec(len(pictures), 3, width_ratios=(2.2, 1, 1))
    for i, (name, _, x) in enumerate(pictures):  # left: 8 generations per row
        ax = fig.add_subplot(grid[i, 0])
        ax.imshow(image_grid(x[:8], nrow=8))
        ax.set_axis_off(), ax.set_title(name, fontsize=8, loc="left")
    for j, what in enumerate(("size error", "position error")):  # right: each error against the fraction
        ax = fig.add_subplot(grid[:, 1 + j])
        for label, belongs in (("composed EBMs", lambda name: name.startswith("EBMs") and "-through" not in name),
                               ("size learned through position", lambda name: name.endswith("-through")),
                               ("holistic (MSE)", lambda name: name.startswith("holistic"))):
            points = sorted((r[1], r[2 + j]) for r in results[2:] if belongs(r[0]))
            if points:
                ax.plot(*zip(*points), "o-", label=label)
        ax.axhline(results[0][2 + j], color="grey", ls="--", label="renders of the truth")
        ax.axhline(results[1][2 + j], color="grey", ls=":", label="large spheres at the asked places")
        ax.set(xscale="log", xlabel="share of positions with every size")
        ax.set_title(f"{what} at unseen combinations", fontsize=9), ax.legend(fontsize=7)
    save_figure(fig, figure, dpi=110)
    return results


# ----------------------------------------------------------------------------
# the inference experiments (paper Table 1, Figures 9a and 10)
REGRESSOR_PATH = "checkpoints/supervised/regressor.pt"  # Table 1: the judge's net by MSE on position, on the EBM's data
OOD_SETS = {"Color": "colors", "Light": "light", "Size": "sizes", "Type": "shape"}  # column -> data.make_shapes heldout
TWO_OBJECTS_APART = 1.0  # objects of size 0.3-0.4 reach 0.4-0.5 from their centres: 1.0 apart, they do not touch
AND_WEIGHT = 0.04  # objects --and: the added model's weight (chosen on a validation set, EXPERIMENTS.md)


def position_error(found, truth):  # positions (N, 2): the mean absolute error over both coordinates
    return (found - truth).abs().mean().item()


def ood_table(models, regressor_path=REGRESSOR_PATH, n=256, seed=301):
    """Table 1: position error of the EBMs (argmin over positions) and the regressor on renders of unseen factors."""
    regressor, _ = load_judge(regressor_path)
    ebms = [load_checkpoint(p) for p in models]
    names = [f"EBM, {ck['config']['steps']} steps" for _, ck in ebms] + ["regressor (MSE)"]
    rows = {}
    for column, heldout in [("Train", None)] + list(OOD_SETS.items()):
        ds = load_dataset("shapes", n=n, seed=seed, heldout=heldout)
        found = [infer(net, ck, ds.x) for net, ck in ebms] + [predict(regressor, ds.x)["position"]]
        rows[column] = [position_error(p, ds.labels["position"]) for p in found]
        print(f"  {column}: " + "  ".join(f"{e:.3f}" for e in rows[column]), flush=True)
    avg = [float(np.mean([rows[c][i] for c in OOD_SETS])) for i in range(len(names))]
    print(f"\nmean absolute position error ({n} renders per set; positions in [-1, 1]; Train: like the training data)")
    print(f"| model | {' | '.join(['Train', *OOD_SETS])} | OOD average |\n" + "|---" * (len(OOD_SETS) + 3) + "|")
    for i, name in enumerate(names):
        print(f"| {name} | " + " | ".join(f"{rows[c][i]:.3f}" for c in rows) + f" | {avg[i]:.3f} |")
    print(f"ebm_avg {avg[0]:.3f} regressor_avg {avg[-1]:.3f}")  # the last line: the first EBM's OOD average
    return rows, avg


def random_objects(rng, n, sizes=SIZE_RANGE, position=None):
    """Labels of n objects: random shape, size and color, and random positions unless given (n, 2)."""
    labels = {"shape": rng.integers(0, len(SHAPES), n), "size": rng.uniform(*sizes, n),
              "color": np.array(list(COLORS.values()))[rng.integers(0, len(COLORS), n)]}
    labels["position"] = rng.uniform(*POSITION_RANGE, (n, 2)) if position is None else position
    return labels


def render_views(n_scenes, n_views, seed, scene="ground", clutter=1):
    """n_scenes objects, each seen n_views times under other lights and clutter: (S, K, 3, H, W), (S, 2)."""
    labels = random_objects(np.random.default_rng(seed), n_scenes)
    views = [render_shapes(labels, 32, scene, clutter, seed=seed + 1 + k) for k in range(n_views)]  # K x (S, H, W, 3)
    return to_float(np.stack(views, 1)), torch.from_numpy(labels["position"]).float()


def views_table(model, n_scenes=64, max_views=8, seed=401, figure="assets/infer_views.png"):
    """Position error against the number of views combined (eq. 12), Figure 9a's analog. For k views, each scene's
    views form max_views // k disjoint groups of k, each inferred alone, errors averaged: every view counts."""
    net, ckpt = load_checkpoint(model)
    x, truth = render_views(n_scenes, max_views, seed)
    values = candidate_values(ckpt, 21)
    e = energies_over(net, x.flatten(0, 1), values).view(n_scenes, max_views, -1)  # (S, K, V): once for every k
    errors = []  # k = 1, 2, ...: each group's energies summed (eq. 12), infer's grid, then refine
    for k in range(1, max_views + 1):
        groups = [slice(g * k, g * k + k) for g in range(max_views // k)]
        found = [refine(net, ckpt, x[:, g], values[e[:, g].sum(1).argmin(1)]) for g in groups]  # each (S, 2)
        errors.append(float(np.mean([position_error(f, truth) for f in found])))
        print(f"{k} view(s): mean absolute position error {errors[-1]:.3f} ({len(groups)} group(s))", flush=True)
    fig, ax = pyplot().subplots(1, 2, figsize=(7, 3), gridspec_kw={"width_ratios": [1.3, 1]})
    ax[0].imshow(x[0].reshape(2, max_views // 2, 3, 32, 32).permute(0, 3, 1, 4, 2).reshape(64, -1, 3).numpy())
    ax[0].set_title("the views of one object", fontsize=8), ax[0].axis("off")
    ax[1].plot(range(1, max_views + 1), errors, "o-"), ax[1].set(xlabel="views", ylabel="position error", ylim=0)
    save_figure(fig, figure)
    print(f"views_1 {errors[0]:.3f} views_{max_views} {errors[-1]:.3f}")
    return errors


def two_object_images(n, seed, min_apart=TWO_OBJECTS_APART):
    """n images of two objects at least min_apart apart on the grey background: (N, 3, H, W), (N, 2, 2)."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(*POSITION_RANGE, (8 * n, 2, 2))
    pos = pos[np.linalg.norm(pos[:, 0] - pos[:, 1], axis=1) >= min_apart][:n]  # (n, 2, 2)
    first, second = (to_float(render_shapes(random_objects(rng, n, (0.3, 0.4), pos[:, k]), 32, seed=seed))
                     for k in range(2))  # (n, 3, H, W) each
    drawn = (second - 0.5).abs().amax(1, keepdim=True) > 0.02  # (n, 1, H, W): the second object's pixels
    return torch.where(drawn, second, first).contiguous(), torch.from_numpy(pos).float()


def objects_table(model, also=None, n=128, seed=501, figure="assets/infer_two_objects.png", weight=AND_WEIGHT):
    """Figure 10's analog: do the two lowest minima of a position model's energy find both of two objects? With
    `also`, a second position model ANDed in at `weight`: E(x | c) = E_model + weight * E_also (paper eq. 4)."""
    nets = [load_checkpoint(m)[0] for m in [model, also] if m]
    energy = lambda v, c: nets[0](v, c) + sum(weight * net(v, c) for net in nets[1:])  # (B,): the sum of the AND
    x, pos = two_object_images(n, seed)
    found = []
    for i, (img, p) in enumerate(zip(x, pos.numpy())):
        e, _, minima = energy_map(energy, img)
        m = np.array(minima[:2])  # (2, 2): the two lowest minima, if there are two
        found.append(len(m) == 2 and any(np.hypot(*(m - q).T).max() <= POSITION_TOL for q in (p, p[::-1])))
        if i == 0:
            save_energy_map(img, e, minima, figure, f"two objects; lowest minima {np.round(m, 2).tolist()}")
    rate = float(np.mean(found))
    print(f"wrote {figure}\ntwo-object recovery {rate:.3f} ({sum(found)} of {n} images: both objects within "
          f"{POSITION_TOL} of the two lowest minima)")
    return rate


# ----------------------------------------------------------------------------
# samplers and partition functions (paper appendix A.6) on toy2d, with disjunctions whose terms have
# different partition functions (and one whose terms do not)
TOY2D_DISJUNCTIONS = ["top | right", "inner | (bottom & left)", "outer | (top & right & inner)",
                      "(top & left) | bottom", "(top & ~right) | (bottom & right & outer)"]


def toy2d_sets(ckpt_dir):
    """(name, concepts, settings): the exact energies, and the models trained in ckpt_dir."""
    sets = [("exact", exact_toy2d_concepts(), exact_toy2d_settings())]
    if not os.path.isdir(ckpt_dir):
        print(f"({ckpt_dir} does not exist: run python train.py --dataset toy2d for the trained rows)")
        return sets
    trained = load_concepts(ckpt_dir)
    return sets + [("trained", trained, sampling_settings(next(iter(trained.values())).config, steps=300))]


def seed_quality(expr, settings, seeds):
    """2000 samples per seed: (median mode TV, worst precision) over the seeds."""
    qs = [toy2d_quality(sample(expr, 2000, settings, seed=seed), expr) for seed in seeds]
    return statistics.median(q["mode_tv"] for q in qs), min(q["precision"] for q in qs)


def sampler_study(ckpt_dir="out-toy2d", shapes_dir="checkpoints/shapes", seeds=(0, 1, 2)):
    """ULA, MALA and HMC (5 leapfrog steps) at equal gradient evaluations (toy2d: 300, annealed from T = 20
    with resampling; shapes: 200, cold): median over seeds of each mode TV, the worst precision, the time."""
    methods = [("ula", {}), ("mala", {}), ("hmc", {"leapfrog": 5})]
    print(f"{'energies':<8} {'sampler':<7} {'mode TV by expression (median of 3 seeds)':<58} "
          f"{'median':>6} {'min prec':>8} {'time':>7}")
    for name, concepts, settings in toy2d_sets(ckpt_dir):
        exprs = [parse(t, concepts) for t in TOY2D_SUITE]
        for method, kw in methods:
            s, t0 = dict(settings, method=method, **kw), time.time()
            tvs, precs = zip(*(seed_quality(expr, s, seeds) for expr in exprs))
            print(f"{name:<8} {method:<7} {' '.join(f'{v:.3f}' for v in tvs):<58} {statistics.median(tvs):>6.3f} "
                  f"{min(precs):>8.3f} {time.time() - t0:>6.0f}s", flush=True)
    print(f"(expressions: {', '.join(TOY2D_SUITE)})")
    concepts, judge = load_concepts(shapes_dir), load_judge()[0]
    for text in ("green", "cube & red & size=0.6"):
        expr = parse(text, concepts)
        for method, kw in methods:
            t0 = time.time()
            x = sample(expr, 128, sampling_settings(concepts["red"].config, method=method, **kw))
            print(f"shapes  {method:<7} {text:<30} judge accuracy {score(expr, x, judge)[0]:.3f} "
                  f"{time.time() - t0:>6.0f}s", flush=True)


def tempered_concepts(trained, figure):
    """A histogram of the energies each trained toy2d model gives its own data (to `figure`), and the models
    tempered to align their spreads: each energy divided by T_m = its data spread / the median spread."""
    ds, spread = make_toy2d(20_000, seed=123), {}
    fig, ax = pyplot().subplots(figsize=(7, 3.5))
    for name, c in trained.items():
        with torch.no_grad():
            e = c(ds.x[ds.labels[c.family] == c.value])  # (n,) on the concept's own data
        spread[name] = e.std().item()
        ax.hist(e.numpy(), bins=60, histtype="step", label=f"{name} (mean {e.mean():.2f}, std {e.std():.2f})")
    ax.set_xlabel("E(x | c) on the concept's own data"), ax.legend(fontsize=7)
    save_figure(fig, figure)
    ref = statistics.median(spread.values())
    return {n: Concept(lambda x, v, m=c.model, t=spread[n] / ref: m(x, v) / t, c.family, c.value, n,
                       c.data_energy * ref / spread[n]) for n, c in trained.items()}


def partition_study(ckpt_dir="out-toy2d", figure="assets/toy2d_energy_hist.png", seeds=(0, 1, 2)):
    """Appendix A.6 on toy2d: the median mode TV of disjunctions of the exact, trained and tempered energies,
    before and after weighting every disjunct by its partition function (quadrature; AIS for comparison)."""
    sets = toy2d_sets(ckpt_dir)
    if len(sets) == 2:  # trained models: also their tempered versions
        sets.append(("tempered", tempered_concepts(sets[1][1], figure), sets[1][2]))
    print(f"{'energies':<9} {'expression':<42} {'ULA':>6} {'MALA':>6} {'ULA, balanced':>13} "
          f"{'MALA, balanced':>14} {'(log Z by AIS)':>14}   log Z of the terms")
    for name, concepts, settings in sets:
        for text in TOY2D_DISJUNCTIONS:
            expr = parse(text, concepts)
            plain = [seed_quality(expr, dict(settings, method=m), seeds)[0] for m in ("ula", "mala")]
            balance(expr, settings)
            log_z = list(expr.log_z)
            bal = [seed_quality(expr, dict(settings, method=m), seeds)[0] for m in ("ula", "mala")]
            expr.log_z = [log_partition(t, settings, ais=True) for t in expr.terms]
            ais = seed_quality(expr, dict(settings, method="mala"), seeds)[0]
            print(f"{name:<9} {text:<42} {plain[0]:>6.3f} {plain[1]:>6.3f} {bal[0]:>13.3f} {bal[1]:>14.3f} "
                  f"{ais:>14.3f}   {', '.join(f'{z:.2f}' for z in log_z)}", flush=True)


# ----------------------------------------------------------------------------
# the command line

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="name", required=True, metavar="NAME")

    def command(name, what):
        return sub.add_parser(name, help=what, description=what, allow_abbrev=False)

    s = command("continual", "continual learning: compositions never seen together, judged (paper 3.3)")
    s.add_argument("--ckpt_dir", required=True, help="the continual-learning concept models")
    s.add_argument("--steps", type=int, default=None, help="Langevin steps (default: the models' own)")
    command("crossproduct", "composed EBMs against a holistic generator (paper 3.4)").add_argument(
        "--ckpt_dir", required=True, help="DIR/position.pt and DIR/f<fraction>/size.pt")
    command("regressor", "train the supervised position baseline of Table 1")
    for name, what in (("ood", "Table 1: position error out of distribution"),
                       ("views", "Figure 9a: error against the number of views"),
                       ("objects", "Figure 10: two objects, two minima")):
        command(name, what).add_argument(
            "--models", nargs="+" if name == "ood" else 1, default=["checkpoints/shapes/position.pt"], metavar="PT",
            help="position EBMs, one column each (the first gives ebm_avg)" if name == "ood" else "a position EBM")
    sub.choices["objects"].add_argument("--and", dest="also", metavar="PT", help=f"an EBM added at {AND_WEIGHT}")
    for name, what in (("partition", "log Z and disjunctions (A.6)"), ("samplers", "ULA, MALA, HMC at equal cost")):
        command(name, what).add_argument("--ckpt_dir", default="out-toy2d", help="the trained toy2d models")
    args = p.parse_args(argv)
    os.chdir(os.path.dirname(os.path.abspath(__file__)))  # default paths and assets/ are the repository's
    for path in [*getattr(args, "models", []), *filter(None, [getattr(args, "also", None)])]:
        if not os.path.exists(path):
            raise FileNotFoundError(f"position model {path} does not exist")
        if (family := load_checkpoint(path)[1]["family"]) != "position":
            raise ValueError(f"{path} is a model of {family!r}; the inference experiments need position models")
    run = {"continual": lambda: bench_shapes(args.ckpt_dir, steps=args.steps, suite=CONTINUAL_SUITE, target=0.8,
                                             figure="assets/shapes_continual.png"),
           "crossproduct": lambda: crossproduct_study(args.ckpt_dir), "ood": lambda: ood_table(args.models),
           "regressor": lambda: train_judge(REGRESSOR_PATH, heads=("position",), data=dict(n=20_000, seed=0)),
           "views": lambda: views_table(args.models[0]), "objects": lambda: objects_table(*args.models, args.also),
           "partition": lambda: partition_study(args.ckpt_dir), "samplers": lambda: sampler_study(args.ckpt_dir)}
    run[args.name]()


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
