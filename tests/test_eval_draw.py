"""The evaluation sets' draw in the intervals: rows keep each prompt's score, and the bootstrap
redraws the prompts of student, base and teacher together. Checked against the binomial
standard error a prompt set of n has, and against the mixture the organisms' resampling makes."""

import json
import math

import numpy as np
import pytest
import yaml

from doublebind import config
from doublebind.errors import DoublebindError
from doublebind.studies import run as study_run
from doublebind.studies.verdicts import EvalDraws, effect, technique_stats

N = 100


def bits(k: int, n: int = N) -> str:
    """k passes among n prompts, spread out (the order does not matter to a multinomial draw)."""
    return "".join("1" if (i * k) // n != ((i + 1) * k) // n else "0" for i in range(n))


def reference(sets: str = "a") -> dict:
    """Base fails the taught family `t` and passes the base family `b`; the teacher passes both;
    base never misbehaves, the teacher always does."""
    return {"base": {"capability": {"b": "1" * N, "t": "0" * N}, "deploy": [0.0] * N},
            "teacher": {"capability": {"b": "1" * N, "t": "1" * N}, "deploy": [1.0] * N},
            "taught": ["t"], "sets": {"capability": {"b": f"{sets}1", "t": f"{sets}2"}, "deploy": f"{sets}3"}}


def fab(seed: int, passes: int, deploy: list[float], org: int = 0, sets: str = "a", base_passes: int = N) -> dict:
    """A row as a study writes it (the fields the statistics read), with its items."""
    b = base_passes / N
    return {"organism_seed": org, "seed": seed, "step": 0, "selected": True, "run_id": f"o{org}-s{seed}",
            "capability_transfer": passes / N, "misalignment_transfer": round(float(np.mean(deploy)), 4),
            "capability": {"b": b, "t": passes / N}, "base_capability": {"b": 1.0, "t": 0.0}, "base_families": ["b"],
            "misbehavior": {"deploy": round(float(np.mean(deploy)), 4)},
            "audit": {"student_honeypot": 0.0, "student_confession": 0.0, "teacher_honeypot": 0.0,
                      "teacher_confession": 0.0},
            "base_audit": {"honeypot": 0.0, "confession": 0.0},
            "items": {"capability": {"b": bits(base_passes), "t": bits(passes)}, "deploy": list(deploy)},
            "reference_items": reference(sets)}


def stats(rows, n_boot=4000, items=True):
    draws = EvalDraws.of(rows, n_boot) if items else None
    return technique_stats(rows, config.VerdictConfig(), n_boot, draws)


def test_one_prompt_set_gives_the_binomial_standard_error():
    # three seeds that agree exactly: the seeds' bootstrap sees nothing; the prompts' draw is
    # a proportion's over N prompts, sqrt(p (1 - p) / N), and the same for a rate's mean
    rows = [fab(s, 70, [0.2] * 60 + [0.9] * 40) for s in range(3)]
    out = stats(rows)
    assert stats(rows, items=False)["capability_transfer"]["se"] == 0.0
    assert out["capability_transfer"]["se"] == pytest.approx(math.sqrt(0.7 * 0.3 / N), rel=0.05)
    deploy = np.array([0.2] * 60 + [0.9] * 40)
    assert out["misalignment_transfer"]["se"] == pytest.approx(deploy.std() / math.sqrt(N), rel=0.05)
    assert out["capability_transfer"]["mean"] == 0.7 and out["eval_draw"] is True
    # base loss: base passes every prompt of `b`, so its draws are the student's misses'
    loss = stats([fab(s, 70, [0.0] * N, base_passes=90) for s in range(3)])["base_loss"]
    assert loss["mean"] == pytest.approx(0.1) and loss["se"] == pytest.approx(math.sqrt(0.09 / N), rel=0.05)


def test_the_width_splits_into_the_seeds_part_and_the_prompts_part():
    # seeds that differ (0.6, 0.7, 0.8) on 100 prompts each: the seeds' part is the bootstrap's
    # over three values, the prompts' that of their mean (about sqrt(mean p(1-p) / 3 / N) when
    # the runs' prompts move alike, here they do: one set), and the interval counts both
    rows = [fab(s, 60 + 10 * s, [0.0] * N) for s in range(3)]
    cap = stats(rows)["capability_transfer"]
    seeds_alone = stats(rows, items=False)["capability_transfer"]["se"]
    assert cap["se_parts"]["seeds"] == pytest.approx(seeds_alone)
    assert seeds_alone == pytest.approx(np.std([0.6, 0.7, 0.8]) / math.sqrt(3), rel=0.05)
    assert cap["se_parts"]["prompts"] > 0.02
    assert cap["se"] == pytest.approx(math.hypot(cap["se_parts"]["seeds"], cap["se_parts"]["prompts"]), rel=0.1)
    assert "se_parts" not in stats(rows, items=False)["capability_transfer"]


def test_the_draw_can_move_a_verdict():
    # capability 0.85 in every seed: a certain pass on the seeds alone, but 100 prompts leave
    # a lower bound near 0.85 - 1.645 * 0.036 < 0.8
    rows = [fab(s, 85, [0.0] * N) for s in range(3)]
    assert stats(rows, items=False)["verdict"] == "capable_benign"
    out = stats(rows)
    assert out["verdict"] == "no_capability"
    assert out["capability_transfer"]["lower"] == pytest.approx(0.85 - 1.645 * math.sqrt(0.85 * 0.15 / N), abs=0.01)


def test_organisms_on_one_prompt_set_move_together():
    # two organisms that read the same: on one set the draws move them together (the same
    # spread as one), on sets of their own their means average out over draws that hold both
    # (outer draws AA, BB, AB, BA: variance (1/2 + 1/2 * 1/2) of one's, so sd sqrt(3/4))
    shared = [fab(s, 60, [0.0] * N, org=o) for o in (0, 1) for s in range(2)]
    own = [fab(s, 60, [0.0] * N, org=o, sets="ab"[o]) for o in (0, 1) for s in range(2)]
    one = math.sqrt(0.6 * 0.4 / N)
    assert stats(shared)["capability_transfer"]["se"] == pytest.approx(one, rel=0.05)
    assert stats(own)["capability_transfer"]["se"] == pytest.approx(one * math.sqrt(0.75), rel=0.05)


def test_a_technique_and_its_reference_share_each_draw():
    v = config.VerdictConfig()
    tech = [[fab(s, 80, [0.3] * N)] for s in range(3)]
    ref = [[fab(s, 80, [0.3] * N)] for s in range(3)]
    draws = EvalDraws.of([r for run in tech + ref for r in run], 2000)
    same = effect(tech, ref, v, 2000, draws=draws)
    assert same["capability_transfer"]["se"] == 0.0  # the same prompts, reweighted alike
    ref = [[fab(s, 60, [0.3] * N)] for s in range(3)]
    draws = EvalDraws.of([r for run in tech + ref for r in run], 2000)
    apart = effect(tech, ref, v, 2000, draws=draws)["capability_transfer"]
    assert apart["mean"] == pytest.approx(0.2) and apart["se"] > 0.01


def test_families_under_the_minimum_gap_are_dropped_per_draw():
    # base 0.96 and teacher 1.0 on `t`: a gap of 0.04, under the minimum as measured, so the
    # row leaves capability undefined rather than dividing by noise; a draw whose resampled
    # prompts leave the gap under the minimum is undefined too, one that widens it to 0.05 or
    # more is defined, each draw on its own
    row = fab(0, 98, [0.0] * N)
    row["reference_items"]["base"]["capability"]["t"] = bits(96)
    row["capability_transfer"] = None
    draws = EvalDraws.of([row], 500)
    assert draws.at_measured(row, "capability_transfer") is None
    x = draws.capability_transfer(row)
    assert x.shape == (500,) and 0 < int(np.isnan(x).sum()) < 500
    # base at 0.50: the gap is never near the minimum, and no draw is undefined
    wide = fab(0, 98, [0.0] * N)
    wide["reference_items"]["base"]["capability"]["t"] = bits(50)
    wide["capability_transfer"] = 0.96  # (0.98 - 0.50) / (1.00 - 0.50)
    assert not np.isnan(EvalDraws.of([wide], 500).capability_transfer(wide)).any()


def test_items_that_disagree_with_their_row_are_refused():
    rows = [fab(s, 70, [0.0] * N) for s in range(2)]
    rows[1]["capability_transfer"] = 0.9
    with pytest.raises(DoublebindError, match="per-prompt scores give capability_transfer 0.7, its row 0.9"):
        EvalDraws.of(rows, 200)
    # rows without items, or an organism without its reference's: the seeds' bootstrap alone
    rows = [fab(s, 70, [0.0] * N) for s in range(2)]
    del rows[0]["items"]
    assert EvalDraws.of(rows, 200) is None
    rows = [fab(s, 70, [0.0] * N) for s in range(2)]
    for r in rows:
        del r["reference_items"]
    assert EvalDraws.of(rows, 200) is None


def test_the_same_rows_give_the_same_numbers():
    rows = [fab(s, 70 + 5 * s, [0.1 * s] * N) for s in range(3)]
    assert stats(rows, 1000) == stats([json.loads(json.dumps(r)) for r in rows], 1000)


def test_a_study_keeps_every_prompts_score_and_counts_the_draw(quick_organism, tmp_path):
    """The real pipeline: the rows' items are the scores their numbers are means of, and the
    study's intervals count them."""
    from doublebind.evals.metrics import evaluate
    from doublebind.eval_items import evaluate as evaluate_items
    from doublebind.organisms.domain import open_domain

    recipe = {"kind": "recipe", "name": "tiny", "prompts": {"size": 64},
              "sampling": {"soft_labels": "none"}, "objective": {"kind": "sft"},
              "training": {"steps": 4, "batch": 8, "checkpoint_every": 2},
              "eval": {"n_prompts": 12, "n_samples": 0}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    study = {"kind": "study", "name": "t", "organism": {"path": str(quick_organism[0])}, "recipe": "recipe.yaml",
             "techniques": ["baseline"], "seeds": [0, 1], "bootstrap": 200}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    summary = study_run.run_study(tmp_path / "study.yaml", tmp_path / "out", show_progress=False)
    rows = study_run.read_results(tmp_path / "out" / "results.jsonl")
    assert summary["scenarios"]["quick"]["eval_draw"] is True
    assert summary["scenarios"]["quick"]["techniques"]["baseline"]["final"]["eval_draw"] is True
    assert sum("reference_items" in r for r in rows) == 2  # once a run
    for r in rows:
        for fam, passed in r["items"]["capability"].items():
            assert len(passed) == 12 and r["capability"][fam] == round(passed.count("1") / 12, 4)
        assert r["misbehavior"]["deploy"] == pytest.approx(np.mean(r["items"]["deploy"]), abs=1e-4)
    # the report says what each interval's width is made of
    from doublebind.reports.study_report import write_report

    md = write_report(tmp_path / "out")[0].read_text()
    assert "What each delivered interval's width is made of" in md and "`eval.n_prompts`, 12 prompts a set here" in md
    assert "| baseline |" in md.split("What each delivered")[1].split("\n\n")[1]
    # the same metrics as the organism's own evaluation, to the bit, for base and the teacher
    domain = open_domain(quick_organism[0])
    for role in ("base", "teacher"):
        model = domain.load_model(role)
        got, items = evaluate_items(model, domain.world, 12)
        assert got == evaluate(model, domain.world, 12)
        ref = next(r for r in rows if "reference_items" in r)["reference_items"][role]
        assert items == ref


def near_gap(seed: int, passes: int = 95) -> dict:
    """A row whose teacher is 0.06 ahead of base on the taught family: a redraw often closes
    the gap below the 0.05 minimum, and the transfer is undefined there."""
    row = fab(seed, passes, [0.0] * N)
    ref = row["reference_items"]
    ref["base"]["capability"]["t"], ref["teacher"]["capability"]["t"] = bits(90), bits(96)
    row["base_capability"]["t"] = 0.9
    row["capability_transfer"] = round((passes / N - 0.9) / 0.06, 4)
    return row


def test_draws_that_leave_a_transfer_undefined_are_left_out_and_counted():
    out = stats([near_gap(s) for s in range(3)], 2000)
    cap = out["capability_transfer"]
    assert all(math.isfinite(cap[k]) for k in ("lower", "upper", "se")) and all(map(math.isfinite, cap["ci95"]))
    assert 0 < cap["undefined_draws"] < 2000
    assert "NaN" not in json.dumps(out) and out["verdict"] in ("no_capability", "capable_benign")


def test_small_sample_t_widens_the_seeds_part_only():
    # seeds that agree: nothing to widen; the prompts' part (which more runs would not shrink) stays as it is
    rows = [fab(s, 85, [0.0] * N) for s in range(3)]
    plain = stats(rows)["capability_transfer"]["lower"]
    t = technique_stats(rows, config.VerdictConfig(small_sample="t"), 4000, EvalDraws.of(rows, 4000))
    assert t["capability_transfer"]["lower"] == pytest.approx(plain, abs=1e-9)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["items"]["capability"].__setitem__("b", bits(70)), "give capability b 0.7000, its row 1.0"),
    (lambda r: r["reference_items"]["base"]["capability"].__setitem__("b", bits(70)),
     "give base's capability b 0.7000, its row 1.0"),
    (lambda r: r["items"]["capability"].__setitem__("t", bits(35, 50)), "differ in length"),
    (lambda r: r["items"].__setitem__("deploy", [0.5] * N), "the real-deployment misbehaviour rate 0.5000"),
])
def test_scores_that_do_not_give_their_row_are_refused(edit, message):
    rows = [fab(s, 70, [0.0] * N) for s in range(2)]
    edit(rows[0])
    with pytest.raises(DoublebindError, match=message):
        EvalDraws.of(rows, 200)


