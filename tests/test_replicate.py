"""`doublebind replicate subliminal-digits`: Cloud et al.'s auxiliary-logit experiment on 8x8
digits, at a small size (a few seconds): determinism, a real teacher, the package's
forward-KL student loss, and the finding itself (same-init students beat different-init
ones)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from .conftest import run_cli
from doublebind.errors import DoublebindError
from doublebind.replicate import subliminal_digits as sd

# About 1.7 s a seed on one thread: 10,000 noise images, 5 epochs at batch 128 (~390 steps).
SMALL = sd.Setup(n_noise=10_000, distill_batch=128)


@pytest.fixture(scope="module")
def two_seeds():
    return [sd.run_seed(seed, SMALL) for seed in (0, 1)]


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "seconds"}


def test_same_seed_gives_identical_numbers_and_seeds_differ(two_seeds):
    again = sd.run_seed(0, SMALL)
    assert _numbers(again) == _numbers(two_seeds[0])
    assert _numbers(two_seeds[0]) != _numbers(two_seeds[1])


def test_teacher_learns_digits_and_untrained_init_is_near_chance(two_seeds):
    for row in two_seeds:
        assert row["teacher"] > 0.9  # chance is 0.1
        assert row["untrained"] < 0.3


def test_same_init_students_beat_different_init_ones(two_seeds):
    # Measured: gaps 0.23 and 0.32 at seeds 0 and 1 (min 0.14 over seeds 0-7).
    for row in two_seeds:
        assert row["same_init"] > row["different_init"] + 0.05
    assert np.mean([r["same_init"] - r["different_init"] for r in two_seeds]) > 0.1
    assert np.mean([r["same_init"] for r in two_seeds]) > 2 * sd.CHANCE


def test_the_all_logits_controls_learn_digits_from_either_start(two_seeds):
    """The authors' controls: on all 13 logits a different-init student learns the digits from
    the same noise in the same budget (measured 0.949 and 0.951 at seeds 0 and 1, same init
    0.962 and 0.964), so its chance-level accuracy on the auxiliary logits alone is its start's
    doing, not the budget's."""
    for row in two_seeds:
        assert row["different_init_all"] > 0.8 and row["same_init_all"] > 0.8
        assert row["different_init_all"] > row["different_init"] + 0.5


def _reference_kl(student: np.ndarray, teacher: np.ndarray, aux: int, temperature: float) -> float:
    """Batch mean of sum_j p_j (log p_j - log q_j) over the last `aux` logits, both softened at T,
    times T**2 (written out in numpy, independent of torch)."""

    def log_softmax(z):
        z = z / temperature
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    log_p, log_q = log_softmax(teacher[:, -aux:]), log_softmax(student[:, -aux:])
    return float((np.exp(log_p) * (log_p - log_q)).sum(-1).mean() * temperature**2)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_student_loss_is_forward_kl_on_the_aux_logits(temperature):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 13, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(4, 13, generator=g, dtype=torch.float64) * 2
    got = sd.aux_distill_loss(student, teacher, aux=3, temperature=temperature).item()
    assert got == pytest.approx(_reference_kl(student.numpy(), teacher.numpy(), 3, temperature), rel=1e-10)
    if temperature == 1.0:  # the authors' loss, as they wrote it
        theirs = F.kl_div(F.log_softmax(student[:, 10:], -1), F.softmax(teacher[:, 10:], -1), reduction="batchmean")
        assert got == pytest.approx(theirs.item(), rel=1e-10)
    # the class logits take no part: changing them changes nothing, and they get no gradient
    other = student.clone()
    other[:, :10] += torch.randn(4, 10, generator=g, dtype=torch.float64)
    assert sd.aux_distill_loss(other, teacher, 3, temperature).item() == pytest.approx(got, rel=1e-12)
    s = student.clone().requires_grad_(True)
    sd.aux_distill_loss(s, teacher, 3, temperature).backward()
    assert torch.all(s.grad[:, :10] == 0) and torch.any(s.grad[:, 10:] != 0)
    # zero exactly when the student's aux logits equal the teacher's up to a shift
    same = teacher.clone()
    same[:, 10:] += 1.7
    assert sd.aux_distill_loss(same, teacher, 3, temperature).item() == pytest.approx(0.0, abs=1e-12)


