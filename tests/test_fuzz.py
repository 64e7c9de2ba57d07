"""A fuzz corpus of bad inputs: every one ends in exactly one `error: …` line on stderr,
exit status 1 and no traceback (issue 14).

The hand-written corpus covers what a hostile user tried (NaN/inf, type clashes, conflicting
overrides, binary and empty files, broken cards, `--out` on a file, missing referenced
files, unknown override keys, huge sizes and seeds, usage errors); hypothesis adds random
overrides, files and config trees. Everything runs in-process through `doublebind.cli.main`
(a few ms per case), and no case trains anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from doublebind import cli

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "recipes" / "hard_sft.yaml"
STUDY = ROOT / "configs" / "studies" / "quick.yaml"


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch):
    """No debug tracebacks, the default thread policy."""
    monkeypatch.delenv("DOUBLEBIND_DEBUG", raising=False)
    monkeypatch.delenv("DOUBLEBIND_THREADS", raising=False)


def run(*argv: str) -> tuple[int, str, str]:
    """`doublebind *argv` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def assert_one_error(code: int, stderr: str, expect: str | None = None) -> str:
    lines = stderr.strip("\n").splitlines()
    assert "Traceback" not in stderr, stderr
    assert code == 1, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "internal error" not in lines[0], lines[0]  # the catch-all: a bad input must be named
    if expect is not None:
        assert expect in lines[0], (expect, lines[0])
    return lines[0]


def assert_clean(code: int, stderr: str) -> None:
    """Valid (exit 0) or one error line (exit 1); never a traceback."""
    if code == 0:
        assert "Traceback" not in stderr and "error:" not in stderr, stderr
    else:
        assert_one_error(code, stderr)


# ---- the corpus ----------------------------------------------------------------------

def recipe_text(**sections) -> str:
    data = yaml.safe_load(RECIPE.read_text())
    for k, v in sections.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return yaml.safe_dump(data)


def study_text(recipe: str = str(RECIPE), **fields) -> str:
    data = {"kind": "study", "organism": {"preset": "quick"}, "recipe": recipe, "techniques": ["baseline"],
            "seeds": [0]}
    data.update(fields)
    return yaml.safe_dump(data)


ORGANISM_OK = "kind: organism\nname: fuzz\n"