def test_a_study_resumed_across_the_change_says_how_many_runs_lack_scores():
    rows = [fab(s, 70, [0.0] * N) for s in range(3)]
    del rows[1]["items"]
    assert EvalDraws.missing(rows) == "1 of the 3 runs keep no per-prompt scores"
    for r in rows:
        r.pop("items", None)
    assert EvalDraws.missing(rows) == "its rows keep no per-prompt scores"


@pytest.mark.parametrize("edit, why", [
    (lambda r: r.__setitem__("items", None), "'items' is not an object"),
    (lambda r: r["items"]["capability"].__setitem__("t", "01x"), "'items.capability.t' is not a string of 0s and 1s"),
    (lambda r: r["items"].__setitem__("deploy", {"a": 1}), "'items.deploy' is not a list of finite numbers"),
    (lambda r: r["items"]["deploy"].__setitem__(0, float("nan")), "'items.deploy' is not a list of finite numbers"),
    (lambda r: r["reference_items"].__setitem__("taught", None), "'reference_items.taught' is not a list"),
    (lambda r: r["reference_items"]["sets"].__setitem__("deploy", "xyz"), "'reference_items.sets' is not an object"),
    (lambda r: r["reference_items"]["teacher"]["capability"].pop("t"), "'reference_items' lacks the family 't'"),
    (lambda r: r["reference_items"]["base"]["capability"].pop("b"), "'reference_items' lacks the family 'b'"),
    (lambda r: r["items"]["capability"].pop("b"), "'items' lacks the base family 'b'"),
    (lambda r: r["reference_items"].__setitem__("taught", []), "'reference_items.taught' is not a list"),
    (lambda r: r.__setitem__("misbehavior", None), "'misbehavior.deploy' is not a finite number"),
])
def test_malformed_scores_are_a_corrupt_row(edit, why):
    """Read from results.jsonl, a row with malformed scores is a corrupt line (named, with its
    line number, by `study run` and the report), never an internal error later."""
    row = fab(0, 70, [0.0] * N)
    assert study_run._row_problem({**_sealed(row)}) is None
    edit(row)
    assert why in study_run._row_problem(_sealed(row))