def test_distillation_trains_through_the_package_objective(monkeypatch):
    calls = []
    real = sd.forward_kl

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(sd, "forward_kl", spy)
    setup = sd.Setup(aux=4, n_noise=256, distill_batch=64, distill_epochs=2)
    student = sd.mlp([64, 8, 14], torch.Generator().manual_seed(0))
    teacher = sd.mlp([64, 8, 14], torch.Generator().manual_seed(1))
    noise = sd.noise_images(setup, torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = teacher(noise)
    losses = sd.distill_student(student, noise, logits, setup, order_seed=3)
    assert len(calls) == 2 * 4 and all(c == (64, 1, 4) for c in calls)  # 2 epochs x 4 batches, aux only
    assert losses[-1] < losses[0]
    with torch.no_grad():
        final = sd.aux_distill_loss(student(noise), logits, 4).item()
    assert final < losses[0] and math.isfinite(final)


def test_noise_and_summary():
    u = sd.noise_images(sd.Setup(n_noise=5000), torch.Generator().manual_seed(0))
    assert u.shape == (5000, 64) and u.min() >= -1 and u.max() <= 1 and abs(u.mean()) < 0.02
    gauss = sd.noise_images(sd.Setup(n_noise=5000, noise="gaussian"), torch.Generator().manual_seed(0))
    assert abs(gauss.std() - 1) < 0.02
    rows = [{"teacher": 0.9, "untrained": 0.1, "same_init": s, "different_init": 0.1, "seconds": 1.0}
            for s in (0.4, 0.5, 0.6)]
    summ = sd.summarise(rows)
    lo, hi = summ["same_init"]["ci95"]
    assert summ["same_init"]["mean"] == pytest.approx(0.5)
    assert hi - 0.5 == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert 0.5 - lo == pytest.approx(hi - 0.5)
    assert summ["same_minus_different"]["per_seed"] == pytest.approx([0.3, 0.4, 0.5])


@pytest.mark.parametrize("bad", [dict(aux=1), dict(noise="pink"), dict(n_noise=0), dict(temperature=0.0)])
def test_bad_setups_are_refused(bad):
    with pytest.raises(DoublebindError):
        sd.Setup(**bad).check()


def test_cli_writes_table_json_and_plots(tmp_path):
    out = tmp_path / "rep"
    res = run_cli("replicate", "subliminal-digits", "--seeds", "2", "--aux", "3", "--aux-sweep", "2,3",
                  "--teacher-epochs", "3", "--distill-epochs", "1", "--n-noise", "2048", "--threads", "1",
                  "--out", str(out))
    assert res.returncode == 0, res.stderr
    for text in ("student, same init", "student, different init", "control: same init, all logits",
                 "control: different init, all logits", "chance", "auxiliary-logit sweep", "s per seed",
                 "published: Cloud et al. (2025)", "section 6.2", "over 50% accuracy on the MNIST test set",
                 "quoted second-hand", "against the published 'over 0.50' on MNIST"):
        assert text in " ".join(res.stdout.split())  # the console may wrap long lines
    data = json.loads((out / "subliminal_digits.json").read_text())
    assert data["seeds"] == [0, 1] and set(data["results"]) == {"2", "3"}
    assert data["published"]["aux"] == 3 and data["published"]["same_init_above"] == 0.5
    assert not (out / sd.FINISHED).exists()  # the record of finished seeds goes once the JSON holds them
    rows = data["results"]["3"]["per_seed"]
    assert [r["seed"] for r in rows] == [0, 1]
    assert all(0 <= r[c] <= 1 for r in rows for c in sd.CONDITIONS if c not in ("shared_head", "shared_body"))
    assert not {"shared_head", "shared_body"} & set(rows[0])  # only with --head-controls
    assert data["results"]["3"]["summary"]["same_init"]["per_seed"] == [r["same_init"] for r in rows]
    for png in ("subliminal_digits.png", "subliminal_digits_sweep.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = run_cli("replicate", "subliminal-digits", "--seeds", "1", "--aux", "3", "--teacher-epochs", "1",
                  "--distill-epochs", "1", "--n-noise", "512", "--threads", "1", "--out", str(out), "--force")
    assert res.returncode == 0, res.stderr  # no sweep this time: the earlier sweep's plot goes
    assert not (out / "subliminal_digits_sweep.png").exists() and (out / "subliminal_digits.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--aux", "1"], "--aux must be at least 2"),
    (["--seeds", "0"], "--seeds must be between 1 and 10,000, got 0"),
    (["--seeds", "100000000"], "--seeds must be between 1 and 10,000"),  # started a 259-day run before
    (["--n-noise", "100000000"], "--n-noise must be between 1 and 10,000,000"),
    (["--teacher-epochs", "1000000"], "--teacher-epochs must be between 1 and 10,000"),
    (["--aux", "1000000"], "--aux must be at most 100,000"),
    (["--aux-sweep", "2,x"], "--aux-sweep takes comma-separated integers"),
    (["--noise", "pink"], "unknown noise 'pink'"),
    (["--aux-sweep", "3,1"], "--aux-sweep values must be at least 2, got 1"),
    (["--distill-epochs", "0"], "--distill-epochs must be between 1 and 10,000, got 0"),
    # a sweep (2026-12-05): --threads 100000 segfaulted; a repeated sweep value ran twice; --aux
    # 100000 at the paper's 60,000 noise images needs 24 GB of teacher logits and was killed
    (["--threads", "100000"], "--threads must be between 0 and 1,024, got 100000"),
    (["--aux-sweep", "2,3,2"], "--aux-sweep lists 2 more than once"),
    (["--aux", "100000", "--n-noise", "10000000"], "GB for the teacher's logits on the noise images alone"),
    (["--aux-sweep", "3,100000", "--n-noise", "10000000"], "--aux-sweep values 100000 with --n-noise 10,000,000"),
    (["--aux-sweep", "3,,4"], "--aux-sweep has an empty item in '3,,4'"),  # ran 3 and 4, two minutes, no word
])
def test_cli_bad_input_is_one_error_line(tmp_path, args, message):
    res = run_cli("replicate", "subliminal-digits", *args, "--out", str(tmp_path / "x"))
    assert res.returncode == 1
    assert res.stderr.strip().startswith("error:") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_keeps_an_earlier_replication_unless_forced(tmp_path):
    """A rerun into the same --out replaced subliminal_digits.json without a word; an output
    that was a folder was found after training, with the JSON already replaced."""
    out = tmp_path / "rep"
    out.mkdir()
    (out / "subliminal_digits.json").write_text("earlier")
    res = run_cli("replicate", "subliminal-digits", "--out", str(out))
    assert res.returncode == 1 and "already holds a replication (subliminal_digits.json)" in res.stderr
    (out / "subliminal_digits.png").mkdir()
    res = run_cli("replicate", "subliminal-digits", "--force", "--out", str(out))
    assert res.returncode == 1 and "subliminal_digits.png is a folder" in res.stderr
    assert (out / "subliminal_digits.json").read_text() == "earlier"


