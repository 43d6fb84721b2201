"""Benchmarks: what the sampler costs, how long toy2d trains, how good its compositions are.

    python bench.py                # Langevin step cost against a bare forward + input-gradient pass,
                                   # and the composition sampler on the exact toy2d energies
    python bench.py --toy2d 3      # also: train toy2d 3 times; median time and quality figures
    python bench.py --shapes checkpoints/shapes   # composition accuracy by the judge, 256 samples
                                   # per expression, next to the judge's score on noise; a figure
    python bench.py --curve out-shapes            # accuracy against training time, from the
                                   # snapshots train.py keeps for image data

Timings are medians over repeats, and every ratio is taken against a baseline
measured in the same run, on the same machine, at the same moment.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import torch

from compose import TOY2D_SUITE, Concept, parse, sample, toy2d_quality
from data import TOY2D_FAMILIES, TOY2D_STD, toy2d_modes
from model import build_model
from sampler import langevin


def median_time(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_langevin_step(batch=1024, steps=50, repeats=15):
    """Seconds per step: our Langevin step, a bare forward + input-gradient pass of the same
    network, and the naive loop (parameter gradients on, .backward()) common in tutorials."""
    net = build_model("mlp", n_values=2).requires_grad_(False)
    x0, c = torch.randn(batch, 2), torch.randint(0, 2, (batch,))
    energy = lambda x: net(x, c)  # noqa: E731

    def bare():
        x = x0.clone()
        for _ in range(steps):
            x.requires_grad_(True)
            (g,) = torch.autograd.grad(energy(x).sum(), x)
            x = x.detach()

    def ours():
        langevin(energy, x0, steps, step_size=0.01, clamp=(-3, 3), grad_clip=40.0)

    def naive():
        net.requires_grad_(True)
        x = x0.clone()
        for _ in range(steps):
            x = x.detach().requires_grad_()
            energy(x).sum().backward()
            x = (x - 0.005 * x.grad + 0.1 * torch.randn_like(x)).clamp(-3, 3)
        net.zero_grad(set_to_none=True)
        net.requires_grad_(False)

    # interleave the three so that a slow moment of the machine hits all of them
    t = {k: [] for k in ("bare", "ours", "naive")}
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("ours", ours), ("naive", naive)):
            t[name].append(median_time(fn, 1, warmup=1) / steps)
    out = {k: statistics.median(v) for k, v in t.items()}
    # ratios within each repeat, then their median: steadier than a ratio of medians
    out["ours/bare"] = statistics.median(o / b for o, b in zip(t["ours"], t["bare"]))
    out["naive/ours"] = statistics.median(n / o for n, o in zip(t["naive"], t["ours"]))
    return out


def bench_sampler_on_exact_energies(steps=300, anneal=20.0):
    """The composition sampler on the true toy2d energies (each concept: -log of a mixture of
    its eight Gaussians): what is left of the mode TV here is the sampler's own error."""
    centres, labels = toy2d_modes()

    def mixture(family):
        def energy(x, c):  # x (B, 2), c () -> (B,)
            modes = centres[labels[family] == c]  # (8, 2)
            d2 = ((x[:, None] - modes[None]) ** 2).sum(-1)  # (B, 8)
            return -torch.logsumexp(-d2 / (2 * TOY2D_STD ** 2), 1)
        return energy

    # data_energy 1.0: the mean of d^2 / (2 std^2) over a concept's own data
    concepts = {name: Concept(mixture(fam), fam, i, name, data_energy=1.0)
                for fam, names in TOY2D_FAMILIES.items() for i, name in enumerate(names)}
    settings = {"steps": steps, "step_size": 0.01, "noise_scale": 0.1, "anneal": anneal,
                "grad_clip": 40.0, "data_range": (-3.0, 3.0), "x_shape": (2,)}
    print(f"\nthe sampler on the exact toy2d energies ({steps} steps, anneal {anneal:g}, 2000 samples)")
    print(f"{'expression':<26} {'precision':>9} {'mode TV':>8}")
    for text in TOY2D_SUITE:
        expr = parse(text, concepts)
        q = toy2d_quality(sample(expr, 2000, settings), expr)
        print(f"{text:<26} {q['precision']:>9.3f} {q['mode_tv']:>8.3f}")


def bench_toy2d(runs):
    """Train toy2d `runs` times from scratch; median wall time and median quality figures."""
    times, figures = [], {}
    for r in range(runs):
        out = f"out-bench-toy2d-{r}"
        t0 = time.time()
        p = subprocess.run([sys.executable, "train.py", "--dataset", "toy2d", "--out_dir", out, "--seed", str(r)],
                           capture_output=True, text=True)
        times.append(time.time() - t0)
        if p.returncode:
            sys.exit(f"training run {r} failed:\n{p.stderr}")
        for line in p.stdout.splitlines():
            m = re.match(r"(.+?)\s+(\d\.\d+)\s+(\d\.\d+)\s+>=", line)
            if m:
                figures.setdefault(m.group(1), []).append((float(m.group(2)), float(m.group(3))))
        print(f"run {r}: {times[-1]:.1f} s", flush=True)
    print(f"\npython train.py --dataset toy2d: median {statistics.median(times):.1f} s over {runs} runs "
          f"({', '.join(f'{t:.1f}' for t in times)})")
    print(f"{'expression':<26} {'precision (median, min)':>24} {'mode TV (median, max)':>22}")
    for expr, vals in figures.items():
        p, tv = [v[0] for v in vals], [v[1] for v in vals]
        print(f"{expr:<26} {statistics.median(p):>15.3f} {min(p):>8.3f} {statistics.median(tv):>14.3f} {max(tv):>7.3f}")