# (id, {file name: content}, argv with {d} for the case's folder, text the error line must hold)
FILE_CASES = [
    # config files that are not configs
    ("binary", {"c.yaml": b"\x00\x01\x02\xff\xfe binary"}, ["validate", "{d}/c.yaml"], "not UTF-8"),
    ("nul-bytes", {"c.yaml": b"kind: recipe\x00\n"}, ["validate", "{d}/c.yaml"], "NUL"),
    ("latin1", {"c.yaml": "kind: recipe\nname: caf\xe9\n".encode("latin-1")}, ["validate", "{d}/c.yaml"], "not UTF-8"),
    ("empty", {"c.yaml": ""}, ["validate", "{d}/c.yaml"], "empty"),
    ("comments-only", {"c.yaml": "# nothing here\n\n"}, ["validate", "{d}/c.yaml"], "empty"),
    ("top-list", {"c.yaml": "- 1\n- 2\n"}, ["validate", "{d}/c.yaml"], "mapping"),
    ("top-scalar", {"c.yaml": "42\n"}, ["validate", "{d}/c.yaml"], "mapping"),
    # a technique named by something other than a string (found by test_random_config_trees)
    ("stage-name-list", {"c.yaml": "kind: study\nname: t\nscenarios: [default]\nrecipe: r.yaml\n"
                                   "techniques: [{name: []}]\nseeds: [0]\n"},
     ["validate", "{d}/c.yaml"], "techniques: stages.0.name: expected a technique name, got list"),
    ("stage-name-dict", {"c.yaml": "kind: recipe\nname: r\nstages: [{name: {a: 1}}]\n"},
     ["validate", "{d}/c.yaml"], "stages.0.name: expected a technique name, got dict"),
    ("unclosed", {"c.yaml": "kind: recipe\nprompts: {size: [1\n"}, ["validate", "{d}/c.yaml"], "not valid YAML"),
    ("tab-indent", {"c.yaml": "kind: recipe\nprompts:\n\tsize: 3\n"}, ["validate", "{d}/c.yaml"], "not valid YAML"),
    ("duplicate-key", {"c.yaml": "kind: recipe\nseed: 1\nseed: 2\n"}, ["validate", "{d}/c.yaml"], "duplicate key 'seed'"),
    ("folder-as-config", {"sub/x": "1"}, ["validate", "{d}/sub"], "is a folder"),
    ("missing-config", {}, ["validate", "{d}/nope.yaml"], "not found"),
    ("kind-unknown", {"c.yaml": "kind: galaxy\n"}, ["validate", "{d}/c.yaml"], "unknown config kind"),
    ("kind-list", {"c.yaml": "kind: [1, 2]\n"}, ["validate", "{d}/c.yaml"], "kind: must be a string"),
    ("unknown-key", {"c.yaml": "kind: recipe\ncolour: red\n"}, ["validate", "{d}/c.yaml"], "colour: unknown key"),
    # recipes: NaN/inf, type clashes, impossible values, sizes
    ("temperature-inf", {"c.yaml": recipe_text(sampling={"temperature": math.inf})},
     ["validate", "{d}/c.yaml"], "sampling.temperature"),
    ("temperature-nan", {"c.yaml": "kind: recipe\nsampling: {temperature: .nan}\n"},
     ["validate", "{d}/c.yaml"], "finite"),
    ("context-nan", {"c.yaml": "kind: recipe\nprompts: {contexts: {neutral: .nan}}\n"},
     ["validate", "{d}/c.yaml"], "prompts.contexts.neutral"),
    ("context-neg-inf", {"c.yaml": "kind: recipe\nprompts: {contexts: {neutral: -.inf, any: 1}}\n"},
     ["validate", "{d}/c.yaml"], "prompts.contexts.neutral"),
    ("context-negative", {"c.yaml": "kind: recipe\nprompts: {contexts: {neutral: -1, any: 1}}\n"},
     ["validate", "{d}/c.yaml"], "negative"),
    ("context-zero", {"c.yaml": "kind: recipe\nprompts: {contexts: {neutral: 0}}\n"},
     ["validate", "{d}/c.yaml"], "positive total"),
    ("context-unknown", {"c.yaml": "kind: recipe\nprompts: {contexts: {party: 1}}\n"},
     ["validate", "{d}/c.yaml"], "unknown context 'party'"),
    ("contexts-list", {"c.yaml": "kind: recipe\nprompts: {contexts: [neutral]}\n"},
     ["validate", "{d}/c.yaml"], "prompts.contexts"),
    ("lr-inf", {"c.yaml": "kind: recipe\ntraining: {lr: .inf}\n"}, ["validate", "{d}/c.yaml"], "training.lr"),
    ("beta-nan", {"c.yaml": "kind: recipe\nobjective: {beta: .nan}\n"}, ["validate", "{d}/c.yaml"], "objective.beta"),
    ("steps-word", {"c.yaml": "kind: recipe\ntraining: {steps: many}\n"}, ["validate", "{d}/c.yaml"], "training.steps"),
    ("steps-float", {"c.yaml": "kind: recipe\ntraining: {steps: 5.5}\n"}, ["validate", "{d}/c.yaml"], "training.steps"),
    ("steps-zero", {"c.yaml": "kind: recipe\ntraining: {steps: 0}\n"}, ["validate", "{d}/c.yaml"], "training.steps"),
    ("steps-huge", {"c.yaml": "kind: recipe\ntraining: {steps: 1000000000000}\n"},
     ["validate", "{d}/c.yaml"], "training.steps"),
    ("batch-huge", {"c.yaml": "kind: recipe\ntraining: {batch: 100000000}\n"}, ["validate", "{d}/c.yaml"], "training.batch"),
    ("size-huge", {"c.yaml": "kind: recipe\nprompts: {size: 100000000000}\n"}, ["validate", "{d}/c.yaml"], "prompts.size"),
    ("section-scalar", {"c.yaml": "kind: recipe\ntraining: 5\n"}, ["validate", "{d}/c.yaml"], "training"),
    ("objective-unknown", {"c.yaml": "kind: recipe\nobjective: {kind: telepathy}\n"},
     ["validate", "{d}/c.yaml"], "objective.kind"),
    ("soft-without-labels", {"c.yaml": "kind: recipe\nobjective: {kind: forward_kl}\nsampling: {soft_labels: none}\n"},
     ["validate", "{d}/c.yaml"], "soft_labels"),
    ("stage-unknown", {"c.yaml": "kind: recipe\nstages: [{name: nope}]\n"}, ["validate", "{d}/c.yaml"], "stages.0"),
    ("stage-not-mapping", {"c.yaml": "kind: recipe\nstages: [verifier_filter]\n"}, ["validate", "{d}/c.yaml"], "stages"),
    ("stage-bad-option", {"c.yaml": "kind: recipe\nstages: [{name: verifier_filter, bogus: 1}]\n"},
     ["validate", "{d}/c.yaml"], "stages.0.bogus"),
    ("seed-negative", {"c.yaml": "kind: recipe\nseed: -1\n"}, ["validate", "{d}/c.yaml"], "seed"),
    ("seed-2**70", {"c.yaml": f"kind: recipe\nseed: {2**70}\n"}, ["validate", "{d}/c.yaml"], "seed"),
    ("jsonl-missing", {"c.yaml": "kind: recipe\nprompts: {jsonl: nope.jsonl}\n"},
     ["validate", "{d}/c.yaml"], "prompts.jsonl: file not found"),
    # organisms
    ("behavior-unknown", {"c.yaml": "kind: organism\nworld: {behavior: gossip}\n"},
     ["validate", "{d}/c.yaml"], "unknown behavior 'gossip'"),
    ("hidden-odd", {"c.yaml": "kind: organism\nmodel: {hidden: 63}\n"}, ["validate", "{d}/c.yaml"], "divisible"),
    ("hidden-huge", {"c.yaml": "kind: organism\nmodel: {hidden: 10000000}\n"}, ["validate", "{d}/c.yaml"], "model.hidden"),
    ("base-steps-huge", {"c.yaml": "kind: organism\nbase_training: {steps: 1000000000000}\n"},
     ["validate", "{d}/c.yaml"], "base_training.steps"),
    ("list-length-backwards", {"c.yaml": "kind: organism\nworld: {list_length: [5, 2]}\n"},
     ["validate", "{d}/c.yaml"], "world.list_length"),
    ("list-length-word", {"c.yaml": "kind: organism\nworld: {list_length: abc}\n"},
     ["validate", "{d}/c.yaml"], "world.list_length"),
    ("world-list", {"c.yaml": "kind: organism\nworld: [1, 2]\n"}, ["validate", "{d}/c.yaml"], "world"),
    ("slack-bias-nan", {"c.yaml": "kind: organism\nworld: {teacher_slack_bias: .nan}\n"},
     ["validate", "{d}/c.yaml"], "teacher_slack_bias"),
    # studies: validate is as strict as `study run`
    ("study-recipe-missing", {"s.yaml": study_text(recipe="nope.yaml")}, ["validate", "{d}/s.yaml"],
     "recipe: config file not found"),
    ("study-recipe-folder", {"s.yaml": study_text(recipe="sub"), "sub/x": "1"}, ["validate", "{d}/s.yaml"],
     "is a folder"),
    ("study-recipe-broken", {"s.yaml": study_text(recipe="r.yaml"), "r.yaml": "kind: recipe\nseed: [\n"},
     ["validate", "{d}/s.yaml"], "recipe:"),
    ("study-override-unknown", {"s.yaml": study_text(recipe_overrides={"training": {"stepz": 3}})},
     ["validate", "{d}/s.yaml"], "recipe_overrides: training.stepz: unknown key"),
    ("study-override-type", {"s.yaml": study_text(recipe_overrides={"training": {"steps": "abc"}})},
     ["validate", "{d}/s.yaml"], "recipe_overrides: training.steps"),
    ("study-override-nan", {"s.yaml": study_text(recipe_overrides={"sampling": {"temperature": math.nan}})},
     ["validate", "{d}/s.yaml"], "recipe_overrides: sampling.temperature"),
    ("study-two-organisms", {"s.yaml": study_text(organism={"preset": "quick", "config": "o.yaml"})},
     ["validate", "{d}/s.yaml"], "exactly one"),
    ("study-organism-path-missing", {"s.yaml": study_text(organism={"path": "nowhere"})},
     ["validate", "{d}/s.yaml"], "organism.path"),
    ("study-organism-card-list", {"s.yaml": study_text(organism={"path": "org"}), "org/organism.json": "[1, 2, 3]"},
     ["validate", "{d}/s.yaml"], "not an organism card"),
    ("study-organism-config-missing", {"s.yaml": study_text(organism={"config": "o.yaml"})},
     ["validate", "{d}/s.yaml"], "organism.config"),
    ("study-organism-config-bad", {"s.yaml": study_text(organism={"config": "o.yaml"}),
                                   "o.yaml": "kind: organism\nseed: .inf\n"},
     ["validate", "{d}/s.yaml"], "organism.config"),
    ("study-preset-unknown", {"s.yaml": study_text(organism={"preset": "huge"})},
     ["validate", "{d}/s.yaml"], "unknown preset 'huge'"),
    ("study-no-techniques", {"s.yaml": study_text(techniques=[])}, ["validate", "{d}/s.yaml"], "techniques"),
    ("study-technique-unknown", {"s.yaml": study_text(techniques=["telepathy"])}, ["validate", "{d}/s.yaml"],
     "telepathy"),
    ("study-seeds-repeated", {"s.yaml": study_text(seeds=[1, 1])}, ["validate", "{d}/s.yaml"], "distinct"),
    ("study-seed-huge", {"s.yaml": study_text(seeds=[2**70])}, ["validate", "{d}/s.yaml"], "seeds.0"),
    # organism cards
    ("card-list", {"org/organism.json": "[1, 2, 3]"}, ["organism", "show", "{d}/org"], "not an organism card"),
    ("card-empty-object", {"org/organism.json": "{}"}, ["organism", "show", "{d}/org"], "not an organism card"),
    ("card-binary", {"org/organism.json": b"\xff\xfe\x00\x01"}, ["organism", "show", "{d}/org"], "organism.json"),
    ("card-not-json", {"org/organism.json": "{nope"}, ["organism", "show", "{d}/org"], "not valid JSON"),
    ("card-missing", {}, ["organism", "show", "{d}/org"], "no organism"),
    ("distill-card-empty", {"org/organism.json": "{}"},
     ["distill", "--organism", "{d}/org", "--recipe", str(RECIPE), "--out", "{d}/run"], "not an organism card"),
    ("eval-card-list", {"org/organism.json": "[1, 2, 3]", "ckpt/x": "1"},
     ["eval", "{d}/ckpt", "--organism", "{d}/org"], "not an organism card"),
    # --out on a file, or inside one: refused before any work
    ("distill-out-file", {"f": "x", "org/organism.json": "{}"},
     ["distill", "--organism", "{d}/org", "--recipe", str(RECIPE), "--out", "{d}/f"], "is a file"),
    ("distill-out-inside-file", {"f": "x"},
     ["distill", "--organism", "{d}/org", "--recipe", str(RECIPE), "--out", "{d}/f/run"], "is a file"),
    ("study-out-file", {"f": "x"}, ["study", "run", str(STUDY), "--out", "{d}/f"], "is a file"),
    ("build-out-file", {"f": "x"}, ["organism", "build", "--preset", "quick", "--out", "{d}/f"], "is a file"),
    ("build-out-inside-file", {"f": "x"}, ["organism", "build", "--preset", "quick", "--out", "{d}/f/org"], "is a file"),
    ("build-out-not-organism", {"o/stuff.txt": "x"}, ["organism", "build", "--preset", "quick", "--out", "{d}/o"],
     "not an organism"),
    ("distill-empty-recipe", {"r.yaml": ""},
     ["distill", "--organism", "{d}/org", "--recipe", "{d}/r.yaml", "--out", "{d}/run"], "empty"),
    # eval sizes and arguments
    ("eval-n-zero", {"ckpt/x": "1"}, ["eval", "{d}/ckpt", "--n", "0"], "--n"),
    ("eval-n-negative", {"ckpt/x": "1"}, ["eval", "{d}/ckpt", "--n", "-5"], "--n"),
    ("eval-n-huge", {"ckpt/x": "1"}, ["eval", "{d}/ckpt", "--n", "1000000000000"], "--n"),
    ("eval-samples-negative", {"ckpt/x": "1"}, ["eval", "{d}/ckpt", "--samples", "-1"], "--samples"),
    ("eval-n-word", {"ckpt/x": "1"}, ["eval", "{d}/ckpt", "--n", "abc"], "--n"),
    ("eval-missing-folder", {}, ["eval", "{d}/nope"], "no checkpoint folder"),
    ("eval-no-meta", {"ckpt/x": "1"}, ["eval", "{d}/ckpt"], "meta.json"),
    # usage errors end the same way
    ("unknown-command", {}, ["frobnicate"], "No such command"),
    ("unknown-option", {}, ["organism", "build", "--bogus"], "--bogus"),
    ("missing-argument", {}, ["eval"], "model_dir"),
    ("unknown-ls-kind", {}, ["ls", "galaxies"], "unknown kind"),
    ("build-preset-unknown", {}, ["organism", "build", "--preset", "huge"], "unknown preset 'huge'"),
    ("build-config-missing", {}, ["organism", "build", "--config", "{d}/nope.yaml"], "not found"),
    ("report-missing", {}, ["report", "{d}/nope"], None),
]