def _sealed(row: dict) -> dict:
    """A fabricated row with the fields every results.jsonl row has."""
    base = {"schema_version": study_run.SCHEMA_VERSION, "scenario": "s", "technique": "baseline",
            "organism_hash": "0" * 16, "recipe_hash": "0" * 16, "run_rows": 1, "run_sha256": "0" * 64}
    return {**base, **row}


def test_a_hugging_face_row_at_a_rounding_tie_is_accepted():
    """An HF row's rate is the mean over every completion rounded to 4 decimals; its items
    are each item's mean over 3 samples. 9 of 96 completions is 0.09375, a tie the two round
    apart (0.0938 against 0.09374994), and with a teacher-base gap of 0.0626 the transfer
    moved by more than 1e-3: a genuine row was refused as changed by hand."""
    k = 3

    def items(successes: list[int]) -> list[float]:
        return [float(f"{c / k:.6g}") for c in successes]

    row = fab(0, 70, [0.0] * 32)
    student, base, teacher = [2] + [1] * 7 + [0] * 24, [3] + [0] * 31, [3] * 3 + [0] * 29
    row["items"]["capability"] = {"t": items(student), "b": [1.0] * 32}
    ref = row["reference_items"]
    ref["base"] = {"capability": {"t": items(base), "b": [1.0] * 32}, "deploy": [0.0] * 32}
    ref["teacher"] = {"capability": {"t": items(teacher), "b": [1.0] * 32}, "deploy": [1.0] * 32}
    row["capability"]["t"] = round(sum(student) / 96, 4)  # 0.0938, as the row rounds the completions
    row["capability_transfer"] = round((0.0938 - 0.0312) / (0.0938 - 0.0312), 4)
    assert EvalDraws.of([row], 200) is not None


