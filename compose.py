"""Composing trained concept EBMs with AND, OR and NOT, and sampling the result.

Each operator takes energy functions x (B, ...) -> (B,) and returns one, so they nest (paper section 2.2):

    a & b   conjunction   E_a + E_b                              (product of experts, eq. 4)
    a | b   disjunction   -T * logsumexp(-E_a/T, -E_b/T)         (mixture, eq. 7, at the sampler's temperature T)
    a & ~b  negation      E_a + alpha * softplus(m_b - E_b)      (eq. 9 with E_b clamped), grounded by a

The negation is BOUNDED: a trained energy grows without limit away from its data, so the paper's
E_a - alpha * E_b would pay chains for leaving the data altogether. Clamped at m_b (the typical energy of b
on its data, plus NEG_MARGIN), ~b only removes b from a: p(x | a, not b) ~ p(x | a) * sigmoid(E_b - m_b)^alpha.
The margin and the softplus's width are in units of b's own scale, its spread: how much higher b's energy
is on the other values' data than on its own (measured by train.py; NEG_SPREAD where a checkpoint lacks it).

From Python:
    concepts = load_concepts("out-toy2d")              # name -> Concept
    expr = concepts["top"] & ~concepts["right"]       # or: parse("top & ~right", concepts)
    x = sample(expr, 2000, sampling_settings(concepts["top"].config))   # (2000, 2)

From the command line (every checkpoint in the folder is loaded):
    python compose.py "top & ~right" --ckpt_dir out-toy2d --num 2000 --save out-toy2d/top_not_right.npz
    python compose.py "cube & red & size=0.6 & position=(0.5,-0.3)" --ckpt_dir checkpoints/shapes --num 64 --save x.png
    python compose.py "inner | (bottom & left)" --ckpt_dir out-toy2d --plain_or   # the paper's unweighted OR
"""
import argparse
import glob
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from data import TOY2D_FAMILIES, TOY2D_STD, toy2d_modes
from model import load_checkpoint
from sampler import log_partition, sample, sample_chains, temperature

NEG_ALPHA = 3.0  # weight of a negated concept: nats per nat of E_b below m_b
NEG_MARGIN = 5.0  # m_b = typical energy of b on its data + NEG_MARGIN: exp(-NEG_MARGIN) as likely counts as "not b"
# ... for a model whose energy is NEG_SPREAD higher on other data than on its own (toy2d's models: 9-13 nats).
# Image models trained at a cold temperature keep energies near 0 (spreads of 0.006-0.24): margin and width scale
# with the spread, so that "not b" means halfway from b to the rest in every model's own units.
NEG_SPREAD = 10.0


class Energy:
    """Base of everything composable: gives Python's &, | and ~ their meaning."""

    def __and__(self, other):
        return And([self, other])

    def __or__(self, other):
        return Or([self, other])

    def __invert__(self):
        return Not(self)


class Concept(Energy):
    """One value of one trained concept model: E(x | c) as a function of x.
    `value` is a value index (discrete) or a list of numbers (continuous, e.g. a position)."""

    def __init__(self, model, family, value, name, data_energy=0.0, spread=NEG_SPREAD):
        self.model, self.family, self.value, self.name = model, family, value, name
        self.data_energy = data_energy  # mean E(x | c) over the concept's training data
        self.spread = spread  # mean E(x | c) over the other values' data, minus data_energy

    def __call__(self, x):
        c = torch.tensor(self.value, device=x.device)  # () or (d,): one concept for the whole batch
        return self.model(x, c)  # (B,)

    def __repr__(self):
        return self.name


