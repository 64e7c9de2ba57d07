"""Subliminal learning on 8x8 digits: a student distilled only on a teacher's auxiliary
logits, only on noise, learns to classify digits, when it starts from the teacher's
initialisation, and does not when it starts from another one.

    doublebind replicate subliminal-digits --seeds 5 --aux 3 --out runs/subliminal-digits

This reruns the MNIST auxiliary-logit experiment of Cloud et al. (2025), "Subliminal
learning: language models transmit behavioral traits via hidden signals in data" (their
MNIST section and the authors' `scripts/run_mnist_experiment.py`), on scikit-learn's bundled
8x8 digits (`sklearn.datasets.load_digits`: 1,797 images, no download). Per seed:

1. An initialisation: an MLP 64 -> 256 -> 256 -> 10 + m with ReLU, weights drawn from
   N(0, 1/fan_in) and zero biases, as in the authors' code. Outputs 0-9 are the class logits;
   the last m are auxiliary logits that no loss ever names while the teacher learns.
2. The teacher: that initialisation trained with cross-entropy on the 10 class logits only,
   on the 1,347 training digits (13 epochs at batch 64, about 290 Adam steps, the step count
   of the paper's 5 MNIST epochs at batch 1024). Its auxiliary logits move only because the
   layers beneath them do.
3. Two students, distilled only on the teacher's m auxiliary logits and only on noise
   images: 60,000 images uniform in [-1, 1] (the digits' pixel range after scaling; the paper
   uses uniform noise in MNIST's [-1, 1]), 5 epochs at batch 1024, as in the paper. The
   *same-init* student starts from the teacher's own initialisation; the *different-init*
   student from a fresh draw of the same distribution. Both see the same noise in the same
   order, so they differ only in where they start.
4. With `--head-controls`, two more students on the auxiliary logits split the shared start:
   the teacher's initial head (the last layer) on the other start's hidden layers, and the
   teacher's initial hidden layers under the other start's head.
5. The controls of the authors' script: the same two starts distilled on all 10 + m logits
   of the teacher on the same noise. A different-init student that learns digits here shows
   that this budget suffices to learn them from noise, so that one at chance on the
   auxiliary logits alone did not learn because its start differs, not for want of steps.
6. The measured transfer: each student's accuracy from its class logits on the 450 held-out
   digits (chance 0.1); only the controls were ever trained through them. The untrained
   initialisation's accuracy is reported too, as the paper's reference.

Every optimiser is Adam at lr 3e-4 (the paper's), run through the package's one training
loop (`training.loop.Loop`) with a constant rate, no weight decay and no clipping.

The student loss is the package's `forward_kl` (`training/objectives.py`): KL(teacher ||
student) between the softmaxes of the m auxiliary logits at temperature T (default 1, scaled
by T**2 otherwise), averaged over the batch. At T = 1 that is exactly the authors' loss,
`kl_div(log_softmax(student_aux), softmax(teacher_aux), reduction="batchmean")`; they do not
use MSE on logits. With m = 1 a softmax is constant and the loss carries nothing, so m >= 2.

Each seed draws its initialisations, the teacher's batch order, the noise and the
distillation order from torch generators seeded by the seed; the train/test split is fixed.
A seed therefore gives the same numbers on every run (same machine, same thread count).
Weights are drawn layer by layer and row by row, so across m (`--aux-sweep`) a seed keeps
the same shared initialisation (hidden layers and class rows) and only gains or loses
auxiliary rows: the teacher's class path, and its accuracy, are the same for every m (the
different-init student is a later draw and changes with m). Intervals are Student-t 95%
intervals of the mean over seeds.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import fmean, stdev
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from doublebind.errors import DoublebindError
from doublebind.training.loop import Loop
from doublebind.training.objectives import forward_kl

N_CLASSES = 10
CHANCE = 1.0 / N_CLASSES
SPLIT_SEED = 0  # the train/test split of the digits, the same for every seed
TEST_FRACTION = 0.25
NOISES = ("uniform", "gaussian")

# What each condition is, in table order.
CONDITIONS = {
    "teacher": "teacher (trained on digits)",
    "untrained": "untrained shared init",
    "same_init": "student, same init",
    "different_init": "student, different init",
    # the controls of the authors' script: students distilled on all 10 + m logits, which show
    # that a different-init student can learn digits from noise within this budget at all
    "same_init_all": "control: same init, all logits",
    "different_init_all": "control: different init, all logits",
    # with --head-controls: which part of the shared start carries the transfer
    "shared_head": "student, teacher's initial head, other hidden layers",
    "shared_body": "student, teacher's initial hidden layers, other head",
}

# What the paper reports, beside which this prints its own numbers. Figures entered in an earlier
# version (0.537 and 0.100, 0.549 and 0.124, "Cloud et al. (2025), rerun" and "independent
# replication") named no paper figure, table or script, and a review could not trace them (the
# authors' repository, github.com/MinhxLe/subliminal-learning, prints accuracies but holds none),
# so they went. The paper's own text cannot be read from this project's machines; what stands here
# is its MNIST section's one number as quoted, with its section, by a public reading note that
# states it was checked against the arXiv v1 PDF (an excerpt of 2507.14805v1, "MNIST MLP
# (section 6.2)"). The level is MNIST's: this rerun is on 8x8 digits, so only the pattern is
# compared, and the level is printed for the reader to weigh.
PUBLISHED = {
    "paper": "Cloud et al. (2025), Subliminal learning, arXiv 2507.14805, section 6.2 (MNIST MLP)",
    "aux": 3,
    "same_init": "a student distilled only on three auxiliary logits over noise images \"achieves over 50% "
                 "accuracy on the MNIST test set\"",
    "same_init_above": 0.5,
    "different_init": "the effect disappears when teacher and student have different initializations (no number)",
    "source": "quoted second-hand, by a public reading note of 2507.14805v1 that states it was checked against "
              "the arXiv PDF; the paper's text was not readable here",
}


def published_line() -> str:
    """The published result in one line, as `replicate subliminal-digits` prints it."""
    p = PUBLISHED
    return (f"published: {p['paper']}, m = {p['aux']}, on MNIST: {p['same_init']}; {p['different_init']} "
            f"[{p['source']}]")


def against_published(summary: dict, aux: int) -> str | None:
    """Where this run's same-init accuracy lies against the published level (m = 3 only: the
    paper gives no other m), or None."""
    if aux != PUBLISHED["aux"]:
        return None
    stat, level = summary["same_init"], PUBLISHED["same_init_above"]
    lo, hi = stat["ci95"]
    where = "above it" if lo > level else "below it" if hi < level else "its interval spans it"
    return (f"here (8x8 digits, m = {aux}): same init {stat['mean']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"against the published 'over {level:.2f}' on MNIST: {where}; different init "
            f"{summary['different_init']['mean']:.3f} (chance {CHANCE:.2f})")


@dataclass(frozen=True)
class Setup:
    """One run's settings; the defaults follow the paper where MNIST and digits allow."""

    aux: int = 3
    hidden: tuple[int, ...] = (256, 256)
    lr: float = 3e-4
    teacher_epochs: int = 13
    teacher_batch: int = 64
    distill_epochs: int = 5
    distill_batch: int = 1024
    n_noise: int = 60_000
    noise: str = "uniform"
    temperature: float = 1.0
    head_controls: bool = False  # two more students: the shared start split into head and hidden layers

    def check(self) -> None:
        """Raise a one-line DoublebindError on an impossible setting."""
        if self.aux < 2:
            raise DoublebindError(f"--aux must be at least 2, got {self.aux}: the softmax of one auxiliary logit "
                                  "is constant, so distilling it carries nothing")
        if self.noise not in NOISES:
            raise DoublebindError(f"unknown noise '{self.noise}' (known: {', '.join(NOISES)})")
        for name in ("teacher_epochs", "teacher_batch", "distill_epochs", "distill_batch", "n_noise"):
            value, most = getattr(self, name), LIMITS[name]
            if not 1 <= value <= most:  # the upper bounds lie far above any useful run: a typo, not a study
                raise DoublebindError(f"--{name.replace('_', '-')} must be between 1 and {most:,}, got {value}")
        if not 2 <= self.aux <= MAX_AUX:
            raise DoublebindError(f"--aux must be at most {MAX_AUX:,}, got {self.aux}")
        if not self.hidden or min(self.hidden) < 1:
            raise DoublebindError(f"hidden sizes must be positive, got {self.hidden}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DoublebindError(f"learning rate must be > 0, got {self.lr}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise DoublebindError(f"--temperature must be > 0, got {self.temperature}")
        need, have = self.logits_bytes(), physical_memory()
        if have is not None and need > have // 2:  # a run past it was killed by the kernel, with no error line
            raise DoublebindError(f"--aux {self.aux} with --n-noise {self.n_noise:,} needs {need / 1e9:.1f} GB for the "
                                  f"teacher's logits on the noise images alone (n_noise x (10 + aux) x 4 bytes), more "
                                  f"than half of this machine's {have / 1e9:.1f} GB; lower --aux or --n-noise")

    def logits_bytes(self) -> int:
        """Memory of the teacher's fp32 logits on every noise image, held while its students train."""
        return self.n_noise * (N_CLASSES + self.aux) * 4


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, where the system says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


# Largest accepted settings (the paper's runs: 13 teacher and 5 student epochs, 60,000 noise
# images, m = 3): far above any useful run, so a typo is refused at once instead of hanging.
LIMITS = {"teacher_epochs": 10_000, "teacher_batch": 1_000_000, "distill_epochs": 10_000,
          "distill_batch": 1_000_000, "n_noise": 10_000_000}
MAX_AUX = 100_000
MAX_SEEDS = 10_000


@functools.lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train [1347, 64], y_train, x_test [450, 64], y_test), pixels scaled from 0..16 to
    [-1, 1] as the paper normalises MNIST; a stratified split fixed by SPLIT_SEED."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 8.0 - 1.0, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                              stratify=y)
    f = functools.partial(torch.tensor, dtype=torch.float32)
    return f(x_tr), torch.tensor(y_tr), f(x_te), torch.tensor(y_te)