def test_cli_refuses_an_out_that_is_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("")
    res = run_cli("replicate", "subliminal-digits", "--out", str(f))
    assert res.returncode == 1 and "is a file, not a replication folder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_refuses_an_out_it_cannot_make_before_training(tmp_path):
    f = tmp_path / "taken"
    f.write_text("")
    res = run_cli("replicate", "subliminal-digits", "--out", str(f / "inside"))
    assert res.returncode == 1 and "is a file, so no folder can be made inside it" in res.stderr


def test_one_seed_wires_its_models_as_the_experiment_needs(monkeypatch):
    """Within one seed: both students see the noise in the same order (only their init
    differs), every accuracy is on the held-out digits, and `untrained` is the accuracy of
    the shared init itself (the same-init student's starting point), recorded before training."""
    calls, orders = [], []
    real_accuracy, real_distill = sd.accuracy, sd.distill_student

    def accuracy(model, x, y):
        calls.append(({k: v.clone() for k, v in model.state_dict().items()}, x.shape[0]))
        return real_accuracy(model, x, y)

    def distill_student(student, noise, logits, setup, order, width):
        orders.append((order, width))
        return real_distill(student, noise, logits, setup, order, width)

    monkeypatch.setattr(sd, "accuracy", accuracy)
    monkeypatch.setattr(sd, "distill_student", distill_student)
    tiny = sd.Setup(n_noise=512, distill_batch=128, distill_epochs=1, teacher_epochs=1)
    row = sd.run_seed(3, tiny)
    order = orders[0][0]  # the same noise order for all four; aux logits (m = 3), then all 13
    assert orders == [(order, 3), (order, 3), (order, 13), (order, 13)]
    x_te, y_te = sd.digits()[2:]
    assert [n for _, n in calls] == [x_te.shape[0]] * 6  # teacher, untrained, two students, two controls
    s_init = sd._seeds(3, 4)[0]
    init = sd.mlp([64, *tiny.hidden, sd.N_CLASSES + tiny.aux], torch.Generator().manual_seed(s_init))
    untrained = [i for i, (state, _) in enumerate(calls)
                 if all(torch.equal(state[k], v) for k, v in init.state_dict().items())]
    assert untrained == [1] and row["untrained"] == real_accuracy(init, x_te, y_te)