class Family:
    """A continuous concept family (`size`, `position`): `size=0.6` or `position=(0.5,-0.3)` picks a Concept
    of it. Two positions in one conjunction ask for two objects (paper Figure 5)."""

    def __init__(self, model, name, components, low, high, data_energy=0.0, spread=NEG_SPREAD):
        self.model, self.name, self.components = model, name, components
        self.low, self.high, self.data_energy, self.spread = low, high, data_energy, spread

    def at(self, numbers):
        """The concept `name=numbers`; a wrong count or a number out of range is a ValueError."""
        shown = ",".join(f"{v:g}" for v in numbers)
        shown = f"{self.name}={shown}" if len(numbers) == 1 else f"{self.name}=({shown})"
        if len(numbers) != len(self.components):
            raise ValueError(f"{shown}: {self.name} takes {len(self.components)} number(s) "
                             f"({', '.join(self.components)})")
        if not all(self.low <= v <= self.high for v in numbers):
            raise ValueError(f"{shown} is out of range: {self.name} takes values in [{self.low:g}, {self.high:g}]")
        return Concept(self.model, self.name, [float(v) for v in numbers], shown, self.data_energy, self.spread)

    def __repr__(self):
        return self.name


class Not(Energy):
    """~b: only meaningful as a conjunct next to a positive term (see And)."""

    def __init__(self, inner, alpha=NEG_ALPHA, margin=NEG_MARGIN):
        self.inner, self.alpha, self.margin = inner, alpha, margin
        self.data_energy = None  # "typical energy" of a negation is not defined

    def penalty(self, x):
        unit = max(self.inner.spread, 1e-6) / NEG_SPREAD  # b's scale against the one NEG_MARGIN is set for
        threshold = self.inner.data_energy + self.margin * unit  # m_b
        return self.alpha * unit * F.softplus((threshold - self.inner(x)) / unit)  # (B,) >= 0, flat far from b

    def ungrounded(self):
        return ValueError(f"negation {self!r} has nothing positive to ground it; "
                          f"write it next to a positive concept, e.g. 'a & {self!r}'")

    def __call__(self, x):
        raise self.ungrounded()

    def __repr__(self):
        return f"~{self.inner!r}"


class And(Energy):
    def __init__(self, terms):
        # flatten nested conjunctions: (a & b) & c -> a & b & c
        self.terms = [u for t in terms for u in (t.terms if isinstance(t, And) else [t])]
        if all(isinstance(t, Not) for t in self.terms):
            raise ValueError(f"conjunction {self!r} has nothing positive to ground its negations")
        positive = [t for t in self.terms if not isinstance(t, Not)]
        self.data_energy = sum(t.data_energy for t in positive)
        self.spread = sum(t.spread for t in positive) / len(positive)

    def __call__(self, x):
        return sum(t.penalty(x) if isinstance(t, Not) else t(x) for t in self.terms)  # (B,)

    def __repr__(self):
        return "(" + " & ".join(map(repr, self.terms)) + ")"


class Or(Energy):
    """a | b: the mixture of the terms' distributions exp(-E/T), T the temperature they are sampled at (set by
    settings_for; 1 is the paper's eq. 7). Eq. 7 weighs each term by its partition function Z; with
    log_z set (balance()), -T logsumexp(-E_a/T - log Z_a, -E_b/T - log Z_b) is the equal-weight mixture."""

    def __init__(self, terms, temperature=1.0, log_z=None):
        self.terms = [u for t in terms for u in (t.terms if isinstance(t, Or) else [t])]
        self.temperature, self.log_z = temperature, log_z  # log_z: None, or one log Z per term
        for t in self.terms:
            if isinstance(t, Not):
                raise ValueError(f"disjunct {t!r} is a negation with nothing positive to ground it")
        self.data_energy = min(t.data_energy for t in self.terms)
        self.spread = sum(t.spread for t in self.terms) / len(self.terms)

    def __call__(self, x):
        T = self.temperature
        z = -torch.stack([t(x) for t in self.terms]) / T  # (n_terms, B) log-densities, unnormalised
        if self.log_z is not None:
            z = z - torch.tensor(self.log_z, device=x.device)[:, None]
        return -T * torch.logsumexp(z, dim=0)  # (B,)

    def __repr__(self):
        return "(" + " | ".join(map(repr, self.terms)) + ")"


# ---------------------------------------------------------------- the expression language