# Figure 3(b) analog: one more concept per row; then the other operators and two objects (Figure 5)
SHAPES_SUITE = ["cube", "cube & red", "cube & red & size=0.6", "cube & red & size=0.6 & position=(0.5,-0.3)",
                "green", "size=0.65", "position=(-0.5,-0.5)", "sphere & blue", "sphere & ~red", "red | blue",
                "position=(-0.6,-0.6) & position=(0.6,0.6)", "position=(0,0) & position=(0.1,0)"]
SHAPES_TARGETS = {1: 0.90, 2: 0.75, 3: 0.60, 4: 0.50}  # by number of concepts (the issue's)


def n_concepts(text):
    """How many concepts an expression names: 'cube & size=0.6' -> 2."""
    return len(re.findall(r"[A-Za-z_]+", text))


def bench_shapes(ckpt_dir, n=256, figure="assets/shapes_compose.png", steps=None):
    """Sample every expression of SHAPES_SUITE, judge it, print the table, draw 8 samples per row."""
    from compose import image_grid, load_concepts, sampling_settings
    from infer import load_judge, score
    concepts = load_concepts(ckpt_dir)
    settings = sampling_settings(next(iter(concepts.values())).config, steps=steps)
    judge, _ = load_judge(os.path.join(ckpt_dir, "judge.pt"))
    noise = torch.rand(n, *settings["x_shape"], generator=torch.Generator().manual_seed(0))
    rows, pictures = [], []
    print(f"{'expression':<48} {'accuracy':>8} {'noise':>6}  target   ({n} samples, {settings['steps']} steps)")
    for text in SHAPES_SUITE:
        t0 = time.time()
        expr = parse(text, concepts)
        x = sample(expr, n, settings, seed=0)
        acc, _ = score(expr, x, judge)
        base, _ = score(expr, noise, judge)
        target = 0.8 if text.count("position") == 2 else SHAPES_TARGETS[n_concepts(text)]
        rows.append((text, acc, base))
        pictures.append(x[:8])
        # a score the judge also gives noise says nothing about the generator
        ok = " MISSED (no better than noise)" if acc <= base else " ok" if acc >= target else " MISSED"
        print(f"{text:<48} {acc:>8.3f} {base:>6.3f}  >={target:.2f}{ok}   {time.time() - t0:.0f} s", flush=True)
    if figure:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.25 * len(rows)))
        for ax, (text, acc, base), x in zip(axes, rows, pictures):
            ax.imshow(image_grid(x, nrow=8))
            ax.set_axis_off()
            ax.set_title(f"{text}   (judge: {acc:.2f}, noise {base:.2f})", fontsize=8, loc="left")
        fig.tight_layout()
        fig.savefig(figure, dpi=110)
        print(f"wrote {figure}")
    return rows


def bench_curve(out_dir, n=128, steps=None, every=500):
    """Accuracy of each concept model against its training time: each snapshot in
    <out_dir>/snapshots (every `every` iterations) samples n images of values drawn from the
    data, and the judge reads them."""
    import glob
    from compose import sampling_settings
    from data import load_dataset
    from infer import load_judge, predict, reads_as
    from model import load_checkpoint
    judge, _ = load_judge()
    paths = [p for p in sorted(glob.glob(os.path.join(out_dir, "snapshots", "*.pt")))
             if int(re.search(r"_(\d+)\.pt$", p).group(1)) % every == 0]
    if not paths:
        sys.exit(f"no snapshots in {out_dir}/snapshots (train.py keeps them with --snapshots, the shapes default)")
    labels = load_dataset("shapes", n=n, seed=123).labels  # the values to ask for
    print(f"{'snapshot':<28} {'minutes':>7} {'accuracy':>8}   ({n} samples, values drawn from the data)")
    for path in paths:
        net, ckpt = load_checkpoint(path)
        fam, cfg = ckpt["family"], ckpt["config"]
        settings = sampling_settings(cfg, steps=steps)
        c = labels[fam]  # (n,) or (n, d): one value per chain
        x = sample(lambda x: net(x, c), n, settings, seed=0)  # (n, 3, H, W)
        ok = reads_as(fam, predict(judge, x), c)
        print(f"{os.path.basename(path):<28} {ckpt['elapsed'] / 60:>7.1f} {ok.float().mean().item():>8.3f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--toy2d", type=int, default=0, metavar="RUNS", help="train toy2d RUNS times")
    ap.add_argument("--shapes", metavar="CKPT_DIR", help="judge compositions of these shapes models")
    ap.add_argument("--curve", metavar="OUT_DIR", help="accuracy against training time of a shapes run")
    ap.add_argument("--steps", type=int, default=None, help="Langevin steps for --shapes / --curve")
    args = ap.parse_args()
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    if args.shapes or args.curve:  # image benchmarks only
        if args.curve:
            bench_curve(args.curve, steps=args.steps)
        if args.shapes:
            bench_shapes(args.shapes, steps=args.steps)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    t = bench_langevin_step()
    print(f"{'per step, batch 1024, toy MLP':<32} {'ms':>8}")
    print(f"{'forward + input gradient (bare)':<32} {t['bare'] * 1e3:>8.3f}")
    print(f"{'langevin() step':<32} {t['ours'] * 1e3:>8.3f}")
    print(f"{'naive loop (param grads, backward)':<32} {t['naive'] * 1e3:>8.3f}")
    print(f"langevin step / bare pass {t['ours/bare']:.3f}x (median of 15 paired ratios)")
    print(f"naive step / langevin step {t['naive/ours']:.2f}x")
    bench_sampler_on_exact_energies()
    if args.toy2d:
        bench_toy2d(args.toy2d)


if __name__ == "__main__":
    main()
