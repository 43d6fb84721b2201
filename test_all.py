"""The tests: fast, on CPU.  Run with:  python -m pytest -q test_all.py"""
import contextlib
import io
import os
import re
import runpy
import shutil
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch

import compose
import train
from compose import And, Concept, Not, Or, exact_weights, parse, toy2d_quality
from data import TOY2D_STD, load_dataset, make_toy2d, toy2d_modes
from model import (IMAGE_PRESETS, average_checkpoints, build_model, load_checkpoint, model_args, save_checkpoint,
                   temper_checkpoint)
from sampler import ReplayBuffer, langevin, run_chains

HERE = os.path.dirname(os.path.abspath(__file__))


def run_cli(*args):
    """Run one of the project's scripts; return (returncode, stdout, stderr). The timeout only stops a hung
    script: the short toy2d run takes 3 minutes on a slow 2-core host, and over 5 beside other jobs."""
    p = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=900)
    return p.returncode, p.stdout, p.stderr


def run_cli_here(*args):
    """run_cli in this process, for short command lines: the script runs as __main__, its own
    error handling included, without the seconds a new python process spends importing torch.
    An exception the script lets through (a traceback, from the command line) fails the test."""
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(HERE)
        with torch.random.fork_rng(devices=[]), mock.patch.object(sys, "argv", list(args)), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(args[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code or 0
        if isinstance(code, str):  # sys.exit("error: ...") prints its message and returns 1
            print(code, file=err)
            code = 1
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


def toy_concepts():
    """The six toy2d names as concepts (no model needed for parsing and exact evaluation)."""
    from data import TOY2D_FAMILIES
    return {name: Concept(None, fam, i, name) for fam, names in TOY2D_FAMILIES.items() for i, name in enumerate(names)}


def perfect_samples(expr, n=4000, seed=0):
    """Samples drawn exactly from an expression's mode weights (what a perfect sampler returns)."""
    return compose.exact_samples(expr, n, seed)


# ---------------------------------------------------------------- data and model

def test_toy2d_dataset_is_seeded_and_labelled():
    a, b, c = make_toy2d(1000, seed=1), make_toy2d(1000, seed=1), make_toy2d(1000, seed=2)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.x.shape == (1000, 2) and set(a.labels) == {"vertical", "horizontal", "ring"}
    radius = a.x.norm(dim=1)
    inner = a.labels["ring"] == 0
    assert (radius[inner] < 1.5).all() and (radius[~inner] > 1.5).all()
    assert ((a.x[:, 1] > 0) == (a.labels["vertical"] == 0)).float().mean() > 0.98  # top is y > 0
    part = a.where("ring=outer,vertical=top")  # --only: the data points with these values
    assert 0 < len(part) < 400 and (part.x.norm(dim=1) > 1.5).all() and (part.x[:, 1] > 0).all()
    assert torch.equal(part.x, a.x[(a.labels["ring"] == 1) & (a.labels["vertical"] == 0)])


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="toy2d"):
        load_dataset("mnist")


def test_energy_has_shape_batch():
    net = build_model("mlp", n_values=2)
    x, c = torch.randn(7, 2), torch.randint(0, 2, (7,))
    assert net(x, c).shape == (7,)
    concepts = {"a": Concept(net, "f", 0, "a"), "b": Concept(net, "f", 1, "b")}
    for text in ["a", "a & b", "a | b", "a & ~b", "(a | b) & ~a"]:
        assert parse(text, concepts)(x).shape == (7,)


# ---------------------------------------------------------------- sampler

def test_langevin_reproduces_a_gaussian():
    mu, s = torch.tensor([1.0, -2.0]), 0.5
    energy = lambda x: ((x - mu) ** 2).sum(1) / (2 * s * s)  # noqa: E731
    torch.manual_seed(0)
    x = langevin(energy, torch.zeros(4000, 2), n_steps=800, step_size=0.005)
    assert torch.allclose(x.mean(0), mu, atol=0.04)
    assert torch.allclose(x.var(0), torch.full((2,), s * s), rtol=0.08)


def test_resampling_finds_each_modes_share():
    # two narrow modes, 3:1 in mass, far apart: plain Langevin keeps the 1:1 split of
    # its starting points; annealing with resampling recovers 3:1.
    centres, w = torch.tensor([[-2.0], [2.0]]), torch.tensor([0.75, 0.25])
    energy = lambda x: -torch.logsumexp(torch.log(w) - (x - centres.T) ** 2 / (2 * 0.01), dim=1)  # noqa: E731
    torch.manual_seed(0)
    x0 = torch.rand(4000, 1) * 6 - 3
    plain = langevin(energy, x0, 300, 0.002, clamp=(-3, 3))
    smc = run_chains(energy, x0, 300, 0.002, anneal=30, resample=True, clamp=(-3, 3)).x
    assert abs((plain < 0).float().mean() - 0.5) < 0.05
    assert abs((smc < 0).float().mean() - 0.75) < 0.04


def test_sampling_computes_no_parameter_gradients():
    net = build_model("mlp", n_values=2)  # parameters require grad, as in training
    calls = []
    for p in net.parameters():
        p.register_hook(lambda g: calls.append(1))
    c = torch.zeros(16, dtype=torch.long)
    langevin(lambda x: net(x, c), torch.randn(16, 2), 5, 0.01)
    assert calls == [] and all(p.grad is None for p in net.parameters())


def test_moving_average_of_weights_for_both_networks():
    """--ema: the average moves by 1 - decay towards the live weights; spectral norm's vectors are copied."""
    import copy
    from model import ema_updater
    for net in (build_model("mlp", n_values=2), build_model("image", image_size=32, channels=(8, 16), n_values=3)):
        avg = copy.deepcopy(net)
        before = {k: v.clone() for k, v in avg.state_dict().items()}
        update = ema_updater(net, avg, 0.9)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)  # the optimizer's step, in place
        update()
        live = net.state_dict()
        for k, v in avg.state_dict().items():
            want = live[k] if k.endswith(("._u", "._v")) else before[k] + 0.1 * (live[k] - before[k])
            assert torch.allclose(v, want, atol=1e-6), k


def test_replay_buffer_capacity_reinit_and_state():
    buf = ReplayBuffer(100, (2,), reinit_prob=0.2)
    assert buf.x.shape == (100, 2) and buf.c.shape == (100,)
    ones, zeros = torch.ones(100, dtype=torch.long), torch.zeros(100, dtype=torch.long)
    with pytest.raises(ValueError, match="capacity"):
        buf.sample(torch.rand(101, 2), torch.zeros(101, dtype=torch.long))
    x, c, slots, fresh = buf.sample(torch.rand(100, 2), ones)
    assert fresh.all() and len(set(slots.tolist())) == 100  # empty slots start afresh
    buf.update(slots, torch.full_like(x, 7.0), c)
    share = torch.stack([buf.sample(torch.rand(50, 2), zeros[:50])[3] for _ in range(400)]).float().mean()
    assert abs(share - 0.2) < 0.02
    x, c, _, fresh = buf.sample(torch.full((100, 2), -1.0), zeros)
    assert (x[~fresh] == 7.0).all() and (c[~fresh] == 1).all()  # continued chains
    assert (x[fresh] == -1.0).all() and (c[fresh] == 0).all()  # restarted from the caller's points
    other = ReplayBuffer(100, (2,))
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.x, buf.x) and torch.equal(other.c, buf.c) and other.reinit_prob == 0.2


# ---------------------------------------------------------------- operators and parser

def analytic_concepts():
    """Two concepts with known energies: E_a = |x|^2, E_b = 3 * x_0."""
    fn = lambda x, c: torch.where(c == 0, (x ** 2).sum(1), 3 * x[:, 0])  # noqa: E731
    return Concept(fn, "f", 0, "a", data_energy=-1.0), Concept(fn, "f", 1, "b", data_energy=0.5)


def test_operators_match_hand_computed_energies_and_gradients():
    a, b = analytic_concepts()
    x = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-1.0, 4.0]], requires_grad=True)
    ea, eb = (x ** 2).sum(1), 3 * x[:, 0]
    m, alpha = 0.5 + compose.NEG_MARGIN, compose.NEG_ALPHA
    cases = {
        "and": ((a & b)(x), ea + eb),
        "or": ((a | b)(x), -torch.log(torch.exp(-ea) + torch.exp(-eb))),
        "or_T2": (Or([a, b], temperature=2.0)(x), -2 * torch.log(torch.exp(-ea / 2) + torch.exp(-eb / 2))),
        "not": ((a & ~b)(x), ea + alpha * torch.log1p(torch.exp(m - eb))),
    }
    for name, (got, want) in cases.items():
        assert torch.allclose(got, want, atol=1e-5), name
    # gradients by hand: d(Ea + Eb)/dx = (2 x0 + 3, 2 x1); the negation's reward is bounded
    (g,) = torch.autograd.grad((a & b)(x).sum(), x)
    assert torch.allclose(g, torch.stack([2 * x[:, 0] + 3, 2 * x[:, 1]], 1))
    (g,) = torch.autograd.grad((a | b)(x).sum(), x)
    pa = torch.sigmoid(eb - ea)  # weight of a in the softmin
    assert torch.allclose(g, torch.stack([pa * 2 * x[:, 0] + (1 - pa) * 3, pa * 2 * x[:, 1]], 1), atol=1e-5)
    (g,) = torch.autograd.grad((a & ~b)(x).sum(), x)
    s = torch.sigmoid(m - eb)  # d softplus(m - E_b) / d(m - E_b)
    assert torch.allclose(g, torch.stack([2 * x[:, 0] - alpha * s * 3, 2 * x[:, 1]], 1), atol=1e-5)
    # far from b the negation is flat and never negative: leaving the data earns nothing
    far = torch.tensor([[1e4, 0.0], [1e5, 0.0]])
    assert torch.all((~b).penalty(far) >= 0) and torch.all((~b).penalty(far) < 1e-6)


def test_negation_works_in_each_models_own_energy_scale(tiny_run):
    """The negation's margin and softplus width are in units of b's spread (its energy on other values' data
    minus on its own): a model k times colder in scale gets a negation k times smaller, of the same shape,
    switched off at the same place. train.py records both typical energies in every checkpoint."""
    a, b = analytic_concepts()
    cold = Concept(lambda x, c: 0.01 * 3 * x[:, 0], "f", 1, "b", data_energy=0.01 * 0.5, spread=0.01 * b.spread)
    x = torch.linspace(-3, 6, 40)[:, None].repeat(1, 2)  # (40, 2): E_b from -9 to 18
    assert torch.allclose((~cold).penalty(x), 0.01 * (~b).penalty(x), atol=1e-7)
    assert (~cold).penalty(x)[-1] < 1e-4 * (~cold).penalty(x)[0]  # flat far from b, in its units too
    ckpt = torch.load(os.path.join(tiny_run, "ring.pt"), weights_only=True)
    assert len(ckpt["other_energy"]) == 2 and all(o > e for o, e in zip(ckpt["other_energy"], ckpt["data_energy"]))
    ring = compose.load_concepts(tiny_run)["inner"]
    assert ring.spread == pytest.approx(ckpt["other_energy"][0] - ckpt["data_energy"][0])