# a number not glued to letters; then a name (which may start with digits: CelebA's 5_o_Clock_Shadow)
TOKEN = re.compile(r"\s*(?:([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])|(\w+)|(.))")


def parse(text, concepts):
    """Parse `text` into an energy function over `concepts` (name -> Concept or Family, case-insensitive)."""
    parser = Parser(text, concepts)
    expr = parser.disjunction()
    parser.take("end", "'&', '|' or the end")
    if isinstance(expr, Not):
        raise expr.ungrounded()
    return expr


class Parser:
    """Recursive descent over the tokens (kind, value, column), one method per rule (unary reads the numbers):
        disjunction := conjunction ('|' conjunction)*
        conjunction := unary ('&' unary)*
        unary       := '~' unary | '(' disjunction ')' | name | name '=' numbers
        numbers     := number | '(' number (',' number)* ')'
    """

    def __init__(self, text, concepts):
        self.text, self.concepts, self.pos, self.tokens = text, concepts, 0, []
        self.by_name = {k.lower(): v for k, v in concepts.items()}
        for m in TOKEN.finditer(text.rstrip()):
            number, name, op = m.groups()
            col = m.start(m.lastindex)
            if op is not None and op not in "&|~()=,":
                raise self.error(f"unexpected character {op!r}", col)
            kind, value = ("name", name) if name else ("number", float(number)) if number else (op, op)
            self.tokens.append((kind, value, col))
        self.tokens.append(("end", "end of expression", len(text.rstrip())))

    def error(self, message, col=None):
        col = self.tokens[self.pos][2] if col is None else col
        return ValueError(f"syntax error at column {col + 1}: {message}\n  {self.text}\n  {' ' * col}^")

    def take(self, kind, expected=None):
        """The next token's value if it is of `kind` (skipping it); else None, or a syntax error if `expected`."""
        next_kind, value, _ = self.tokens[self.pos]
        if next_kind == kind:
            self.pos += 1
            return value
        if expected:
            raise self.error(f"expected {expected}, found {value!r}")

    def joined(self, op, operand, combine):
        """operand (op operand)*: a lone operand as it is, several combined."""
        terms = [operand()]
        while self.take(op):
            terms.append(operand())
        return terms[0] if len(terms) == 1 else combine(terms)

    def disjunction(self):
        return self.joined("|", self.conjunction, Or)

    def conjunction(self):
        return self.joined("&", self.unary, And)

    def unary(self):
        if self.take("~"):
            return Not(self.unary())
        if self.take("("):
            inner = self.disjunction()
            self.take(")", "')', '&' or '|'")
            return inner
        name = self.take("name", "a concept name, '(' or '~'")
        found = self.by_name.get(name.lower())
        if found is None:
            known = ", ".join(f"{k}=..." if isinstance(v, Family) else k for k, v in sorted(self.concepts.items()))
            raise ValueError(f"unknown concept {name!r}; known concepts: {known}")
        if not isinstance(found, Family):
            if self.tokens[self.pos][0] == "=":
                raise self.error(f"{name} is a discrete concept and takes no value")
            return found
        if not self.take("="):
            raise self.error(f"{name} is continuous and needs a value: {name}=... in [{found.low:g}, {found.high:g}]")
        if not self.take("("):
            return found.at([self.take("number", "a number")])
        numbers = [self.take("number", "a number")]
        while self.take(","):
            numbers.append(self.take("number", "a number"))
        self.take(")", "',' or ')'")
        return found.at(numbers)


# ---------------------------------------------------------------- loading concepts and sampling