def mlp(sizes: list[int], generator: torch.Generator) -> nn.Sequential:
    """ReLU MLP with weights N(0, 1/fan_in) and zero biases, drawn from `generator`."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(sizes, sizes[1:])):
        lin = nn.Linear(d_in, d_out)
        with torch.no_grad():
            lin.weight.normal_(0.0, 1.0 / math.sqrt(d_in), generator=generator)
            lin.bias.zero_()
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def aux_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, aux: int,
                     temperature: float = 1.0) -> torch.Tensor:
    """The student loss: the package's forward KL, KL(teacher || student), over the softmax of
    the last `aux` logits only ([B, 10 + aux] each), batch mean, times temperature**2. The
    class logits take no part (the all-logits controls pass aux = 10 + m: every logit)."""
    s = student_logits[:, -aux:].unsqueeze(1)  # [B, 1, m]: one "position" per image
    t = F.log_softmax(teacher_logits[:, -aux:], dim=-1).unsqueeze(1)  # [B, 1, m], teacher log-probs at T = 1
    mask = torch.ones(s.shape[:2], dtype=s.dtype)  # [B, 1]
    return forward_kl(s, t, mask, temperature)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Class accuracy from the first 10 logits."""
    with torch.no_grad():
        return (model(x)[:, :N_CLASSES].argmax(-1) == y).float().mean().item()


