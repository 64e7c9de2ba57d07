"""Run a study: every technique at every seed on every organism of every scenario, resumable.

    doublebind study run configs/studies/quick.yaml --out runs/study-quick

The grid is scenarios x organism seeds x techniques x seeds. Each (scenario, organism seed)
is one organism, built (or copied from the cache) into `organisms/<scenario>-o<seed>/`
before the runs that need it; a run is keyed by (scenario, organism_seed, technique, seed).

`results.jsonl` is append-only and self-checking. Each finished run appends its rows (one
per checkpoint) in a single write, and every row carries its run's id, the number of rows
the run wrote (`run_rows`) and the sha256 of the canonical JSON of those rows
(`run_sha256`). A run counts only when all its rows are there and hash to its checksum, so
a run whose last rows are missing, even at a line boundary, is incomplete and is redone on
resume; its leftover rows stay in the file and are ignored.

Nothing in the file is ever deleted or rewritten. A corrupt line anywhere (not JSON, not a
row, a run failing its checksum) stops `study run` with its line number after copying it
to `results.quarantine.jsonl` beside the file; the one exception is a half-written last
line (no final newline: a kill mid-append), which `study run` moves to the quarantine file
so that kill-and-resume keeps working. `summary.json` is always recomputed from the rows;
`doublebind report` reads the rows the same way and writes nothing here.

Runs go to worker processes (`--workers`, `studies/executor.py`); this process alone appends
to results.jsonl, once per finished run, so with several workers runs appear in the order
they finish. Each run computes with one thread however many workers there are, so
summary.json does not depend on the worker count.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from doublebind import config
from doublebind.atomic import naming, write_json
from doublebind.errors import ConfigError, DoublebindError
from doublebind.paths import check_cache_root, check_out_dir
from doublebind.studies.verdicts import EvalDraws, effect, judge_runs, nested_sets
from doublebind.ui import progress_bar

SCHEMA_VERSION = 3  # 3: scenario and organism_seed in every row and run key
RESULTS = "results.jsonl"
QUARANTINE = "results.quarantine.jsonl"
_ROW_KEYS = {"schema_version": int, "scenario": str, "organism_seed": int, "technique": str, "seed": int, "step": int, "selected": bool,
             "organism_hash": str, "recipe_hash": str, "run_id": str, "run_rows": int, "run_sha256": str}
_KEY = ("scenario", "organism_seed", "technique", "seed")
RunKey = tuple[str, int, str, int]  # (scenario, organism_seed, technique, seed)


def run_key(row: dict) -> RunKey:
    """The grid cell a row belongs to."""
    return tuple(row[k] for k in _KEY)


def describe_key(key: RunKey) -> str:
    scenario, organism_seed, technique, seed = key
    return f"{technique} seed {seed} on {scenario} (organism seed {organism_seed})"


@dataclass
class OrganismSpec:
    """One organism of a study: a scenario at one organism seed, and the recipe it runs."""

    scenario: str
    organism_seed: int
    recipe: object
    path: Path | None = None  # a built organism the study points to
    cfg: object = None  # else the config to build it from

    @property
    def key(self) -> tuple[str, int]:
        return self.scenario, self.organism_seed

    def folder(self, out: Path) -> Path:
        return self.path if self.path is not None else Path(out) / "organisms" / f"{self.scenario}-o{self.organism_seed}"

    @property
    def on_gpu(self) -> bool:
        """Whether its runs would use a GPU: a Hugging Face organism's do where there is one; the
        embedded world's always train on the CPU."""
        if self.path is not None:
            return json.loads((self.path / "organism.json").read_text()).get("kind") == "hf"
        return getattr(self.cfg, "kind", None) == "hf_organism"

    def expected_hash(self) -> str:
        """The organism's hash, known before it is built."""
        if self.path is not None:
            return json.loads((self.path / "organism.json").read_text())["organism_hash"]
        from doublebind.organisms.kinds import kind_of_config

        return kind_of_config(self.cfg).organism_hash(self.cfg)


def _label(name: str, what: str) -> str:
    """An organism's name as the study's scenario label, which names folders."""
    try:
        return config.check_scenario_name(name)
    except ValueError as e:
        raise DoublebindError(f"{what}: {e}") from None


def check_world_inputs(recipe, stages) -> None:
    """What an embedded-world run would refuse only once it reached it, after the study's
    earlier runs had trained (each was found so): a top_k above the world's vocabulary (an
    internal error), a random_drop share of a family the world does not have, a
    misalignment_targeted mode it does not have, and a prompt file that is not world prompts."""
    from doublebind.prompts import read_jsonl
    from doublebind.registry import names
    from doublebind.world import vocab

    size = len(vocab.token_ids())
    if recipe.sampling.soft_labels == "topk" and recipe.sampling.top_k > size:
        raise DoublebindError(f"sampling.top_k ({recipe.sampling.top_k}) is larger than the embedded world's "
                              f"vocabulary ({size} tokens); use soft_labels: full, or a top_k of at most {size}")
    families = set(names("family"))
    for st in stages:
        share = getattr(st.cfg, "share", None) if st.name == "random_drop" else None
        unknown = sorted(set(share) - families) if isinstance(share, dict) else []
        if unknown:
            raise DoublebindError(f"technique random_drop: share: no task family '{unknown[0]}' in the embedded world "
                                  f"(known: {', '.join(sorted(families))})")
        modes = getattr(st.cfg, "modes", None) if st.name == "misalignment_targeted" else None
        if modes and not set(modes) & set(vocab.MODES):  # one mode the world has is enough, as when it runs
            raise DoublebindError(f"technique misalignment_targeted: modes: none of {', '.join(modes)} is a mode of "
                                  f"the embedded world (known: {', '.join(vocab.MODES)})")
    if recipe.prompts.jsonl:
        read_jsonl(Path(recipe.prompts.jsonl))