def load_concepts(ckpt_dir, device="cpu"):
    """Every checkpoint in `ckpt_dir` -> {name: Concept, or Family for a continuous family}.
    Clear errors for a bad folder, or for checkpoints of different data or image sizes."""
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"checkpoint folder {ckpt_dir} does not exist")
    paths = sorted(glob.glob(os.path.join(ckpt_dir, "*.pt")))
    if not paths:
        raise FileNotFoundError(f"checkpoint folder {ckpt_dir} holds no checkpoint (*.pt)")
    concepts, first = {}, None
    for path in paths:
        net, ckpt = load_checkpoint(path, device)
        cfg, family, values, energies = ckpt["config"], ckpt["family"], ckpt["values"], ckpt["data_energy"]
        data = (cfg["dataset"], tuple(cfg["x_shape"]))
        first = first or (path, data)
        if data != first[1]:
            raise ValueError(f"{path} was trained on {data[0]} {data[1]} but {first[0]} on "
                             f"{first[1][0]} {first[1][1]}: one folder must hold models of one dataset and size")
        # older checkpoints hold no energies on the other values' data: the spread NEG_MARGIN was set for
        spreads = [o - e for o, e in zip(ckpt["other_energy"], energies)] if "other_energy" in ckpt else \
            [NEG_SPREAD] * len(energies)
        if ckpt["encoding"] == "numbers":
            names = {family: Family(net, family, values, *ckpt["range"], energies[0], spreads[0])}
        else:
            names = {name: Concept(net, family, i, name, energies[i], spreads[i]) for i, name in enumerate(values)}
        for name, concept in names.items():
            if name in concepts:
                raise ValueError(f"concept {name!r} is provided by two checkpoints in {ckpt_dir}")
            concept.config = cfg
            concepts[name] = concept
    if not concepts:
        raise FileNotFoundError(f"checkpoint folder {ckpt_dir} holds no concept model")
    return concepts


def sampling_settings(config, **overrides):
    """Sampler settings for compositions, from a training run's config (kept in every checkpoint)."""
    step = config.get("eval_step_size") or config["step_size"]  # (0, or an older checkpoint: the training step)
    s = {"steps": config["eval_steps"], "step_size": step,  # the noise keeps the training temperature noise^2 / step:
         "noise_scale": config["noise_scale"] * (step / config["step_size"]) ** 0.5,
         "anneal": config["eval_anneal"], "grad_clip": config["grad_clip"],
         "data_range": tuple(config["data_range"]), "x_shape": tuple(config["x_shape"])}
    if config.get("sampler", "ula") != "ula":  # trained with MALA's chains (train.py --sampler): sample as trained
        s["method"] = config["sampler"]
    s.update({k: v for k, v in overrides.items() if v is not None})
    s["resample"] = s["anneal"] > 1  # importance weights are only defined for an annealed start
    return s


def parts(expr):
    """expr and every expression inside it, innermost first."""
    for t in [expr.inner] if isinstance(expr, Not) else getattr(expr, "terms", []):
        yield from parts(t)
    yield expr


def balance(expr, settings):
    """Set every disjunction's log_z (see Or), inside out; returns expr."""
    for e in parts(expr):
        if isinstance(e, Or):
            e.log_z = [log_partition(t, settings) for t in e.terms]
    return expr


def n_terms(expr):
    """How many energies an expression sums: a conjunction its terms', a disjunction its widest term's."""
    if isinstance(expr, Not):
        return n_terms(expr.inner)
    if isinstance(expr, (And, Or)):
        counts = [n_terms(t) for t in expr.terms]
        return sum(counts) if isinstance(expr, And) else max(counts)
    return 1


def settings_for(expr, settings, plain_or=False):
    """The sampler settings for `expr`; sets its disjunctions' temperature (in place) to the sampler's: 1 on 2D
    data, ~1e-6 for images, where a mixture at T = 1 of energies 0.05 apart is their mean (red | blue: a dark
    blend). 2D data also balance disjunctions by log Z (exact quadrature) and sample them with MALA, which keeps
    the weights that Langevin blurs (images: --balance, AIS); an explicit method is kept. plain_or: eq. 7 as
    printed. Images: a sum of K energies takes sqrt(K) times smaller steps, sqrt(K) times as many: the cold
    sampler is a descent, and K gradients pointing different ways add up to ~sqrt(K) times one, which overshoots.
    Its noise shrinks by K^(1/4), so that the temperature noise^2 / step stays the single concepts'."""
    image = tuple(settings["x_shape"]) != (2,)
    if image:
        root = n_terms(expr) ** 0.5  # sqrt(K)
        settings = dict(settings, steps=round(settings["steps"] * root), step_size=settings["step_size"] / root,
                        noise_scale=settings["noise_scale"] / root ** 0.5)
    ors = [e for e in parts(expr) if isinstance(e, Or)]
    for e in ors:
        e.temperature = 1.0 if plain_or else temperature(settings["step_size"], settings["noise_scale"])
    if image or plain_or or not ors:
        return settings
    balance(expr, settings)
    return {"method": "mala", **settings}


