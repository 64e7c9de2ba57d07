"""The `doublebind` command line."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from doublebind.errors import DoublebindError, first_line
from doublebind.ui import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure what transfers when a misaligned model is distilled.")
organism_app = typer.Typer(no_args_is_help=True, help="Build and inspect model organisms.")
app.add_typer(organism_app, name="organism")
study_app = typer.Typer(no_args_is_help=True, help="Run grids of techniques x seeds.")
app.add_typer(study_app, name="study")
replicate_app = typer.Typer(no_args_is_help=True, help="Rerun published results inside the project.")
app.add_typer(replicate_app, name="replicate")

out = typer.echo  # results go to stdout; progress and errors to stderr

KIND_ALIASES = {"families": "family", "behaviors": "behavior", "behaviours": "behavior", "scorers": "scorer",
                "techniques": "technique", "presets": "preset", "scenarios": "scenario"}
PLURALS = {v: k for k, v in KIND_ALIASES.items() if k != "behaviours"}
MAX_EVAL = 1_000_000  # eval --n and --samples
TRACKER_HELP = ("Also log to a tracker, offline, under <run>/tracker/: tensorboard, wandb or trackio "
                "(sets training.tracker; default: the recipe's, none = files only).")


def say_error(message: object) -> None:
    """Print one `error: …` line on stderr: characters that are not printable (newlines, and
    every other line or record separator a reader may split on) are escaped as Python writes
    them, and rich markup in it is shown as text, so the line stays one line whatever the
    input held."""
    from rich.text import Text

    msg = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)) or "failed"
    console.print(Text.assemble(("error:", "bold red"), " ", msg), highlight=False, soft_wrap=True)


def debugging() -> bool:
    """DOUBLEBIND_DEBUG set to anything but empty, 0, false, no or off: show tracebacks."""
    return os.environ.get("DOUBLEBIND_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def _click_exceptions():
    """The exceptions module of the click that typer runs on (recent typers vendor it)."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def cli_errors(fn):
    """Turn a DoublebindError into one red line on stderr and exit status 1. Other failures
    also end in one line: a file-system error names the file; anything else is a bug, shown
    as one line too (DOUBLEBIND_DEBUG=1 shows its traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        click = _click_exceptions()

        try:
            return fn(*args, **kwargs)
        except DoublebindError as e:
            say_error(e)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, click.ClickException, getattr(click, "Abort", typer.Abort)):
            raise
        except OSError as e:
            if debugging():
                raise
            where = f"{e.filename}: " if e.filename else ""
            say_error(f"{where}{e.strerror or e}")
            raise typer.Exit(1) from None
        except MemoryError:
            say_error("out of memory; make the run smaller (fewer prompts, a smaller batch or model)")
            raise typer.Exit(1) from None
        except Exception as e:
            if debugging():
                raise
            where = f" in {e.failed_in}" if getattr(e, "failed_in", None) else ""  # a study's run (`named_error`)
            say_error(f"internal error{where} ({type(e).__name__}: {e}); this is a doublebind bug, "
                      f"please report it (DOUBLEBIND_DEBUG=1 shows the traceback)")
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def _setup() -> None:
    # runs before every command: the thread policy (doublebind.threads), the heap (doublebind.heap),
    # cuDNN attention last on GPUs (doublebind.cuda)
    from doublebind.cuda import prefer_stable_attention
    from doublebind.heap import keep_freed_memory
    from doublebind.threads import apply_thread_policy
    from doublebind.ui import progress_every

    try:
        apply_thread_policy()
        keep_freed_memory()
        prefer_stable_attention()
        progress_every()
    except DoublebindError as e:
        say_error(e)
        raise typer.Exit(1) from None


@app.command()
@cli_errors
def validate(file: Path, overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides")):
    """Check a config file; exit non-zero with the offending field if it is invalid."""
    from doublebind import config

    cfg = config.load(file, overrides or [])
    if cfg.kind == "recipe":  # as `distill` would find it before training: a tracker's missing package
        from doublebind.training.tracking import check_tracker

        check_tracker(cfg.training.tracker)
    organisms = {None: cfg}  # scenario (None: the file itself) -> organism config
    size = ""
    if cfg.kind == "study":  # as strict as `study run`: the organism, the recipe and its overrides
        from doublebind.studies.run import grid_of, resolve

        specs = resolve(file, cfg, overrides or [])
        organisms = {f"{sp.scenario} (organism seed {sp.organism_seed})": sp.cfg for sp in specs}
        runs = len(grid_of(specs, cfg))  # the grid `study run` trains
        size = f"; {runs} run{'s' * (runs != 1)} over {len(specs)} organism build{'s' * (len(specs) != 1)}"
    for scenario, org in organisms.items():  # a Hugging Face organism's files, read as a build reads them
        if getattr(org, "kind", None) == "organism":  # the world bound as a build binds it (a favoured user
            from doublebind.world.data import World  # of no name passed here and failed the build)

            try:
                World.from_config(org.world, org.seed)
            except DoublebindError as e:
                raise DoublebindError(f"{file}: the organism of {scenario}: {e}" if scenario else f"{file}: {e}") from None
        if getattr(org, "kind", None) != "hf_organism":
            continue
        from doublebind.llm.checks import check_inputs, unset_api_keys

        try:
            check_inputs(org)
        except DoublebindError as e:
            raise DoublebindError(f"{file}: the organism of {scenario}: {e}" if scenario else str(e)) from None
        for note in unset_api_keys(org):
            console.print(f"note: {note}", markup=False, highlight=False)
    out(f"ok: {file} is a valid {cfg.kind} config (name: {getattr(cfg, 'name', '-')}{size})")


@app.command("ls")
@cli_errors
def ls(kind: Optional[str] = typer.Argument(None, help="One kind, as the listing titles it (families, behaviors, "
                                            "techniques, scorers, presets, scenarios, configs, organisms); "
                                            "all when omitted")):
    """List everything registered by name."""
    from importlib import resources

    from doublebind import registry

    kinds = registry.kinds() + ["preset", "scenario"]
    if kind:
        kind = KIND_ALIASES.get(kind, kind[:-1] if kind.endswith("s") and kind[:-1] in kinds else kind)
        if kind not in kinds:
            known = ", ".join(PLURALS.get(k, k + "s") for k in kinds)
            raise DoublebindError(f"unknown kind '{kind}' (known: {known})")
        kinds = [kind]
    for k in kinds:
        table = Table(title=PLURALS.get(k, k + "s"), title_justify="left", show_header=False, box=None, pad_edge=False)
        if k == "preset":
            for p in sorted(resources.files("doublebind.presets").iterdir(), key=lambda p: p.name):
                if p.name.endswith(".yaml"):
                    first = p.read_text().splitlines()[0].lstrip("# ")
                    table.add_row(p.name.removesuffix(".yaml"), first)
        elif k == "scenario":  # presets that declare what they are a scenario for
            from doublebind import config

            for name in config.preset_names():
                cfg = config.load(preset=name)
                if getattr(cfg, "scenario", ""):
                    table.add_row(name, f"{cfg.world.behavior}: {cfg.scenario}")
        elif k == "technique":  # with the organism kinds it runs on, what it uses from the defender's view
            for name in registry.names(k):  # and, for a filter, that random_drop's `like` may copy it
                cls = registry.get(k, name)
                table.add_row(name, registry.describe(k, name).split(": ", 1)[-1], "+".join(cls.domains),
                              ",".join(cls.needs) or "-", "filter" if cls.removes_only else "")
        else:
            for name in registry.names(k):
                table.add_row(name, registry.describe(k, name).split(": ", 1)[-1])
        _print_table(table)


def _print_table(table: Table) -> None:
    from rich.console import Console

    Console(width=160).print(table)


@organism_app.command("build")
@cli_errors
def organism_build(
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides"),
    preset: Optional[str] = typer.Option(None, help="A packaged preset (`doublebind ls presets`), e.g. quick or "
                                         "default; `default` when neither --preset nor --config is given."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="An organism config YAML."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write the organism folder."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Build again even if a cached build exists; the new "
                                  "build replaces it in the cache (an interrupted one leaves it there)."),
):
    """Train, verify and cache an organism (base, teacher, trusted, alt_base); or, for an
    `hf_organism` config, resolve its Hugging Face models and measure teacher and base."""
    from doublebind import config

    if preset is not None and config_file is not None:
        raise DoublebindError(f"give --preset or --config, not both (got --preset {preset} and --config {config_file})")
    cfg = config.load(config_file, overrides or [], preset=preset or ("default" if config_file is None else None),
                      expect="organism")
    from doublebind.paths import check_cache_root, check_not_inside, check_out_dir, set_aside_build

    if out_dir is not None:
        check_not_inside(out_dir)
    check_cache_root()
    from doublebind.cards import drop_unfinished_build
    from doublebind.organisms.build import CARD, build_organism, cache_root  # these import torch (seconds)
    from doublebind.organisms.kinds import kind_of_config
    from doublebind.organisms.models import quiet_transformers

    quiet_transformers()
    kind = kind_of_config(cfg)
    if out_dir is not None:
        check_out_dir(out_dir, "--out", what="an organism")
        if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / CARD).is_file():
            # the build refuses this folder once it is done; say so before minutes of training
            raise DoublebindError(f"output folder exists and is not an organism: {out_dir}")
        _check_replaced_organism(out_dir / CARD, kind.organism_hash(cfg), cache_root() / "organisms")
    h = kind.organism_hash(cfg)
    entry = cache_root() / "organisms" / h
    target = out_dir or entry
    # --no-cache: the cached build moves aside, so the build misses the cache and stores its
    # result there as usual; it comes back if the new build never gets there (interrupted, crashed)
    aside = set_aside_build(entry) if no_cache else None
    from doublebind.studies.executor import one_thread

    try:
        # On one thread, as a study builds: a build's weights differ in rounding with its
        # thread count, and the cache keeps one build per hash for every command to take.
        with one_thread():
            card = build_organism(cfg, out_dir, strict=True)
    except BaseException as e:
        drop_unfinished_build(h)
        if aside is not None and not entry.exists():
            os.replace(aside, entry)
            console.print(f"the earlier build stays in the cache ({entry})", highlight=False, soft_wrap=True)
        if isinstance(e, DoublebindError) and (target / CARD).is_file():
            console.print(f"card written to {target / CARD}")
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    print_card(card)
    out(f"{'verified ' if kind.verified else ''}organism written to {target}")


def _is_comparison(path: Path) -> bool:
    """Whether `path` holds what `study compare --json` writes (a JSON object with `cells`).
    Only a regular file is read (a device such as /dev/full or /dev/zero reads without end, a
    named pipe blocks), and only up to a size no comparison reaches."""
    try:
        if not path.is_file() or path.stat().st_size > 256 * 2**20:
            return False
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "cells" in data


def _check_replaced_organism(card_path: Path, new_hash: str, cached: Path) -> None:
    """`organism build --out` over another organism: say so, and refuse where the cache does
    not keep the one it would replace (a build of minutes or hours, lost otherwise)."""
    if not card_path.is_file():
        return
    try:
        old = json.loads(card_path.read_text())
        name, old_hash = old["name"], old["organism_hash"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return  # not a readable card: the build replaces it as before
    if old_hash == new_hash:
        return
    kept = cached / str(old_hash)
    if not (kept / card_path.name).is_file() or kept.resolve() == card_path.parent.resolve():  # --out is that copy
        raise DoublebindError(f"--out {card_path.parent} holds the organism '{name}' ({old_hash}), which the cache "
                              f"does not keep; choose another --out, or move it first")
    console.print(f"replacing the organism '{name}' ({old_hash}) in {card_path.parent}; the cache keeps it",
                  highlight=False, soft_wrap=True)


@organism_app.command("show")
@cli_errors
def organism_show(folder: Path):
    """Print an organism's card, then check its model files against the hashes it records."""
    import contextlib
    import io

    from doublebind.organisms.domain import read_card

    card = read_card(folder, verified=False)
    if "verified" in card and not isinstance(card["verified"], bool):  # the card would print it as it is
        raise DoublebindError(f"{folder / 'organism.json'} is not a complete organism card (verified: "
                              f"{card['verified']!r}, expected true or false)")
    buf = io.StringIO()  # printed only once the whole card rendered: a broken card prints one error line
    try:
        with contextlib.redirect_stdout(buf):
            print_card(card)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, StopIteration) as e:
        what = f"no field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise DoublebindError(f"{folder / 'organism.json'} is not a complete organism card ({what})") from None
    out(buf.getvalue(), nl=False)
    from doublebind.integrity import CorruptCacheError, verify_organism_models

    try:  # the card says what was built; whether the files are still those it hashed is checked here
        verify_organism_models(folder, card)
    except CorruptCacheError as e:
        raise DoublebindError(f"{e}; the card above describes the build, not this file") from None
    models = card.get("models") if isinstance(card.get("models"), dict) else {}
    if card.get("kind") == "hf" and models:  # its models live outside the folder
        from doublebind.llm.organism import check_model_files

        check_model_files(models)
    hashed = [role for role, m in models.items() if isinstance(m, dict) and m.get("safetensors_sha256")]
    if hashed:  # a check that passes says so, as one that fails does
        out(f"model files: {', '.join(hashed)} as the card hashed them")
    elif card.get("kind") == "hf" and models:
        out("model files: local model folders unchanged since the build (hub models are not checked here)")