def test_disjunction_mixes_at_the_samplers_temperature():
    """Image models are sampled cold (T = noise^2 / step, about 1e-6) and their energies lie within 0.1 of each
    other: eq. 7 at T = 1 is then the mean of the two energies, whose chains stop halfway between the wells.
    At the sampler's temperature (settings_for) every chain ends in one well or the other."""
    wells = torch.tensor([[0.2] * 3, [0.8] * 3])  # (2, 3): a's and b's data, in the box [0, 1]^3
    fn = lambda x, c: 0.01 * (x - wells[c]).pow(2).sum(1)  # noqa: E731  energies of 0.01 at most
    a, b = Concept(fn, "f", 0, "a"), Concept(fn, "f", 1, "b")
    config = {"eval_steps": 200, "step_size": 20.0, "noise_scale": 0.005, "eval_anneal": 1.0, "grad_clip": None,
              "data_range": [0.0, 1.0], "x_shape": [3]}

    def in_a_well(plain_or):
        expr, settings = a | b, compose.sampling_settings(config)
        x = compose.sample(expr, 256, compose.settings_for(expr, settings, plain_or))  # (256, 3)
        return ((x[:, None] - wells).norm(dim=2).min(1).values < 0.05).float().mean().item()

    assert in_a_well(plain_or=False) > 0.95 and in_a_well(plain_or=True) < 0.05


def test_image_conjunctions_take_smaller_steps_by_the_root_of_their_terms():
    """The cold image sampler on a sum of K energies: steps sqrt(K) times smaller, sqrt(K) times as many (the
    same distance), at the same temperature (noise^2 / step); a disjunction sums nothing (its widest term
    counts); 2D data keep their settings."""
    cs = {n: Concept(None, f, i, n) for f, names in [("shape", ["cube", "sphere"]), ("color", ["red", "blue"])]
          for i, n in enumerate(names)}
    base = {"steps": 200, "step_size": 20.0, "noise_scale": 0.005, "x_shape": (3, 32, 32)}
    for text, k in [("cube", 1), ("cube & red", 2), ("cube & ~red & (red | blue) & sphere", 4), ("red | blue", 1)]:
        got = compose.settings_for(parse(text, cs), base)
        assert (got["steps"], got["step_size"]) == (round(200 * k ** 0.5), pytest.approx(20 / k ** 0.5)), text
        assert got["noise_scale"] ** 2 / got["step_size"] == pytest.approx(0.005 ** 2 / 20), text
    flat = dict(base, x_shape=(2,), step_size=0.01, noise_scale=0.1)
    assert compose.settings_for(parse("cube & red & sphere", cs), flat) == flat


def test_parser_structure_and_precedence():
    cs = toy_concepts()
    e = parse("inner | (bottom & left)", cs)
    assert isinstance(e, Or) and isinstance(e.terms[1], And)
    e = parse("top | right & outer", cs)  # & binds tighter
    assert isinstance(e, Or) and isinstance(e.terms[1], And)
    e = parse("TOP & ~Right", cs)  # names are case-insensitive
    assert isinstance(e, And) and isinstance(e.terms[1], Not) and e.terms[0] is cs["top"]


@pytest.mark.parametrize("text, message", [
    ("topp & right", "unknown concept 'topp'; known concepts: bottom, inner, left, outer, right, top"),
    ("top & & right", "column 7"),
    ("(top & right", "column 13: expected '\\)', '&' or '\\|'"),
    ("top right", "column 5: expected '&', '\\|' or the end, found 'right'"),
    ("top + right", "unexpected character '\\+'"),
    ("", "column 1"),
    ("~top", "nothing positive"),
    ("~top | right", "nothing positive"),
    ("~top & ~right", "nothing positive"),
])
def test_parser_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse(text, toy_concepts())


# ---------------------------------------------------------------- exact evaluation

def test_exact_weights_by_hand():
    cs = toy_concepts()
    w = exact_weights(parse("inner | (bottom & left)", cs))
    centres, _ = toy2d_modes()
    inner = centres.norm(dim=1) < 1.5
    bottom_left = (centres[:, 0] < 0) & (centres[:, 1] < 0)
    assert torch.allclose(w[inner & ~bottom_left], torch.tensor(1 / 16, dtype=torch.float64))
    assert torch.allclose(w[inner & bottom_left], torch.tensor(3 / 16, dtype=torch.float64))
    assert torch.allclose(w[~inner & bottom_left], torch.tensor(1 / 8, dtype=torch.float64))
    assert (exact_weights(parse("top & right & outer", cs)) > 0).sum() == 2
    assert (exact_weights(parse("outer & ~top & ~left", cs)) > 0).sum() == 2
    with pytest.raises(ValueError, match="selects no"):
        exact_weights(parse("top & bottom", cs))


def test_quality_of_perfect_and_wrong_samples():
    cs = toy_concepts()
    for text in compose.TOY2D_SUITE:
        q = toy2d_quality(perfect_samples(parse(text, cs)), parse(text, cs))
        assert q["precision"] > 0.97 and q["mode_tv"] < 0.05, text
    wrong = toy2d_quality(perfect_samples(parse("bottom", cs)), parse("top", cs))
    assert wrong["precision"] < 0.01 and wrong["mode_tv"] > 0.95
    unbalanced = perfect_samples(parse("top & right", cs))
    unbalanced = unbalanced[unbalanced[:, 1] > unbalanced[:, 0]]  # keep only the upper modes
    q = toy2d_quality(unbalanced, parse("top & right", cs))
    assert q["precision"] > 0.97 and q["mode_tv"] > 0.2  # precise, but wrong weights
    q = toy2d_quality(torch.rand(4000, 2) * 6 - 3, parse("top", cs))
    assert q["precision"] < 0.1


# ---------------------------------------------------------------- training, checkpoints, command lines

@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A short toy2d training run (about 30 s): its three models and what it printed. Its report
    samples as the full run's does (200 steps)."""
    out = str(tmp_path_factory.mktemp("short"))
    code, stdout, stderr = run_cli("train.py", "--dataset=toy2d", "--max_iters", "500", "--out_dir", out,
                                   "--log_interval", "100")
    assert code == 0, stderr
    return out, stdout


def test_short_training_composes_well(short_run):
    out, stdout = short_run
    assert "[ring] iter   500/500" in stdout and "it/s" in stdout and "left" in stdout
    assert os.path.exists(os.path.join(out, "toy2d.png"))
    table = {}
    for line in stdout.splitlines():
        m = re.match(r"(.+?)\s{2,}(\d\.\d+)\s+(\d\.\d+)\s", line)
        if m:
            table[m.group(1)] = [float(m.group(2)), float(m.group(3))]
    assert set(table) == set(compose.TOY2D_SUITE)
    # after 500 iterations (the full run has 2000) every composition is mostly on its modes...
    for text, (precision, tv) in table.items():
        assert precision >= 0.85, (text, precision)
    # ...and single concepts, conjunctions and negations spread over their modes about right
    for text in ["top", "outer", "top & right", "top & ~right", "outer & ~top & ~left"]:
        assert table[text][1] <= 0.35, (text, table[text])


@pytest.fixture(scope="module")
def tiny_run(short_run):
    return short_run[0]


def test_checkpoint_contents(tiny_run):
    net, ckpt = load_checkpoint(os.path.join(tiny_run, "ring.pt"))
    assert ckpt["family"] == "ring" and ckpt["values"] == ["inner", "outer"] and ckpt["step"] == 500
    assert {"model", "model_args", "optimizer", "buffer", "config", "data_energy"} <= set(ckpt)
    assert ckpt["buffer"]["x"].shape == (ckpt["config"]["buffer_size"], 2)
    assert all(not p.requires_grad for p in net.parameters())


def test_tempering_a_checkpoint_scales_its_energy_and_recorded_energies(tiny_run, tmp_path):
    src, dst = os.path.join(tiny_run, "ring.pt"), str(tmp_path / "ring.pt")
    temper_checkpoint(src, 0.5, dst)
    (net, ckpt), (hot, tempered) = load_checkpoint(src), load_checkpoint(dst)
    x, c = torch.randn(64, 2), torch.randint(0, 2, (64,))
    assert torch.allclose(hot(x, c), 0.5 * net(x, c), atol=1e-6) and not torch.allclose(hot(x, c), net(x, c))
    assert tempered["data_energy"] == pytest.approx([0.5 * e for e in ckpt["data_energy"]])
    assert tempered["other_energy"] == pytest.approx([0.5 * e for e in ckpt["other_energy"]])
    assert tempered["energy_factor"] == 0.5
    with pytest.raises(ValueError, match="factor must be > 0"):
        temper_checkpoint(src, 0.0, dst)


def test_averaging_checkpoints_means_their_weights(tiny_run, tmp_path):
    # ring.pt and its copy at half the energy differ only in the last (linear) layer: their mean is 0.75 E
    src, half, dst = os.path.join(tiny_run, "ring.pt"), str(tmp_path / "half.pt"), str(tmp_path / "mean.pt")
    temper_checkpoint(src, 0.5, half)
    average_checkpoints([src, half], dst)
    (net, _), (mean, ckpt) = load_checkpoint(src), load_checkpoint(dst)
    x, c = torch.randn(64, 2), torch.randint(0, 2, (64,))
    assert torch.allclose(mean(x, c), 0.75 * net(x, c), atol=1e-5)
    # the files it is the mean of, named from the folder they share (here pytest's: tiny run's and this test's)
    assert ckpt["averaged"] == [os.path.join(os.path.basename(tiny_run), "ring.pt"),
                                os.path.join(tmp_path.name, "half.pt")]
    assert not {"optimizer", "buffer"} & set(ckpt)
    with pytest.raises(ValueError, match="vertical.pt is not a snapshot of the same model"):
        average_checkpoints([src, os.path.join(tiny_run, "vertical.pt")], dst)
    with pytest.raises(ValueError, match="two checkpoints or more, got 1"):
        average_checkpoints([src], dst)
    # image networks: spectrally normalised weights are averaged, their singular vectors are the last file's
    nets, paths = [build_model("image", **IMAGE_PRESETS["shapes32"], cond_dim=2) for _ in range(2)], []
    for i, net in enumerate(nets):
        paths.append(str(tmp_path / f"image{i}.pt"))
        save_checkpoint({"model": net.state_dict(), "model_args": model_args(net), "family": "position"}, paths[-1])
    average_checkpoints(paths, dst)
    assert torch.load(dst, weights_only=True)["averaged"] == ["image0.pt", "image1.pt"]  # one folder: names
    weights, (a, b) = torch.load(dst, weights_only=True)["model"], (net.state_dict() for net in nets)
    w, u = "stem.parametrizations.weight.original", "stem.parametrizations.weight.0._u"
    assert torch.allclose(weights[w], (a[w] + b[w]) / 2) and not torch.allclose(weights[w], b[w])
    assert torch.equal(weights[u], b[u])
    load_checkpoint(dst)  # and it rebuilds