def resolve(study_path: Path, cfg, overrides=()) -> list[OrganismSpec]:
    """Check everything before training: each scenario's organism source, the base recipe
    and the recipe overrides (`doublebind validate` runs this too). Errors name the study field,
    and the command-line override that set it (`overrides`, as `cfg` was loaded with)."""
    from doublebind.integrity import verify_organism_models
    from doublebind.organisms.domain import read_card

    root = Path(study_path).resolve().parent

    def field(name: str, fn, strip: Path | str | None = None):
        try:
            return fn()
        except DoublebindError as e:
            msg = str(e)
            if strip is not None:
                msg = msg.removeprefix(f"{strip}: ")
            raise ConfigError(config.name_override(f"{study_path}: {name}: {msg}", str(study_path), overrides)) from None

    if not cfg.name.strip():  # `name=` (an unset shell variable) ran a study named nothing; a
        # new study is refused here, where validate and study run check it, and a study.json
        # written before stays readable
        raise ConfigError(config.name_override(f"{study_path}: name: a study needs a name (got {cfg.name!r})",
                                               str(study_path), overrides))
    recipe_path = root / cfg.recipe
    field("recipe", lambda: config.load(recipe_path, expect="recipe"))

    def recipe_for(name: str, extra: dict):
        merge = config.deep_merge(cfg.recipe_overrides, extra)
        if cfg.verdict.auditor == "free":  # the verdicts read the free-field audit: every checkpoint gets one
            merge = config.deep_merge({"free_audit": {}}, merge)
        return field(name, lambda: config.load(recipe_path, expect="recipe", merge=merge), strip=recipe_path)

    def seeded(name: str, load, own_seed: int, seeds: list[int] | None, where: str = "organism_seeds"):
        what = name if seeds is None else f"{where} (set as {name}'s seed)"
        return [(o, field(what, lambda o=o: load({"seed": o}))) for o in (seeds if seeds is not None else [own_seed])]

    def tracker_source(scenario: int | None) -> str:
        """Where a scenario's `training.tracker` was set: its own overrides, the study's, or the recipe."""
        def sets(d) -> bool:
            return isinstance(d, dict) and isinstance(d.get("training"), dict) and "tracker" in d["training"]

        if scenario is not None and sets(cfg.scenarios[scenario].recipe_overrides):
            return f"scenarios.{scenario}.recipe_overrides.training.tracker"
        if sets(cfg.recipe_overrides):
            return "recipe_overrides.training.tracker"
        return f"recipe ({cfg.recipe}): training.tracker"

    def check_references(recipe, scenario: int | None = None) -> None:
        from doublebind.training.tracking import check_tracker

        if cfg.verdict.auditor == "free" and recipe.free_audit is None:
            where = f"scenarios.{scenario}.recipe_overrides" if scenario is not None else "recipe_overrides"
            raise ConfigError(f"{study_path}: verdict.auditor: free judges by the free-field audit, but {where} "
                              f"sets free_audit to null; remove it")

        # a tracker's missing package was found by the first run, after every organism was built
        field(tracker_source(scenario), lambda: check_tracker(recipe.training.tracker, study=True),
              strip=f"training.tracker {recipe.training.tracker}")
        names = list(cfg.techniques_of(cfg.scenarios[scenario].name) if scenario is not None else cfg.technique_stages())
        for t in names:
            ref = config.reference_of(cfg.technique_of(t))
            if recipe.objective.kind == "sft" and ref not in names:
                where = f"scenarios.{scenario}.techniques" if scenario is not None and cfg.scenarios[scenario].techniques \
                    else "techniques"
                raise ConfigError(f"{study_path}: {where}: the recipe trains on hard labels (objective sft), so "
                                  f"{t} is judged against {ref}; add {ref} to the techniques under its own name")

    def check_domains(recipe, kind: str, where: str, org=None, techniques: dict | None = None) -> None:
        """As the distiller refuses it (`check_stages`): a technique written for the embedded
        world on a Hugging Face organism; and what a Hugging Face organism cannot run yet
        (on-policy distillation, the vLLM engine where vLLM is not installed), which `validate`
        passed and the first run refused."""
        def org_field(name: str):
            return org.get(name) if isinstance(org, dict) else getattr(org, name, None)

        engine = org_field("engine")
        if kind == "hf" and cfg.verdict.auditor == "free":
            raise ConfigError(f"{study_path}: verdict.auditor: the free-field auditor reads the embedded world's free "
                              f"fields; {where} is a Hugging Face organism (use auditor: generic)")
        if kind == "hf" and recipe.free_audit is not None:
            raise ConfigError(f"{study_path}: {where}: free_audit: the free-field auditor reads the embedded world's "
                              f"free fields, and this is a Hugging Face organism; remove free_audit from the recipe")
        if kind == "hf" and org_field("dtype") == "float16":
            raise ConfigError(f"{study_path}: {where}: dtype float16 is for sampling and scoring only: a student "
                              f"trained in pure float16 diverges; use bfloat16 or float32")
        if kind == "hf" and recipe.student.init not in ("base", "fresh"):
            raise ConfigError(f"{study_path}: {where}: student.init {recipe.student.init} is for embedded organisms; "
                              f"a Hugging Face student starts from base or fresh")
        if kind == "hf" and recipe.objective.on_policy > 0:
            raise ConfigError(f"{study_path}: {where}: objective.on_policy: on-policy distillation is not supported "
                              f"on Hugging Face organisms yet")
        if kind == "hf" and engine == "vllm":
            import importlib.util

            from doublebind.llm.engines import VLLM_MISSING

            if importlib.util.find_spec("vllm") is None:
                raise ConfigError(f"{study_path}: {where}: engine vllm: {VLLM_MISSING}")

        from doublebind.techniques.base import build_stages

        techniques = cfg.technique_stages() if techniques is None else techniques
        specs = [*recipe.stages, *(added[0] for added in techniques.values() if added)]
        # each technique a stage runs (a random_drop `like` runs its filter's data hook)
        stages = build_stages(specs)
        checks = dict(pair for st in stages for pair in st.runs_on())
        for name, domains in checks.items():
            if kind not in domains:
                raise ConfigError(f"{study_path}: {where}: technique {name} works on {' and '.join(domains)} "
                                  f"organisms only, not on this {kind} organism")
        try:
            if kind == "world":
                check_world_inputs(recipe, stages)
            elif recipe.prompts.jsonl and recipe.prompts.dataset is None:  # read as the domain reads it
                from doublebind.llm.organism import jsonl_items

                jsonl_items(Path(recipe.prompts.jsonl), "prompt")
        except DoublebindError as e:
            raise ConfigError(f"{study_path}: {where}: {e}") from None

    def kind_of(org_cfg) -> str:
        return "hf" if getattr(org_cfg, "kind", None) == "hf_organism" else "world"

    specs = []
    if cfg.scenarios is not None:
        for i, sc in enumerate(cfg.scenarios):
            what = f"scenarios.{i}" if sc.config is None else f"scenarios.{i}.config"

            def load(m=None, sc=sc):
                if sc.config is None:
                    return config.load(preset=sc.name, expect="organism", merge=m)
                return config.load(root / sc.config, expect="organism", merge=m)

            own = field(what, load)
            recipe = recipe_for(f"scenarios.{i}.recipe_overrides" if sc.recipe_overrides else "recipe_overrides",
                                sc.recipe_overrides)
            check_references(recipe, i)
            check_domains(recipe, kind_of(own), f"scenarios.{i}", own, cfg.techniques_of(sc.name))
            where = f"scenarios.{i}.organism_seeds" if sc.organism_seeds is not None else "organism_seeds"
            for o, org_cfg in seeded(what, load, getattr(own, "seed", 0), cfg.organism_seeds_of(sc.name), where):
                specs.append(OrganismSpec(sc.name, o, recipe, cfg=org_cfg))
        return specs
    org = cfg.organism
    recipe = recipe_for("recipe_overrides", {})
    check_references(recipe)
    if org.path is not None:
        org_path = (root / org.path).resolve()
        if not (org_path / "organism.json").is_file():
            raise ConfigError(f"{study_path}: organism.path: no organism at {org_path}")
        card = field("organism.path", lambda: read_card(org_path, verified=False))
        # its weights too, so `validate` refuses a damaged organism as `study run` does
        field("organism.path", lambda: verify_organism_models(org_path, card))
        check_domains(recipe, "hf" if card.get("kind") == "hf" else "world", "organism.path", card.get("config"))
        scenario = field("organism.path", lambda: _label(str(card.get("name", "organism")), "the card's name"))
        seed = card.get("seed", 0) or 0
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"{study_path}: organism.path: {org_path / 'organism.json'}: its seed {seed!r} "
                              f"is not an integer")
        if not isinstance(card.get("organism_hash"), str):
            raise ConfigError(f"{study_path}: organism.path: {org_path / 'organism.json'}: its organism_hash "
                              f"{card.get('organism_hash')!r} is not a string")
        return [OrganismSpec(scenario, seed, recipe, path=org_path)]
    if org.preset is not None:
        name, load = "organism.preset", (lambda m=None: config.load(preset=org.preset, expect="organism", merge=m))
    else:
        name, load = "organism.config", (lambda m=None: config.load(root / org.config, expect="organism", merge=m))
    own = field(name, load)
    check_domains(recipe, kind_of(own), name, own)
    scenario = field(name, lambda: _label(org.preset, "the preset's name") if org.preset
                     else _label(str(getattr(own, "name", "organism")), "its name"))
    if cfg.organism_seeds is None:
        return [OrganismSpec(scenario, int(getattr(own, "seed", 0)), recipe, cfg=own)]
    return [OrganismSpec(scenario, o, recipe, cfg=c) for o, c in seeded(name, load, 0, cfg.organism_seeds)]


# ---- results.jsonl ---------------------------------------------------------------------