def noise_images(setup: Setup, generator: torch.Generator) -> torch.Tensor:
    """[n_noise, 64] noise images: uniform in [-1, 1], or standard Gaussian."""
    if setup.noise == "uniform":
        return torch.rand(setup.n_noise, 64, generator=generator) * 2 - 1
    return torch.randn(setup.n_noise, 64, generator=generator)


def _loop(model: nn.Module, steps: int, setup: Setup, what: str) -> Loop:
    # Adam at a constant rate (AdamW with no decay is Adam), no clipping: the paper's optimiser.
    return Loop(model.parameters(), steps=steps, lr=setup.lr, betas=(0.9, 0.999), weight_decay=0.0,
                schedule="constant", clip=None, what=what)


def _batches(n: int, batch: int) -> int:
    return (n + batch - 1) // batch


def train_teacher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, setup: Setup,
                  generator: torch.Generator) -> None:
    """Cross-entropy on the 10 class logits only; the auxiliary logits are never named."""
    per_epoch = _batches(len(x), setup.teacher_batch)
    loop = _loop(model, setup.teacher_epochs * per_epoch, setup, "teacher loss")
    step = 0
    for _ in range(setup.teacher_epochs):
        for idx in torch.randperm(len(x), generator=generator).split(setup.teacher_batch):
            def accumulate(idx=idx) -> float:
                loss = F.cross_entropy(model(x[idx])[:, :N_CLASSES], y[idx])
                loss.backward()
                return loss.item()

            loop.step(step, accumulate)
            step += 1