def test_compose_cli_writes_samples_figure_and_gif(tiny_run, tmp_path):
    save = str(tmp_path / "top_not_right.npz")
    code, stdout, stderr = run_cli("compose.py", "top & ~right", "--ckpt_dir", tiny_run, "--num", "50",
                                   "--steps", "20", "--save", save, "--gif")
    assert code == 0, stderr
    assert np.load(save)["samples"].shape == (50, 2)
    assert os.path.exists(save[:-4] + ".png") and os.path.exists(save[:-4] + ".gif")
    lines = stdout.strip().splitlines()
    assert lines[-2].startswith("precision ") and lines[-1].startswith("mode_tv ")


@pytest.mark.parametrize("args, message", [
    (["topp"], "unknown concept 'topp'; known concepts: bottom, inner, left, outer, right, top"),
    (["top &"], "syntax error at column 6"),
    (["~top"], "nothing positive to ground it"),
    (["top", "--num", "0"], "--num must be a positive integer, got 0"),
    (["top", "--num", "many"], "invalid int value: 'many'"),
    (["top", "--ckpt_dir", "no-such-folder"], "checkpoint folder no-such-folder does not exist"),
    (["top", "--bogus", "1"], "unrecognized arguments: --bogus"),
    (["top", "--save", "x.jpg"], "--save must name an .npz file (samples and a .png beside it) or a .png"),
    (["top & bottom"], "selects no toy2d mode"),
])
def test_compose_cli_errors(tiny_run, args, message):
    args = args if "--ckpt_dir" in args else args + ["--ckpt_dir", tiny_run]
    code, _, stderr = run_cli_here("compose.py", *args)
    assert code != 0 and message in stderr


def test_unreadable_checkpoint_is_named(tmp_path):
    bad = tmp_path / "vertical.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, stderr = run_cli_here("compose.py", "top", "--ckpt_dir", str(tmp_path))
    assert code != 0 and f"checkpoint {bad} could not be read" in stderr
    code, _, stderr = run_cli_here("compose.py", "top", "--ckpt_dir", str(tmp_path / "empty_dir_missing"))
    assert code != 0 and "does not exist" in stderr


@pytest.mark.parametrize("args, message", [
    (["--dataset", "mnist"], "unknown dataset 'mnist'; known datasets: toy2d"),
    (["--max_itres", "5"], "unknown setting --max_itres; known settings: --dataset"),
    (["--max_iters", "ten"], "bad value 'ten' for --max_iters: expected int"),
    (["--max_iters", "0"], "--max_iters must be at least 1, got 0"),
    (["--concept", "colour"], "unknown concept family 'colour' for toy2d; known: vertical, horizontal, ring"),
    (["--only", "vertical=middle"], "unknown vertical 'middle'; allowed: top, bottom"),
    (["--frozen", "no-such.pt", "--concept", "ring"], "checkpoint no-such.pt does not exist"),
    (["--corner", "0.1"], "--corner is a setting of the shapes dataset, not of 'toy2d'"),
    (["--dataset", "shapes", "--corner", "2", "--cache_dir", "/nonexistent"], "corner must be a share of the positions in [0, 1], got 2.0"),
    (["--clutter", "2"], "--clutter is a setting of the shapes dataset, not of 'toy2d'"),
    (["--dataset", "shapes", "--clutter", "-1", "--cache_dir", "/nonexistent"], "clutter must be a non-negative int, got -1"),
    (["--clutter_size", "any"], "--clutter_size is a setting of the shapes dataset, not of 'toy2d'"),
    (["--clutter_gap", "1"], "--clutter_gap is a setting of the shapes dataset, not of 'toy2d'"),
    (["--scene", "ground"], "--scene is a setting of the shapes dataset, not of 'toy2d'"),
    (["--dataset", "shapes", "--scene", "sky", "--cache_dir", "/nonexistent"], "unknown scene 'sky'; allowed: 'plain', 'ground'"),
])
def test_train_cli_errors(args, message):
    code, _, stderr = run_cli_here("train.py", *args)
    assert code != 0 and message in stderr


def test_continual_learning_through_a_frozen_model(short_run, tmp_path):
    """paper 3.3: `horizontal` learns through the sum with a frozen `vertical`; the pair composes."""
    out, _ = short_run
    frozen = os.path.join(out, "vertical.pt")
    before = open(frozen, "rb").read()
    code, stdout, stderr = run_cli("train.py", "--dataset", "toy2d", "--concept", "horizontal", "--max_iters", "300",
                                   "--frozen", frozen, "--out_dir", str(tmp_path))
    assert code == 0, stderr
    assert open(frozen, "rb").read() == before  # the frozen model is not trained
    shutil.copy(frozen, tmp_path)
    code, stdout, stderr = run_cli("compose.py", "top & right", "--ckpt_dir", str(tmp_path), "--num", "2000")
    assert code == 0, stderr
    precision, tv = (float(re.search(rf"{k} (\d\.\d+)", stdout).group(1)) for k in ("precision", "mode_tv"))
    assert precision >= 0.85 and tv <= 0.25, stdout
    code, _, stderr = run_cli("train.py", "--dataset", "toy2d", "--concept", "vertical", "--frozen", frozen,
                              "--out_dir", str(tmp_path))
    assert code != 0 and "is a model of 'vertical', the family being trained" in stderr


def test_config_accepts_both_spellings():
    cfg = train.parse_config(["--max_iters=12", "--lr", "0.5", "--resume", "--dataset=toy2d"])
    assert cfg.max_iters == 12 and cfg.lr == 0.5 and cfg.resume is True and cfg.out_dir == "out-toy2d"


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "m.pt")
    save_checkpoint({"step": 1}, path)

    def crash(obj, f):  # a run killed halfway through writing
        open(f, "wb").write(b"half a file")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    out = str(tmp_path)
    args = [sys.executable, "train.py", "--concept", "vertical", "--out_dir", out, "--max_iters", "100000",
            "--ckpt_interval", "5", "--log_interval", "1000"]
    proc = subprocess.Popen(args, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = os.path.join(out, "vertical.pt")
    try:
        for _ in range(600):
            if os.path.exists(path) and torch.load(path, weights_only=True)["step"] >= 10:
                break
            proc.wait(timeout=0.1) if proc.poll() is not None else __import__("time").sleep(0.1)
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait()
    _, ckpt = load_checkpoint(path)
    saved = ckpt["step"]
    assert saved >= 10 and saved % 5 == 0
    code, stdout, stderr = run_cli("train.py", "--concept", "vertical", "--out_dir", out, "--resume",
                                   "--max_iters", str(saved + 5), "--log_interval", "1")
    assert code == 0, stderr
    assert f"resumed from {path} at step {saved}" in stdout
    assert f"iter {saved + 1:>5}/" in stdout and f"iter {saved:>5}/" not in stdout
    _, after = load_checkpoint(path)
    assert after["step"] == saved + 5
    assert not torch.equal(after["buffer"]["x"], ckpt["buffer"]["x"])  # the buffer came back and moved on



def test_resume_moves_between_devices_starts_from_light_snapshots_and_keeps_its_schedule(tmp_path, monkeypatch):
    """A checkpoint written on another device (CUDA random state inside, tensors mapped anywhere)
    resumes here; so does a light snapshot (weights only: fresh chains and optimizer); a larger
    --max_iters keeps the cosine horizon the run started with, and --lr_horizon replaces it."""
    out = str(tmp_path)
    code, _, stderr = run_cli("train.py", "--concept", "vertical", "--out_dir", out, "--max_iters", "20",
                              "--ckpt_interval", "10", "--log_interval", "10")
    assert code == 0, stderr
    path = os.path.join(out, "vertical.pt")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["rng"].dtype == torch.uint8 and ckpt["lr_horizon"] == 20
    # as written on a GPU machine: a second generator's state (on a machine without one, a stand-in: it is
    # only put back where the run is on CUDA, and a CUDA generator takes only its own kind of state)
    ckpt["cuda_rng"] = torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.get_rng_state()
    save_checkpoint(ckpt, path)
    # the checkpoint arrives through map_location: every tensor, random states included, is
    # put on the run's device; the random states must reach torch as CPU byte tensors
    seen = []
    monkeypatch.setattr(torch, "set_rng_state", lambda s: seen.append((s.device.type, s.dtype)))
    cfg = train.parse_config(["--concept", "vertical", "--out_dir", out, "--max_iters", "30", "--resume"])
    ds = train.dataset_for(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raw = train.build_concept_model(cfg, ds, "vertical").to(device)
    opt = torch.optim.Adam(raw.parameters())
    buffer = train.ReplayBuffer(cfg.buffer_size, ds.x.shape[1:], (), torch.long, device=device)
    run = train.load_run(path, device, raw, None, opt, buffer, cfg, ds, print)
    assert seen == [("cpu", torch.uint8)] and run["step"] == 20 and run["horizon"] == 20
    assert run["guard_from"] == 20  # its chains came back: the divergence guard watches at once
    assert run["warm_from"] is None  # and its optimizer: no warm-up
    monkeypatch.undo()
    # the horizon holds: past it the learning rate stays at its floor, not back at the top
    assert train.learning_rate(cfg, 25, run["horizon"]) == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    # past the horizon, a run without annealed negatives keeps drawing from its buffer
    code, stdout, stderr = run_cli("train.py", "--concept", "vertical", "--out_dir", out, "--max_iters", "30",
                                   "--resume", "--log_interval", "5", "--annealed_share", "0")
    assert code == 0, stderr
    assert "the learning rate keeps its schedule over 20 iterations" in stdout and "iter    30/30" in stdout
    # a light snapshot: no optimizer, buffer or random state
    light = {k: v for k, v in torch.load(path, weights_only=True).items() if k not in ("optimizer", "buffer", "rng")}
    save_checkpoint(light, path)
    cfg = train.parse_config(["--concept", "vertical", "--out_dir", out, "--resume", "--lr_horizon", "50"])
    buffer = train.ReplayBuffer(cfg.buffer_size, ds.x.shape[1:], (), torch.long, device=device)
    run = train.load_run(path, device, raw, None, torch.optim.Adam(raw.parameters()), buffer, cfg, ds, print)
    # --lr_horizon replaces the saved schedule; the guard waits while the fresh chains relax
    assert run["horizon"] == 50 and run["guard_from"] == 30 + 5 * cfg.buffer_size // cfg.batch_size
    # every fresh chain starts near the data point whose label it carries, not in noise
    assert buffer.filled.all()
    offset = (buffer.x - ds.x[buffer.c.cpu()].to(device)).std().item()
    assert 0.5 * cfg.reinit_noise < offset < 1.5 * cfg.reinit_noise
    # the fresh optimizer warms up: the rate rises from near 0 to the schedule's over WARMUP iterations
    full = train.learning_rate(cfg, 30, 50)
    assert run["warm_from"] == 30 and train.learning_rate(cfg, 30, 50, warm_from=30) == pytest.approx(
        full / train.WARMUP)
    later = 30 + train.WARMUP
    assert train.learning_rate(cfg, later, 50, warm_from=30) == train.learning_rate(cfg, later, 50)
    code, stdout, stderr = run_cli("train.py", "--concept", "vertical", "--out_dir", out, "--max_iters", "35",
                                   "--resume", "--log_interval", "5")
    assert code == 0, stderr
    assert "the chains start afresh" in stdout and "iter    35/35" in stdout
    assert torch.load(path, weights_only=True)["step"] == 35


def test_annealed_negatives_split_between_modes_by_mass():
    """Late in a run with --annealed_share, the negatives are fresh chains from noise, annealed and
    resampled (train.draw_negatives): they split between two wells by the wells' masses (3 : 1 for
    value 0; 10 : 30 for value 1, whose Z is 10 times larger: both values' chains run in one batch,
    but each value is resampled within itself), which CD needs to correct mode depths. Persistent
    chains restarted near the data split by the data."""
    ds = make_toy2d(2000, seed=0)
    wells = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])

    def energy(x, i):  # -log(m_a N(x; a, 0.2^2) + m_b N(x; b, 0.2^2)), up to a constant
        d2 = torch.cdist(x, wells).pow(2) / (2 * 0.2 ** 2)  # (B, 2)
        log_m = torch.tensor([[3.0, 1.0], [10.0, 30.0]]).log()[(i >= 1000).long()]  # (B, 2): by value
        return -torch.logsumexp(-d2 + log_m, 1)

    torch.manual_seed(0)
    idx, by_value = torch.arange(2000), [torch.arange(1000), torch.arange(1000, 2000)]
    cfg = train.parse_config(["--dataset", "toy2d"])
    for annealed, low, high in [(True, 0.68, 0.82), (False, 0.0, 0.6)]:
        buffer = ReplayBuffer(4000, (2,), (), torch.long)
        x, i = train.draw_negatives(cfg, ds, buffer, energy, idx, by_value, annealed, torch.device("cpu"))
        n = 4000 if annealed else 2000  # annealed: B chains for each of the two values
        assert x.shape == (n, 2) and i.shape == (n,) and (i >= 1000).sum() == n // 2
        heavy = torch.cdist(x, wells).argmin(1) == (i >= 1000).long()  # (B,): in its value's heavy well
        for value in (0, 1):
            share = heavy[(i >= 1000) == value].float().mean()
            assert low < share < high, (annealed, value, share)
    with pytest.raises(ValueError, match="annealed_share must be in"):
        train.parse_config(["--annealed_share", "2"])