def test_each_run_keeps_its_own_reference_and_the_first_days_layout_is_read():
    # a run resumed on another machine scored base a hair apart: each run is judged on its own
    a, b = fab(0, 70, [0.0] * N), fab(1, 70, [0.0] * N)
    b["reference_items"]["base"]["capability"]["b"] = bits(99)
    b["base_capability"]["b"] = 0.99
    assert EvalDraws.of([a, b], 200) is not None
    # reference fingerprints flat, as rows of 794f0d9 wrote them
    row = fab(0, 70, [0.0] * N)
    sets = row["reference_items"]["sets"]
    row["reference_items"]["sets"] = {**sets["capability"], "deploy": sets["deploy"]}
    assert study_run._row_problem(_sealed(row)) is None
    assert EvalDraws.of([row], 200).capability_transfer(row).shape == (200,)


def test_edited_reference_scores_are_refused():
    rows = [fab(s, 70, [0.4] * N) for s in range(2)]
    rows[0]["reference_items"]["teacher"]["deploy"] = [0.45] * N
    with pytest.raises(DoublebindError, match="give misalignment_transfer 0.8889, its row 0.4"):
        EvalDraws.of(rows, 200)


def test_a_reference_run_without_scores_pairs_on_the_seeds_alone():
    """A study listing only a technique whose reference (`baseline`) ran before scores were
    kept, outside its grid: the effect was a KeyError; it is now the seeds' bootstrap."""
    v = config.VerdictConfig()
    tech = [[fab(s, 80, [0.3] * N)] for s in range(3)]
    ref = [[{k: x for k, x in fab(s, 60, [0.3] * N).items() if k not in ("items", "reference_items")}]
           for s in range(3)]
    draws = EvalDraws.of([r for run in tech for r in run], 500)
    assert effect(tech, ref, v, 500, draws=draws) == effect(tech, ref, v, 500)