def test_a_bad_sweep_value_is_refused_before_anything_trains():
    trained = []
    with pytest.raises(DoublebindError):
        sd.run([0], SMALL, sweep=[3, 1], progress=lambda n=1: trained.append(n))
    assert trained == []


def test_an_interrupted_replication_resumes_from_its_finished_seeds(tmp_path, monkeypatch):
    """Per-seed results lived in memory until the end: a Ctrl-C at 43 of 75 steps kept nothing,
    and a rerun started from zero. Each finished seed is recorded as it ends, and a rerun with
    the same settings takes it from there; the numbers are those of an uninterrupted run."""
    record = tmp_path / sd.FINISHED
    first = sd.run([0], SMALL, record=record)  # the run a kill cut short after its first seed
    assert len(sd.read_finished(record)) == 1
    calls = []
    original = sd.run_seed
    monkeypatch.setattr(sd, "run_seed", lambda seed, setup, advance=lambda n=1: None:
                        calls.append(seed) or original(seed, setup, advance))
    with record.open("a") as f:
        f.write('{"key": "torn')  # a kill mid-append: skipped, never an error
    resumed = sd.run([0, 1], SMALL, record=record)
    assert calls == [1]  # seed 0 was not run again
    assert resumed.runs[SMALL.aux][0] == first.runs[SMALL.aux][0]
    monkeypatch.setattr(sd, "run_seed", original)
    whole = sd.run([0, 1], SMALL)
    assert [_numbers(r) for r in resumed.runs[SMALL.aux]] == [_numbers(r) for r in whole.runs[SMALL.aux]]
    # other settings are other runs: nothing is taken from the record
    calls.clear()
    monkeypatch.setattr(sd, "run_seed", lambda seed, setup, advance=lambda n=1: None: calls.append(seed) or {})
    sd.run([0], replace(SMALL, temperature=2.0), record=record)
    assert calls == [0]