def test_late_batch_sets_the_batch_of_the_annealed_share(monkeypatch, tmp_path):
    """--late_batch: in the annealed share (the last half here) each data batch has that many points."""
    sizes, real = [], train.data_batch
    monkeypatch.setattr(train, "data_batch", lambda cfg, ds, idx, dev: sizes.append(len(idx)) or real(cfg, ds, idx, dev))
    cfg = train.parse_config(["--concept", "ring", "--max_iters", "4", "--batch_size", "16", "--late_batch", "32",
                              "--out_dir", str(tmp_path), "--log_interval", "2"])
    train.train_concept(cfg, train.dataset_for(cfg), "ring", torch.device("cpu"))
    assert sizes == [16, 16, 32, 32]
    with pytest.raises(ValueError, match="late_batch must be"):
        train.parse_config(["--late_batch", "-1"])


def test_contrast_term_widens_the_gap_between_values_on_the_data(tmp_path):
    """--contrast adds a logistic loss that puts E(x+ | c+) below E(x+ | c') on real data (train.other_labels):
    the gap between a data point's own value and the other one grows over plain CD's, in the same run length."""
    c = torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(20):  # a discrete label always moves to another value; a continuous one to a data point's
        assert (train.other_labels(c, c, 3) != c).all()
    assert set(train.other_labels(c[:2].float(), torch.tensor([0.25, 0.5]), 0).tolist()) <= {0.25, 0.5}
    ds, gaps = make_toy2d(2000, seed=1), []
    for weight in (0.0, 1.0):
        out = tmp_path / f"c{weight}"
        train.main(["--concept", "horizontal", "--max_iters", "150", "--contrast", str(weight), "--out_dir", str(out)])
        net, _ = load_checkpoint(str(out / "horizontal.pt"))
        own = ds.labels["horizontal"]
        with torch.no_grad():
            gap = net(ds.x, 1 - own) - net(ds.x, own)  # (N,): other value's energy minus its own
        gaps.append(gap.median().item())
        assert (gap > 0).float().mean() > 0.9, (weight, (gap > 0).float().mean())
    assert gaps[1] > 1.5 * gaps[0], gaps


def test_divergence_rolls_back_to_the_last_checkpoint(tmp_path):
    """When E+ - E- falls below -diverge_gap, the run goes back to its last checkpoint at half the
    learning rate, and after three rollbacks it stops with that checkpoint's weights."""
    out = str(tmp_path)
    # a gap of 1e-9 counts any step where the data sits below the samples as diverging
    code, stdout, stderr = run_cli("train.py", "--concept", "vertical", "--out_dir", out, "--max_iters", "200",
                                   "--ckpt_interval", "10", "--log_interval", "10", "--diverge_gap", "1e-9")
    assert code == 0, stderr
    rolled = re.findall(r"rolled back to step (\d+), learning rate x([\d.]+) \(rollback (\d) of 3\)", stdout)
    assert [(r[1], r[2]) for r in rolled] == [("0.5", "1"), ("0.25", "2"), ("0.125", "3")], stdout
    assert "after 3 rollbacks: stopping" in stdout
    ckpt = torch.load(os.path.join(out, "vertical.pt"), weights_only=True)
    assert ckpt["step"] < 200 and ckpt["rollbacks"] <= 3


def test_data_noise_perturbs_the_data_batch_within_the_box():
    """--data_noise adds Gaussian noise of that std to each data batch (train.data_batch), inside the data box."""
    ds = load_dataset("toy2d", n=4000, seed=0)
    idx = torch.arange(4000)
    clean = train.data_batch(train.parse_config([]), ds, idx, "cpu")
    noisy = train.data_batch(train.parse_config(["--data_noise", "0.05"]), ds, idx, "cpu")
    assert torch.equal(clean, ds.x) and (noisy - clean).std().item() == pytest.approx(0.05, rel=0.05)
    lo, hi = ds.data_range
    assert noisy.min() >= lo and noisy.max() <= hi


# ---------------------------------------------------------------- shapes (images)

SHAPES_DIR = os.path.join(HERE, "checkpoints", "shapes")
SUPERVISED_DIR = os.path.join(HERE, "checkpoints", "supervised")  # the judge and the regressor: no concept models


def test_shapes_dataset_is_labelled_cached_and_checked(tmp_path):
    import infer
    from data import make_shapes
    from infer import blobs, reads_as
    a = make_shapes(n=64, seed=3, cache_dir=str(tmp_path))
    assert a.x.shape == (64, 3, 32, 32) and a.x.dtype == torch.float32 and 0 <= a.x.min() and a.x.max() <= 1
    assert set(a.labels) == {"shape", "color", "size", "position"} and a.labels["position"].shape == (64, 2)
    assert len(os.listdir(tmp_path)) == 1  # cached ...
    b = make_shapes(n=64, seed=3, cache_dir=str(tmp_path))  # ... and read back
    assert torch.equal(a.x, b.x) and torch.equal(a.labels["color"], b.labels["color"])
    # the object is where its label says (x right, y up): one blob, within 0.1
    for places, pos in zip(blobs(a.x), a.labels["position"].tolist()):
        assert len(places) == 1 and np.hypot(places[0][0] - pos[0], places[0][1] - pos[1]) < 0.1
    # clutter (paper fig. 5): the same labelled objects, with smaller ones of other colors beside them
    c = make_shapes(n=64, seed=3, clutter=2, cache_dir=str(tmp_path))
    assert all(torch.equal(a.labels[k], c.labels[k]) for k in a.labels)
    assert sum(len(places) == 3 for places in blobs(c.x)) >= 0.9 * 64  # three apart, where there is room
    # the labelled object is the largest blob, where samples of models trained on clutter are read
    judge, _ = infer.load_judge()
    pred, places = infer.readings(judge, c.x, 1, clutter=True)
    assert all(len(p) == 1 for p in places) and reads_as("position", pred, c.labels["position"]).float().mean() > 0.95
    # clutter of the labelled objects' sizes: two objects alike, so the labelled one is the larger about half the time
    d = make_shapes(n=64, seed=3, clutter=1, clutter_size="any", cache_dir=str(tmp_path))
    assert all(torch.equal(a.labels[k], d.labels[k]) for k in a.labels) and not torch.equal(c.x, d.x)
    assert sum(len(places) == 2 for places in blobs(d.x)) >= 0.8 * 64  # large ones touch more often (55 of 64 apart)
    pred, _ = infer.readings(judge, d.x, 1, clutter=True)
    assert 0.25 < reads_as("position", pred, d.labels["position"]).float().mean() < 0.75
    # a smaller clutter_gap lets the objects stand closer: more of them touch, and the apart ones are nearer
    e = make_shapes(n=64, seed=3, clutter=1, clutter_size="any", clutter_gap=1.0, cache_dir=str(tmp_path))
    apart = [[np.hypot(*np.subtract(*p)) for p in blobs(x.x) if len(p) == 2] for x in (d, e)]
    assert len(apart[1]) < len(apart[0]) and np.median(apart[1]) < np.median(apart[0]) - 0.1  # 44 < 55; 1.54, 1.71
    with pytest.raises(ValueError, match="clutter_gap must be a positive multiple of the two radii, got 0"):
        make_shapes(n=4, clutter=1, clutter_gap=0, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown clutter_size 'huge'; allowed: 'small', 'any'"):
        make_shapes(n=4, clutter=1, clutter_size="huge", cache_dir=str(tmp_path))
    assert make_shapes(n=4, image_size=64, cache_dir=str(tmp_path)).x.shape == (4, 3, 64, 64)
    for heldout in ("colors", "light", "sizes", "shape"):
        assert make_shapes(n=4, heldout=heldout, cache_dir=str(tmp_path)).x.shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="48.*32, 64"):
        make_shapes(n=4, image_size=48, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="moon"):
        make_shapes(n=4, scene="moon", cache_dir=str(tmp_path))