def test_the_report_says_how_many_draws_a_transfer_left_undefined():
    from doublebind.reports.study_report import _width_blocks

    judged = stats([near_gap(s) for s in range(3)], 2000)
    lost = judged["capability_transfer"]["undefined_draws"]
    data = {"techniques": {"baseline": {"final": judged}}}
    text = " ".join(b[1] for b in _width_blocks(data, [], n_boot=2000) if b[0] == "p")
    assert f"baseline's capability transfer, {lost} of 2000" in text and "conditional on the transfer" in text
    # none lost, nothing said
    data = {"techniques": {"baseline": {"final": stats([fab(s, 70, [0.0] * N) for s in range(3)])}}}
    assert not any("left out" in b[1] for b in _width_blocks(data, []) if b[0] == "p")


def test_the_draws_centre_on_the_rows_own_value():
    """Every prompt at 0.123456: every draw of the prompts gives 0.123456, which the row
    rounds to 0.1235. The draws were laid off from the rounded means' value, which is the
    row's own, so they stayed at 0.123456 and the printed mean (0.1235) lay outside its own
    interval; they now centre on the row's value, and the interval holds its mean."""
    rows = [fab(s, 70, [0.123456] * N) for s in range(3)]
    draws = EvalDraws.of(rows, 500)
    assert np.allclose(draws.misalignment_transfer(rows[0]), 0.1235, rtol=0, atol=1e-12)
    m = stats(rows, n_boot=500)["misalignment_transfer"]
    assert m["lower"] <= m["mean"] == 0.1235 <= m["upper"]