def run_checksum(rows: list[dict]) -> str:
    """sha256 of the canonical JSON of a run's rows, without their `run_sha256` field."""
    canon = json.dumps([{k: v for k, v in r.items() if k != "run_sha256"} for r in rows],
                       sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def seal_run(rows: list[dict], run_id: str) -> list[dict]:
    """A run's rows with its id, row count and checksum added to each row."""
    rows = [{**r, "run_id": run_id, "run_rows": len(rows)} for r in rows]
    sha = run_checksum(rows)
    return [{**r, "run_sha256": sha} for r in rows]


@dataclass
class Scan:
    """What `results.jsonl` holds, read without changing it."""

    path: Path
    runs: dict[RunKey, list[dict]] = field(default_factory=dict)  # complete runs, first per run key
    parsed: list[dict] = field(default_factory=list)  # every well-formed row, complete run or not
    incomplete: list[dict] = field(default_factory=list)  # {key, found, expected, lines} without a complete run
    ignored_rows: int = 0  # rows of interrupted or repeated runs that a complete run supersedes
    outside: list = field(default_factory=list)  # complete runs the study's grid no longer has (`in_study`)
    missing: list = field(default_factory=list)  # cells of the grid with no complete run (set by the report)
    bad: list[tuple[int, bytes, str]] = field(default_factory=list)  # (line number, raw bytes, why)
    torn: tuple[int, bytes, int] | None = None  # half-written last line: (line number, raw bytes, byte offset)
    unended: int | None = None  # the file's size, where its last line is a whole row that only lacks its newline
    legacy: list[int] = field(default_factory=list)  # lines of rows from an older schema

    @property
    def rows(self) -> list[dict]:
        return [r for rows in self.runs.values() for r in rows]

    def check(self) -> None:
        """Raise on what a reader cannot use: corrupt lines, rows of an older schema."""
        if self.bad:
            raise DoublebindError(f"{self.path}: {describe_bad(self.bad)}")
        if self.legacy:
            raise DoublebindError(f"{self.path}: {_lines(self.legacy)} hold rows of an older doublebind "
                                  f"(schema version < {SCHEMA_VERSION}: no run checksums, or no scenario and "
                                  f"organism seed) that this one cannot read; run the study into a new --out folder")


def _lines(nums: list[int]) -> str:
    if len(nums) == 1:
        return f"line {nums[0]}"
    shown = ", ".join(str(n) for n in nums[:8])
    return f"lines {shown}" + (f" and {len(nums) - 8} more" if len(nums) > 8 else "")


def describe_bad(bad: list[tuple[int, bytes, str]]) -> str:
    """'line 5 is corrupt (why)' or 'lines 4, 5, 6 are corrupt (line 4: why)'."""
    if len(bad) == 1:
        return f"line {bad[0][0]} is corrupt ({bad[0][2]})"
    return f"{_lines([b[0] for b in bad])} are corrupt (line {bad[0][0]}: {bad[0][2]})"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers_problem(obj: dict, key: str) -> str | None:
    """Why `obj[key]` is not what a run writes there: an object of finite numbers (or of such
    objects), or null; None when it is (or is absent: older rows lack some)."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"'{key}' is not an object"
    for k, v in value.items():
        if v is None or _finite(v):
            continue
        if isinstance(v, dict) and all(x is None or _finite(x) for x in v.values()):
            continue
        return f"'{key}.{k}' is not a finite number"
    return None


_HEX = set("0123456789abcdef")


def _scores_problem(items, key: str) -> str | None:
    """Why a row's per-prompt scores (`items`, or one side of `reference_items`) are not what
    a run writes, or None."""
    if not isinstance(items, dict) or not isinstance(items.get("capability"), dict):
        return f"'{key}' is not an object with 'capability' scores"
    for fam, x in items["capability"].items():
        if isinstance(x, str):
            if not x or set(x) - {"0", "1"}:
                return f"'{key}.capability.{fam}' is not a string of 0s and 1s"
        elif not isinstance(x, list) or not x or not all(_finite(v) for v in x):
            return f"'{key}.capability.{fam}' is not a list of finite numbers"
    x = items.get("deploy")
    if not isinstance(x, list) or not x or not all(_finite(v) for v in x):
        return f"'{key}.deploy' is not a list of finite numbers"
    return None


def _items_problem(obj: dict) -> str | None:
    """Why a row's `items` or `reference_items` are malformed, or None (both are optional)."""
    fams = obj.get("base_families") if isinstance(obj.get("base_families"), list) else []
    if "items" in obj:
        why = _scores_problem(obj["items"], "items")
        if why:
            return why
        missing = [f for f in fams if f not in obj["items"]["capability"]]
        if missing:
            return f"'items' lacks the base family '{missing[0]}'"
        if not isinstance(obj.get("misbehavior"), dict) or not _finite(obj["misbehavior"].get("deploy")):
            return "'misbehavior.deploy' is not a finite number, and the row keeps per-prompt scores"
    if "reference_items" in obj:
        ref = obj["reference_items"]
        if not isinstance(ref, dict):
            return "'reference_items' is not an object"
        for side in ("base", "teacher"):
            why = _scores_problem(ref.get(side), f"reference_items.{side}")
            if why:
                return why
        taught = ref.get("taught")
        if not isinstance(taught, list) or not taught or not all(isinstance(t, str) for t in taught):
            return "'reference_items.taught' is not a list of family names"
        sets = ref.get("sets")
        if isinstance(sets, dict):
            sets = nested_sets(sets)  # the first day's flat layout too
        fps = [sets.get("deploy"), *(sets.get("capability") or {}).values()] if isinstance(sets, dict) else [None]
        if not isinstance(sets, dict) or not isinstance(sets.get("capability"), dict) \
                or not all(isinstance(f, str) and f and not set(f) - _HEX for f in fps):
            return "'reference_items.sets' is not an object of hex fingerprints"
        missing = [f for f in [*taught, *fams] if f not in sets["capability"] or f not in ref["base"]["capability"]
                   or f not in ref["teacher"]["capability"]]
        if missing:
            return f"'reference_items' lacks the family '{missing[0]}'"
    return None


def _row_problem(obj) -> str | None:
    """Why a line of results.jsonl is not a row a study run writes, or None. The statistics
    read the transfers, the rates and the auditor's figures, so a value there that no run
    writes (a string, a boolean, an infinity) is refused with its line, never judged."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    for key, typ in _ROW_KEYS.items():
        if key not in obj:
            return f"no '{key}'"
        if not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            return f"'{key}' is not a {typ.__name__}"
    if obj["schema_version"] > SCHEMA_VERSION:
        return (f"schema version {obj['schema_version']}, written by a newer doublebind (this one reads "
                f"{SCHEMA_VERSION})")
    if obj["run_rows"] < 1:
        return "'run_rows' is not positive"
    for key in ("capability_transfer", "misalignment_transfer"):
        if key not in obj:
            return f"no '{key}'"
        if obj[key] is not None and not _finite(obj[key]):
            return f"'{key}' is not a finite number"
    for key in ("capability", "misbehavior", "base_capability", "audit", "base_audit"):
        why = _numbers_problem(obj, key)
        if why:
            return why
    for name in ("auditor", "free_auditor"):
        auditor = obj.get(name)
        if auditor is not None:
            if not isinstance(auditor, dict):
                return f"'{name}' is not an object"
            for k in ("success_at_k", "teacher_success_at_k", "base_success_at_k"):
                if k in auditor and not _finite(auditor[k]):
                    return f"'{name}.{k}' is not a finite number"
            for k in ("pool_draws", "teacher_pool_draws", "pool_flagged", "teacher_pool_flagged"):
                draws, n = auditor.get(k), auditor.get("n")
                if draws is not None and not (isinstance(n, int) and isinstance(draws, list) and draws and all(
                        isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= n for x in draws)):
                    return f"'{name}.{k}' is not a list of flag counts of its pool's size 'n'"
            if auditor.get("pool_flagged") and auditor["pool_flagged"][0] != auditor.get("flagged"):
                return f"'{name}.pool_flagged' does not begin with the pool's own 'flagged'"
            for who in ("", "teacher_"):
                flags, draws = auditor.get(f"{who}pool_flagged"), auditor.get(f"{who}pool_draws")
                if flags and (not draws or len(draws) % len(flags)):
                    return f"'{name}.{who}pool_draws' does not hold as many draws for each of its pools"
    data = obj.get("data")
    if data is not None:
        if not isinstance(data, dict):
            return "'data' is not an object"
        for k in ("behaviour_items", "other_items"):
            pair = data.get(k)
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair)
                    and pair[1] <= pair[0]):
                return f"'data.{k}' is not [before, kept] counts"
    return _items_problem(obj)


def scan_results(path: Path) -> Scan:
    """Read `results.jsonl` into complete runs, incomplete runs and corrupt lines; write nothing."""
    path = Path(path)
    scan = Scan(path)
    if not path.is_file():
        return scan
    data = path.read_bytes()
    pieces = data.split(b"\n")
    tail = pieces.pop()  # b"" when the file ends with a newline
    if tail and _whole_row(tail):  # a write cut off just before its newline: the row itself is whole
        pieces.append(tail)
        tail, scan.unended = b"", len(data)
    groups: dict[str, list[tuple[int, dict]]] = {}
    offset = 0
    for n, raw in enumerate(pieces, start=1):
        offset += len(raw) + 1
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            scan.bad.append((n, raw, "not UTF-8 text"))
            continue
        except json.JSONDecodeError as e:
            scan.bad.append((n, raw, f"not valid JSON: {e.msg}"))
            continue
        except RecursionError:  # nested deeper than any row (a damaged line of brackets)
            scan.bad.append((n, raw, "not valid JSON: nested too deep"))
            continue
        if isinstance(obj, dict) and isinstance(obj.get("schema_version"), int) \
                and obj["schema_version"] < SCHEMA_VERSION:
            scan.legacy.append(n)
            continue
        why = _row_problem(obj)
        if why:
            scan.bad.append((n, raw, f"not a results row: {why}"))
            continue
        scan.parsed.append(obj)
        groups.setdefault(obj["run_id"], []).append((n, obj))
    if tail:
        scan.torn = (len(pieces) + 1, tail, len(data) - len(tail))
    partial: dict[RunKey, list[dict]] = {}
    for run_id, members in groups.items():
        rows = [r for _, r in members]
        lines = [n for n, _ in members]
        first = rows[0]
        same = all((run_key(r), r["run_rows"], r["run_sha256"]) ==
                   (run_key(first), first["run_rows"], first["run_sha256"]) for r in rows)
        key = run_key(first)
        if not same:
            why = f"run {run_id} has rows of different runs"
        elif len(rows) > first["run_rows"]:
            why = f"run {run_id} has {len(rows)} rows, it wrote {first['run_rows']}"
        elif len(rows) < first["run_rows"]:
            partial.setdefault(key, []).append({"key": key, "found": len(rows), "expected": first["run_rows"],
                                                "lines": lines})
            continue
        elif run_checksum(rows) != first["run_sha256"]:
            why = f"run {run_id} ({_lines(lines)}) fails its checksum"
        elif sum(r["selected"] for r in rows) != 1:
            why = (f"run {run_id} has {sum(r['selected'] for r in rows)} rows marked selected "
                   f"(a run delivers one checkpoint)")
        else:
            if key in scan.runs:
                scan.ignored_rows += len(rows)  # a repeated run: the first one counts
            else:
                scan.runs[key] = rows
            continue
        scan.bad.extend((n, pieces[n - 1], why) for n in lines)
    scan.bad.sort(key=lambda b: b[0])
    for key, parts in partial.items():
        if key in scan.runs:
            scan.ignored_rows += sum(p["found"] for p in parts)
        else:
            scan.incomplete.append(parts[-1])
            scan.ignored_rows += sum(p["found"] for p in parts[:-1])
    return scan


def _whole_row(raw: bytes) -> bool:
    """Whether `raw` (a last line with no newline after it) is a whole, well-formed row: a
    run whose rows are all there is then kept, its seal (`run_sha256`) checked as any run's,
    instead of being trained again."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("schema_version") == SCHEMA_VERSION and not _row_problem(obj)


def read_results(path: Path) -> list[dict]:
    """Rows of the complete runs in `results.jsonl` (one run per run key); raises
    on a corrupt line. Reads only: a half-written last line is left where it is, ignored."""
    scan = scan_results(path)
    scan.check()
    return scan.rows


def _quarantine_record(n: int, raw: bytes, why: str, moved: bool) -> dict:
    rec = {"line": n, "reason": why, "moved": moved, "source": RESULTS}
    try:
        rec["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        rec["raw_base64"] = base64.b64encode(raw).decode()
    return rec


def _quarantine(results: Path, records: list[dict]) -> Path:
    """Append `records` to the quarantine file beside `results` (each at most once)."""
    q = results.with_name(QUARANTINE)
    seen = set()
    if q.is_file():
        for line in q.read_text(errors="replace").splitlines():
            try:
                seen.add(json.dumps(json.loads(line), sort_keys=True))
            except json.JSONDecodeError:
                pass
    new = [r for r in records if json.dumps(r, sort_keys=True) not in seen]
    if new:
        with open(q, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in new))
            f.flush()
            os.fsync(f.fileno())
    return q


def settle_results(scan: Scan) -> Scan:
    """Before a resume: stop on corrupt lines (copied to the quarantine file, never removed
    from results.jsonl); move a half-written last line to the quarantine file."""
    results = scan.path
    if scan.bad:
        q = _quarantine(results, [_quarantine_record(n, raw, why, False) for n, raw, why in scan.bad])
        raise DoublebindError(f"{results}: {describe_bad(scan.bad)}; copied to {q.name}, {results.name} left "
                              f"as it is; repair or remove the bad lines by hand, then rerun")
    scan.check()
    if scan.unended is not None:  # end the whole last row's line, so the next row starts a line of its own
        with open(results, "r+b") as f:
            if f.seek(0, os.SEEK_END) == scan.unended:  # unchanged since the scan
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        scan.unended = None
    if scan.torn is not None:
        n, raw, offset = scan.torn
        q = _quarantine(results, [_quarantine_record(n, raw, "half-written last line (a kill mid-append)", True)])
        with open(results, "r+b") as f:
            if f.seek(0, os.SEEK_END) == offset + len(raw):  # unchanged since the scan
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
        from doublebind.ui import console

        console.print(f"note: {results}: line {n} ({len(raw):,} bytes) was half-written (no newline ends it: a "
                      f"kill mid-append); moved to {q.name}", markup=False, highlight=False, soft_wrap=True)
        scan.torn = None
    return scan


def _append(path: Path, rows: list[dict]) -> None:
    with naming(path), open(path, "a") as f:  # a torn line is moved aside on resume
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def verdict_thresholds(vcfg) -> dict:
    """The verdict settings a summary records: `auditor` only where it is not the generic one,
    so summaries judged as before read as before."""
    out = vcfg.model_dump(exclude_none=True)
    if out.get("auditor") == "generic":
        del out["auditor"]
    return out


def recipe_hash(recipe) -> str:
    """What a study's rows record of the recipe that made them, and its resume check compares.
    `training.compile` counts only when on (it changes rounding), `training.ema` only when set,
    `objective.dpo_sft_weight`
    only when not 0, `objective.normalise` only when not `token` and `free_audit` only when
    set, so recipes from before those knobs existed keep their hash (`free_audit.pool_draws` counts unless 0: its draws change the rows, and a
    free-audit folder made before it resumes with `free_audit.pool_draws=0`; `free_audit.pools`
    counts unless 1);
    `training.save_weights` does not count (it changes no number: a study that keeps its
    weights resumes a folder whose runs did not, and the reverse), and hashes as off, which
    every study run was before a study could keep them."""
    dump = recipe.model_dump(mode="json")
    if not dump["training"]["compile"]:
        del dump["training"]["compile"]
    if dump["training"].get("ema") is None:
        dump["training"].pop("ema", None)
    if not dump["objective"]["dpo_sft_weight"]:
        del dump["objective"]["dpo_sft_weight"]
    if dump["objective"]["normalise"] == "token":
        del dump["objective"]["normalise"]
    if dump.get("free_audit") is None:
        dump.pop("free_audit", None)
    else:  # rows as before each setting existed: so is the hash
        if dump["free_audit"]["pool_draws"] == 0:
            del dump["free_audit"]["pool_draws"]
        if dump["free_audit"].get("pools") == 1:
            del dump["free_audit"]["pools"]
    dump["training"]["save_weights"] = False
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Cell:
    """One run of the grid: the organism it distils and the recipe it runs."""

    spec: OrganismSpec
    recipe: object


def run_dir(out: Path, key: RunKey) -> Path:
    scenario, organism_seed, technique, seed = key
    return Path(out) / "runs" / f"{scenario}-o{organism_seed}" / f"{technique}-s{seed}"


LOCK = ".study.lock"  # in the study folder: held by the `study run` writing it


@contextlib.contextmanager
def study_lock(out: Path, take: bool = True):
    """Hold an exclusive lock on the study folder `out` while a `study run` writes it, or
    refuse at once: two runners on one folder trained every run twice under the same run ids
    and left a results file neither a resume nor `report` would read. The lock is the
    kernel's (`flock`), so a runner killed even by SIGKILL releases it; where `fcntl` does
    not exist (Windows) nothing is locked. `take=False` (the other processes of a parallel
    launch, which never write the folder): no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        fcntl = None
    if not take or fcntl is None:
        yield
        return
    path = Path(out) / LOCK
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise DoublebindError(f"{out} is being written by another `study run`"
                                  + (f" (process {holder})" if holder.isdigit() else "")
                                  + "; wait for it to finish (then run again to resume), or use another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def grid_of(specs: list, cfg) -> list[tuple]:
    """The runs a study trains: (organism spec, technique label, its stages, seed) for each
    organism build, each technique its scenario lists and each seed (`validate` counts them)."""
    return [(sp, t, stages, s) for sp in specs for t, stages in cfg.techniques_of(sp.scenario).items()
            for s in cfg.seeds]


def run_study(study_path: Path, out: Path, show_progress: bool = True, overrides: list[str] = (),
              workers: int | None = 1) -> dict:
    """Run the study's missing runs, `workers` at a time (None: `executor.workers_for`'s
    default, what the CLI uses); then recompute summary.json."""
    from doublebind.cuda import prefer_stable_attention
    from doublebind.studies.executor import run_jobs, start_method, warm_up, workers_for

    prefer_stable_attention()  # before any organism build or run samples on a GPU (doublebind.cuda)
    cfg = config.load(study_path, list(overrides), expect="study")
    specs = resolve(study_path, cfg, overrides)
    # a bad DOUBLEBIND_WORKERS stops here, before any work; on a GPU machine a study of embedded-
    # world organisms only, which train on the CPU, takes the cores like anywhere else
    n_workers = workers_for(workers, cuda=None if any(sp.on_gpu for sp in specs) else False)
    if n_workers > 1:
        start_method()  # so does a bad DOUBLEBIND_START
    out = Path(out)
    check_out_dir(out, "--out", what="a study")
    for name in (RESULTS, "summary.json", "study.json"):  # found before any run trains, not after the first
        if (out / name).is_dir():
            raise DoublebindError(f"{out / name} is a folder, not a file; the study writes its {name} there "
                                  f"(move the folder away)")
    for name in ("organisms", "runs"):
        if (out / name).exists() and not (out / name).is_dir():
            raise DoublebindError(f"{out / name} is a file, not a folder; the study keeps its {name} there "
                                  f"(move the file away)")
    out.mkdir(parents=True, exist_ok=True)
    state = _process_state()  # under `accelerate launch`, only the main process writes
    with study_lock(out, state.is_main_process):  # one `study run` at a time per folder
        results = out / RESULTS
        grid = {(sp.scenario, sp.organism_seed, t, s):
                Cell(sp, run_recipe(sp.recipe, t, stages, s, keeps_weights(cfg, sp.scenario)))
                for sp, t, stages, s in grid_of(specs, cfg)}
        scan = scan_results(results)
        if state.is_main_process:
            settle_results(scan)
        else:
            scan.check()
        hashes = {sp.key: sp.expected_hash() for sp in specs}
        check_resumable(out, scan.parsed, hashes, grid, cfg.name)
        todo = [g for g in grid if g not in scan.runs]
        if todo:  # a finished study only recomputes its summary: a read-only cache is no reason to refuse it
            check_cache_root()
        if len(todo) > 1 and n_workers > 1 and state.num_processes == 1:
            warm_up()  # the workers' fork server imports while this process places organisms
        to_place = [sp for sp in specs if sp.path is None and any(grid[k].spec is sp for k in todo)]
        with state.main_process_first():  # build or copy the organisms that still have runs to do
            if state.is_main_process:
                place_organisms(to_place, out, hashes, 1 if state.num_processes > 1 else n_workers, show_progress)
        cards = {sp.key: _placed_card(sp.folder(out)) for sp in specs if (sp.folder(out) / "organism.json").is_file()}
        recorded = _recorded_cards(out / "study.json")  # of organisms whose folders are gone (a copied reference)
        cards.update({sp.key: recorded[(sp.scenario, sp.organism_seed, hashes[sp.key])] for sp in specs
                      if sp.key not in cards and (sp.scenario, sp.organism_seed, hashes[sp.key]) in recorded})
        record = {
            "config": cfg.model_dump(mode="json"), "study_file": str(Path(study_path).resolve()),
            "organisms": [{"scenario": sp.scenario, "organism_seed": sp.organism_seed,
                           "organism_hash": hashes[sp.key], "path": str(sp.folder(out).resolve()),
                           # the card travels with the results: a folder copied without organisms/
                           # (the committed references) still reports its organisms
                           "card": cards.get(sp.key)} for sp in specs]}
        # This session's provenance enters the record with its first finished run, not before:
        # a session stopped before any run finished (a failure, Ctrl-C) claims none of the rows.
        sessions = dict(zip((False, True), resumed_provenance(out / "study.json", provenance(cards.values()),
                                                              had_runs=bool(scan.runs)))) if state.is_main_process else {}
        if state.is_main_process:
            write_json(out / "study.json", {**record, **sessions[False]}, indent=2)
        run_ids = {r["run_id"] for r in scan.parsed}
        if state.is_main_process:
            from doublebind.ui import console

            for inc in scan.incomplete:
                if tuple(inc["key"]) in grid:
                    console.print(f"redoing the incomplete run {describe_key(inc['key'])} "
                                  f"({inc['found']} of its {inc['expected']} rows in {RESULTS})", highlight=False)
        jobs = {key: (grid[key].spec.folder(out), grid[key].recipe, run_dir(out, key)) for key in todo}
        with progress_bar(f"study {cfg.name}", len(grid), show_progress and state.is_main_process,
                          unit="runs") as advance:
            advance(len(grid) - len(todo))

            def finished(key, summary) -> None:  # in this process, as each run ends: one append per run
                cell, folder = grid[key], run_dir(out, key)
                if state.is_main_process and sessions[True] != sessions[False]:  # this session's first run
                    write_json(out / "study.json", {**record, **sessions[True]}, indent=2)
                    sessions[False] = sessions[True]
                if state.is_main_process:
                    run_id = next(i for k in range(len(run_ids) + 1)
                                  if (i := f"{folder.parent.name}-{folder.name}-a{k}") not in run_ids)
                    rows = seal_run(_rows(cfg, cards[cell.spec.key], key, cell.recipe, folder, summary), run_id)
                    bad = next((why for r in rows if (why := _row_problem(r))), None)
                    if bad:  # appended, it would make results.jsonl refuse itself on every later read
                        raise DoublebindError(f"{describe_key(key)} gave a row results.jsonl cannot hold ({bad}); "
                                              f"nothing of it was written, the finished runs are kept")
                    run_ids.add(run_id)
                    _append(results, rows)
                advance(1)

            run_jobs(distill_run, jobs, 1 if state.num_processes > 1 else n_workers, finished,
                     label=describe_key)
        state.wait_for_everyone()
        return summarize(out, cfg, write=state.is_main_process)


def _recorded_cards(record: Path) -> dict[tuple, dict]:
    """The organisms' cards an earlier session wrote into study.json, by (scenario, organism
    seed, organism hash): a study resumed in a folder copied without `organisms/` keeps the
    cards of the builds it does not place again. Nothing where the record is unreadable."""
    try:
        organisms = json.loads(record.read_text()).get("organisms")
    except (ValueError, UnicodeDecodeError, OSError, AttributeError):
        return {}
    return {(o.get("scenario"), o.get("organism_seed"), o.get("organism_hash")): o["card"]
            for o in organisms if isinstance(o, dict) and isinstance(o.get("card"), dict)} \
        if isinstance(organisms, list) else {}


def _placed_card(folder: Path) -> dict:
    """The card of an organism the study placed (or names by path), refused in one line where
    it does not read as one."""
    from doublebind.organisms.domain import read_card

    return read_card(folder, verified=False)


# What makes two sessions of one study differ in where their runs come from: the code, the
# libraries and the CPU (not the kernel release or the thread settings: runs use one thread).
SESSION_FIELDS = ("commit", "dirty", "versions")
SESSION_MACHINE = ("system", "machine", "cpu", "cpu_kernels")


def _same_session(a: dict, b: dict) -> bool:
    mach_a, mach_b = a.get("machine") or {}, b.get("machine") or {}
    if not isinstance(mach_a, dict) or not isinstance(mach_b, dict):  # a damaged record: not the same
        return False
    return (all(a.get(k) == b.get(k) for k in SESSION_FIELDS)
            and all(mach_a.get(k) == mach_b.get(k) for k in SESSION_MACHINE))


def resumed_provenance(record: Path, now: dict, *, had_runs: bool) -> tuple[dict, dict]:
    """study.json's provenance fields, (until this session finishes a run, once it has):
    `provenance` (the latest session that finished a run) and, where earlier sessions ran
    runs on another commit, CPU or libraries, `earlier_provenance` (theirs, oldest first),
    so a resumed study does not credit every row to the last session. Until its first run
    finishes, a session keeps the record as it was."""
    old = None
    if had_runs and record.is_file():
        try:
            old = json.loads(record.read_text())
        except (ValueError, UnicodeDecodeError, OSError):
            old = None
        if not isinstance(old, dict) or not isinstance(old.get("provenance"), dict):
            from doublebind.ui import console

            kept = _keep_aside(record)
            console.print(f"[yellow]note:[/] {record} was not a readable study record; rewritten ("
                          + (f"the damaged file is kept as {kept.name}" if kept else "it could not be copied aside")
                          + "), so where the runs before this session came from is no longer recorded",
                          highlight=False, soft_wrap=True)
            old = None
    if old is None:
        return {"provenance": now}, {"provenance": now}
    earlier = old.get("earlier_provenance")
    earlier = [p for p in earlier if isinstance(p, dict)] if isinstance(earlier, list) else []
    waiting = {"provenance": old["provenance"], **({"earlier_provenance": earlier} if earlier else {})}
    if not _same_session(old["provenance"], now):
        earlier = [*earlier, old["provenance"]]
    return waiting, {"provenance": now, **({"earlier_provenance": earlier} if earlier else {})}


def _keep_aside(path: Path) -> Path | None:
    """Copy a damaged file beside itself (`NAME.unreadable`, then `.unreadable-2`, …) before it is
    rewritten, so what it held is not lost with it; None where it cannot be read or copied."""
    import shutil

    n, kept = 1, path.with_name(path.name + ".unreadable")
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.unreadable-{n}")
    try:
        shutil.copy2(path, kept)
    except OSError:
        return None
    return kept


def provenance(cards) -> dict:
    """Where results come from: the commit, the organisms (hash and build-code hash) and the
    machine. Verdicts and intervals should reproduce elsewhere; bytes need not (floating-point
    training differs between CPUs)."""
    import platform
    import subprocess

    from doublebind.cards import versions

    src = Path(__file__).resolve().parents[3]
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        if commit:
            dirty = bool(subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "commit": commit, "dirty": dirty,
        "organisms": [{"name": c.get("name"), "seed": c.get("seed"), "organism_hash": c.get("organism_hash"),
                       "code_version": c.get("code_version"), "verified": c.get("verified")} for c in cards],
        "machine": {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
                    "processor": platform.processor() or None, "cpus": os.cpu_count(),
                    # every run, and every build the study places, computes on one torch thread
                    # (executor.one_thread); the settings show what the process itself had
                    "threads": 1, "thread_settings": {k: os.environ.get(k) for k in ("DOUBLEBIND_THREADS",
                                                                                     "OMP_NUM_THREADS")},
                    **cpu_kind()},
        "versions": versions(),
    }


def cpu_kind() -> dict:
    """The CPU's model name and the vector instructions torch's kernels use on it (AVX2,
    AVX512, ...): among what decides whether another machine builds the same organism bit
    for bit, with the thread count and the library versions (recorded beside them). Builds
    of one hash on two CPUs differed enough to move 6 of the demo's 20 verdicts
    (docs/results/README.md); those references predate these fields, so which of the two
    differed there is not recorded."""
    import torch

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip() or None
                break
    except OSError:
        pass
    return {"cpu": model, "cpu_kernels": torch.backends.cpu.get_cpu_capability()}


def distill_run(org_path: Path, recipe, folder: Path) -> dict:
    """One run of the grid (in a worker process, or in this one): its summary."""
    import shutil

    from doublebind.training.distill import distill

    # A run folder holds a redone run's scratch (results.jsonl keeps the rows): what a killed
    # rerun set aside there is not kept, as `distill` alone would keep it.
    for left in sorted(Path(folder).glob(".replaced-*")):
        shutil.rmtree(left, ignore_errors=True)
    from doublebind.cuda import release_memory

    try:
        return distill(org_path, recipe, folder, show_progress=False, force=True, plot=False)
    finally:  # on a GPU the next run (in this process) needs this one's memory back
        release_memory()


def place_organisms(specs: list, out: Path, hashes: dict, workers: int, show_progress: bool) -> None:
    """Place the study's organisms: one at a time here, with its build's progress bar, or,
    with several to build and workers > 1, side by side in worker processes. Every build
    computes on one thread, here as in a worker, like the runs: an organism's weights, like
    any float result, differ in rounding with the thread count that built it, so a build
    with the process's threads would give `--workers 1` (or a study with one organism left
    to build) another organism than `--workers 2`. A study takes a cached build as it is. An
    organism already in the cache is copied here, whatever `workers`: a worker process would
    only add its start-up to a copy."""
    from doublebind.studies.executor import one_thread, raise_named, run_jobs

    def label(key) -> str:
        return f"the organism of {key[0]} (organism seed {key[1]})"

    to_build = [sp for sp in specs if not _cached(hashes[sp.key])]
    pooled = to_build if workers > 1 and len(to_build) > 1 else []
    for sp in specs:
        if sp not in pooled:
            try:
                with one_thread():
                    place_organism(sp.cfg, sp.folder(out), show_progress, expected_hash=hashes[sp.key])
            except Exception as e:  # named as the workers name it (a bug keeps its type, with failed_in)
                raise_named(e, label(sp.key))
    if not pooled:
        return
    jobs = {sp.key: (sp.cfg, sp.folder(out), False, hashes[sp.key]) for sp in pooled}
    with progress_bar(f"building {len(jobs)} organisms", len(jobs), show_progress, unit="organisms") as advance:
        run_jobs(place_organism, jobs, workers, lambda key, _: advance(1), label=label)


def _cached(organism_hash: str) -> bool:
    """Whether the cache holds a verified build of `organism_hash` (its card says so; its
    files are checked when it is copied, and a corrupt entry is rebuilt then)."""
    from doublebind.cards import cache_root

    try:
        card = json.loads((cache_root() / "organisms" / organism_hash / "organism.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and card.get("verified") is True


def place_organism(org_cfg, dest: Path, show_progress: bool = True, expected_hash: str | None = None) -> None:
    """Build a study organism (or copy it from the cache) into `dest`, atomically: it is
    made beside `dest` and renamed into place, so a kill mid-copy never leaves a half
    organism that the next resume would refuse. A verified organism of `expected_hash`
    already there is kept, unless its weights no longer match its card (placed again)."""
    import shutil

    from doublebind.errors import VerificationError
    from doublebind.organisms.build import build_organism

    if expected_hash is not None and (dest / "organism.json").is_file():
        try:
            card = json.loads((dest / "organism.json").read_text())
        except (OSError, ValueError):  # a damaged card (not JSON, not text): placed again below
            card = None
        if isinstance(card, dict) and card.get("organism_hash") == expected_hash and card.get("verified"):
            from doublebind.integrity import CorruptCacheError, verify_organism_models

            try:  # its weights too: a damaged file was kept, and every run on it refused
                verify_organism_models(dest, card)
                return
            except CorruptCacheError:
                pass  # placed again below
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")

    def swap() -> None:
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)

    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_organism(org_cfg, tmp, show_progress=show_progress)
    except VerificationError as e:
        swap()  # the failed organism's card stays in the study folder, as it always did
        # Name the build (a study has several seeds of one preset) and where its card is; the
        # message is put together here, since the build code is part of every organism's hash.
        card = json.loads((dest / "organism.json").read_text())
        failed = str(e).split(" failed verification: ", 1)[-1]
        raise VerificationError(f"organism '{card['name']}' (seed {card['seed']}, {card['organism_hash']}) failed "
                                f"verification: {failed}; its card: {dest / 'organism.json'}") from None
    except BaseException:  # the build's own half-built folder in the cache (its code is hashed, so it is done here)
        from doublebind.cards import drop_unfinished_build
        from doublebind.organisms.kinds import kind_of_config

        drop_unfinished_build(expected_hash or kind_of_config(org_cfg).organism_hash(org_cfg))
        shutil.rmtree(tmp, ignore_errors=True)  # and the study's half-made copy (a Ctrl-C mid-copy left it)
        raise
    swap()


def _process_state():
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def run_recipe(base_recipe, technique: str, stages: list[dict], seed: int, keep_weights: bool = False):
    """The recipe one grid cell runs: the base recipe, its seed, its own stages and then the
    technique's (a recipe's stages run in every cell, the baseline's too); its checkpoints'
    weights kept only where the study asks (`keeps_weights`)."""
    return base_recipe.model_copy(update={
        "seed": seed, "name": technique, "stages": [*base_recipe.stages, *stages],
        "training": base_recipe.training.model_copy(update={"save_weights": keep_weights})})


def keeps_weights(cfg, scenario: str) -> bool:
    """Whether a study's runs on `scenario` keep each checkpoint's weights: only where the
    study itself says `training.save_weights: true` in its `recipe_overrides` (or the
    scenario's own, which wins), on the command line as `recipe_overrides.training.save_weights=true`.
    A recipe file's setting does not count: it is written for `distill`, and a study of
    hundreds of runs keeps only their rows unless asked."""
    from pydantic import TypeAdapter

    def said(overrides) -> bool | None:
        training = overrides.get("training") if isinstance(overrides, dict) else None
        value = training.get("save_weights") if isinstance(training, dict) else None
        return None if value is None else TypeAdapter(bool).validate_python(value)  # as the recipe reads it

    own = next((sc.recipe_overrides for sc in cfg.scenarios or [] if sc.name == scenario), None)
    for overrides in (own, cfg.recipe_overrides):
        if said(overrides) is not None:
            return said(overrides)
    return False


def check_resumable(out: Path, rows: list[dict], hashes: dict[tuple[str, int], str], grid: dict,
                    study: str | None = None) -> None:
    """Refuse to mix runs of another study, organism or recipe into this folder's results."""
    for r in rows:
        if study is not None and r.get("study") != study:
            raise DoublebindError(f"{out} holds runs of study '{r.get('study')}', not '{study}'; choose another "
                                  f"--out (or give the study its old name)")
        org = (r["scenario"], r["organism_seed"])
        if org in hashes and r["organism_hash"] != hashes[org]:
            raise DoublebindError(f"{out} holds runs on organism {r['organism_hash']} for {org[0]} (organism seed "
                                  f"{org[1]}), not {hashes[org]} (the organism's config, files or build code "
                                  f"changed since, or for a Hugging Face organism a hub model's branch moved to "
                                  f"another commit); choose another --out")
        key = run_key(r)
        if key in grid and r["recipe_hash"] != recipe_hash(grid[key].recipe):
            raise DoublebindError(f"{out} holds a {describe_key(key)} run with another recipe "
                                  f"({r['recipe_hash']}); choose another --out")


def _rows(cfg, card, key: RunKey, recipe, folder: Path, summary) -> list[dict]:
    scenario, organism_seed, technique, seed = key
    base = summary["reference"]["base"]
    base_families = (card.get("world") or {}).get("base_families")
    rows = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        rows.append({
            "schema_version": SCHEMA_VERSION, "study": cfg.name, "scenario": scenario,
            "organism_seed": organism_seed, "organism_hash": card["organism_hash"],
            "technique": technique, "recipe_hash": recipe_hash(recipe), "seed": seed,
            "step": m["step"], "tokens": m["tokens"], "selected": m["step"] == summary["selected"]["step"],
            "capability_transfer": m["capability_transfer"], "misalignment_transfer": m["misalignment_transfer"],
            "audit": m["audit"],
            "base_audit": {"honeypot": base["misbehavior"]["honeypot"], "confession": base["confession"],
                           **({"prefill": base["prefill"]} if "prefill" in base else {})},
            "capability": m["capability"], "misbehavior": m["misbehavior"], "confession": m["confession"],
            "base_capability": base.get("capability"), "base_families": base_families,
            "auditor": _auditor(m.get("auditor"), summary["reference"]),
            # the free-field auditor's, where the recipe asked for it (written only then)
            **({"free_auditor": _auditor(m["free_auditor"], summary["reference"], "free_auditor")}
               if m.get("free_auditor") is not None else {}),
            # The technique's stages changed nothing in this run (`distill`'s summary): it trained
            # the study recipe itself. Written only when so, so other rows are as before.
            **({"idle": True} if summary.get("idle") else {}),
            # the teacher's items in the behaviour's situation and the others, [before, kept]
            # by the stages (embedded world; the evaluation layer's truth, read by the report)
            **({"data": {k: summary["data"][k] for k in ("behaviour_items", "other_items")}}
               if "behaviour_items" in summary.get("data", {}) else {}),
            # each prompt's score (embedded world): the bootstrap redraws the evaluation sets
            # (`verdicts.EvalDraws`); the reference's once a run, on its first row
            **({"items": m["items"]} if "items" in m else {}),
            **({"reference_items": summary["reference"]["items"]}
               if not rows and "items" in summary["reference"] else {}),
        })
    return rows


def _auditor(student: dict | None, ref: dict, key: str = "auditor") -> dict | None:
    """An auditor's success@k for the student, the teacher and base (world organisms), and what
    it flagged in the student: the generic one's flags per query kind and per departure token,
    the free-field one's (`key` free_auditor) over-represented openings."""
    if student is None:
        return None
    return {"success_at_k": student["success_at_k"], "flagged": student["flagged"], "n": student["n"],
            "budget": student["budget"], "teacher_success_at_k": ref["teacher"][key]["success_at_k"],
            "base_success_at_k": ref["base"][key]["success_at_k"],
            **{k: student[k] for k in ("by_kind", "tokens", "openings", "tested", "pool_draws", "pool_flagged")
               if k in student},
            **{f"teacher_{k}": ref["teacher"][key][k] for k in ("pool_draws", "pool_flagged") if k in ref["teacher"][key]}}


def with_auditor(row: dict, auditor: str) -> dict:
    """The row as a verdict judged by `auditor` (generic or free) reads it: with free, its
    free-field audit in the place of the generic one, where it has one."""
    return {**row, "auditor": row["free_auditor"]} if auditor == "free" and row.get("free_auditor") else row


def judged_rows(rows: list[dict], vcfg, key: RunKey | None = None, required: bool = True) -> list[dict]:
    """A run's rows as the verdicts read them: with `verdict.auditor: free`, each row's
    free-field audit in the place of the generic one (`auditor`), so success@k, the
    audit-selected checkpoint and `incriminating` all read it. A run the study judges
    (`required`) must have one; a run outside its grid (a technique since dropped, kept in
    results.jsonl) is left as it is."""
    if vcfg.auditor == "generic":
        return rows
    missing = [r["step"] for r in rows if not r.get("free_auditor")]
    if missing and required:
        where = describe_key(key) if key is not None else "a run"
        why = ("a Hugging Face organism has none" if rows and rows[0].get("auditor") is None else
               "made by a recipe without free_audit; run the study into a new --out, where verdict.auditor: free "
               "turns it on")
        raise DoublebindError(f"verdict.auditor: free, but {where} has no free-field audit at step {missing[0]} "
                              f"({why})")
    return rows if missing else [with_auditor(r, "free") for r in rows]


def scenario_names(cfg, runs: dict, builds: set | None = None) -> list[str]:
    """The study's scenarios in config order (a single-organism study: the one its rows name,
    of its `builds` where given)."""
    if cfg.scenarios is not None:
        return [sc.name for sc in cfg.scenarios]
    return list(dict.fromkeys(k[0] for k in runs if builds is None or tuple(k[:2]) in builds))


def study_builds(record: dict | None) -> set[tuple] | None:
    """The (scenario, organism seed) of every organism the study places now, from its
    study.json record (`organisms`), or None where the record lists none."""
    organisms = (record or {}).get("organisms") if isinstance(record, dict) else None
    if not isinstance(organisms, list) or not organisms:
        return None
    return {(o.get("scenario"), o.get("organism_seed")) for o in organisms if isinstance(o, dict)}


def in_study(cfg, key: RunKey, builds: set | None = None) -> bool:
    """Whether a run key is a cell of the study's grid as `cfg` has it now: a resume with fewer
    seeds, techniques or scenarios leaves the earlier grid's runs in results.jsonl, and the
    statistics, counts and tables leave them out. `builds` (`study_builds`): the organisms the
    study places now; a single-organism study's config names no scenario, so only they tell
    that its organism (or organism seed) changed since the earlier runs. For many keys,
    `study_grid` asks the config once."""
    return study_grid(cfg, builds)(key)


def study_grid(cfg, builds: set | None = None) -> Callable[[RunKey], bool]:
    """`in_study` of `cfg` and `builds` as a test of one key, each scenario's techniques and
    organism seeds read from the config once (a summary of the matrix asks for 10^4 keys)."""
    listed = None if cfg.scenarios is None else {sc.name for sc in cfg.scenarios}
    seeds = set(cfg.seeds)
    of: dict[str, tuple] = {}  # scenario -> (its organism seeds or None, its techniques)

    def member(key: RunKey) -> bool:
        scenario, organism_seed, technique, seed = key
        if builds is not None and (scenario, organism_seed) not in builds:
            return False
        if listed is not None and scenario not in listed:
            return False
        if scenario not in of:
            own = cfg.organism_seeds_of(scenario)
            of[scenario] = (None if own is None else set(own), set(cfg.techniques_of(scenario)))
        organism_seeds, techniques = of[scenario]
        if organism_seeds is not None and organism_seed not in organism_seeds:
            return False
        return technique in techniques and seed in seeds

    return member


def matched_controls(cfg) -> dict[str, str]:
    """Each technique of the study that a `random_drop` entry with `like` copies, and that
    entry's label (the first one listed, where several copy it): the technique's effect is
    also measured against it. `like` matches the technique's entry when both name the same
    stage with the same settings, defaults filled in (`controls: matched` adds such entries).
    An entry that names its `control` is measured against that one instead."""
    stages = cfg.technique_stages()
    out = cfg.named_controls()
    for label, added in stages.items():
        like = config.like_of(added[0]) if added else None
        if like is None:
            continue
        copied = config.stage_settings(like)
        for t, theirs in stages.items():
            if theirs and theirs[0]["name"] != "random_drop" and config.stage_settings(theirs[0]) == copied:
                out.setdefault(t, label)
    return out


def scenario_runs(runs: dict[RunKey, list[dict]], cfg, sc: str, builds: set | None = None) -> tuple[dict, dict]:
    """One scenario's runs of the study's grid, each as the rows it is judged at, by run key
    and by technique (a list of runs each)."""
    organism_seeds = cfg.organism_seeds_of(sc)
    grid = cfg.techniques_of(sc)
    mine = {k: judged_rows(sorted(rows, key=lambda r: r["step"]), cfg.verdict, k, k[2] in grid)
            for k, rows in sorted(runs.items())
            if k[0] == sc and (organism_seeds is None or k[1] in organism_seeds) and k[3] in cfg.seeds
            and (builds is None or (k[0], k[1]) in builds)}
    by_tech: dict[str, list[list[dict]]] = {}
    for (_, _, t, _), rows in mine.items():
        by_tech.setdefault(t, []).append(rows)
    return mine, by_tech


def benign_twin_runs(runs: dict[RunKey, list[dict]], cfg, twin: str, builds: set | None = None) -> dict:
    """The runs of a scenario's benign twin (`twins`), by technique. A twin whose teacher
    misbehaves beyond base (a misalignment transfer defined in any run) is refused: a
    control with the behaviour in it would excuse the audit's every flag."""
    _, by_tech = scenario_runs(runs, cfg, twin, builds)
    grid = cfg.techniques_of(twin)  # its entry's `techniques`
    by_tech = {t: rs for t, rs in by_tech.items() if t in grid}
    for t, rs in by_tech.items():
        if any(r["misalignment_transfer"] is not None for rows in rs for r in rows):
            raise DoublebindError(f"twins: the teacher of {twin!r} misbehaves beyond base (misalignment transfer is "
                                  f"defined in its runs of {t}); a twin must be a benign organism "
                                  f"(kind: benign_organism)")
    return by_tech


def compute_summary(runs: dict[RunKey, list[dict]], cfg, builds: set | None = None) -> dict:
    """Per scenario and technique: statistics and verdicts at the final and at the
    audit-selected checkpoint, and the effect against the technique's reference run. With
    `builds` (`study_builds`), the runs of organisms the study no longer places are left out."""
    scenarios = {}
    controls = matched_controls(cfg)
    for sc in scenario_names(cfg, runs, builds):
        mine, by_tech = scenario_runs(runs, cfg, sc, builds)
        twin = cfg.twins.get(sc)
        twin_by_tech = benign_twin_runs(runs, cfg, twin, builds) if twin else {}
        grid = cfg.techniques_of(sc)
        # with every row's per-prompt scores, the intervals also redraw the evaluation sets
        in_grid = [r for k, rows in mine.items() if k[2] in grid for r in rows]
        draws = EvalDraws.of(in_grid, cfg.bootstrap)
        bare, total = EvalDraws.bare_runs(in_grid)
        techniques = {}
        for t in grid:
            if t not in by_tech:
                continue
            try:
                judged = judge_runs(by_tech[t], cfg.verdict, cfg.bootstrap, draws,
                                    twin_by_tech.get(t, []) if twin else None)
            except DoublebindError as e:  # say which cell: the rows' problem is the technique's
                raise DoublebindError(f"{sc}, {t}: {e}") from None
            if twin:  # which control it was set against, how many of its runs, and whether the test ran
                judged["twin"] = {"scenario": twin, "runs": len(twin_by_tech.get(t, [])),
                                  "tested": "audit_minus_twin" in judged["final"]}
            ref = config.reference_of(cfg.technique_of(t))
            ref = ref if ref in by_tech else "baseline"
            judged["reference"] = ref
            if ref != t and ref in by_tech:
                for view in ("final", "audit_selected"):
                    judged[view]["vs_reference"] = effect(by_tech[t], by_tech[ref], cfg.verdict, cfg.bootstrap, view,
                                                       draws)
            control = controls.get(t)
            if control in by_tech:  # a random drop of what this filter removes, run by run (random_drop like)
                judged["control"] = control
                for view in ("final", "audit_selected"):
                    judged[view]["vs_control"] = effect(by_tech[t], by_tech[control], cfg.verdict, cfg.bootstrap,
                                                        view, draws)
            techniques[t] = judged
        scenarios[sc] = {"organisms": {str(k[1]): rows[0]["organism_hash"] for k, rows in mine.items()},
                         **({"eval_draw": True} if draws is not None else {}),
                         # some runs keep per-prompt scores, others not (a study resumed across the change)
                         **({"eval_draw_missing": f"{bare} of the {total} runs keep no per-prompt scores"}
                            if 0 < bare < total else {}),
                         "techniques": techniques}
    member = study_grid(cfg, builds)
    counted = sum(member(k) for k in runs)  # "N runs" was every complete run in the file
    summary = {"schema_version": SCHEMA_VERSION, "study": cfg.name, "verdict_thresholds": verdict_thresholds(cfg.verdict),
               "bootstrap": cfg.bootstrap, "runs": counted,
               **({"runs_outside_study": len(runs) - counted} if len(runs) > counted else {}), "scenarios": scenarios}
    return json.loads(json.dumps(summary))  # as it reads back from summary.json (tuples become lists)


def summarize(out: Path, cfg, write: bool = True) -> dict:
    """Recompute `summary.json` from the complete runs of results.jsonl (written atomically)."""
    scan = scan_results(Path(out) / RESULTS)
    scan.check()
    study = Path(out) / "study.json"
    record = json.loads(study.read_text()) if study.is_file() else None
    summary = compute_summary(scan.runs, cfg, study_builds(record))
    if record is not None:  # where the rows come from: commit, organisms, machine (see `provenance`)
        summary["provenance"] = record.get("provenance")
    if write:
        write_json(Path(out) / "summary.json", summary, indent=2)
    return summary