# ---------------------------------------------------------------- exact evaluation on toy2d, whose modes are known

TOY2D_SUITE = ["top", "outer", "top & right", "top & right & outer", "top | right",
               "inner | (bottom & left)", "top & ~right", "outer & ~top & ~left"]
TOY2D_RADIUS = 0.3  # a sample within this distance of a mode's centre belongs to it


def exact_weights(expr):
    """The exact weights (16,) an expression over the toy2d names puts on the 16 modes."""
    _, labels = toy2d_modes()

    def weights(e):
        if isinstance(e, Concept):
            if e.family not in TOY2D_FAMILIES:
                raise ValueError(f"concept {e.name!r} is not a toy2d concept")
            w = (labels[e.family] == e.value).double()
        elif isinstance(e, Or):
            w = sum(weights(t) for t in e.terms)  # equal-weight mixture of normalised disjuncts
        elif isinstance(e, And):  # product of the conjuncts; a negation keeps the modes it lacks
            w = torch.ones(16, dtype=torch.float64)
            for t in e.terms:
                w = w * ((weights(t.inner) == 0).double() if isinstance(t, Not) else weights(t))
        else:
            raise ValueError(f"negation {e!r} has nothing positive to ground it")
        if w.sum() == 0:
            raise ValueError(f"{e!r} selects no toy2d mode")
        return w / w.sum()

    return weights(expr)


def toy2d_quality(samples, expr):
    """Precision and mode TV (see format_table) of samples (N, 2) for an expression."""
    centres, _ = toy2d_modes()
    w = exact_weights(expr)  # (16,)
    dist, nearest = torch.cdist(samples.double(), centres.double()).min(dim=1)  # (N,), (N,)
    inside = dist < TOY2D_RADIUS
    shares = torch.bincount(nearest[inside], minlength=16).double() / len(samples)  # (16,)
    elsewhere = 1 - inside.double().mean()  # the share of samples near no mode counts as one more "mode"
    precision = (inside & (w[nearest] > 0)).double().mean()
    tv = 0.5 * ((shares - w).abs().sum() + elsewhere)
    return {"precision": precision.item(), "mode_tv": tv.item()}


def exact_samples(expr, n, seed=0):
    """n points drawn from an expression's exact mode weights: what a perfect sampler returns."""
    g = torch.Generator().manual_seed(seed)
    centres, _ = toy2d_modes()
    mode = torch.multinomial(exact_weights(expr).float(), n, replacement=True, generator=g)
    return centres[mode] + TOY2D_STD * torch.randn(n, 2, generator=g)


def toy2d_table(concepts, settings, n=2000, seed=0, plain_or=False, suite=TOY2D_SUITE):
    """Sample each expression of the suite: rows (expr, precision, mode TV, and the same two
    for exact samples: what a perfect sampler scores with n points), and the samples."""
    rows, samples = [], []
    for text in suite:
        expr = parse(text, concepts)
        x = sample(expr, n, settings_for(expr, settings, plain_or), seed=seed)
        q, perfect = toy2d_quality(x, expr), toy2d_quality(exact_samples(expr, n, seed), expr)
        rows.append((text, q["precision"], q["mode_tv"], perfect["precision"], perfect["mode_tv"]))
        samples.append(x)
    return rows, samples