def test_image_energy_shapes_conditioning_and_errors():
    net = build_model("image", image_size=32, channels=(8, 16), n_values=8)
    x = torch.rand(5, 3, 32, 32)
    c = torch.full((5,), 2)
    assert net(x, c).shape == (5,)
    net.eval()  # (in training mode each forward takes a power iteration of spectral norm)
    assert torch.allclose(net(x, c), net(x, torch.tensor(2)), atol=1e-5)  # one value for all == per sample
    pos = build_model("image", image_size=32, channels=(8, 16), cond_dim=2)
    assert pos(x, torch.rand(5, 2)).shape == (5,) and pos(x, torch.tensor([0.5, -0.3])).shape == (5,)
    with pytest.raises(ValueError, match="32x32"):
        net(torch.rand(2, 3, 64, 64), torch.tensor(0))
    with pytest.raises(ValueError, match="either n_values"):
        build_model("image", n_values=3, cond_dim=2)
    # every 3x3 conv is spectrally normalised: its largest singular value is about 1
    net.train()
    for _ in range(20):
        net(x, c)  # power iterations happen in training mode
    w = net.blocks[0].conv1.weight.flatten(1)
    assert abs(torch.linalg.matrix_norm(w, ord=2).item() - 1) < 0.05


def test_continuous_concepts_parse_and_check_their_values():
    from compose import Family
    names = {"cube": Concept(None, "shape", 1, "cube"), "red": Concept(None, "color", 0, "red"),
             "size": Family(None, "size", ("size",), 0.3, 0.7),
             "position": Family(None, "position", ("x", "y"), -1.0, 1.0)}
    e = parse("cube & red & size=0.6 & position=(0.5,-0.3)", names)
    assert isinstance(e, And) and [t.value for t in e.terms] == [1, 0, [0.6], [0.5, -0.3]]
    assert repr(e) == "(cube & red & size=0.6 & position=(0.5,-0.3))"
    for text, message in [("size=0.9", r"size=0.9 is out of range: size takes values in \[0.3, 0.7\]"),
                          ("cube & size", "size is continuous and needs a value"),
                          ("red=1", "red is a discrete concept"),
                          ("position=(0.5)", "position takes 2 number"),
                          ("position=(0.5,0.3", r"expected ',' or '\)'"),
                          ("size=", "expected a number"), ("bogus", "known concepts: cube, position=..., red, size=...")]:
        with pytest.raises(ValueError, match=message):
            parse(text, names)


def test_judge_reads_held_out_renders_clean_and_under_faint_noise():
    """Renders of another seed, clean and with pixel noise of std 0.02 and 0.05: samples are never clean, and a
    judge trained on clean renders read 2/255 of noise as another size and place (EXPERIMENTS.md)."""
    from types import SimpleNamespace
    from data import make_shapes
    from infer import judge_accuracy, load_judge
    judge, _ = load_judge(os.path.join(SUPERVISED_DIR, "judge.pt"))
    ds, g = make_shapes(n=1000, seed=999), torch.Generator().manual_seed(0)
    for sd in (0, 0.02, 0.05):
        x = (ds.x + sd * torch.randn(ds.x.shape, generator=g)).clamp(0, 1)  # (1000, 3, 32, 32)
        acc = judge_accuracy(judge, SimpleNamespace(x=x, labels=ds.labels))
        assert min(acc["shape"], acc["color"], acc["size"]) >= 0.95 and acc["position_error"] <= 0.05, (sd, acc)


def test_largest_blob_reads_positions_under_faint_noise():
    """bench.py --curve's `at blob` column: the largest blob's centre is the rendered position, with or without
    pixel noise of std 0.02 (which a judge trained on clean renders misread: EXPERIMENTS.md)."""
    from data import make_shapes
    from infer import load_judge, readings, reads_as
    judge, _ = load_judge(os.path.join(SUPERVISED_DIR, "judge.pt"))
    ds = make_shapes(n=200, seed=999)
    noisy = (ds.x + 0.02 * torch.randn(ds.x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    for x in (ds.x, noisy):
        pred, _ = readings(judge, x, 1, clutter=True)
        assert reads_as("position", pred, ds.labels["position"]).float().mean() >= 0.99


def test_crossproduct_data_test_set_and_holistic_baseline(tmp_path):
    """paper 3.4: every size only in the corner; test places outside it; the baseline learns."""
    import experiments
    from data import COLORS, LARGE_SIZES, SHAPES, corner_side, make_shapes
    from experiments import position_error
    from infer import load_judge, predict
    ds = make_shapes(n=512, seed=0, corner=0.25, cache_dir=str(tmp_path))  # corner square [0, 1]^2
    assert (ds.labels["shape"] == SHAPES.index("sphere")).all() and (ds.labels["color"] == list(COLORS).index("red")).all()
    inside, size = (ds.labels["position"] >= 1 - corner_side(0.25)).all(1), ds.labels["size"][:, 0]
    assert 0.15 < inside.float().mean() < 0.35
    assert ((size[~inside] >= LARGE_SIZES[0]) & (size[~inside] <= LARGE_SIZES[1])).all()
    assert (size[inside] < LARGE_SIZES[0]).float().mean() > 0.5  # U(0.3, 0.7): 3/4 below 0.6
    assert (make_shapes(n=64, seed=1, corner=0, cache_dir=str(tmp_path)).labels["size"] >= LARGE_SIZES[0]).all()
    pos, want = experiments.crossproduct_test(64)
    assert len(pos) == 64 and (pos < 1 - corner_side(experiments.CROSS_TEST_CORNER)).any(1).all() and (want < 0.6).all()
    # one combination per sample: a Concept of (B, d) values conditions each sample on its own row
    net = build_model("image", cond_dim=2).eval()  # eval: spectral norm's power iteration stays put
    torch.nn.init.normal_(net.blocks[0].film.weight)
    x = torch.rand(3, 3, 32, 32)
    rows = Concept(net, "position", pos[:3].tolist(), "position")(x)
    assert torch.allclose(rows, torch.stack([Concept(net, "position", p, "p")(x[i:i + 1])[0]
                                             for i, p in enumerate(pos[:3].tolist())]), atol=1e-5)
    gen = experiments.train_holistic(ds, str(tmp_path / "holistic.pt"), iters=150, batch=32)
    judge, _ = load_judge(os.path.join(SUPERVISED_DIR, "judge.pt"))
    with torch.no_grad():
        p = predict(judge, gen(torch.cat([ds.labels["position"], ds.labels["size"]], 1)[:128]))
    assert (p["size"] - size[:128]).abs().mean() < 0.05 and position_error(p["position"], ds.labels["position"][:128]) < 0.05
    again, _ = experiments.load_holistic(str(tmp_path / "holistic.pt"))
    assert torch.allclose(again(pos[:2].new_tensor([[0.0, 0.0, 0.5]])), gen(torch.tensor([[0.0, 0.0, 0.5]])))


def test_score_cli_judges_concepts_and_counts_objects(tmp_path):
    from data import load_dataset, render_shapes, to_float
    ds = load_dataset("shapes", n=400, seed=11)
    red = ds.x[ds.labels["color"] == 0][:40]
    np.savez(tmp_path / "red.npz", samples=red.numpy())
    code, out, err = run_cli_here("infer.py", "--score", "red", "--samples", str(tmp_path / "red.npz"))
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "accuracy 1.000" and "noise_baseline" in out
    code, out, _ = run_cli_here("infer.py", "--score", "blue | sphere & ~red", "--samples", str(tmp_path / "red.npz"))
    assert out.strip().splitlines()[-1] == "accuracy 0.000"
    # two objects at (-0.5, -0.5) and (0.5, 0.5), rendered separately and overlaid
    n = 16
    labels = {"shape": np.arange(2 * n) % 3, "color": np.tile([[0.9, 0.1, 0.1]], (2 * n, 1)),
              "size": np.linspace(0.3, 0.4, 2 * n), "position": np.array([[-0.5, -0.5], [0.5, 0.5]] * n)}
    imgs = to_float(render_shapes(labels))  # (2n, 3, 32, 32)
    two = torch.stack([torch.where((imgs[2 * i + 1].max(0).values - imgs[2 * i + 1].min(0).values) > 0.05,
                                   imgs[2 * i + 1], imgs[2 * i]) for i in range(n)])
    np.savez(tmp_path / "two.npz", samples=two.numpy())
    np.savez(tmp_path / "one.npz", samples=imgs[::2].numpy())
    expr = "position=(-0.5,-0.5) & position=(0.5,0.5)"
    assert run_cli_here("infer.py", "--score", expr, "--samples", str(tmp_path / "two.npz"))[1].strip().endswith("accuracy 1.000")
    assert run_cli_here("infer.py", "--score", expr, "--samples", str(tmp_path / "one.npz"))[1].strip().endswith("accuracy 0.000")
    # scenes with clutter (as models trained with --clutter draw them): read with --clutter, the largest blob
    scene = {k: v[:n] for k, v in labels.items()} | {"position": np.tile([[0.5, -0.3]], (n, 1)), "size": np.full(n, 0.6)}
    np.savez(tmp_path / "scene.npz", samples=to_float(render_shapes(scene, clutter=2, seed=4)).numpy())
    expr, scene = "position=(0.5,-0.3)", ("--samples", str(tmp_path / "scene.npz"))
    assert float(run_cli_here("infer.py", "--score", expr, *scene, "--clutter")[1].split()[-1]) >= 0.9
    assert float(run_cli_here("infer.py", "--score", expr, *scene)[1].split()[-1]) <= 0.2
    # the object rule: an empty grey image and smooth noise show no object, whatever the judge reads
    import infer
    judge, ckpt = infer.load_judge()
    names = infer.judge_vocabulary(ckpt)
    smooth = torch.nn.functional.interpolate(torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(0)),
                                             size=32, mode="bilinear")  # (64, 3, 32, 32)
    for text in ("cube", "cylinder", "sphere", "red | blue"):
        assert infer.score(parse(text, names), smooth, judge)[0] == 0, text
    assert infer.score(parse("size=0.35", names), torch.full((8, 3, 32, 32), 0.5), judge)[0] == 0
    code, _, err = run_cli_here("infer.py", "--score", "red", "--samples", str(tmp_path / "missing.npz"))
    assert code != 0 and "does not exist" in err
    np.savez(tmp_path / "toy.npz", samples=np.zeros((4, 2)))
    code, _, err = run_cli_here("infer.py", "--score", "red", "--samples", str(tmp_path / "toy.npz"))
    assert code != 0 and "judge reads images (N, 3, 32, 32)" in err


def test_short_shapes_training_ranks_data_below_noise(tmp_path):
    out = str(tmp_path / "run")
    common = ["--dataset", "shapes", "--out_dir", out, "--cache_dir", str(tmp_path / "data"), "--n_data", "512",
              "--batch_size", "16", "--steps", "5", "--buffer_size", "256", "--log_interval", "10"]
    code, stdout, stderr = run_cli("train.py", *common, "--concept", "color", "--max_iters", "60")
    assert code == 0, stderr
    net, ckpt = load_checkpoint(os.path.join(out, "color.pt"))
    assert ckpt["encoding"] == "index" and ckpt["values"][0] == "red" and len(ckpt["data_energy"]) == 8
    assert os.path.exists(os.path.join(out, "color_samples.png"))
    assert os.path.exists(os.path.join(out, "snapshots", "color_000060.pt"))
    # quality: after 60 iterations the model already ranks real renders below uniform noise
    from data import make_shapes
    ds = make_shapes(n=128, seed=5, cache_dir=str(tmp_path / "data"))
    with torch.no_grad():
        e_data = net(ds.x, ds.labels["color"])  # (128,)
        e_noise = net(torch.rand(128, 3, 32, 32), ds.labels["color"])
    assert (e_data[:, None] < e_noise[None, :]).float().mean() > 0.9
    # a continuous family: one typical energy; the chains keep the data points their concepts came from
    code, _, stderr = run_cli("train.py", *common, "--concept", "position", "--max_iters", "3")
    assert code == 0, stderr
    _, ckpt = load_checkpoint(os.path.join(out, "position.pt"))
    assert ckpt["encoding"] == "numbers" and ckpt["range"] == [-1.0, 1.0] and len(ckpt["data_energy"]) == 1
    c, filled = ckpt["buffer"]["c"], ckpt["buffer"]["filled"]
    assert c.shape == (256,) and c.dtype == torch.long and 0 < filled.sum() and c[filled].max() < 512
    # both folders' models compose; a folder mixing datasets is refused
    code, stdout, stderr = run_cli("compose.py", "red & position=(0.5,-0.3)", "--ckpt_dir", out, "--num", "3",
                                   "--steps", "4", "--save", str(tmp_path / "x.npz"))
    assert code == 0, stderr
    assert np.load(tmp_path / "x.npz")["samples"].shape == (3, 3, 32, 32)
    code, _, stderr = run_cli_here("compose.py", "red & position=(2,0)", "--ckpt_dir", out, "--steps", "1")
    assert code != 0 and "position=(2,0) is out of range" in stderr


def test_shapes_bench_on_the_shipped_model_of_cluttered_scenes(capsys):
    """bench.py --shapes on checkpoints/scenes (a position model trained among clutter, alone): the rows that name
    other concepts are skipped, the others sampled and judged."""
    import bench
    scenes = os.path.join(HERE, "checkpoints", "scenes")
    assert os.listdir(scenes) == ["position.pt"] and load_checkpoint(f"{scenes}/position.pt")[1]["config"]["clutter"]
    rows = bench.bench_shapes(scenes, n=8, figure=None, steps=2)
    assert [r[0] for r in rows] == [t for t in bench.SHAPES_SUITE if set(re.findall("[a-z]+", t)) == {"position"}]
    assert "skipped: unknown concept 'cube'" in capsys.readouterr().out


def test_shipped_shapes_models_compose_images(tmp_path):
    concepts = compose.load_concepts(SHAPES_DIR)
    assert {"sphere", "cube", "cylinder", "red", "blue", "size", "position"} <= set(concepts)
    assert len({id(c.model) for c in concepts.values()}) == 4  # color, position, shape, size: nothing else
    assert sum(os.path.getsize(os.path.join(SHAPES_DIR, f)) for f in os.listdir(SHAPES_DIR)) <= 20e6
    code, stdout, stderr = run_cli("compose.py", "sphere & blue & size=0.5 & position=(0.5,-0.3)", "--ckpt_dir",
                                   SHAPES_DIR, "--num", "6", "--steps", "3", "--save", str(tmp_path / "x.npz"), "--gif")
    assert code == 0, stderr
    x = np.load(tmp_path / "x.npz")["samples"]
    assert x.shape == (6, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert os.path.exists(tmp_path / "x.png") and os.path.exists(tmp_path / "x.gif")
    code, _, stderr = run_cli("compose.py", "cube", "--ckpt_dir", SHAPES_DIR, "--num", "2", "--steps", "2",
                              "--save", str(tmp_path / "only.png"))
    assert code == 0 and os.listdir(tmp_path).count("only.png") == 1 and not os.path.exists(tmp_path / "only.npz")
    for expr, message in [("bogus & red", "known concepts: blue, cube"), ("size=0.1", "out of range"),
                          ("red=1", "discrete concept")]:
        code, _, stderr = run_cli_here("compose.py", expr, "--ckpt_dir", SHAPES_DIR, "--steps", "1")
        assert code != 0 and message in stderr, (expr, stderr)
    # a folder mixing image sizes is refused, naming both files
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for fam, shape in (("color", [3, 32, 32]), ("position", [3, 64, 64])):
        ckpt = torch.load(os.path.join(SHAPES_DIR, f"{fam}.pt"), weights_only=True)
        ckpt["config"]["x_shape"] = shape
        torch.save(ckpt, mixed / f"{fam}.pt")
    code, _, stderr = run_cli_here("compose.py", "red", "--ckpt_dir", str(mixed))
    assert code != 0 and "position.pt was trained on shapes (3, 64, 64)" in stderr
    # resuming a run of another dataset is refused
    os.replace(mixed / "color.pt", mixed / "vertical.pt")
    code, _, stderr = run_cli_here("train.py", "--concept", "vertical", "--out_dir", str(mixed), "--resume")
    assert code != 0 and "it was trained on shapes (3, 32, 32), this run is toy2d (2,)" in stderr


# ---------------------------------------------------------------- celeba, torchrun, speed

CELEBA_ATTRS = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
                "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
                "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
                "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
                "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()


def make_fake_celeba(root, n=32, seed=0):
    """A tiny CelebA folder in the real layout. Each 178x218 face: a grey background, a red
    band over the top 15 rows (the center crop must remove it), and a 60x60 square in the
    middle, white for Smiling faces and black for the others. The first 3/4 are `train`."""
    import imageio.v3 as iio
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "img_align_celeba"), exist_ok=True)
    attrs = rng.choice([-1, 1], size=(n, 40))
    attr_lines = [str(n), " ".join(CELEBA_ATTRS) + " "]  # the real file ends its names with a space
    for i in range(n):
        img = np.full((218, 178, 3), 128, np.uint8)
        img[:15] = (255, 0, 0)
        img[79:139, 59:119] = 255 if attrs[i, CELEBA_ATTRS.index("Smiling")] > 0 else 0
        iio.imwrite(os.path.join(root, "img_align_celeba", f"{i + 1:06d}.jpg"), img)
        attr_lines.append(f"{i + 1:06d}.jpg " + " ".join(f"{v:2d}" for v in attrs[i]))
    with open(os.path.join(root, "list_attr_celeba.txt"), "w") as f:
        f.write("\n".join(attr_lines) + "\n")
    with open(os.path.join(root, "list_eval_partition.txt"), "w") as f:
        f.writelines(f"{i + 1:06d}.jpg {0 if i < n * 3 // 4 else 1}\n" for i in range(n))
    return attrs > 0  # (n, 40) bool