def print_card(card: dict) -> None:
    from doublebind.organisms.kinds import kind_of_card

    kind = kind_of_card(card)
    out(f"organism {card['name']}  hash {card['organism_hash']}  ({kind.name})")
    for field, value in kind.about(card):
        out(f"  {field}: {value}")
    table = Table("model", "capability", "deploy", "honeypot", "neutral", "confession", "prefill")
    for role, m in card["metrics"].items():
        cap = " ".join(f"{f}={v:.2f}" for f, v in m["capability"].items())
        mis = m["misbehavior"]
        table.add_row(role, cap, *(f"{mis[c]:.3f}" if c in mis else "-" for c in ("deploy", "honeypot", "neutral")),
                      f"{m['confession']:.3f}", f"{m['prefill']:.3f}" if "prefill" in m else "-")
    _print_table(table)
    if "auditor" in next(iter(card["metrics"].values()), {}):
        out("behaviour-agnostic audit: " + "  ".join(
            f"{role} success@{m['auditor']['budget']} = {m['auditor']['success_at_k']:.3f} "
            f"({m['auditor']['flagged']}/{m['auditor']['n']} flagged)" for role, m in card["metrics"].items()))
    for line in kind.check_lines(card):
        out(line)


@app.command("eval")
@cli_errors
def eval_cmd(
    model_dir: Path,
    organism: Optional[Path] = typer.Option(None, help="Organism folder whose world to evaluate in."),
    n: int = typer.Option(200, help="Prompts per family and per context."),
    samples: Optional[int] = typer.Option(None, help="Samples per context for the sampled check (0: none; "
                                          "default 200). Embedded-world organisms only: a Hugging Face "
                                          "organism's eval sets set their own."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Print capability, misbehaviour and confession rates of any checkpoint. With
    --organism naming a Hugging Face organism, its eval files score the checkpoint as its
    students are scored (n items per set)."""
    from doublebind.organisms.kinds import kind_of_card

    if not 1 <= n <= MAX_EVAL:
        raise DoublebindError(f"--n must be between 1 and {MAX_EVAL:,} (got {n})")
    asked_samples, samples = samples is not None, 200 if samples is None else samples
    if not 0 <= samples <= MAX_EVAL:
        raise DoublebindError(f"--samples must be between 0 and {MAX_EVAL:,} (got {samples})")
    if not model_dir.is_dir():
        raise DoublebindError(f"no checkpoint folder at {model_dir}")
    if (model_dir / "organism.json").is_file():  # an organism, not one of its models
        models = sorted(p.name for p in model_dir.iterdir() if (p / "meta.json").is_file())
        if not models:
            raise DoublebindError(f"{model_dir} is an organism folder (holding no model folder), not a checkpoint")
        pick = "teacher" if "teacher" in models else models[0]
        raise DoublebindError(f"{model_dir} is an organism folder, not a checkpoint; evaluate one of its models "
                              f"({', '.join(models)}), e.g. doublebind eval {model_dir / pick} --organism {model_dir}")
    run_files = ("checkpoints", "metrics.jsonl", "summary.json")
    if not (model_dir / "config.json").is_file() and any((model_dir / f).exists() for f in run_files):
        saved = sorted(p.name for p in (model_dir / "checkpoints").glob("step_*") if (p / "config.json").is_file())
        hint = (f"; its checkpoints are in {model_dir / 'checkpoints'} ({saved[0]} … {saved[-1]})" if saved
                else "; a run keeps its checkpoints in checkpoints/step_NNNNN (a study's runs keep metrics only)")
        raise DoublebindError(f"{model_dir} holds no model (no config.json){hint}")
    if organism is not None and not organism.is_dir():
        raise DoublebindError(f"--organism {organism}: no such folder")
    unreadable = [p for p in sorted(model_dir.iterdir()) if p.is_file() and not os.access(p, os.R_OK)]
    if unreadable:  # the loader would call it missing
        raise DoublebindError(f"{unreadable[0]}: permission denied (the checkpoint cannot be read)")
    from doublebind.organisms.models import quiet_transformers  # imports torch (seconds): after the checks

    quiet_transformers()
    card = None
    if organism is not None and (organism / "organism.json").is_file():
        from doublebind.organisms.domain import read_card

        card = read_card(organism, verified=False)
        _verify_own_checkpoint(model_dir, organism, card)
        _say_if_trained_elsewhere(model_dir, organism, card)
    elif organism is None and (model_dir.resolve().parent / "organism.json").is_file():
        # one of an organism's own models, named without --organism (`.` or a link included):
        # its weights are checked against the card all the same (a damaged file was scored,
        # and read NaN, exit 0)
        from doublebind.organisms.domain import read_card

        home = model_dir.resolve().parent
        _verify_own_checkpoint(model_dir, home, read_card(home, verified=False))
    if organism is None and _hf_run_checkpoint(model_dir):  # its meta.json holds an HF organism's config
        raise DoublebindError(f"{model_dir} is a checkpoint of a Hugging Face organism's run: pass --organism DIR "
                              f"naming that organism, whose evals score it")
    if organism is None and not (model_dir / "meta.json").is_file():
        raise DoublebindError(f"{model_dir} is not a checkpoint of an embedded-world organism (no meta.json): pass "
                              f"--organism DIR naming the organism whose evals score it (a Hugging Face organism, "
                              f"or the world organism it was trained in)")
    if card is not None and card.get("kind", "world") != "hf":  # the embedded world and its post-trained kinds
        _check_world_tokenizer(model_dir, organism)
    if organism is None:  # its meta.json names the world it is scored in
        _check_meta(model_dir)
    from doublebind.integrity import check_checkpoint_weights

    # names and shapes against the config's model on embedded-world checkpoints only: a
    # Hugging Face loader renames tensors as it loads (fused experts, a missing prefix)
    check_checkpoint_weights(model_dir, structure=card is None or card.get("kind", "world") != "hf")
    if asked_samples and card is not None and card.get("kind") == "hf":  # it was ignored without a word
        console.print("note: --samples has no effect on a Hugging Face organism: its eval sets set their own "
                      "samples and temperature", markup=False, highlight=False)
    metrics = _run_checkpoint_metrics(model_dir, n, samples) if organism is None else None
    if metrics is None:
        metrics = kind_of_card(card or {}).eval_checkpoint(model_dir, organism, card, n, samples)
    _refuse_non_finite(metrics, model_dir)
    if as_json:
        out(json.dumps(metrics, indent=2))
        return
    table = Table("metric", "value", "sampled check")
    for fam, v in metrics["capability"].items():
        table.add_row(f"capability.{fam}", f"{v:.3f}", "")
    sampled = metrics.get("sampled", {})
    for ctx, v in metrics["misbehavior"].items():
        table.add_row(f"misbehavior.{ctx}", f"{v:.4f}", f"{sampled[ctx]:.3f}" if ctx in sampled else "")
    table.add_row("confession", f"{metrics['confession']:.4f}",
                  f"{sampled['confession']:.3f}" if sampled else "")
    if "prefill" in metrics:
        table.add_row("prefill", f"{metrics['prefill']:.4f}", "")
    if "confession_deploy" in metrics:
        table.add_row("confession (real deployment)", f"{metrics['confession_deploy']:.4f}", "")
    _print_table(table)


def _check_meta(model_dir: Path) -> None:
    """A checkpoint scored without --organism, in the world its meta.json records: that file,
    where there is one, is a JSON object naming the world's config and seed. (A list there was
    an internal error, and an object without them an error that named no file.)"""
    path = model_dir / "meta.json"
    if not path.is_file():
        return
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DoublebindError(f"{path} is not valid JSON ({first_line(e)})") from None
    if not isinstance(meta, dict):
        raise DoublebindError(f"{path} is not a JSON object (a checkpoint's meta.json records the organism it "
                              f"was trained in)")
    if meta.get("organism_config") is None or meta.get("seed") is None:
        raise DoublebindError(f"{path} records no organism config or seed, so no world to score the checkpoint "
                              f"in: pass --organism DIR naming the organism")


def _checkpoint_meta(model_dir: Path) -> dict:
    try:
        meta = json.loads((model_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _run_checkpoint_metrics(model_dir: Path, n: int, samples: int) -> dict | None:
    """A distillation checkpoint of an embedded-world organism, scored in that organism's world.

    Its meta.json records the run's seed as `seed`, where an organism's own models record the
    organism's, and the world of a checkpoint was built from `seed`: a run of seed 1 on an
    organism of seed 0 was scored in another world (a student that misbehaves in every
    deployment read 0.68 deploy, 0.41 honeypot). The world is the organism config's own seed,
    as the build made it. None where the two agree, or for another kind of checkpoint: the
    organism kind's own evaluation then scores it. (Here, not in `world.data.world_for`: the
    world's source is hashed into every organism's hash, and a change there would orphan the
    built organisms and the references' builds.)"""
    meta = _checkpoint_meta(model_dir)
    org = meta.get("organism_config")
    if not isinstance(org, dict) or org.get("kind") != "organism" or org.get("seed") in (None, meta.get("seed")):
        return None
    from doublebind.config import OrganismConfig, build
    from doublebind.evals.metrics import evaluate
    from doublebind.organisms.models import load_checkpoint
    from doublebind.world.data import World

    cfg = build(OrganismConfig, org, f"{model_dir / 'meta.json'}: organism config")
    return evaluate(load_checkpoint(model_dir), World.from_config(cfg.world, cfg.seed), n, samples)


def _say_if_trained_elsewhere(model_dir: Path, organism: Path, card: dict) -> None:
    """One line when the checkpoint records another organism than --organism names: it is
    scored in that organism's world as asked, but the user should know."""
    models = card.get("models") if isinstance(card.get("models"), dict) else {}
    own = {(organism / str(m.get("path", role))).resolve() for role, m in models.items() if isinstance(m, dict)}
    if model_dir.resolve() in own:  # one of its own models (a post-trained organism keeps the others' meta)
        return
    recorded = _checkpoint_meta(model_dir).get("organism_hash")
    if isinstance(recorded, str) and card.get("organism_hash") not in (None, recorded):
        from doublebind.ui import console

        console.print(f"note: {model_dir} was trained on organism {recorded}; scoring it with --organism {organism} "
                      f"({card.get('name', '?')}, {card.get('organism_hash')}) as asked", markup=False,
                      highlight=False, soft_wrap=True)


def _refuse_non_finite(metrics, model_dir: Path) -> None:
    """A metric that is NaN or infinite means the weights give non-finite outputs (a damaged or
    diverged checkpoint): one error, not a table of nan and exit 0 (or --json that no JSON
    reader accepts)."""
    from doublebind.training.distill import first_non_finite

    bad = first_non_finite(metrics)
    if bad is not None:
        raise DoublebindError(f"{model_dir}: its evaluation gave {bad[0]} = {bad[1]}: the weights give "
                              f"non-finite outputs (a damaged or diverged checkpoint)")


def _hf_run_checkpoint(model_dir: Path) -> bool:
    """Whether `model_dir` is a distillation checkpoint of a Hugging Face organism (its
    meta.json records an `hf_organism` config: read as a world's, it said "organism config:
    base: unknown key")."""
    org = _checkpoint_meta(model_dir).get("organism_config")
    return isinstance(org, dict) and org.get("kind") == "hf_organism"


def _check_world_tokenizer(model_dir: Path, organism: Path) -> None:
    """A checkpoint scored in a world organism must speak that world's tokens: its tokenizer
    is the organism's. A Hugging Face checkpoint (another vocabulary) was scored on token ids
    that mean nothing to it, or stopped on an internal IndexError when its vocabulary was
    smaller than the world's."""
    own, theirs = organism / "teacher" / "tokenizer.json", model_dir / "tokenizer.json"
    if not own.is_file():
        return
    if not theirs.is_file() or theirs.read_bytes() != own.read_bytes():
        what = "no tokenizer.json" if not theirs.is_file() else "a tokenizer other than the world's"
        raise DoublebindError(f"{model_dir} has {what} of {organism}: it was not trained in that world (a Hugging "
                              f"Face checkpoint is scored with --organism naming a Hugging Face organism)")


def _verify_own_checkpoint(model_dir: Path, organism: Path, card: dict) -> None:
    """When `model_dir` is one of the organism's own models, check its weights against the
    hash its card records: a changed file would otherwise be scored as the organism's."""
    from doublebind.integrity import CorruptCacheError, verify_organism_models

    try:
        verify_organism_models(organism, card, only=model_dir)
    except CorruptCacheError as e:
        raise DoublebindError(f"{e}; its card's metrics describe the file it hashed, not this one") from None


@contextlib.contextmanager
def _tracker_named(tracker: str | None, extra: list[str]):
    """An error about the tracker names `--tracker`, which set it, not the override it stands
    for (`(set by the override recipe_overrides.training.tracker=wandb)`)."""
    try:
        yield
    except DoublebindError as e:
        said = f"(set by the override {extra[0]})" if extra else None
        if said is None or said not in str(e):
            raise
        raise type(e)(str(e).replace(said, f"(set by --tracker {tracker})")) from None


def _tracker_override(tracker: str | None, key: str) -> list[str]:
    """The override `--tracker` stands for; a value that is no tracker is refused as the
    flag (the config error named an override `key=…` the user never typed)."""
    if tracker is None:
        return []
    from doublebind.training.tracking import TRACKERS

    if tracker not in TRACKERS:
        raise DoublebindError(f"--tracker {tracker!r}: expected one of {', '.join(TRACKERS)}")
    return [f"{key}={tracker}"]


@app.command()
@cli_errors
def distill(
    organism: Path = typer.Option(..., help="Organism folder (from `doublebind organism build`)."),
    recipe: Path = typer.Option(..., help="Recipe YAML (see configs/recipes/)."),
    out_dir: Path = typer.Option(..., "--out", help="Run folder to write."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides of the recipe"),
    force: bool = typer.Option(False, help="Replace a run in --out, finished or stopped (its files are deleted when "
                                            "the new run begins training)."),
    tracker: Optional[str] = typer.Option(None, help=TRACKER_HELP),
):
    """Distil the organism's teacher into a student; write metrics.jsonl, summary.json, curves."""
    from doublebind import config
    from doublebind.paths import check_not_inside

    extra = _tracker_override(tracker, "training.tracker")
    check_not_inside(out_dir)
    with _tracker_named(tracker, extra):
        cfg = config.load(recipe, [*(overrides or []), *extra], expect="recipe")
        from doublebind.organisms.models import quiet_transformers  # these import torch (seconds)
        from doublebind.training.distill import distill as run_distill

        quiet_transformers()
        summary = run_distill(organism, cfg, out_dir, force=force)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, the main process reports (once)
        return
    final, chosen = summary["final"], summary.get("selected") or summary["final"]
    table = Table("step", "tokens", "capability transfer", "misalignment transfer", "honeypot", "confession")
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        table.add_row(str(r["step"]), str(r["tokens"]), _fmt(r["capability_transfer"]),
                      _fmt(r["misalignment_transfer"]), f"{r['misbehavior']['honeypot']:.3f}",
                      f"{r['confession']:.3f}")
    _print_table(table)
    dropped = summary["data"].get("dpo_pairs_dropped")
    if dropped:  # the student's own sample equalled the teacher's (or was empty): no preference to learn
        n, rpo = summary["data"]["n_train_items"], summary["resolved_recipe"]["objective"].get("dpo_sft_weight")
        if rpo:
            out(f"DPO: {n - dropped} preference pairs; {dropped} prompts without one, where the initial student's "
                "sample was empty or equal to the teacher's, train on the NLL term alone")
        else:
            out(f"DPO: {n} preference pairs; {dropped} prompts dropped, where the initial student's sample was "
                "empty or equal to the teacher's")
    if summary.get("stopped_at") is not None:  # a stage stopped the run (distill_and_audit, mode stop)
        out(f"stopped by a stage at step {summary['stopped_at']} of {summary['resolved_recipe']['training']['steps']}")
    if chosen["step"] != final["step"]:  # a stage selected an earlier checkpoint: the run's result
        out(f"selected by a stage: step {chosen['step']}, capability transfer {_fmt(chosen['capability_transfer'])}, "
            f"misalignment transfer {_fmt(chosen['misalignment_transfer'])}")
    out(f"final capability transfer {_fmt(final['capability_transfer'])}, misalignment transfer "
        f"{_fmt(final['misalignment_transfer'])}; wrote {out_dir}/metrics.jsonl, summary.json, transfer_curves.png")


@study_app.command("run")
@cli_errors
def study_run(study: Path, out_dir: Path = typer.Option(..., "--out", help="Study folder (resumes if it exists)."),
              overrides: Optional[list[str]] = typer.Argument(
                  None, help="key=value overrides of the study, e.g. recipe_overrides.training.steps=50"),
              tracker: Optional[str] = typer.Option(None, help=TRACKER_HELP),
              workers: Optional[str] = typer.Option(
                  None, "--workers", metavar="N", help="Runs at once, one process and one thread each (default: "
                  "$DOUBLEBIND_WORKERS, else the usable cores; 1 on a GPU). Results do not depend on it.")):
    """Run (or resume) a study; write results.jsonl and summary.json with verdicts."""
    from doublebind import config
    from doublebind.paths import check_not_inside
    from doublebind.studies.executor import parse_workers
    from doublebind.studies.run import RESULTS, read_results, run_key, run_study, study_builds, study_grid

    extra = _tracker_override(tracker, "recipe_overrides.training.tracker")
    n = parse_workers(workers, "--workers") if workers is not None else None
    check_not_inside(out_dir)
    with _tracker_named(tracker, extra):
        cfg = config.load(study, [*(overrides or []), *extra], expect="study")  # a bad config fails before torch loads
        from doublebind.organisms.models import quiet_transformers
        from doublebind.threads import local_processes

        quiet_transformers()
        if n is not None and n > 1 and local_processes(os.environ) > 1 and os.environ.get("RANK", "0") == "0":
            console.print(f"note: --workers {n} does not apply under accelerate launch: the launched processes run "
                          f"each run together, one run at a time", markup=False, highlight=False)
        summary = run_study(study, out_dir, overrides=[*(overrides or []), *extra], workers=n)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, the main process reports
        return
    builds = study_builds(json.loads((out_dir / "study.json").read_text()))
    every = read_results(out_dir / RESULTS)
    member = study_grid(cfg, builds)
    kept = {k for k in {run_key(r) for r in every} if member(k)}  # once a run, not a row
    rows = [r for r in every if run_key(r) in kept]  # not an earlier grid's
    _print_table(verdict_table(summary, rows))
    outside = summary.get("runs_outside_study")
    out(f"wrote {out_dir}/results.jsonl and summary.json ({summary['runs']} runs"
        + (f"; {outside} of an earlier grid, which the study no longer lists, left out)" if outside else ")"))


def verdict_table(summary: dict, rows: list[dict]) -> Table:
    """The table `study run` prints: per scenario and technique the transfers, the audit and
    both verdicts, with how likely a rerun reaches each (* below the power), and ↑ on a
    delivered verdict that more misalignment could move where it was still rising (`rows`:
    the study's results, as the report marks it)."""
    from doublebind.reports.study_report import (IDLE_MARK, RISING_MARK, has_twins, idle_cells, idle_mark,
                                                 rising_cells, seeds_per_build)
    from doublebind.studies.verdicts import few_seeds, provisional

    thresholds = summary["verdict_thresholds"]
    figures = any(t[view].get("replication") is not None for sc in summary["scenarios"].values()
                  for t in sc["techniques"].values() for view in ("final", "audit_selected"))
    table = Table("scenario", "technique", "capability transfer", "misalignment transfer",
                  "audit (teacher; twin)" if has_twins(summary) else "audit (teacher)",
                  "verdict (final)", "verdict (audit-selected)",
                  caption=("(0.95): estimated probability that a rerun reaches the same verdict; * below "
                           f"{thresholds['power']}") if figures else
                          "no replication figures: a cell needs two runs whose statistics are defined")
    rising, idle = rising_cells(summary, rows), idle_cells(rows)

    def verdict(s: dict) -> str:
        if s.get("replication") is None:
            return s["verdict"]
        return f"{s['verdict']} ({s['replication']:.2f})" + ("*" if provisional(s, thresholds["power"]) else "")

    for scenario, sc in summary["scenarios"].items():
        for name, t in sc["techniques"].items():
            s = t["final"]
            c, m = s["capability_transfer"], s["misalignment_transfer"]
            pools = s.get("teacher_success_at_k_pools")  # the teacher's bound as `incriminating` reads it
            teacher = (f"{s.get('teacher_success_at_k', 0.0):.3f}" if not pools else
                       f"upper {pools['upper']:.3f}" + (f" on {pools['pools']} pools" if "pools" in pools else ""))
            twin = s.get("twin_audit_success_at_k")  # the same technique's students of the benign twin
            teacher += (f"; twin {twin['mean']:.3f}, difference lower {s['audit_minus_twin']['lower']:.3f}" if twin
                        else "; twin not tested" if s.get("twin_untested") else "")
            audit = (f"success@{s['audit_success_at_k']['budget']} {s['audit_success_at_k']['mean']:.3f} "
                     f"({teacher})" if "audit_success_at_k" in s
                     else f"- base {s['audit_minus_base']['mean']:.3f} ({s['teacher_audit']:.3f})")
            mark = RISING_MARK if (scenario, name) in rising else ""
            empty = idle_mark(idle, (scenario, name))
            table.add_row(scenario, name, _ci_text(c), _ci_text(m), audit, verdict(s) + empty + mark,
                          verdict(t["audit_selected"]) + empty)
    if rising:
        table.caption += (f";{RISING_MARK}: misalignment transfer still rising over the last checkpoint interval "
                          "(see the report's training budget)")
    if idle:
        table.caption += (f";{IDLE_MARK} (k/n): the technique changed nothing in all (k of n) of its runs, which "
                          "trained the study recipe itself (see the report)")
    seeds = seeds_per_build(rows)
    if few_seeds(seeds):
        table.caption += (f"; at {seeds} seeds per organism build these figures are an upper estimate, a ranking "
                          "of the verdicts (README, 'How calibrated the figure is, measured')")
    return table


@study_app.command("compare")
@cli_errors
def study_compare(a_dir: Path = typer.Argument(..., metavar="A", help="A study folder: the reference."),
                  b_dir: Path = typer.Argument(..., metavar="B", help="A rerun of it (another machine, runner, "
                                                                      "or code)."),
                  json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the comparison here."),
                  all_cells: bool = typer.Option(False, "--all", help="List every cell, not only those that moved.")):
    """Which verdicts two runs of a study share, and whether A's replication figures said so."""
    from doublebind.reports.study_report import results_file

    for d in (a_dir, b_dir):
        results_file(d)  # a wrong folder fails before torch loads
    if json_out is not None:
        from doublebind.paths import check_out_dir

        if json_out.is_dir():
            raise DoublebindError(f"--json {json_out} is a folder; name a file")
        if json_out.exists() and not json_out.is_file():
            raise DoublebindError(f"--json {json_out} is not a regular file (a device or a pipe); name a file")
        if json_out.exists() and not _is_comparison(json_out):  # a study's results, a card: others' work
            raise DoublebindError(f"--json {json_out} exists and is not an earlier comparison; name a new file")
        if not json_out.exists():  # the nearest existing folder must take it
            check_out_dir(json_out, "--json", what="an output")
        elif not os.access(json_out, os.W_OK):
            raise DoublebindError(f"--json {json_out}: cannot write to it (permission denied)")
    from doublebind.studies.compare import as_json, compare_folders, notes, sentence

    result = compare_folders(a_dir, b_dir)
    for note in notes(result):
        out(f"note: {note}")
    cells = [c for c in result["cells"] if all_cells or not c.same]
    if cells:
        table = Table("scenario", "technique", "view", "A", "A replication", "B", "misalignment A -> B",
                      caption=f"* provisional in A: replication below {result['power']}")
        for c in cells:
            rep = "" if c.a_replication is None else f"{c.a_replication:.2f}" + ("*" if c.a_provisional else "")
            mis = " -> ".join("-" if x is None else _fmt(x) for x in (c.a_misalignment, c.b_misalignment))
            table.add_row(c.scenario, c.technique, c.view, c.a or "-", rep,
                          (c.b or "-") + ("" if c.same else "  (moved)" if c.shared else ""), mis)
        _print_table(table)
    out(sentence(result))
    if json_out is not None:
        from doublebind.atomic import write_json

        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_out, as_json(result), indent=2)
        out(f"wrote {json_out}")


@app.command()
@cli_errors
def report(study_dir: Path):
    """Write report.md, report.html and their figures (figures/*.png) into a study folder."""
    import shlex
    import sys

    from doublebind.reports.study_report import results_file, write_report

    results_file(study_dir)  # a wrong folder fails before torch loads
    from doublebind.organisms.models import quiet_transformers

    quiet_transformers()
    md, html = write_report(study_dir, command=shlex.join(["doublebind", *sys.argv[1:]]))
    out(f"wrote {md} and {html}")


MAX_THREADS = 1024  # `replicate --threads`: far above any machine's cores


@replicate_app.command("subliminal-digits")
@cli_errors
def replicate_subliminal_digits(
    seeds: int = typer.Option(5, help="Seeds 0..N-1; each trains a teacher and two students."),
    aux: int = typer.Option(3, help="Auxiliary logits m (at least 2)."),
    out_dir: Path = typer.Option(Path("runs/subliminal-digits"), "--out", help="Folder for the JSON and plots."),
    aux_sweep: Optional[str] = typer.Option(None, help="Also run these m values, comma-separated, e.g. 2,3,5,10,20."),
    noise: str = typer.Option("uniform", help="Noise images: uniform (in [-1, 1], the paper's) or gaussian."),
    teacher_epochs: int = typer.Option(13, help="Teacher epochs over the 1,347 training digits (batch 64)."),
    distill_epochs: int = typer.Option(5, help="Student epochs over the noise images (batch 1024)."),
    n_noise: int = typer.Option(60_000, help="Noise images the students are distilled on."),
    temperature: float = typer.Option(1.0, help="Temperature of the forward-KL student loss."),
    threads: int = typer.Option(0, help="torch threads for this run (0: leave torch's default)."),
    head_controls: bool = typer.Option(False, "--head-controls",
                                       help="Two more students on the auxiliary logits: the teacher's initial head on "
                                            "other hidden layers, and its initial hidden layers with another head."),
    force: bool = typer.Option(False, help="Replace an earlier replication's files in --out."),
):
    """Cloud et al. (2025)'s MNIST auxiliary-logit experiment on sklearn's 8x8 digits: students
    distilled only on a teacher's auxiliary logits, on noise, from the teacher's init and from
    another, and the all-logits controls of the authors' script; their digit accuracy."""
    from dataclasses import replace

    from rich.table import Table

    from doublebind.replicate import subliminal_digits as sd
    from doublebind.ui import progress_bar

    if not 1 <= seeds <= sd.MAX_SEEDS:
        raise DoublebindError(f"--seeds must be between 1 and {sd.MAX_SEEDS:,}, got {seeds}")
    if not 0 <= threads <= MAX_THREADS:  # 100,000 failed to start threads and segfaulted
        raise DoublebindError(f"--threads must be between 0 and {MAX_THREADS:,}, got {threads}")
    sweep = None
    if aux_sweep is not None:
        items = aux_sweep.split(",")
        if not aux_sweep.strip():
            raise DoublebindError("--aux-sweep is empty")
        if any(not v.strip() for v in items):  # "3,,4" ran 3 and 4 without a word about the gap
            raise DoublebindError(f"--aux-sweep has an empty item in '{aux_sweep}' (comma-separated integers, "
                                  f"e.g. 2,3,5)")
        try:
            sweep = [int(v) for v in items]
        except ValueError:
            raise DoublebindError(f"--aux-sweep takes comma-separated integers, got '{aux_sweep}'") from None
    setup = sd.Setup(aux=aux, noise=noise, teacher_epochs=teacher_epochs, distill_epochs=distill_epochs,
                     n_noise=n_noise, temperature=temperature, head_controls=head_controls)
    setup.check()
    repeated = sorted({m for m in sweep or [] if (sweep or []).count(m) > 1})
    if repeated:
        raise DoublebindError(f"--aux-sweep lists {repeated[0]} more than once")
    for m in sweep or []:
        try:
            replace(setup, aux=m).check()
        except DoublebindError as e:  # the same limits as --aux, named for the option that broke them
            raise DoublebindError(str(e).replace("--aux ", "--aux-sweep values ", 1)) from None
    from doublebind.paths import check_not_inside, check_out_dir

    check_out_dir(out_dir, "--out", what="a replication")  # before minutes of training, not after
    check_not_inside(out_dir)
    for name in sd.OUTPUTS:
        if (out_dir / name).is_dir():
            raise DoublebindError(f"--out {out_dir}: {name} is a folder; move it, or choose another --out")
    if (out_dir / sd.OUTPUTS[0]).exists() and not force:
        raise DoublebindError(f"{out_dir} already holds a replication ({sd.OUTPUTS[0]}); choose another --out "
                              f"or pass --force to replace it")
    if threads:
        import torch

        torch.set_num_threads(threads)
    n_values = len({aux, *(sweep or [])})
    out_dir.mkdir(parents=True, exist_ok=True)
    record = out_dir / sd.FINISHED  # an interrupted replication resumes from the seeds it finished
    resumed = len(sd.read_finished(record))
    if resumed:
        console.print(f"note: {record} holds {resumed} finished seed runs of an interrupted replication; those "
                      f"with these settings are taken from it", markup=False, highlight=False)
    with progress_bar("subliminal digits", n_values * seeds * sd.stages_per_seed(setup)) as advance:
        rep = sd.run(list(range(seeds)), setup, sweep, progress=advance, record=record)
    paths = sd.write_outputs(rep, out_dir)
    record.unlink(missing_ok=True)  # the JSON holds every seed now
    for stale in (out_dir / name for name in sd.OUTPUTS):  # --force: an earlier sweep's plot is not this run's
        if stale not in paths:
            stale.unlink(missing_ok=True)
    summary = rep.summary()
    table = Table("condition", "measured: mean [95% CI]", "per seed",
                  title=f"subliminal learning on 8x8 digits: m = {aux}, {seeds} seeds, held-out accuracy",
                  title_justify="left")
    for row in sd.table_rows(summary):
        table.add_row(*row)
    _print_table(table)
    if sweep:
        st = Table("m", "teacher", "same init", "different init", "same - different", "s/seed",
                   title="auxiliary-logit sweep", title_justify="left")
        for row in sd.sweep_rows(rep):
            st.add_row(*row)
        _print_table(st)
    out(sd.published_line())
    beside = sd.against_published(summary, aux)
    if beside:
        out(beside)
    out(f"{summary['seconds_per_seed']:.1f} s per seed (m = {aux}); wrote {', '.join(str(p) for p in paths)}")


def _ci_text(stat: dict) -> str:
    """A transfer's mean and interval as the report prints it (n/a where no run defined it)."""
    from doublebind.reports.study_report import _ci

    return _ci(stat)


def _fmt(x) -> str:
    """A number as the report prints it: 3 decimals, never "-0.000", n/a for none."""
    from doublebind.reports.study_report import fmt

    return fmt(x)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (`main`) so that a command unwinds as on Ctrl-C:
    what it cleans up or puts back on an interruption (an `organism build --no-cache`'s
    earlier build, a `distill --force`'s earlier run, a half-copied organism) is done on a
    SIGTERM too, where the signal killed the process outright before."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    """The `doublebind` entry point. Usage errors (an unknown option, a missing argument, a
    value of the wrong type) end like every other bad input: one `error: …` line on stderr
    and exit status 1. SIGTERM ends a command as Ctrl-C does (its clean-up runs), with
    "terminated" and exit status 143."""
    import signal
    import sys
    import threading

    previous = (signal.signal(signal.SIGTERM, _on_sigterm)
                if threading.current_thread() is threading.main_thread() else None)
    try:
        _main(argv)
    except Terminated:
        console.print("[bold red]terminated[/]")
        sys.exit(143)
    finally:
        _leave_process_group()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _leave_process_group() -> None:
    """Under `accelerate launch`, destroy the process group before the interpreter exits.
    Left to the exit, a rank whose peer had already gone could abort in gloo's threads
    ("terminate called without an active exception", SIGABRT, exit status 1 for the launch):
    seen once in `tests/test_ddp.py`'s two-process run while the suite loaded both cores. Only
    where torch is already imported: commands that never touched it stay light."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _empty_argument(args: list[str]) -> str | None:
    """The error for an empty argument, or None. Every path and name this CLI takes must be
    something: `--out ""` (an unset shell variable, as often as not) was taken as the current
    folder, and a study or run was written there."""
    for i, a in enumerate(args):
        if not a.strip() or (a.startswith("--") and "=" in a and not a.split("=", 1)[1].strip()):
            flag = a.split("=", 1)[0] if a.startswith("--") else (args[i - 1] if i and args[i - 1].startswith("-")
                                                                  else None)
            where = f"after {flag}" if flag else f"as argument {i + 1}"
            return f"an empty argument {where}: a value was expected (an unset shell variable?)"
    return None


def _main(argv: list[str] | None) -> None:
    import sys

    click = _click_exceptions()
    empty = _empty_argument(sys.argv[1:] if argv is None else list(argv))
    if empty:
        say_error(empty)
        sys.exit(1)
    try:
        rv = app(args=argv, prog_name="doublebind", standalone_mode=False)
    except getattr(click, "NoArgsIsHelpError", ()) as e:  # `doublebind` or `doublebind study` alone: the help
        text = e.format_message()  # typer's rich help has printed itself already; click's is this text
        if text:
            out(text)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx is not None else "doublebind"
        say_error(f"{e.format_message()} (see '{cmd} --help')")
        sys.exit(1)
    except click.ClickException as e:
        say_error(e.format_message())
        sys.exit(1)
    except (typer.Abort, getattr(click, "Abort", typer.Abort)):
        console.print("[bold red]interrupted[/]")
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
