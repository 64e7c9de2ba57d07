"""`training.compile`: the student's training forward through torch.compile, compiled once
per process; the same training up to rounding, a clear error when the compiler fails, and
recipe hashes that do not move while the knob is off."""

import shutil

import pytest

from doublebind import config
from doublebind.errors import DoublebindError
from doublebind.studies.executor import one_thread
from doublebind.studies.run import recipe_hash
from doublebind.training import distill
from doublebind.training.distill import Distiller

from .conftest import tiny_recipe

needs_compiler = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                                    reason="torch.compile on the CPU needs a C++ compiler")


def _curve(org, compiled: bool, seed: int = 0, packing: bool = True, steps: int = 6, **over) -> list[float]:
    recipe = tiny_recipe({}, seed=seed, training={"steps": steps, "batch": 16, "lr": 1e-3, "compile": compiled,
                                                  "packing": packing}, prompts={"size": 64}, **over)
    d = Distiller(org, recipe, None, show_progress=False)
    return [d.train_step(s) for s in range(steps)]


@needs_compiler
def test_compiled_training_follows_eager_and_repeats_itself(quick_organism):
    """Six steps of the real distiller from the same init, on one thread as in a study: the
    compiled curve is the eager one up to rounding (it is really another computation: not
    bit-equal), on packed batches, and a new student in the same process reuses the compiled
    code and repeats the first run exactly. (With two threads the compiled kernels' parallel
    reductions made a repeat differ in the 7th digit from the third step on.)"""
    import torch._dynamo

    org, _ = quick_organism
    torch._dynamo.reset()
    torch._dynamo.utils.compilation_time_metrics.clear()
    distill._compiled_logits.cache_clear()
    with one_thread():
        _compiled_and_eager(org)
    # one analysis: Dynamo restarted it when it could not keep the model's floats as tensors
    # (a process's first compilation took twice as long)
    attempts = [k for k in torch._dynamo.utils.compilation_time_metrics if k.startswith("compile_attempt_")]
    assert attempts == ["compile_attempt_0"]


def _compiled_and_eager(org):
    eager = _curve(org, False)
    assert distill._compiled_logits.cache_info().currsize == 0  # eager never compiles
    first = _curve(org, True)
    assert distill._compiled_logits.cache_info().currsize == 1
    again = _curve(org, True)
    assert again == first
    assert first == pytest.approx(eager, rel=1e-4)
    assert first != eager
    assert first[0] != pytest.approx(first[-1], rel=1e-3)  # it trained
    other = _curve(org, True, seed=1)  # another seed: other items, other layouts, the same compiled function
    assert distill._compiled_logits.cache_info().misses == 1 and other != first


@needs_compiler
def test_a_compiled_lora_student_follows_eager(quick_organism):
    """A LoRA student (peft wraps the model, only the adapters train) through the same compiled
    function, on padded batches with an attention mask (as kl_to_base and Hugging Face
    organisms train; the test above packs): the eager curve up to rounding, and it trained.
    (Each graph the inductor compiles costs 12-17 s on a cold cache, so the two ways a batch
    is laid out are checked on one student each.)"""
    org, _ = quick_organism
    lora = {"lora": {"r": 4, "alpha": 8}}
    with one_thread():
        eager = _curve(org, False, packing=False, student=lora)
        compiled = _curve(org, True, packing=False, student=lora)
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert compiled[0] != pytest.approx(compiled[-1], rel=1e-3)


@needs_compiler
def test_lora_students_of_other_scalings_share_one_compilation_and_a_recompile_limit_is_an_error(
        quick_organism, monkeypatch):
    """With the model's floats as constants, each LoRA alpha compiled again, and past torch's
    recompile limit Dynamo ran the ninth eagerly with only a warning (other numbers).

    Both are Dynamo's (its guards and its limit), whatever backend turns its graphs into code,
    so this test compiles with the `eager` backend: the inductor's C++ kernels, whose numbers
    the two tests above check, cost 12-17 s a graph on a cold cache."""
    import functools

    import torch._dynamo
    from torch._dynamo.utils import counters

    org, _ = quick_organism
    torch._dynamo.reset()
    monkeypatch.setattr(distill, "_compiled_logits", functools.cache(
        lambda: torch.compile(distill._logits, dynamic=True, backend="eager")))
    before = counters["frames"]["total"]
    with one_thread():
        for alpha in (8, 16):
            _curve(org, True, steps=2, student={"lora": {"r": 4, "alpha": alpha}})
        assert counters["frames"]["total"] - before == 1  # one compilation for both scalings
        monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
        with pytest.raises(DoublebindError, match="training.compile: torch.compile failed") as e:
            _curve(org, True, steps=2)  # a plain student needs a second compilation: over the limit
    assert "\n" not in str(e.value) and "training.compile: false" in str(e.value)
    torch._dynamo.reset()


def test_a_compiler_failure_is_one_clear_error(monkeypatch):
    def broken(model, **inputs):
        raise RuntimeError("C++ compile error\n" + "  long compiler output\n" * 50)

    monkeypatch.setattr(distill, "_compiled_logits", lambda: broken)
    with pytest.raises(DoublebindError) as e:
        distill.student_logits(object(), True, input_ids=None)
    msg = str(e.value)
    assert "\n" not in msg and "training.compile" in msg and "C++ compile error" in msg
    assert "training.compile: false" in msg


def test_the_recipe_hash_moves_only_when_compile_is_on():
    off = tiny_recipe({})
    on = tiny_recipe({}, training={"compile": True})
    assert off.training.compile is False
    dump = off.model_dump(mode="json")
    del dump["training"]["compile"]
    del dump["objective"]["dpo_sft_weight"]  # a later knob, counted only when not 0
    del dump["objective"]["normalise"]  # a later knob, counted only when not token
    del dump["training"]["ema"]  # a later knob, counted only when set
    del dump["free_audit"]  # a later knob, counted only when set
    dump["training"]["save_weights"] = False  # as every study run's recipe had it (`keeps_weights` changes no hash)
    import hashlib
    import json

    # off: the hash of the recipe as it was before the knob existed
    assert recipe_hash(off) == hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]
    assert recipe_hash(on) != recipe_hash(off)
    assert config.build(config.RecipeConfig, on.model_dump(mode="json")).training.compile is True