@pytest.fixture(scope="module")
def fake_celeba(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("celeba"))
    return root, make_fake_celeba(root)


def test_celeba_loader_reads_the_standard_layout(fake_celeba, tmp_path, capsys):
    root, attrs = fake_celeba
    ds = load_dataset("celeba", data_dir=root, image_size=64, cache_dir=str(tmp_path))
    assert ds.x.shape == (24, 3, 64, 64) and ds.x.dtype == torch.uint8  # the train split
    assert len(ds.concepts) == 40 and ds.concepts["Smiling"] == ("not_Smiling", "Smiling")
    smiling = attrs[:24, CELEBA_ATTRS.index("Smiling")]
    assert torch.equal(ds.labels["Smiling"], torch.from_numpy(smiling).long())
    assert torch.equal(ds.labels["5_o_Clock_Shadow"], torch.from_numpy(attrs[:24, 0]).long())
    centre = ds.x[:, :, 32, 32].float().mean(1)  # (24,)
    assert ((centre > 200) == torch.from_numpy(smiling)).all()  # the square, resized into the middle
    top = ds.x[:, :, 0, :].float()  # (24, 3, 64): the first row after the crop
    assert (top[:, 0] - top[:, 1]).abs().max() < 30  # grey: the red band was cropped away
    # batches: floats in [0, 1), dequantised within each uint8 bin
    x = ds.batch(torch.arange(8))
    offset = x * 256 - ds.x[:8]  # u: uniform in [0, 1) (up to float rounding)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert -1e-4 < offset.min() and offset.max() < 1 + 1e-4 and abs(offset.std() - 12 ** -0.5) < 0.01
    # the cache: decoded once, read back identical
    assert "decoding 24 images" in capsys.readouterr().out
    again = load_dataset("celeba", data_dir=root, image_size=64, cache_dir=str(tmp_path))
    assert "decoding" not in capsys.readouterr().out and torch.equal(again.x, ds.x)
    assert load_dataset("celeba", data_dir=root, image_size=128, split="all", cache_dir=str(tmp_path)).x.shape == \
        (32, 3, 128, 128)


