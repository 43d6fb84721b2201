"""Benchmarks: how fast the sampler and training run, how good the compositions are.

    python bench.py                # the sampler on the exact toy2d energies, then the speed table: our Langevin
                                   # sampler against the tutorials' naive loop (toy MLP, shapes32, celeba64)
                                   # and training it/s; last: sampler speedup X.XXx
    python bench.py --toy2d 3 [--train_args "--sampler mala"] [--first_seed 3]   # train toy2d 3 times: time, quality
    python bench.py --shapes checkpoints/shapes   # judged compositions, 256 samples each, and a figure
    python bench.py --curve out-shapes            # accuracy against training time (a folder of models: each)
    python bench.py --device cuda  # the speed table on a GPU (every network at batch 128)
    python bench.py --gpu_check    # on a GPU: the suite, speed, resume, NCCL, a short training (< 10 min)

Timings are medians of repeats; each ratio is to a baseline timed in the same run. Experiments: experiments.py
"""
import argparse
import contextlib
import glob
import io
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from compose import (TOY2D_SUITE, Concept, image_grid, load_concepts, parse, pyplot, sample, sampling_settings,
                     toy2d_quality, toy2d_table, settings_for)
from data import TOY2D_FAMILIES, TOY2D_STD, Dataset, load_dataset, toy2d_modes
from infer import at_blobs, load_judge, readings, reads_as, score, shows_objects
from model import IMAGE_PRESETS, build_model, load_checkpoint
from sampler import langevin
from train import Config, dataset_for, parse_config, train_concept