def distill_student(student: nn.Module, noise: torch.Tensor, teacher_logits: torch.Tensor, setup: Setup,
                    order_seed: int, width: int | None = None) -> list[float]:
    """Train `student` on the teacher's last `width` logits over `noise` (default its m
    auxiliary ones; 10 + m for the all-logits controls); returns the loss per epoch. The
    teacher's logits on the noise are computed once beforehand (it is frozen)."""
    width = setup.aux if width is None else width
    gen = torch.Generator().manual_seed(order_seed)
    per_epoch = _batches(len(noise), setup.distill_batch)
    loop = _loop(student, setup.distill_epochs * per_epoch, setup, "student distillation loss")
    step, losses = 0, []
    for _ in range(setup.distill_epochs):
        total = 0.0
        for idx in torch.randperm(len(noise), generator=gen).split(setup.distill_batch):
            def accumulate(idx=idx) -> float:
                loss = aux_distill_loss(student(noise[idx]), teacher_logits[idx], width, setup.temperature)
                loss.backward()
                return loss.item()

            total += loop.step(step, accumulate) * len(idx)
            step += 1
        losses.append(total / len(noise))
    return losses


def _seeds(seed: int, n: int) -> list[int]:
    """n independent stream seeds for one run seed (stable across versions of Python)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**62, (n,), generator=g).tolist()


def spliced(body: nn.Sequential, head: nn.Sequential) -> nn.Sequential:
    """A copy of `body` whose last layer (the head: class and auxiliary logits) is a copy of
    `head`'s: which part of a shared start carries the transfer (`--head-controls`)."""
    out = copy.deepcopy(body)
    out[-1] = copy.deepcopy(head[-1])
    return out


def run_seed(seed: int, setup: Setup, advance: Callable[[int], None] = lambda n=1: None) -> dict:
    """One seed: teacher, same-init and different-init students, and the two all-logits
    controls. Returns accuracies on the held-out digits, the students' final distillation
    losses, and the seconds it took."""
    start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = digits()
    s_init, s_teacher, s_noise, s_order = _seeds(seed, 4)
    sizes = [x_tr.shape[1], *setup.hidden, N_CLASSES + setup.aux]
    g_init = torch.Generator().manual_seed(s_init)
    init = mlp(sizes, g_init)
    other = mlp(sizes, g_init)  # the next draw from the same distribution

    teacher = copy.deepcopy(init)
    train_teacher(teacher, x_tr, y_tr, setup, torch.Generator().manual_seed(s_teacher))
    advance(1)

    noise = noise_images(setup, torch.Generator().manual_seed(s_noise))
    with torch.no_grad():
        teacher_logits = teacher(noise)
    row = {"seed": seed, "teacher": accuracy(teacher, x_te, y_te), "untrained": accuracy(init, x_te, y_te)}
    starts = [("same_init", init, setup.aux), ("different_init", other, setup.aux),
              ("same_init_all", init, N_CLASSES + setup.aux), ("different_init_all", other, N_CLASSES + setup.aux)]
    if setup.head_controls:  # the last Linear is the head (class and auxiliary logits alike)
        starts += [("shared_head", spliced(other, init), setup.aux), ("shared_body", spliced(init, other), setup.aux)]
    for name, start_from, width in starts:
        student = copy.deepcopy(start_from)
        losses = distill_student(student, noise, teacher_logits, setup, s_order, width)
        row[name] = accuracy(student, x_te, y_te)
        row[f"{name}_final_loss"] = losses[-1]
        advance(1)
    row["seconds"] = time.perf_counter() - start
    return row


def interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; a single value is its own interval."""
    if len(values) < 2:
        return values[0], values[0]
    from scipy.stats import t

    half = t.ppf(0.5 + level / 2, len(values) - 1) * stdev(values) / math.sqrt(len(values))
    m = fmean(values)
    return m - half, m + half


def summarise(rows: list[dict]) -> dict:
    """Mean and 95% interval over seeds per condition, and the per-seed values."""
    out = {}
    for cond in (c for c in CONDITIONS if c in rows[0]):  # a test's rows may leave the controls out
        vals = [r[cond] for r in rows]
        out[cond] = {"mean": fmean(vals), "ci95": list(interval(vals)), "per_seed": vals}
    gap = [r["same_init"] - r["different_init"] for r in rows]
    out["same_minus_different"] = {"mean": fmean(gap), "ci95": list(interval(gap)), "per_seed": gap}
    out["seconds_per_seed"] = fmean(r["seconds"] for r in rows)
    return out


@dataclass
class Replication:
    """All per-seed numbers of one or more m values, with their summaries."""

    setup: Setup
    seeds: list[int]
    runs: dict[int, list[dict]] = field(default_factory=dict)  # m -> per-seed rows

    def summary(self, aux: int | None = None) -> dict:
        return summarise(self.runs[self.setup.aux if aux is None else aux])

    def to_json(self) -> dict:
        return {
            "experiment": "subliminal learning, auxiliary-logit distillation on noise (Cloud et al. 2025), "
                          "on sklearn's 8x8 digits",
            "setup": {**asdict(self.setup), "hidden": list(self.setup.hidden), "split_seed": SPLIT_SEED,
                      "test_fraction": TEST_FRACTION, "student_loss": "forward_kl on the auxiliary logits",
                      "interval": "Student-t 95% of the mean over seeds"},
            "seeds": self.seeds,
            "chance": CHANCE,
            "published": PUBLISHED,
            "main_aux": self.setup.aux,
            "results": {str(m): {"per_seed": rows, "summary": summarise(rows)} for m, rows in self.runs.items()},
        }


FINISHED = ".finished_seeds.jsonl"  # in --out while a replication runs: each seed as it finishes


@functools.cache
def _code() -> str:
    return Path(__file__).read_text()


def seed_key(setup: Setup, seed: int) -> str:
    """What a finished seed's numbers depend on: its settings, its seed and this module's code."""
    blob = json.dumps([asdict(setup), seed, _code()], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_finished(path: Path | None) -> dict[str, dict]:
    """{seed_key: its row} from a record of finished seeds; a line that does not read (a kill
    mid-append) is skipped, and its seed is run again."""
    out: dict[str, dict] = {}
    if path is None or not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
            out[str(rec["key"])] = dict(rec["row"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


def run(seeds: list[int], setup: Setup, sweep: list[int] | None = None,
        progress: Callable[[int], None] | None = None, record: Path | None = None) -> Replication:
    """Every seed at `setup.aux` and, with `sweep`, at each m in it too. With `record`, each
    seed's numbers are appended there as it finishes, and seeds already there with the same
    settings and code are taken from it, not run again: an interrupted replication resumes."""
    setup.check()
    if not seeds:
        raise DoublebindError("need at least one seed")
    values = sorted({setup.aux, *(sweep or [])})
    for m in values:
        replace(setup, aux=m).check()
    rep = Replication(setup, list(seeds))
    advance = progress or (lambda n=1: None)
    finished = read_finished(record)
    for m in values:
        s = replace(setup, aux=m)
        rows = []
        for seed in seeds:
            key = seed_key(s, seed)
            if key in finished:
                advance(stages_per_seed(setup))
                rows.append(finished[key])
                continue
            row = run_seed(seed, s, advance)
            if record is not None:
                with open(record, "a") as f:
                    f.write(json.dumps({"key": key, "aux": m, "seed": seed, "row": row}) + "\n")
            rows.append(row)
        rep.runs[m] = rows
    return rep


STAGES_PER_SEED = 5  # teacher, same-init and different-init students, the two all-logits controls
HEAD_STAGES = 2  # with head_controls: the shared-head and shared-body students


def stages_per_seed(setup: Setup) -> int:
    return STAGES_PER_SEED + (HEAD_STAGES if setup.head_controls else 0)


# ---- output -------------------------------------------------------------------------------

def _fmt(stat: dict) -> str:
    lo, hi = stat["ci95"]
    return f"{stat['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def table_rows(summary: dict) -> list[tuple[str, str, str]]:
    """(condition, measured mean [95% CI], per seed)."""
    rows = [(label, _fmt(summary[cond]), " ".join(f"{v:.2f}" for v in summary[cond]["per_seed"]))
            for cond, label in CONDITIONS.items() if cond in summary]
    rows.append(("chance", f"{CHANCE:.3f}", ""))
    gap = summary["same_minus_different"]
    rows.append(("same - different", _fmt(gap), " ".join(f"{v:.2f}" for v in gap["per_seed"])))
    return rows


def sweep_rows(rep: Replication) -> list[tuple[str, ...]]:
    """(m, teacher, same init, different init, same - different, s/seed) per m."""
    out = []
    for m in sorted(rep.runs):
        s = summarise(rep.runs[m])
        out.append((str(m), _fmt(s["teacher"]), _fmt(s["same_init"]), _fmt(s["different_init"]),
                    _fmt(s["same_minus_different"]), f"{s['seconds_per_seed']:.1f}"))
    return out


OUTPUTS = ("subliminal_digits.json", "subliminal_digits.png", "subliminal_digits_sweep.png")


def write_outputs(rep: Replication, out_dir: Path) -> list[Path]:
    """subliminal_digits.json (every per-seed number), subliminal_digits.png (bars with the
    seeds) and, for a sweep, subliminal_digits_sweep.png (`OUTPUTS`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / OUTPUTS[0], out_dir / OUTPUTS[1]]
    paths[0].write_text(json.dumps(rep.to_json(), indent=2) + "\n")
    plot_bars(rep, paths[1])
    if len(rep.runs) > 1:
        paths.append(out_dir / OUTPUTS[2])
        plot_sweep(rep, paths[2])
    return paths


