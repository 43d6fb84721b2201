"""Benchmarks: what the sampler costs, how long toy2d trains, how good its compositions are.

    python bench.py                # Langevin step cost against a bare forward + input-gradient pass,
                                   # and the composition sampler on the exact toy2d energies
    python bench.py --toy2d 3      # also: train toy2d 3 times; median time and quality figures

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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--toy2d", type=int, default=0, metavar="RUNS", help="train toy2d RUNS times")
    args = ap.parse_args()
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
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