def median_time(fn, repeats, warmup=3):
    """Median seconds of fn(); on a GPU the clock stops only when its queued kernels are done."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# The sampler benchmark's networks: (kind and arguments, input shape, batch, Langevin steps a timed chain)
SAMPLER_CASES = {
    "toy2d mlp": (("mlp", dict(n_values=2)), (2,), 1024, 50),
    "shapes32": (("image", dict(IMAGE_PRESETS["shapes32"], n_values=8)), (3, 32, 32), 64, 10),
    "celeba64": (("image", dict(IMAGE_PRESETS["celeba64"], n_values=2)), (3, 64, 64), 16, 4)}


def bench_langevin_speed(case, repeats=5, device="cpu", batch=None):
    """Seconds per Langevin step of one network in training mode: our sampler (input gradients only, spectral
    norm's W / sigma once per chain, channels_last on CPU), a bare forward + input-gradient pass (the floor), and
    the naive loop of tutorials (E.sum().backward() with parameter gradients, W / sigma every step, NCHW)."""
    (kind, args), shape, case_batch, steps = SAMPLER_CASES[case]
    batch = batch or case_batch
    torch.manual_seed(0)
    net = build_model(kind, **args).to(device)
    image = kind == "image"
    x0 = torch.rand(batch, *shape, device=device)
    c = torch.randint(0, args["n_values"], (batch,), device=device)
    lo, hi, step, clip = (0.0, 1.0, 20.0, 0.01) if image else (-3.0, 3.0, 0.01, 40.0)

    def bare():
        net.requires_grad_(False)
        with torch.nn.utils.parametrize.cached():
            x = x0.clone()
            for _ in range(steps):
                x.requires_grad_(True)
                (g,) = torch.autograd.grad(net(x, c).sum(), x)
                x = x.detach()

    def ours():
        net.requires_grad_(False)
        with torch.nn.utils.parametrize.cached():
            langevin(lambda x: net(x, c), x0, steps, step, noise_scale=0.005, clamp=(lo, hi), grad_clip=clip)

    def naive():
        net.requires_grad_(True)
        net.channels_last = False if image else None  # the tutorials' NCHW
        x = x0.clone()
        for _ in range(steps):
            x = x.detach().requires_grad_()
            net(x, c).sum().backward()
            x = (x - 0.5 * step * x.grad.clamp(-clip, clip) + 0.005 * torch.randn_like(x)).clamp(lo, hi)
        net.zero_grad(set_to_none=True)
        net.channels_last = None

    # interleave the three so that a slow moment of the machine hits all of them
    t = {k: [] for k in ("bare", "ours", "naive")}
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("ours", ours), ("naive", naive)):
            t[name].append(median_time(fn, 1, warmup=1) / steps)
    out = {k: statistics.median(v) for k, v in t.items()}
    # ratios within each repeat, then their median: steadier than a ratio of medians
    out["speedup"] = statistics.median(n / o for n, o in zip(t["naive"], t["ours"]))
    out["outside"] = statistics.median(1 - b / o for o, b in zip(t["ours"], t["bare"]))
    out["samples/s"] = batch / out["ours"]
    return out


# Training throughput: train.py's own loop, on its dataset defaults (celeba on random
# uint8 faces of the right size, with a smaller batch and fewer steps to fit a CPU).
TRAIN_CASES = {  # train.py arguments, and the two run lengths timed
    "toy2d mlp": (["--dataset", "toy2d", "--concept", "ring"], (20, 60)),
    "shapes32": (["--dataset", "shapes", "--concept", "color", "--n_data", "2000"], (5, 20)),
    "celeba64": (["--dataset", "celeba", "--concept", "Smiling", "--batch_size", "8", "--steps", "5"], (2, 5)),
}


def bench_train(case, repeats=3, device="cpu", batch=None):
    """Seconds per training iteration of train.py's loop: the time of runs of n0 and n1 iterations, their
    difference over n1 - n0 (which cancels the start-up and the final checkpoint); median of `repeats`."""
    argv, iters = TRAIN_CASES[case]
    argv = argv + ["--buffer_size", "256", "--log_interval", "100000", "--snapshots", "false", "--sample_interval",
                   "100000", "--ckpt_interval", "100000"] + (["--batch_size", str(batch)] if batch else [])
    iters = tuple(10 * i for i in iters) if device != "cpu" else iters  # a GPU's iterations take milliseconds
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config(argv + ["--out_dir", tmp, "--cache_dir", os.path.join(tmp, "data")])
        if cfg.dataset == "celeba":  # no CelebA here: random faces, same shapes and dtype
            g = torch.Generator().manual_seed(0)
            faces = torch.randint(0, 256, (2048, 3, 64, 64), dtype=torch.uint8, generator=g)
            ds = Dataset("celeba", faces, {"Smiling": torch.randint(0, 2, (2048,), generator=g)},
                         {"Smiling": ("not_Smiling", "Smiling")}, (0.0, 1.0))
        else:
            ds = dataset_for(cfg)
        per_iter = []
        for _ in range(repeats):
            times = []
            for n in iters:
                cfg.max_iters = n
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    train_concept(cfg, ds, cfg.concept, torch.device(device))
                times.append(time.perf_counter() - t0)
                os.remove(os.path.join(tmp, f"{cfg.concept}.pt"))
            per_iter.append((times[1] - times[0]) / (iters[1] - iters[0]))
    return statistics.median(per_iter), cfg


GPU_BATCH = 128  # on a GPU every network is timed at batch 128: a step costs about the same up to 512


def bench_speed(repeats=5, device="cpu"):
    """The speed table: sampler throughput ours vs naive, training it/s, the share of a step outside the network;
    last, the smallest speedup of the image presets (the toy MLP's step is mostly Python: listed, not counted)."""
    gpu = device != "cpu"
    machine = torch.cuda.get_device_name() if gpu else f"{torch.get_num_threads()} threads, cpu"
    print(f"torch {torch.__version__}, {machine}")
    print(f"{'network':<10} {'batch':>5} {'ours ms/step':>12} {'naive ms/step':>13} {'speedup':>8} "
          f"{'samples*steps/s':>15} {'outside net':>11} {'train it/s':>10}  training run")
    speedups = []
    for case in SAMPLER_CASES:
        if gpu and case == "toy2d mlp":  # 2D models train on the CPU (train.py)
            continue
        s = bench_langevin_speed(case, repeats, device, GPU_BATCH if gpu else None)
        sec, cfg = bench_train(case, device=device, batch=GPU_BATCH if gpu else None)
        batch = GPU_BATCH if gpu else SAMPLER_CASES[case][2]
        print(f"{case:<10} {batch:>5} {s['ours'] * 1e3:>12.1f} {s['naive'] * 1e3:>13.1f} {s['speedup']:>7.2f}x "
              f"{s['samples/s']:>15.0f} {s['outside']:>10.0%} {1 / sec:>10.2f}  "
              f"batch {cfg.batch_size}, {cfg.steps} steps", flush=True)
        speedups += [s["speedup"]] if case != "toy2d mlp" else []
    print(f"sampler speedup {min(speedups):.2f}x")


def exact_toy2d_concepts():
    """The toy2d concepts with their true energies: -log of each one's mixture of eight Gaussians (+ a constant)."""
    centres, labels = toy2d_modes()

    def mixture(family):
        def energy(x, c):  # x (B, 2), c () -> (B,)
            modes = centres[labels[family] == c]  # (8, 2)
            d2 = ((x[:, None] - modes[None]) ** 2).sum(-1)  # (B, 8)
            return -torch.logsumexp(-d2 / (2 * TOY2D_STD ** 2), 1)
        return energy

    # data_energy 1.0: the mean of d^2 / (2 std^2) over a concept's own data
    return {name: Concept(mixture(fam), fam, i, name, data_energy=1.0)
            for fam, names in TOY2D_FAMILIES.items() for i, name in enumerate(names)}


def exact_toy2d_settings(steps=300, anneal=20.0):  # toy2d's training step, noise and clip (train.Config)
    return {"steps": steps, "anneal": anneal, "data_range": (-3.0, 3.0), "x_shape": (2,), "resample": True,
            **{k: getattr(Config, k) for k in ("step_size", "noise_scale", "grad_clip")}}


def bench_sampler_on_exact_energies(steps=300, anneal=20.0):
    """The composition sampler on the true toy2d energies, ULA (the paper's) and MALA: the sampler's own error."""
    concepts, settings = exact_toy2d_concepts(), exact_toy2d_settings(steps, anneal)
    print(f"\nthe sampler on the exact toy2d energies ({steps} steps, anneal {anneal:g}, 2000 samples)")
    print(f"{'expression':<26} {'precision':>9} {'mode TV':>8} {'MALA: precision':>16} {'mode TV':>8}")
    for text in TOY2D_SUITE:
        expr = parse(text, concepts)
        q = [toy2d_quality(sample(expr, 2000, dict(settings, method=m)), expr) for m in ("ula", "mala")]
        print(f"{text:<26} " + " ".join(f"{v['precision']:>{w}.3f} {v['mode_tv']:>8.3f}" for v, w in zip(q, (9, 16))))


# toy2d targets: every composition at precision >= 0.95, mode TV <= 0.06 (median), no run above 0.10; <= 90 s
TOY2D_TARGETS = {"precision": 0.95, "mode_tv": 0.06, "worst_tv": 0.10, "seconds": 90}
TOY2D_MORE = ["left & ~inner", "(right & outer) | (left & inner)", "bottom & ~left & ~outer", "inner | top",
              "(top | left) & outer"]  # compositions the standard suite does not list, as a new user would try them


def bench_toy2d(runs, train_args="", first_seed=0):
    """Train toy2d `runs` times from scratch (seeds first_seed...) as a user does, timed with train.py's report; sample
    TOY2D_SUITE and TOY2D_MORE from each. Medians, worst run, targets. train_args: more settings (a lever)."""
    times, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:  # a private folder: two benches side by side never mix models
        for r in range(runs):
            out, t0 = os.path.join(tmp, f"toy2d-{r}"), time.time()
            p = subprocess.run([sys.executable, "train.py", "--dataset", "toy2d", "--out_dir", out, "--seed",
                                str(first_seed + r), *shlex.split(train_args)], capture_output=True, text=True)
            times.append(time.time() - t0)
            if p.returncode:
                sys.exit(f"training run {r} failed:\n{p.stderr}")
            concepts = load_concepts(out)
            settings = sampling_settings(next(iter(concepts.values())).config)
            rows, _ = toy2d_table(concepts, settings, suite=TOY2D_SUITE + TOY2D_MORE)
            for text, precision, tv, _, _ in rows:
                figures.setdefault(text, []).append((precision, tv))
            print(f"run {r} (seed {first_seed + r}): {times[-1]:.1f} s", flush=True)
    t = TOY2D_TARGETS
    command = " ".join(["python train.py --dataset toy2d", *shlex.split(train_args)])
    print(f"\n{command}: median {statistics.median(times):.1f} s over {runs} runs "
          f"({', '.join(f'{s:.1f}' for s in times)}); target <= {t['seconds']} s")
    print(f"{'expression':<34} {'precision (median, min)':>24} {'mode TV (median, max)':>22}  target")
    for expr, vals in figures.items():
        p, tv = [v[0] for v in vals], [v[1] for v in vals]
        ok = (statistics.median(p) >= t["precision"] and statistics.median(tv) <= t["mode_tv"]
              and max(tv) <= t["worst_tv"])
        print(f"{expr:<34} {statistics.median(p):>15.3f} {min(p):>8.3f} {statistics.median(tv):>14.3f} {max(tv):>7.3f}"
              f"  {'met' if ok else 'MISSED'}{'' if expr in TOY2D_SUITE else ' (not in the suite)'}")
    print(f"targets: precision >= {t['precision']}, mode TV <= {t['mode_tv']} (median), every run <= {t['worst_tv']}")


# Figure 3(b) analog: one more concept per row; then the other operators and two objects (Figure 5)
SHAPES_SUITE = ["cube", "cube & red", "cube & red & size=0.6", "cube & red & size=0.6 & position=(0.5,-0.3)",
                "green", "size=0.65", "position=(-0.5,-0.5)", "sphere & blue", "sphere & ~red", "red | blue",
                "position=(-0.6,-0.6) & position=(0.6,0.6)", "position=(0,0) & position=(0.1,0)"]
SHAPES_TARGETS = {1: 0.90, 2: 0.75, 3: 0.60, 4: 0.50}  # by number of concepts


def concept_names(text):
    """The concepts an expression names: 'cube & size=0.6' -> ['cube', 'size']."""
    return re.findall(r"[A-Za-z_]+", text)


def bench_shapes(ckpt_dir, n=256, figure="assets/{}_compose.png", suite=SHAPES_SUITE, target=None, **sampler):
    """Sample every expression of `suite`, judge it, print the table, draw 8 samples per row in `figure` ({}: the
    folder's name). target: one accuracy target for every row (default: SHAPES_TARGETS, by number of concepts)."""
    figure = figure and figure.format(os.path.basename(os.path.normpath(ckpt_dir)))
    concepts = load_concepts(ckpt_dir)
    settings = sampling_settings(next(iter(concepts.values())).config, **sampler)
    judge, _ = load_judge()
    noise = torch.rand(n, *settings["x_shape"], generator=torch.Generator().manual_seed(0))
    rows = []
    print(f"{'expression':<48} {'accuracy':>8} {'noise':>6}  target   ({n} samples, {settings['steps']} steps of "
          f"{settings['step_size']:g}; K terms: sqrt(K) x the steps, 1 / sqrt(K) x the step)")
    for text in suite:
        t0 = time.time()
        try:
            expr = parse(text, concepts)
        except ValueError as e:  # a folder of some concepts only, e.g. a position model of cluttered scenes
            print(f"{text:<48} skipped: {e}")
            continue
        x = sample(expr, n, settings_for(expr, settings), seed=0)
        clutter = any(concepts[w].config.get("clutter") for w in concept_names(text) if w in concepts)
        (acc, _), (base, _) = score(expr, x, judge, clutter), score(expr, noise, judge, clutter)
        goal = target or (0.8 if text.count("position") == 2 else SHAPES_TARGETS[len(concept_names(text))])
        rows.append((text, acc, base, x[:8]))
        # a score the judge also gives noise says nothing about the generator
        ok = " MISSED (no better than noise)" if acc <= base else " ok" if acc >= goal else " MISSED"
        print(f"{text:<48} {acc:>8.3f} {base:>6.3f}  >={goal:.2f}{ok}   {time.time() - t0:.0f} s", flush=True)
    if figure:
        plt = pyplot()
        fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.25 * len(rows)))
        for ax, (text, acc, base, x) in zip(axes, rows):
            ax.imshow(image_grid(x, nrow=8))
            ax.set_axis_off()
            ax.set_title(f"{text}   (judge: {acc:.2f}, noise {base:.2f})", fontsize=8, loc="left")
        fig.tight_layout()
        fig.savefig(figure, dpi=110)
        print(f"wrote {figure}")
    return rows