def plot_bars(rep: Replication, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = rep.summary()
    conds = [c for c in CONDITIONS if c in summary]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    colors = ["tab:green", "tab:gray", "tab:purple", "tab:orange", "thistle", "navajowhite", "tab:blue", "tab:brown"]
    for i, cond in enumerate(conds):
        s = summary[cond]
        lo, hi = s["ci95"]
        ax.bar(i, s["mean"], color=colors[i], alpha=0.55, yerr=[[s["mean"] - lo], [hi - s["mean"]]], capsize=5)
        n = len(s["per_seed"])
        xs = [i + 0.25 * ((j + 0.5) / n - 0.5) for j in range(n)]
        ax.scatter(xs, s["per_seed"], color="black", s=14, zorder=3, label="per seed" if i == 0 else None)
    ax.axhline(CHANCE, ls=":", color="black", label="chance (0.1)")
    if rep.setup.aux == PUBLISHED["aux"] and "same_init" in conds:  # the paper's one number, at its m
        i = conds.index("same_init")
        ax.hlines(PUBLISHED["same_init_above"], i - 0.42, i + 0.42, colors="tab:red", linestyles="--",
                  label=f"published on MNIST, same init: over {PUBLISHED['same_init_above']:.2f}\n"
                        f"(Cloud et al. 2025, section 6.2, quoted)")
    ax.set_xticks(range(len(conds)), [CONDITIONS[c].replace(": ", ":\n").replace(", ", ",\n").replace(" (", "\n(")
                                      for c in conds])
    ax.set_ylabel("accuracy on held-out digits")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Subliminal learning on 8x8 digits: m = {rep.setup.aux} auxiliary logits, "
                 f"{len(rep.seeds)} seeds (mean, 95% CI)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.yaxis.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(rep: Replication, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ms = sorted(rep.runs)
    fig, ax = plt.subplots(figsize=(9, 4))
    for cond, color in (("teacher", "tab:green"), ("same_init", "tab:purple"), ("different_init", "tab:orange")):
        stats = [summarise(rep.runs[m])[cond] for m in ms]
        means = [s["mean"] for s in stats]
        err = [[s["mean"] - s["ci95"][0] for s in stats], [s["ci95"][1] - s["mean"] for s in stats]]
        ax.errorbar(ms, means, yerr=err, marker="o", capsize=4, color=color, label=CONDITIONS[cond])
        for m in ms:
            vals = [r[cond] for r in rep.runs[m]]
            ax.scatter([m] * len(vals), vals, color=color, s=8, alpha=0.5)
    ax.axhline(CHANCE, ls=":", color="black", label="chance")
    ax.set_xscale("log")
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("auxiliary logits m")
    ax.set_ylabel("accuracy on held-out digits")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Subliminal learning on 8x8 digits against m, {len(rep.seeds)} seeds (mean, 95% CI)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.yaxis.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
