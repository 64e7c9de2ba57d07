"""`training.ema`: the checkpoints deliver the bias-corrected moving average of the weights,
checked against that formula computed from a plain run's per-step weights; training itself
does not change."""

import json

import pytest
import torch
from safetensors.torch import load_file

from doublebind import config
from doublebind.studies.run import recipe_hash
from doublebind.training.average import WeightAverage
from doublebind.training.distill import distill

from .conftest import tiny_recipe


def _reference(weights: list[torch.Tensor], decay: float) -> torch.Tensor:
    """sum_i (1 - d) d^(t-i) w_i / sum_i (1 - d) d^(t-i), over the steps 1..t taken."""
    t = len(weights)
    coef = [(1 - decay) * decay ** (t - i) for i in range(1, t + 1)]
    return sum(c * w for c, w in zip(coef, weights)) / sum(coef)


def test_the_average_is_the_bias_corrected_exponential_mean():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 4))
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    avg = WeightAverage([p, frozen], 0.7)
    assert len(avg.params) == 1  # frozen weights never move: nothing to average
    assert torch.equal(avg.averaged()[0], p.detach())  # before a step: the weights themselves
    seen = []
    for _ in range(5):
        with torch.no_grad():
            p.add_(torch.randn(3, 4))
        avg.update()
        seen.append(p.detach().clone())
        torch.testing.assert_close(avg.averaged()[0], _reference(seen, 0.7), rtol=0, atol=1e-6)
    trained = p.detach().clone()
    with avg.delivered():
        torch.testing.assert_close(p.detach(), _reference(seen, 0.7), rtol=0, atol=1e-6)
    assert torch.equal(p.detach(), trained)  # the trained weights come back
    with pytest.raises(RuntimeError), avg.delivered():  # ... also when the body raises
        raise RuntimeError("x")
    assert torch.equal(p.detach(), trained)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        WeightAverage([p], 1.0)


def _weights(run, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:05d}" / "model.safetensors"))


def test_a_run_delivers_the_average_of_its_trained_weights(quick_organism, tmp_path):
    folder, _ = quick_organism
    common = {"prompts": {"size": 96, "contexts": {"neutral": 0.5, "deploy_like": 0.5}},
              "training": {"steps": 4, "batch": 8, "checkpoint_every": 1, "lr": 0.003}}
    plain = distill(folder, tiny_recipe(common), tmp_path / "plain", show_progress=False, plot=False)
    averaged_recipe = tiny_recipe(common, training={**common["training"], "ema": 0.6})
    averaged = distill(folder, averaged_recipe, tmp_path / "ema", show_progress=False, plot=False)
    # training goes on from the trained weights: the same losses step by step
    assert averaged["losses"] == plain["losses"]
    assert _weights(tmp_path / "ema", 0).keys() == _weights(tmp_path / "plain", 0).keys()
    for name, w0 in _weights(tmp_path / "plain", 0).items():
        assert torch.equal(_weights(tmp_path / "ema", 0)[name], w0)
    trained = [_weights(tmp_path / "plain", s) for s in range(1, 5)]
    for t in range(1, 5):
        delivered = _weights(tmp_path / "ema", t)
        for name in delivered:
            ref = _reference([w[name] for w in trained[:t]], 0.6)
            torch.testing.assert_close(delivered[name], ref, rtol=0, atol=1e-6)
    last = _weights(tmp_path / "ema", 4)
    assert any(not torch.equal(last[name], trained[-1][name]) for name in last)  # not the trained weights
    # the evals score the delivered weights: at step 0 they are the trained ones, later not
    rows = {f: [json.loads(x) for x in (tmp_path / f / "metrics.jsonl").read_text().splitlines()]
            for f in ("plain", "ema")}
    assert rows["ema"][0]["capability"] == rows["plain"][0]["capability"]
    assert rows["ema"][-1]["items"] != rows["plain"][-1]["items"]


def test_the_knob_counts_in_the_recipe_hash_only_when_set():
    import hashlib

    plain = tiny_recipe({})
    assert plain.training.ema is None
    dump = plain.model_dump(mode="json")
    for section, key in (("training", "compile"), ("training", "ema"), ("objective", "dpo_sft_weight"),
                         ("objective", "normalise")):
        del dump[section][key]  # knobs counted only when set
    del dump["free_audit"]
    dump["training"]["save_weights"] = False
    # unset: the hash of the recipe as it was before the knob existed
    assert recipe_hash(plain) == hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]
    assert recipe_hash(tiny_recipe({}, training={"ema": 0.95})) != recipe_hash(plain)
    for bad in (0, 1, 1.5):
        with pytest.raises(config.ConfigError, match="ema"):
            tiny_recipe({}, training={"ema": bad})


def test_the_jitter_benchmark_averages_the_changes_of_the_last_hundred_steps():
    """benchmarks/checkpoint_jitter.py: jitter is the mean |change| between neighbouring
    checkpoints over the last 100 steps, per run, then over runs; `final` is the last step's."""
    from .test_verdicts import _benchmark

    jitter = _benchmark("checkpoint_jitter")
    steps = range(0, 401, 50)
    runs = {("s", 0): {s: (0.1 * (s // 50 % 2), 0.9) for s in steps},  # 0, .1, 0, .1, ...: moves 0.1 a checkpoint
            ("s", 1): {s: (0.3, 0.8) for s in steps},  # still
            ("other", 0): {s: (1.0, 1.0) for s in steps}}
    got = jitter.stats(runs, "s", 50)
    assert got["runs"] == 2
    assert got["jitter"] == pytest.approx((0.1 + 0.0) / 2)  # steps 350 and 400 against their neighbours
    assert got["final"] == pytest.approx((0.0 + 0.3) / 2)  # step 400: 400 // 50 = 8, even
    assert got["capability"] == pytest.approx(0.85)
    assert got["at_300"] == pytest.approx((0.0 + 0.3) / 2)