def bench_curve(out_dir, n=128, every=500, **sampler):
    """Accuracy against training time: each snapshot in <out_dir>/snapshots (every `every` iterations) samples n
    images of values drawn from the data; one counts where it shows one object and the judge reads the asked value
    (both parts printed; position models also `at blob`: the place read at the largest blob's centre), beside the
    same for uniform noise. A folder of models (checkpoints/shapes): each, 256 samples, a row per discrete value."""
    judge, _ = load_judge()
    paths = [p for p in sorted(glob.glob(os.path.join(out_dir, "snapshots", "*.pt")))
             if int(re.search(r"_(\d+)\.pt$", p).group(1)) % every == 0]
    paths, n, shipped = (paths, n, False) if paths else (sorted(glob.glob(os.path.join(out_dir, "*.pt"))), 256, True)
    if not paths:
        sys.exit(f"no snapshots in {out_dir}/snapshots and no models in {out_dir} (train.py keeps snapshots)")
    labels = load_dataset("shapes", n=n, seed=123).labels  # the values to ask for
    print(f"{'snapshot':<28} {'minutes':>7} {'accuracy':>8} {'judge':>8} {'1 object':>8} {'at blob':>8} {'noise':>8}"
          f"   ({n} samples, values drawn from the data)")
    for path in paths:
        net, ckpt = load_checkpoint(path)
        fam, cfg, c = ckpt["family"], ckpt["config"], labels[ckpt["family"]]  # c: (n,) or (n, d), one per chain
        x = sample(lambda x: net(x, c), n, sampling_settings(cfg, **sampler), seed=0)  # (n, 3, H, W)
        noise = torch.rand(n, *cfg["x_shape"], generator=torch.Generator().manual_seed(0))  # learned nothing
        (pred, places), (pred0, places0) = [readings(judge, im, 1, cfg.get("clutter")) for im in (x, noise)]
        read, one = reads_as(fam, pred, c), shows_objects(x, places, 1)  # (n,) bool each
        blob = reads_as(fam, at_blobs(pred, places), c) & one if fam == "position" else None
        cols = [read & one, read, one, blob, reads_as(fam, pred0, c) & shows_objects(noise, places0, 1)]
        rows = [("", slice(None))] + ([(f": {v}", c == k) for k, v in enumerate(ckpt["values"])]
                                      if shipped and ckpt["encoding"] == "index" else [])
        for name, m in rows:  # all samples; then, for a folder's discrete family, those asked for each value
            print(f"{os.path.basename(path) + name:<28} {ckpt.get('elapsed', 0) / 60:>7.1f} " + " ".join(
                " " * 8 if v is None else f"{v[m].float().mean().item():>8.3f}" for v in cols), flush=True)