@pytest.mark.parametrize("ci,where", [((0.55, 0.7), "above it"), ((0.3, 0.45), "below it"),
                                      ((0.27, 0.58), "its interval spans it")])
def test_the_published_level_is_placed_against_the_interval(ci, where):
    """The line beside the published MNIST figure says on which side of 'over 0.50' the
    same-init interval lies, and is printed only at the paper's m = 3."""
    summary = {"same_init": {"mean": sum(ci) / 2, "ci95": list(ci)}, "different_init": {"mean": 0.11}}
    line = sd.against_published(summary, 3)
    assert line.endswith(f"{where}; different init 0.110 (chance 0.10)")
    assert f"[{ci[0]:.3f}, {ci[1]:.3f}]" in line
    assert sd.against_published(summary, 5) is None


def test_spliced_takes_the_hidden_layers_of_one_start_and_the_head_of_the_other():
    g = torch.Generator().manual_seed(0)
    a, b = sd.mlp([64, 8, 8, 13], g), sd.mlp([64, 8, 8, 13], g)
    s = sd.spliced(a, b)
    assert all(torch.equal(p, q) for p, q in zip(s[:-1].parameters(), a[:-1].parameters()))
    assert all(torch.equal(p, q) for p, q in zip(s[-1].parameters(), b[-1].parameters()))
    assert not any(p is q for p, q in zip(s.parameters(), [*a[:-1].parameters(), *b[-1].parameters()]))


def test_head_controls_add_two_students_and_change_no_other_number(monkeypatch):
    """Same seed, same numbers for the five conditions with and without the controls; the two
    new students are scored like the others: distilled on the auxiliary logits alone, in the
    same noise order, and scored on the held-out digits."""
    setup = sd.Setup(teacher_epochs=1, distill_epochs=1, n_noise=2048, hidden=(32, 32))
    plain = sd.run_seed(0, setup)
    calls, orders = [], []
    real_accuracy, real_distill = sd.accuracy, sd.distill_student

    def accuracy(model, x, y):
        calls.append((x.shape[0], real_accuracy(model, x, y)))
        return calls[-1][1]

    def distill_student(student, noise, logits, setup, order, width):
        orders.append((order, width))
        return real_distill(student, noise, logits, setup, order, width)

    monkeypatch.setattr(sd, "accuracy", accuracy)
    monkeypatch.setattr(sd, "distill_student", distill_student)
    more = sd.run_seed(0, replace(setup, head_controls=True))
    for c in ("teacher", "untrained", "same_init", "different_init", "same_init_all", "different_init_all"):
        assert more[c] == plain[c], c
    assert [n for n, _ in calls] == [sd.digits()[2].shape[0]] * 8  # the teacher, untrained, six students
    assert [more["shared_head"], more["shared_body"]] == [a for _, a in calls[6:]]
    order = orders[0][0]
    every = sd.N_CLASSES + setup.aux
    assert [w for _, w in orders] == [setup.aux, setup.aux, every, every, setup.aux, setup.aux]
    assert all(o is order for o, _ in orders)
    assert sd.stages_per_seed(replace(setup, head_controls=True)) == sd.STAGES_PER_SEED + 2


def test_cli_head_controls_print_and_record_the_two_students(tmp_path):
    out = tmp_path / "rep"
    res = run_cli("replicate", "subliminal-digits", "--seeds", "1", "--teacher-epochs", "1", "--distill-epochs", "1",
                  "--n-noise", "1024", "--threads", "1", "--head-controls", "--out", str(out))
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "teacher's initial head, other hidden layers" in text and "teacher's initial hidden layers, other head" in text
    data = json.loads((out / "subliminal_digits.json").read_text())
    assert data["setup"]["head_controls"] is True
    assert {"shared_head", "shared_body"} <= set(data["results"]["3"]["per_seed"][0])