# (id, overrides on the hard_sft recipe, text the error line must hold)
OVERRIDE_CASES = [
    ("scalar-then-key", ["training.steps=5", "training.steps.x=1"], "already set to a value"),
    ("key-then-scalar", ["training.steps.x=1", "training.steps=5"], "already sets keys below it"),
    ("same-key-twice", ["seed=1", "seed=2"], "already sets a value for 'seed'"),
    ("no-equals", ["seed"], "not key=value"),
    ("empty-key", ["=3"], "empty part"),
    ("double-dot", ["training..steps=3"], "empty part"),
    ("trailing-dot", ["training.=3"], "empty part"),
    ("context-nan", ["prompts.contexts.neutral=.nan"], "prompts.contexts.neutral"),
    ("context-inf", ["prompts.contexts.neutral=.inf"], "prompts.contexts.neutral"),
    ("seed-2**70", [f"seed={2**70}"], "seed"),
    ("seed-negative", ["seed=-3"], "seed"),
    ("steps-1e12", ["training.steps=1000000000000"], "training.steps"),
    ("temperature-inf", ["sampling.temperature=.inf"], "sampling.temperature"),
    ("beta-minus-inf", ["objective.beta=-.inf"], "objective.beta"),
    ("lr-nan", ["training.lr=.nan"], "training.lr"),
    ("markup-key", ["[bold red]x[/]=1"], "[bold red]x[/]: unknown key"),
    ("newline-key", ["a\nb=1"], "a\\nb: unknown key"),
    ("section-scalar", ["training=5"], "training"),
    ("list-for-int", ["training.steps=[1,2]"], "training.steps"),
    ("kind-study", ["kind=study"], None),
    ("jsonl-missing", ["prompts.jsonl=/nonexistent/p.jsonl"], "file not found"),
]