def gpu_check():
    """One command for a machine with a GPU: each check runs as its own process, and prints its
    command, exit status, time and the tail of its output. Paste the whole output in a note."""
    if not torch.cuda.is_available():
        sys.exit("error: --gpu_check needs a CUDA GPU, and none is visible")
    out = tempfile.mkdtemp(prefix="gpu-check-")
    python = sys.executable
    shapes = ["train.py", "--dataset", "shapes", "--concept", "color", "--device", "cuda", "--n_data", "2000",
              "--cache_dir", f"{out}/data", "--batch_size", "128", "--log_interval", "100"]
    torchrun = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    checks = [  # (what, command, time limit in seconds, lines of output to show)
        ("the test suite", [python, "-m", "pytest", "-q", "test_all.py"], 330, 6),
        ("the speed table", [python, "bench.py", "--device", "cuda"], 100, 8),
        ("a run to resume", [python, *shapes, "--out_dir", f"{out}/resume", "--max_iters", "200",
                             "--ckpt_interval", "100"], 45, 2),
        ("resume on CUDA", [python, *shapes, "--out_dir", f"{out}/resume", "--max_iters", "300", "--resume"], 45, 3),
        ("torchrun, NCCL, 1 process", [*torchrun, *shapes, "--out_dir", f"{out}/nccl", "--max_iters", "200"], 45, 2),
        ("a short shapes training", [python, *shapes, "--out_dir", f"{out}/train", "--max_iters", "1000",
                                     "--log_interval", "250"], 90, 5)]
    for name, cmd, limit, tail in checks:
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
            code, text = p.returncode, (p.stdout + p.stderr).strip()
        except subprocess.TimeoutExpired as e:
            code, text = "timeout", ((e.stdout or b"").decode() + (e.stderr or b"").decode()).strip()
        print(f"== {name}: {' '.join(cmd)}\n   exit {code} after {time.time() - t0:.0f} s", flush=True)
        print("\n".join("   " + line for line in text.splitlines()[-tail:]), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--toy2d", type=int, default=0, metavar="RUNS", help="train toy2d RUNS times")
    ap.add_argument("--train_args", default="", metavar="ARGS", help="--toy2d: more train.py settings, quoted")
    ap.add_argument("--first_seed", type=int, default=0, help="--toy2d: seeds from this one (3: a held-out set)")
    ap.add_argument("--shapes", metavar="CKPT_DIR", help="judge compositions of these shapes models")
    ap.add_argument("--curve", metavar="OUT_DIR", help="accuracy against training time of a shapes run")
    ap.add_argument("--every", type=int, default=500, help="--curve: judge every EVERY-th iteration's snapshot")
    ap.add_argument("--steps", type=int, default=None, help="Langevin steps for --shapes / --curve")
    ap.add_argument("--step_size", type=float, default=None, help="their step size (default: the training one)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the speed table on this device")
    ap.add_argument("--gpu_check", action="store_true", help="everything a GPU machine should check, in one "
                    "command (under 10 minutes on one GPU): the suite, the speed table, resume, NCCL, training")
    moved = {"--continual": "continual --ckpt_dir {}", "--crossproduct": "crossproduct --ckpt_dir {}",
             "--samplers": "samplers", "--partition": "partition"}  # still parsed, to say where they went
    for flag, command in moved.items():
        ap.add_argument(flag, **(dict(metavar="DIR") if "{" in command else dict(action="store_true")),
                        help=f"moved: python experiments.py {command.format('DIR')}")
    args = ap.parse_args()
    for flag, command in moved.items():
        if getattr(args, flag[2:]):
            print(f"error: bench.py {flag} moved: run python experiments.py {command.format(getattr(args, flag[2:]))}",
                  file=sys.stderr)
            sys.exit(2)
    if args.every < 1:
        ap.error(f"--every must be at least 1, got {args.every}")
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    if args.curve:
        bench_curve(args.curve, steps=args.steps, every=args.every, step_size=args.step_size)
    if args.shapes:
        bench_shapes(args.shapes, steps=args.steps, step_size=args.step_size)
    if args.toy2d or args.gpu_check:
        return bench_toy2d(args.toy2d, args.train_args, args.first_seed) if args.toy2d else gpu_check()
    if args.shapes or args.curve:  # image benchmarks only
        return
    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda was asked for, but no CUDA GPU is visible")
        return bench_speed(device="cuda")
    bench_sampler_on_exact_energies()
    bench_speed()


if __name__ == "__main__":
    main()