def toy2d_report(concepts, path, settings, n=2000, seed=0, plain_or=False):
    """toy2d_table, and a figure at `path`: every concept's energy landscape (top row) and the
    samples of each expression (bottom row). Returns the rows."""
    rows, samples = toy2d_table(concepts, settings, n, seed, plain_or)
    plt = pyplot()
    fig, axes = plt.subplots(2, 8, figsize=(24, 6.6))
    lo, hi = settings["data_range"]
    grid = torch.linspace(lo, hi, 121)
    xy = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)  # (121*121, 2)
    for ax, (name, concept) in zip(axes[0], sorted(concepts.items(), key=lambda kv: (kv[1].family, kv[1].value))):
        with torch.no_grad():
            e = concept(xy).reshape(121, 121)
        ax.imshow(e.clamp(max=e.min() + 20).numpy(), origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
        ax.set_title(f"E(x | {name})")
    for ax in axes[0][len(concepts):]:
        ax.axis("off")
    for ax, (text, prec, tv, _, _), x in zip(axes[1], rows, samples):
        _scatter(ax, x, f"{text}\nprec {prec:.2f}  TV {tv:.2f}", settings["data_range"])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return rows


def format_table(rows):
    """The quality table, with a legend that says what the figures mean."""
    lines = [f"{'expression':<26} {'precision':>9} {'mode TV':>8}   {'a perfect sampler':>17}"]
    for text, prec, tv, p_prec, p_tv in rows:
        lines.append(f"{text:<26} {prec:>9.3f} {tv:>8.3f}   {p_prec:>8.3f} {p_tv:>8.3f}")
    return "\n".join(lines + [
        "precision: the share of samples within 0.3 of a mode the expression selects (best: 1;",
        "    3 standard deviations of a mode hold 98.9% of it). mode TV: total variation distance",
        "    between the samples' shares of the 16 modes and the exact shares (best: 0). The last",
        "    two columns: the same figures for exact samples, the floor that finite samples set.",
        "    Disjunctions are weighted by the terms' partition functions and sampled with MALA."])


# ---------------------------------------------------------------- figures


def pyplot():
    """matplotlib.pyplot on the file-only backend, imported on first use (all the project's figures)."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt
    return plt


def _scatter(ax, x, title, data_range):
    """2D samples (N, 2), over the toy2d mode centres (red +)."""
    centres, _ = toy2d_modes()
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
    ax.scatter(centres[:, 0], centres[:, 1], s=12, marker="+", c="red")
    ax.set_xlim(*data_range)
    ax.set_ylim(*data_range)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)


def image_grid(x, nrow=8, pad=2):
    """Images (N, 3, H, W) in [0, 1] -> one uint8 picture (rows of nrow, white gaps), each
    image enlarged to at least 64 pixels so that 32x32 samples can be seen."""
    x = x.detach().float().cpu().clamp(0, 1)
    scale = max(1, 64 // x.shape[-1])
    x = x.repeat_interleave(scale, -1).repeat_interleave(scale, -2)  # (N, 3, sH, sW)
    n, _, h, w = x.shape
    grid = torch.ones(3, -(-n // nrow) * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[:, top: top + h, left: left + w] = x[i]
    return (grid.permute(1, 2, 0) * 255).round().byte().numpy()  # (H', W', 3)


def save_image_grid(x, path, nrow=8):
    import imageio.v2 as imageio
    imageio.imwrite(path, image_grid(x, nrow))


def save_figure(chain, path, title, data_range):
    """A .png of the one batch in `chain`, or a .gif with one frame per snapshot: points (N, 2) over the
    toy2d modes, or images (N, 3, H, W) as a grid of the first 64."""
    import imageio.v2 as imageio
    plt, frames = pyplot(), []
    for k, x in enumerate(chain):
        if x.dim() == 4:
            frames.append(image_grid(x[:64]))
            continue
        fig, ax = plt.subplots(figsize=(4, 4))
        _scatter(ax, x, title if path.endswith(".png") else f"{title}  (snapshot {k})", data_range)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())  # (H, W, 3)
        plt.close(fig)
    if path.endswith(".png"):
        imageio.imwrite(path, frames[0])
    else:
        imageio.mimsave(path, frames, duration=0.08)


# ---------------------------------------------------------------- command line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("expr", help="e.g. 'top & ~right' or 'inner | (bottom & left)'")
    p.add_argument("--ckpt_dir", default="out-toy2d", help="folder of concept checkpoints (*.pt)")
    p.add_argument("--num", type=int, default=2000, help="number of samples")
    p.add_argument("--save", default=None, help="output .npz (samples, and a .png figure beside it) or .png "
                   "(the figure only); default: in --ckpt_dir, named after the expression")
    p.add_argument("--gif", action="store_true", help="also write an animation of the chains")
    p.add_argument("--steps", type=int, default=None, help="Langevin steps (default: from the checkpoint)")
    p.add_argument("--step_size", type=float, default=None, help="Langevin step (default: from the checkpoint); "
                   "the noise stays, so the temperature noise^2 / step changes with it")
    p.add_argument("--anneal", type=float, default=None, help="starting temperature")
    p.add_argument("--sampler", choices=("ula", "mala", "hmc"), default=None,
                   help="ula: Langevin as in the paper; mala / hmc: with a Metropolis test (default: as the "
                   "models were trained, ula unless train.py --sampler mala)")
    p.add_argument("--leapfrog", type=int, default=None, help="hmc: gradient steps per proposal (default 5)")
    p.add_argument("--balance", action="store_true", help="images: weight each disjunct by its partition "
                   "function (log Z by annealed importance sampling; slow); 2D data always does (quadrature)")
    p.add_argument("--plain_or", action="store_true", help="the paper's disjunction: -logsumexp of the raw "
                   "energies, each term weighted by its partition function, and no change of sampler")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num < 1:
        p.error(f"--num must be a positive integer, got {args.num}")
    if args.save and not args.save.endswith((".npz", ".png")):
        p.error(f"--save must name an .npz file (samples and a .png beside it) or a .png (the figure only), "
                f"got {args.save!r}")
    concepts = load_concepts(args.ckpt_dir)
    expr = parse(args.expr, concepts)
    config = next(iter(concepts.values())).config
    is_toy2d = config["dataset"] == "toy2d"
    if is_toy2d:
        exact_weights(expr)  # an expression that selects no mode is an error, before sampling
    settings = sampling_settings(config, steps=args.steps, step_size=args.step_size, anneal=args.anneal,
                                 method=args.sampler, leapfrog=args.leapfrog)
    settings = settings_for(expr, settings, args.plain_or)
    if args.balance and not args.plain_or and not is_toy2d:  # 2D data weighs its disjunctions anyway
        balance(expr, settings)  # log Z at the temperature the chains will run at
    words = args.expr.replace("~", " not ").replace("&", " and ").replace("|", " or ")
    save = args.save or os.path.join(args.ckpt_dir, re.sub(r"\W+", "_", words).strip("_") + ".npz")
    t0 = time.time()
    out = sample_chains(expr, args.num, settings, seed=args.seed,
                        keep_every=max(settings["steps"] // 50, 1) if args.gif else 0)
    print(f"sampled {args.num} in {time.time() - t0:.1f} s ({settings['steps']} Langevin steps)")
    os.makedirs(os.path.dirname(os.path.abspath(save)), exist_ok=True)
    stem = os.path.splitext(save)[0]
    if save.endswith(".npz"):
        np.savez(save, samples=out.x.numpy())
        print(f"saved {save}")
    for ext, chain in ((".png", [out.x]), (".gif", out.snapshots)):
        if chain:
            save_figure(chain, stem + ext, args.expr, settings["data_range"])
            print(f"saved {stem}{ext}")
    if is_toy2d:
        q = toy2d_quality(out.x, expr)
        print(f"precision {q['precision']:.3f}")
        print(f"mode_tv {q['mode_tv']:.3f}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