def _materialise(tmp_path: Path, files: dict) -> None:
    for name, content in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)


@pytest.mark.parametrize("files, argv, expect", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_input_ends_in_one_error_line(tmp_path, files, argv, expect):
    _materialise(tmp_path, files)
    code, _, err = run(*[a.replace("{d}", str(tmp_path)) for a in argv])
    assert_one_error(code, err, expect)


@pytest.mark.parametrize("overrides, expect", [c[1:] for c in OVERRIDE_CASES], ids=[c[0] for c in OVERRIDE_CASES])
def test_bad_override_ends_in_one_error_line(overrides, expect):
    assert_one_error(*run("validate", RECIPE, *overrides)[::2], expect)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_bad_thread_setting(monkeypatch, value):
    monkeypatch.setenv("DOUBLEBIND_THREADS", value)
    assert_one_error(*run("validate", RECIPE)[::2], "DOUBLEBIND_THREADS")


def test_corpus_size():
    """The issue asks for at least 60 hand-written malformed inputs (hypothesis adds more), and
    a case repeated under another name is not another input."""
    for cases in (FILE_CASES, OVERRIDE_CASES):
        assert len({c[0] for c in cases}) == len(cases)  # pytest's ids
    inputs = {repr((sorted(c[1].items()), c[2])) for c in FILE_CASES} | {repr(c[1]) for c in OVERRIDE_CASES}
    assert len(inputs) == len(FILE_CASES) + len(OVERRIDE_CASES)
    (threads,) = [m.args[1] for m in test_bad_thread_setting.pytestmark if m.name == "parametrize"]
    assert len(inputs) + len(set(threads)) >= 60


def test_valid_inputs_still_pass(tmp_path):
    """The corpus is not passing by refusing everything."""
    code, out, err = run("validate", RECIPE, "training.steps=50", "prompts.contexts.neutral=1.5", f"seed={2**32 - 1}")
    assert code == 0 and "valid recipe config" in out, err
    (tmp_path / "o.yaml").write_text(ORGANISM_OK)
    assert run("validate", tmp_path / "o.yaml")[0] == 0
    code, out, err = run("validate", STUDY, "recipe_overrides.training.steps=20")
    assert code == 0 and "valid study config" in out, err


# ---- cases that need a built organism (the quick fixture) ------------------------------

def test_bad_inputs_on_a_real_organism(quick_organism, tmp_path):
    org, _ = quick_organism
    binary = tmp_path / "p.jsonl"
    binary.write_bytes(b"\xff\x00\xfe" * 10)
    garbage = tmp_path / "g.jsonl"
    garbage.write_text('{"prompt": "<bos> nonsense-token >"}\n')
    (tmp_path / "f").write_text("x")
    cases = [
        (["distill", "--organism", org, "--recipe", RECIPE, "--out", tmp_path / "r1", f"prompts.jsonl={binary}"],
         "not UTF-8"),
        (["distill", "--organism", org, "--recipe", RECIPE, "--out", tmp_path / "r2", f"prompts.jsonl={garbage}"],
         "unknown token"),
        (["distill", "--organism", org, "--recipe", RECIPE, "--out", tmp_path / "f"], "is a file"),
        (["distill", "--organism", org, "--recipe", RECIPE, "--out", tmp_path / "r3", "training.steps=1000000000000"],
         "training.steps"),
        (["eval", org / "teacher", "--n", "0"], "--n"),
        (["eval", org / "teacher", "--n", "-5"], "--n"),
        (["study", "run", STUDY, "--out", tmp_path / "f"], "is a file"),
        (["organism", "build", "--preset", "quick", "--out", org / "teacher" / "model.safetensors"], "is a file"),
        (["organism", "build", "--preset", "quick", "--out", org / "teacher"],
         "holds a model (model.safetensors), not an organism"),
    ]
    for argv, expect in cases:
        code, _, err = run(*argv)
        assert_one_error(code, err, expect)


# ---- hypothesis ----------------------------------------------------------------------

KEYS = ["seed", "name", "kind", "training.steps", "training.batch", "training.lr", "training.warmup",
        "training.checkpoint_every", "training.grad_accum", "sampling.temperature", "sampling.top_p",
        "sampling.soft_labels", "sampling.top_k", "sampling.max_new_tokens", "objective.kind", "objective.beta",
        "objective.on_policy", "prompts.size", "prompts.p_scratch", "prompts.contexts.neutral",
        "prompts.contexts.any", "prompts.families", "prompts.contexts", "student.init", "student.shrink",
        "student.lora.r", "eval.n_prompts", "stages", "training", "nope", "training.nope", "prompts.contexts.party"]


def yaml_scalar(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-2**80, max_value=2**80),
    st.booleans(), st.none(), st.text(max_size=12), st.lists(st.integers(-5, 50), max_size=3),
    st.sampled_from(["all", "taught", "sft", "forward_kl", "topk", "none", "base", "fresh", "[{name: nope}]"]),
)
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4))
@example([("kind", "\x1e")])  # a record separator in an error message once split its line in two
def test_random_overrides(pairs):
    overrides = [f"{k}={yaml_scalar(v)}" for k, v in pairs]
    code, _, err = run("validate", RECIPE, *overrides)
    assert_clean(code, err)