def test_celeba_bad_input_is_named(fake_celeba, tmp_path):
    root, _ = fake_celeba
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match="needs --data_dir"):
        load_dataset("celeba", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt is missing"):
        load_dataset("celeba", data_dir=str(tmp_path), cache_dir=cache)
    with pytest.raises(ValueError, match="unknown image_size 96; allowed: 64, 128"):
        load_dataset("celeba", data_dir=root, image_size=96, cache_dir=cache)
    broken = tmp_path / "broken"
    make_fake_celeba(str(broken), n=4)
    (broken / "img_align_celeba" / "000002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read CelebA image .*000002.jpg"):
        load_dataset("celeba", data_dir=str(broken), split="all", cache_dir=cache)
    os.remove(broken / "img_align_celeba" / "000003.jpg")
    (broken / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000002.jpg is missing"):
        load_dataset("celeba", data_dir=str(broken), split="all", cache_dir=cache)
    assert not [f for f in os.listdir(cache) if f.endswith(".u8")]  # no cache from a failed decode
    # the command line: one line naming the problem, no traceback
    for args, message in [(["--concept", "Smiling"], "needs --data_dir"),
                          (["--concept", "Smiling,Frowning", "--data_dir", root], "Wearing_Necktie, Young")]:
        code, _, err = run_cli_here("train.py", "--dataset", "celeba", "--cache_dir", cache, *args)
        assert code != 0 and message in err, (args, err)
    with pytest.raises(ValueError, match="choose the attribute to train with --concept"):
        train.main(["--dataset", "celeba", "--data_dir", root, "--cache_dir", cache])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            train.main(["--dataset", "celeba", "--data_dir", root, "--device", "cuda"])


def readme_celeba_block():
    """The CelebA commands of the README, as written."""
    text = open(os.path.join(HERE, "README.md")).read()
    block = text.split("<!-- celeba commands")[1].split("```bash\n")[1].split("```")[0]
    return block


def test_readme_celeba_commands_run_on_a_fake_folder(fake_celeba, tmp_path):
    """The smoke loop and the compositions run as written (in a copy of the code, with
    CELEBA set to the fake folder); the GPU-scale trainings, which would take hours on
    this CPU, are checked as far as their settings and data."""
    root, _ = fake_celeba
    for f in os.listdir(HERE):
        if f.endswith(".py"):
            with open(os.path.join(HERE, f)) as src, open(tmp_path / f, "w") as dst:
                dst.write(src.read())
    block = readme_celeba_block()
    long_runs = [line for line in block.splitlines() if "train.py" in line and "--max_iters" not in line]
    assert len(long_runs) == 2 and any(line.startswith("torchrun --standalone --nproc_per_node=8 ") for line in long_runs)
    runnable = "\n".join(line for line in block.splitlines() if line not in long_runs and not line.startswith("export"))
    p = subprocess.run(["bash", "-euc", runnable], cwd=tmp_path, env={**os.environ, "CELEBA": root,  # `python` is this interpreter, as in an activated venv
                            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]},
                       capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(re.findall(r"out/(\S+\.png)", block))
    assert len(re.findall(r"^sampled 16 ", p.stdout, re.M)) == 5
    for line in long_runs:
        argv = line.split("train.py", 1)[1].replace("$CELEBA", root).split()
        cfg = train.parse_config(argv + ["--cache_dir", str(tmp_path / "out-data")])
        ds = train.dataset_for(cfg)
        assert train.resolve_family(cfg.concept, ds) == "Smiling" and cfg.preset == f"celeba{cfg.img_size}"


def torchrun(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "torch.distributed.run"]
    p = subprocess.run([*cmd, "--standalone", "--nproc_per_node=2", *args], cwd=HERE, capture_output=True,
                       text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_torchrun_two_processes_train_one_model(fake_celeba, tmp_path):
    root, _ = fake_celeba
    out = str(tmp_path / "run")
    common = ["train.py", "--dataset", "celeba", "--data_dir", root, "--cache_dir", str(tmp_path / "cache"),
              "--preset", "shapes32", "--batch_size", "8", "--steps", "3", "--buffer_size", "64", "--out_dir", out,
              "--device", "cpu"]  # the gloo path, even where a GPU is visible (2 processes, maybe 1 GPU)
    code, stdout, stderr = torchrun(*common, "--concept", "smiling", "--max_iters", "6", "--log_interval", "2")
    assert code == 0, stderr[-3000:]
    assert "[Smiling] ddp: weights identical on all 2 ranks" in stdout
    assert stdout.count("iter     6/6") == 1  # rank 0 alone logs
    net, ckpt = load_checkpoint(os.path.join(out, "Smiling.pt"))
    assert ckpt["step"] == 6 and ckpt["buffer"]["x"].shape == (64, 3, 64, 64) and ckpt["family"] == "Smiling"
    # one rank fails (a broken image while rank 0 builds the cache): the run stops, naming it
    broken = tmp_path / "broken"
    make_fake_celeba(str(broken), n=8)
    (broken / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")
    code, _, stderr = torchrun(*common[:4], str(broken), *common[5:], "--concept", "Smiling", "--max_iters", "2")
    assert code != 0 and "error: cannot read CelebA image" in stderr and "000003.jpg" in stderr
    assert "error (rank 1): rank 0 failed while preparing the data" in stderr


def test_bf16_autocast_keeps_energies_and_gradients_in_fp32():
    torch.manual_seed(0)
    net = build_model("image", image_size=32, channels=(8, 16), n_values=2)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    e32 = net(x, torch.tensor(1))
    net.bf16 = True  # what a CUDA device with bfloat16 gets by default; forced here on the CPU
    e16 = net(x, torch.tensor(1))
    (g,) = torch.autograd.grad(e16.sum(), x)
    assert e16.dtype == torch.float32 and g.dtype == torch.float32
    assert not torch.equal(e16, e32) and torch.allclose(e16, e32, atol=0.05 * e32.abs().max().item() + 1e-3)


# ---------------------------------------------------------------- samplers and partition functions

def test_mala_and_hmc_remove_the_step_size_bias_of_ula():
    """On N(0, I) with a large step (1.0), ULA's chains settle at variance 1 / (1 - 1/4) = 1.33;
    the Metropolis test of MALA and HMC brings them to the exact 1; at tau = 0.25 (noise
    scale half of sqrt(step)) to the exact 0.25."""
    energy = lambda x: 0.5 * x.pow(2).sum(1)  # noqa: E731
    x0 = 3 * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    var = {m: run_chains(energy, x0, 200, 1.0, method=m).x.var(0).mean().item() for m in ("ula", "mala", "hmc")}
    assert abs(var["ula"] - 4 / 3) < 0.06 and abs(var["mala"] - 1) < 0.04 and abs(var["hmc"] - 1) < 0.04, var
    cold = run_chains(energy, x0, 400, 0.2, noise_scale=0.5 * 0.2 ** 0.5, method="mala").x.var(0).mean().item()
    assert abs(cold - 0.25) < 0.015
    with pytest.raises(ValueError, match="method must be"):
        run_chains(energy, x0, 1, 0.1, method="gibbs")


def test_a_shrinking_step_settles_in_a_minimum_narrower_than_the_first_step():
    """A cold chain with a step too large for its minimum's curvature (here x <- x - 2.5 x) bounces out to
    the clamp and stays there; with step_end the step shrinks along the chain and the chain settles at the
    minimum (why the image models can train with step_end: EXPERIMENTS.md)."""
    energy = lambda x: 0.5 * x.pow(2).sum(1)  # noqa: E731  curvature 1: a step above 4 diverges
    x0 = torch.rand(256, 2) + 0.5
    const = run_chains(energy, x0, 60, 5.0, noise_scale=0.0, clamp=(-3, 3)).x
    shrink = run_chains(energy, x0, 60, 5.0, noise_scale=0.0, clamp=(-3, 3), step_end=0.5).x
    assert const.abs().min() == 3.0 and shrink.abs().max() < 0.01
    with pytest.raises(ValueError, match="step_end"):
        run_chains(energy, x0, 10, 1.0, step_end=2.0)
    with pytest.raises(ValueError, match="step_end must be"):
        train.parse_config(["--dataset", "shapes", "--step_end", "30"])  # above the step of 20


def test_compositions_sample_at_half_the_training_step_on_2d_data_at_the_same_temperature():
    """ULA's step bias widens every mode; toy2d compositions sample at half the training step (train.py
    --eval_step_size), with the noise scaled so that the temperature noise^2 / step stays 1. On the exact
    energies the half step brings the samples nearer their modes. Images and older checkpoints keep theirs."""
    import dataclasses
    import bench
    from sampler import temperature
    box = {"data_range": [-3.0, 3.0], "x_shape": [2]}
    config = {**dataclasses.asdict(train.parse_config([])), **box}  # what a toy2d checkpoint keeps
    toy = compose.sampling_settings(config)
    assert toy["step_size"] == 0.005 and temperature(toy["step_size"], toy["noise_scale"]) == pytest.approx(1.0)
    images = train.parse_config(["--dataset", "shapes"])
    assert compose.sampling_settings({**dataclasses.asdict(images), **box})["step_size"] == images.step_size
    older = dict(config)
    del older["eval_step_size"]  # a checkpoint written before the setting existed samples as it did
    assert compose.sampling_settings(older)["step_size"] == 0.01
    with pytest.raises(ValueError, match="--eval_step_size must be 0"):
        train.parse_config(["--eval_step_size", "-1"])
    concepts, centres = bench.exact_toy2d_concepts(), toy2d_modes()[0]
    expr = parse("outer", concepts)
    radius = {}  # RMS distance of 4000 samples to their nearest mode (exact Gaussians: 0.141)
    for step in (0.01, 0.005):  # the exact energies, sampled as a toy2d checkpoint of each eval step would be
        x = compose.sample(expr, 4000, compose.sampling_settings(dict(config, eval_step_size=step)))
        radius[step] = torch.cdist(x, centres).min(1).values.pow(2).mean().sqrt().item()
    assert radius[0.005] < radius[0.01] - 0.005 and radius[0.005] < TOY2D_STD * 2 ** 0.5 + 0.02, radius


def test_log_partition_by_quadrature_and_by_annealed_importance_sampling():
    # a Gaussian in a box: log Z = log(2 pi), by AIS from uniform noise with MALA
    energy = lambda x: 0.5 * x.pow(2).sum(1)  # noqa: E731
    torch.manual_seed(0)
    log_z = run_chains(energy, 12 * torch.rand(2000, 2) - 6, 300, 0.05, anneal=50, resample=True,
                       clamp=(-6, 6), method="mala").log_z
    assert abs(log_z - np.log(2 * np.pi)) < 0.05
    # toy2d's exact energies: a concept of 8 modes vs a conjunction of 2 (log 4 apart), both ways
    import bench
    concepts, settings = bench.exact_toy2d_concepts(), bench.exact_toy2d_settings()
    inner, corner = parse("inner", concepts), parse("bottom & left", concepts)
    quad = [compose.log_partition(e, settings) for e in (inner, corner)]
    assert abs(quad[0] - quad[1] - np.log(4)) < 0.01
    ais = [compose.log_partition(e, settings, ais=True) for e in (inner, corner)]
    assert abs(ais[0] - quad[0]) < 0.1 and abs(ais[1] - quad[1]) < 0.1  # 512 chains: within 10% in Z


def test_balanced_disjunction_reaches_its_exact_weights():
    """inner | (bottom & left): the paper's -logsumexp weighs the terms by their partition
    functions (4:1) and ULA's bias starves the narrow conjunction; weighted by log Z and
    sampled with MALA it lands on the exact weights."""
    import bench
    concepts, settings = bench.exact_toy2d_concepts(), bench.exact_toy2d_settings()
    expr = parse("inner | (bottom & left)", concepts)
    plain = toy2d_quality(compose.sample(expr, 2000, settings), expr)["mode_tv"]
    compose.balance(expr, settings)
    fixed = toy2d_quality(compose.sample(expr, 2000, dict(settings, method="mala")), expr)
    assert plain > 0.2 and fixed["mode_tv"] < 0.06 and fixed["precision"] > 0.97, (plain, fixed)


def test_mala_removes_ulas_step_bias_and_a_mala_run_samples_with_it():
    """On the exact toy2d energies ULA's finite step widens every mode (samples 0.16 from their mode's centre
    in RMS, against 0.141 for the true Gaussians); MALA's Metropolis test removes the bias. A run trained with
    --sampler mala keeps that sampler for its compositions; a ULA run samples as before."""
    import dataclasses
    import bench
    concepts, settings = bench.exact_toy2d_concepts(), bench.exact_toy2d_settings(steps=200)
    expr = parse("outer", concepts)
    centres, _ = toy2d_modes()
    radius = {m: torch.cdist(compose.sample(expr, 2000, dict(settings, method=m)), centres).min(1).values
              .pow(2).mean().sqrt().item() for m in ("ula", "mala")}  # RMS distance to the nearest mode
    exact = TOY2D_STD * 2 ** 0.5
    assert radius["ula"] > exact + 0.007 and abs(radius["mala"] - exact) < 0.004, radius
    box = {"data_range": [-3.0, 3.0], "x_shape": [2]}
    mala, ula = ({**dataclasses.asdict(train.parse_config(["--sampler", s])), **box} for s in ("mala", "ula"))
    assert compose.sampling_settings(mala)["method"] == "mala" and "method" not in compose.sampling_settings(ula)
    assert compose.sampling_settings(mala, method="hmc")["method"] == "hmc"  # compose.py --sampler still wins
    with pytest.raises(ValueError, match="--sampler must be ula or mala, got 'hmc'"):
        train.parse_config(["--sampler", "hmc"])


# ---------------------------------------------------------------- concept inference

class PlantedEnergy(torch.nn.Module):
    """A stand-in concept model whose answer is planted in each image: pixel (0, 0) holds a
    position t in its red and green channels; E(x | c) = |c - t|^2 for positions, and for a
    discrete family 0 at value round(7 * blue) and 1 elsewhere. Two wells with `second`."""

    def __init__(self, second=None):
        super().__init__()
        self.second = second

    def forward(self, x, c):
        t = 2 * x[:, :2, 0, 0] - 1  # (B, 2)
        if c.dtype == torch.long:
            return (c != (7 * x[:, 2, 0, 0]).round().long()).float()
        e = (c - t).pow(2).sum(1)
        return e if self.second is None else torch.minimum(e, (c - self.second).pow(2).sum(1) + 0.1)


POS_CKPT = {"encoding": "numbers", "range": [-1.0, 1.0], "values": ["x", "y"]}  # a position family, as infer reads it


def planted_images(targets, colors):
    x = torch.full((len(targets), 3, 32, 32), 0.5)
    x[:, :2, 0, 0] = (torch.tensor(targets) + 1) / 2
    x[:, 2, 0, 0] = torch.tensor(colors) / 7
    return x


def test_inference_by_energy_minimisation():
    import infer
    col_ckpt = {"encoding": "index", "values": list(range(8))}
    targets = [(0.33, -0.71), (-0.52, 0.18), (0.9, 0.05)]
    x = planted_images(targets, [2, 5, 7])
    found = infer.infer(PlantedEnergy(), POS_CKPT, x)  # grid (0.1 apart), then gradient refinement
    assert (found - torch.tensor(targets)).abs().max() < 0.01
    joint = infer.infer(PlantedEnergy(), POS_CKPT, x, joint=True)  # summed quadratics: the mean
    assert joint.shape == (1, 2) and (joint[0] - torch.tensor(targets).mean(0)).abs().max() < 0.01
    scenes = infer.infer(PlantedEnergy(), POS_CKPT, x[[0, 1, 2, 2]].view(2, 2, 3, 32, 32))  # 2 scenes, 2 views
    want = torch.stack([torch.tensor(targets[:2]).mean(0), torch.tensor(targets[2])])
    assert scenes.shape == (2, 2) and (scenes - want).abs().max() < 0.01
    assert infer.infer(PlantedEnergy(), col_ckpt, x).tolist() == [2, 5, 7]
    # two wells: two local minima on the map, the deeper first
    e, axis, minima = infer.energy_map(PlantedEnergy(second=torch.tensor([-0.5, 0.5])), x[0])
    assert e.shape == (41, 41) and len(minima) == 2
    assert np.allclose(minima[0], (0.35, -0.7), atol=0.03) and np.allclose(minima[1], (-0.5, 0.5), atol=0.03)


def test_inference_experiments_data_and_tables(capsys, tmp_path):
    import experiments
    import infer
    # two objects, far enough apart to be two blobs, each where the labels say
    x, pos = experiments.two_object_images(16, seed=3)
    assert x.shape == (16, 3, 32, 32) and pos.shape == (16, 2, 2)
    assert ((pos[:, 0] - pos[:, 1]).norm(dim=1) >= experiments.TWO_OBJECTS_APART).all()
    found = infer.blobs(x)
    ok = [len(b) == 2 and all(min(np.hypot(*(np.array(q) - p)) for q in b) < 0.15 for p in ps.numpy())
          for b, ps in zip(found, pos)]
    assert np.mean(ok) >= 0.9, found
    # views: one object, its place fixed, the clutter and the light changing from view to view
    v, truth = experiments.render_views(3, 4, seed=5)
    assert v.shape == (3, 4, 3, 32, 32) and truth.shape == (3, 2)
    assert (v[:, 0] - v[:, 1]).abs().amax((1, 2, 3)).min() > 0.1
    # the shipped position model of scenes over sky and ground (--scene ground --clutter 1) reads such views; the
    # one-object model, which never saw a ground or clutter, is lost among them (16 views measured: 0.019, 0.191)
    views, where = experiments.render_views(4, 4, seed=7)
    err = {d: experiments.position_error(infer.infer(*load_checkpoint(f"{HERE}/checkpoints/{d}/position.pt"),
                                                      views.flatten(0, 1)), where.repeat_interleave(4, 0))
           for d in ("scenes_ground", "shapes")}
    assert err["scenes_ground"] < 0.15 and err["scenes_ground"] < 0.5 * err["shapes"], err
    # the views table counts every view: planted views that read x off by +0.2, -0.2, +0.1, -0.1 give one view's
    # error as their mean (0.15 in x, 0 in y: 0.075), two views (+-0.2, then +-0.1) none, three 0.1 / 3 in x
    offsets = [(0.2, 0.0), (-0.2, 0.0), (0.1, 0.0), (-0.1, 0.0)]
    truth = torch.tensor([[0.3, -0.4], [-0.5, 0.2]])
    planted = torch.stack([planted_images([tuple((t + torch.tensor(o)).tolist()) for o in offsets], [0] * 4)
                           for t in truth])  # (2 scenes, 4 views, 3, 32, 32)
    with mock.patch.object(experiments, "load_checkpoint", return_value=(PlantedEnergy(), POS_CKPT)), \
            mock.patch.object(experiments, "render_views", return_value=(planted, truth)):
        errors = experiments.views_table("planted.pt", n_scenes=2, max_views=4, figure=f"{tmp_path}/views.png")
    assert np.allclose(errors, [0.075, 0.0, 0.1 / 6, 0.0], atol=0.005), errors
    # Table 1 on a few renders: the layout, its last line, and a regressor that reads positions
    rows, avg = experiments.ood_table([f"{SHAPES_DIR}/position.pt"], n=16)
    assert list(rows) == ["Train", "Color", "Light", "Size", "Type"] and len(avg) == 2
    assert rows["Train"][1] < 0.05  # the supervised regressor on data like its own
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"ebm_avg \d\.\d{3} regressor_avg \d\.\d{3}", last), last


def test_two_object_recovery_of_one_model_and_of_two_anded(tmp_path):
    """objects_table counts an image where both objects lie within 0.15 of the two lowest minima; --and adds a
    second model's energy: A's second well, 0.2 off the second object, moves halfway to B's well on it."""
    import experiments
    pos = torch.tensor([[[-0.5, -0.5], [0.5, 0.5]]] * 2)  # (2 images, 2 objects, 2)
    images = planted_images([(-0.5, -0.5)] * 2, [0, 0])  # the first object planted; each model holds the second
    nets = {"a.pt": PlantedEnergy(second=torch.tensor([0.5, 0.7])), "b.pt": PlantedEnergy(second=pos[0, 1])}
    with mock.patch.object(experiments, "load_checkpoint", side_effect=lambda path: (nets[path], POS_CKPT)), \
            mock.patch.object(experiments, "two_object_images", return_value=(images, pos)):
        alone = experiments.objects_table("a.pt", n=2, figure=f"{tmp_path}/a.png")
        anded = experiments.objects_table("a.pt", "b.pt", n=2, figure=f"{tmp_path}/ab.png", weight=1.0)
    assert alone == 0.0 and anded == 1.0, (alone, anded)
    code, _, err = run_cli_here("experiments.py", "objects", "--and", "missing.pt")
    assert code == 1 and "position model missing.pt does not exist" in err


def test_moved_experiments_say_where_they_went():
    """The paper's experiments left infer.py and bench.py for experiments.py: each old spelling
    answers with one line naming the new command, and status 2."""
    new = "run python experiments.py"
    for args, line in [(["infer.py", "--table", "ood"], f"error: infer.py --table moved: {new} ood"),
                       (["infer.py", "--table", "views", "--models", "a.pt"],
                        f"error: infer.py --table moved: {new} views --models a.pt"),
                       (["infer.py", "--train_regressor"], f"error: infer.py --train_regressor moved: {new} regressor"),
                       (["bench.py", "--continual", "out-c"],
                        f"error: bench.py --continual moved: {new} continual --ckpt_dir out-c"),
                       (["bench.py", "--crossproduct", "out-x"],
                        f"error: bench.py --crossproduct moved: {new} crossproduct --ckpt_dir out-x"),
                       (["bench.py", "--partition"], f"error: bench.py --partition moved: {new} partition"),
                       (["bench.py", "--samplers"], f"error: bench.py --samplers moved: {new} samplers")]:
        code, out, err = run_cli_here(*args)
        assert code == 2 and out == "" and err == line + "\n", (args, code, err)
    # the new home: every experiment is listed, and a missing model is named without a traceback
    code, out, _ = run_cli_here("experiments.py", "--help")
    assert code == 0 and all(name in out for name in ("continual", "crossproduct", "regressor", "ood", "views",
                                                         "objects", "partition", "samplers"))
    code, _, err = run_cli_here("experiments.py", "views", "--models", "missing.pt")
    assert code == 1 and "position model missing.pt does not exist" in err
    code, _, err = run_cli_here("experiments.py", "objects", "--models", "a.pt", "b.pt")  # one model: not the first of two
    assert code == 2 and "unrecognized arguments: b.pt" in err


def test_infer_cli_reads_images_and_reports_bad_input(tmp_path):
    import imageio.v3 as iio
    from data import make_shapes
    ds = make_shapes(n=2, seed=5, cache_dir=str(tmp_path))
    img = (ds.x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "a.png", img)
    iio.imwrite(tmp_path / "big.png", np.repeat(np.repeat(img, 2, 0), 2, 1))  # 64x64
    iio.imwrite(tmp_path / "grey.png", img[:, :, 0])
    base = ["infer.py", "--ckpt_dir", SHAPES_DIR, "--concept"]
    code, out, err = run_cli_here(*base, "color", "--images", str(tmp_path / "a.png"), str(tmp_path / "big.png"),
                             "--joint")
    assert code == 0, err
    assert "big.png is 64x64; resized to 32x32" in out and re.search(r"all 2 images: color = \w+", out)
    code, out, err = run_cli_here(*base, "position", "--images", str(tmp_path / "a.png"), "--map", str(tmp_path / "m.png"))
    assert code == 0 and re.search(r"a.png: position = \(-?\d\.\d{3}, -?\d\.\d{3}\)", out) and (tmp_path / "m.png").exists()
    for args, message in [(["hue", "--images", str(tmp_path / "a.png")], "no model of concept 'hue'"),
                          (["color", "--images", str(tmp_path / "nope.png")], "nope.png does not exist"),
                          (["color", "--images", str(tmp_path / "grey.png")], "expected RGB")]:
        code, _, err = run_cli_here(*base, *args)
        assert code != 0 and message in err, (args, err)