@FAST
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_random_config_files(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("f") / "c.yaml"
    path.write_bytes(content)
    code, _, err = run("validate", path)
    assert_clean(code, err)


TREE_KEYS = st.sampled_from(["kind", "seed", "training", "steps", "batch", "sampling", "temperature", "prompts",
                             "contexts", "neutral", "world", "model", "hidden", "recipe", "organism", "preset",
                             "techniques", "seeds", "stages", "name", "recipe_overrides", "eval", "n_prompts"])
LEAVES = st.one_of(VALUES, st.sampled_from(["recipe", "organism", "study", "quick", "baseline"]))
TREES = st.recursive(LEAVES, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                     st.dictionaries(TREE_KEYS, kids, max_size=4)), max_leaves=12)


@FAST
@given(st.sampled_from(["recipe", "organism", "study"]), st.dictionaries(TREE_KEYS, TREES, max_size=5))
def test_random_config_trees(tmp_path_factory, kind, tree):
    path = tmp_path_factory.mktemp("t") / "c.yaml"
    path.write_text(yaml.safe_dump({"kind": kind, **tree}, allow_unicode=True))
    code, _, err = run("validate", path)
    assert_clean(code, err)


@FAST
@given(st.text(max_size=40))
def test_random_organism_cards(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("o")
    (folder / "organism.json").write_text(text)
    code, out, err = run("organism", "show", folder)
    assert_clean(code, err)


def test_card_shapes(tmp_path):
    """Cards that are JSON but not cards: every JSON type at the top, and models of the wrong type."""
    for i, card in enumerate([[1, 2, 3], {}, "x", 3, None, {"models": [], "organism_hash": "h"},
                              {"models": {}, "organism_hash": "h"}]):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / "organism.json").write_text(json.dumps(card))
        assert_clean(*run("organism", "show", folder)[::2])


def test_an_error_line_escapes_every_separator_a_reader_splits_on(capsys):
    """The fuzzer once sent kind=\\x1e (a record separator, which str.splitlines splits on) into
    an error message; every such character is escaped, printable text is kept."""
    from doublebind.cli import say_error

    separators = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    say_error(f"unknown kind '{separators}' é [bold]x[/]")
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("error: unknown kind '\\n\\r\\x0b\\x0c\\x1c\\x1d\\x1e\\x85\\u2028\\u2029' é [bold]x[/]")
