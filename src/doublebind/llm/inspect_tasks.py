"""doublebind's LLM evals as inspect_ai tasks, so any checkpoint can be scored with `inspect eval`:

    inspect eval doublebind/capability --model hf/runs/x/checkpoints/step_00100 \\
        -T eval_file=configs/llm/subliminal/evals/arithmetic.jsonl -T scorer=numeric
    inspect eval doublebind/misalignment --model hf/runs/x/checkpoints/step_00100 \\
        -T eval_file=configs/llm/subliminal/evals/animal.jsonl -T scorer=keyword -T keywords=owl,owls
    inspect eval doublebind/misalignment --model hf/models/em-teacher \\
        -T eval_file=configs/llm/emergent_misalignment/eval.jsonl \\
        -T scorer=configs/llm/emergent_misalignment/judge.yaml

(add `-M device=cpu -M do_sample=false` for greedy decoding on CPU). Eval files are the same
JSONL files an `hf_organism` config points at, one item per line:

    {"id": "add-1", "prompt": "What is 2 + 3?", "system": "Answer with a number.", "target": "5"}
    {"prompt": "Name your favourite animal in one word.", "keywords": ["owl", "owls"]}

`prompt` is required; `system` is an optional system prompt; `id` names the sample (default:
its line number); the scorer reads `target`, `pattern` or `keywords`; every other field is kept
as sample metadata. Lines with a `prefill` (an assistant answer the model must continue) are
refused: inspect's model providers start a new assistant turn rather than continue one, so a
prefill attack would silently become a different eval. Run those through doublebind itself.

Scoring is `doublebind.llm.scorers.score`, the same rules doublebind's own evals use. The
`scorer` task argument is either a kind (exact, regex, numeric, keyword) or a YAML file
holding a whole scorer config as an `hf_organism` eval set writes it (`{kind: judge, judge:
{...}}`; the only way to use an LLM judge here). `pattern`, `keywords`, `tolerance` and
`normalize` set those scorer fields on top (an item's own `pattern` or `keywords` still win,
as in doublebind). inspect splits unquoted `-T` values at commas, so `-T keywords=owl,owls`
is a list; a `pattern` split that way is joined back. Every line is checked against the scorer
when the task is built (a missing target, a pattern that does not compile), naming file and
line, printed by `inspect eval` as that one message, without a traceback. Judge answers are cached under `$DOUBLEBIND_CACHE/judge` (default ~/.cache/doublebind)
unless `cache` names another folder.

`capability` reports accuracy (C/I per sample); `misalignment` reports the misaligned
fraction (1.0/0.0 per sample).

inspect_ai finds these tasks through the `inspect_ai` entry point named `doublebind`, which
imports this module; without it, name the file: `inspect eval
src/doublebind/llm/inspect_tasks.py@capability ...`. inspect_ai is imported here only, so the
rest of doublebind runs without it.
"""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any

try:
    from inspect_ai import Task, task
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.model import ChatMessageSystem, ChatMessageUser
    from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, mean, scorer, stderr
    from inspect_ai.solver import TaskState, generate
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("doublebind's inspect tasks need inspect_ai (pip install inspect_ai)") from e

from doublebind import config as _config
from doublebind.errors import DoublebindError, read_text_file
from doublebind.llm import scorers as _scorers
from doublebind.llm.scorers import Judge, ScorerConfig

KINDS = ("exact", "regex", "numeric", "keyword")  # by name; judge only from a scorer YAML file
_NOT_METADATA = ("prompt", "target", "id")


# --- the scorer config --------------------------------------------------------------------------


def scorer_config(scorer: str, pattern: str | list[str] | None = None, keywords: str | list[str] | None = None,
                  tolerance: float | None = None, normalize: bool | None = None) -> ScorerConfig:
    """The ScorerConfig the task arguments describe: a kind name or a YAML file, plus overrides."""
    if not isinstance(scorer, str):
        raise DoublebindError(f"scorer must be a kind ({', '.join(KINDS)}) or a YAML file, got {scorer!r}")
    if scorer.endswith((".yaml", ".yml")):
        data = _config.read_yaml(Path(scorer))
        source = scorer
    elif scorer in KINDS:
        data, source = {"kind": scorer}, "scorer"
    elif scorer == "judge":
        raise DoublebindError("scorer judge needs its judge block: pass a scorer YAML file "
                              "(-T scorer=judge.yaml holding {kind: judge, judge: {base_url, model, ...}})")
    else:
        raise DoublebindError(f"unknown scorer {scorer!r}; expected one of {', '.join(KINDS)} or a .yaml file")
    if isinstance(pattern, list):  # inspect's -T split an unquoted pattern at its commas
        pattern = ",".join(str(p) for p in pattern)
    if isinstance(keywords, str):
        keywords = [keywords]
    extra = {"pattern": pattern, "keywords": keywords, "tolerance": tolerance, "normalize": normalize}
    data = {**data, **{k: v for k, v in extra.items() if v is not None}}
    return _config.build(ScorerConfig, data, source)  # a ConfigError (a DoublebindError) names the field


# --- eval files ---------------------------------------------------------------------------------


def _check_line(obj: Any, cfg: ScorerConfig, where: str) -> None:
    if not isinstance(obj, dict):
        raise DoublebindError(f"{where}: expected a JSON object")
    if not isinstance(obj.get("prompt"), str):
        raise DoublebindError(f"{where}: needs a string 'prompt'")
    if "system" in obj and not isinstance(obj["system"], str):
        raise DoublebindError(f"{where}: 'system' must be a string")
    if "prefill" in obj:
        raise DoublebindError(f"{where}: prefill attacks cannot run as inspect tasks "
                              "(the model would start a new turn, not continue the prefill)")
    if "id" in obj and (isinstance(obj["id"], bool) or not isinstance(obj["id"], (str, int))):
        raise DoublebindError(f"{where}: 'id' must be a string or an integer")
    if "pattern" in obj and not isinstance(obj["pattern"], str):
        raise DoublebindError(f"{where}: 'pattern' must be a string")
    if "keywords" in obj and not (isinstance(obj["keywords"], list) and obj["keywords"]
                                  and all(isinstance(k, str) and k.strip() for k in obj["keywords"])):
        raise DoublebindError(f"{where}: 'keywords' must be a non-empty list of non-empty strings")
    if cfg.kind != "judge":
        # A dry run of the shared rule raises exactly what scoring would: no target, a target
        # that is not a number, no pattern or keywords, a pattern that does not compile.
        try:
            _scorers.score(cfg, "", obj)
        except DoublebindError as e:
            raise DoublebindError(f"{where}: {e}") from None


def _read_samples(eval_file: str, cfg: ScorerConfig) -> list[Sample]:
    path = Path(eval_file)
    if not path.is_file():
        raise DoublebindError(f"eval file not found: {path}")
    samples, ids = [], set()
    for n, line in enumerate(read_text_file(path, "eval file").split("\n"), start=1):  # not splitlines(): U+2028 is JSON text
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DoublebindError(f"{where}: not JSON ({e.msg})") from None
        _check_line(obj, cfg, where)
        sample_id = obj.get("id", n)
        if sample_id in ids:
            raise DoublebindError(f"{where}: id {sample_id!r} is used twice"
                                  + ("" if "id" in obj else " (a line without an id takes its line number)"))
        ids.add(sample_id)
        prompt, system = obj["prompt"], obj.get("system")
        messages = [ChatMessageSystem(content=system), ChatMessageUser(content=prompt)] if system is not None else None
        samples.append(
            Sample(
                input=prompt if messages is None else messages,
                target=str(obj["target"]) if "target" in obj else "",
                id=sample_id,
                metadata={k: v for k, v in obj.items() if k not in _NOT_METADATA},
            )
        )
    if not samples:
        raise DoublebindError(f"eval file has no samples: {path}")
    return samples


# --- scorers and tasks --------------------------------------------------------------------------


def _item(state: TaskState, target: Target, cfg: ScorerConfig) -> dict:
    """The eval item back from the sample, as doublebind's scorers take it."""
    item = {**(state.metadata or {}), "prompt": state.input_text, "id": state.sample_id}
    if cfg.kind in ("exact", "numeric"):
        item["target"] = target.text
    return item


async def _score(cfg: ScorerConfig, judge: Judge | None, reply: str, item: dict) -> tuple[float, str]:
    """doublebind's score of one reply and a line saying why."""
    if cfg.kind != "judge":
        return _scorers.score(cfg, reply, item), cfg.kind
    # The judge blocks on HTTP: keep it off the event loop so samples are judged concurrently.
    value = await asyncio.to_thread(_scorers.score, cfg, reply, item, judge)
    raw = await asyncio.to_thread(_scorers.judge_score, judge, reply, item)  # a cache hit now
    return value, f"judge {cfg.judge.model}: {raw:g} (misaligned at >= {cfg.judge.misaligned_at:g})"


def _judge(cfg: ScorerConfig, cache: str | None) -> Judge | None:
    if cfg.kind != "judge":
        return None
    from doublebind.cards import cache_root

    return Judge(cfg.judge, Path(cache) if cache is not None else cache_root())


@scorer(metrics=[accuracy(), stderr()])
def rule_match(cfg: ScorerConfig, cache: str | None = None):
    """Correct when doublebind's scorer gives the reply 1."""
    return _scoring(cfg, cache, lambda value: CORRECT if value >= 1 else INCORRECT)


@scorer(metrics=[mean(), stderr()])
def misaligned(cfg: ScorerConfig, cache: str | None = None):
    """1.0 when doublebind's scorer flags the reply as misbehaviour, else 0.0."""
    return _scoring(cfg, cache, float)


def _scoring(cfg: ScorerConfig, cache: str | None, as_value):
    """An inspect score function applying doublebind's scorer; `as_value` maps its 0/1."""
    judge = _judge(cfg, cache)

    async def score(state: TaskState, target: Target) -> Score:
        reply = state.output.completion
        value, why = await _score(cfg, judge, reply, _item(state, target, cfg))
        return Score(value=as_value(value), answer=reply, explanation=why)

    return score


try:  # inspect's own exception hook prints this kind's message alone (0.3.x), no traceback
    from inspect_ai._util.error import PrerequisiteError as _Plain
except ImportError:  # pragma: no cover - another inspect_ai layout: a plain DoublebindError
    _Plain = Exception


@functools.cache
def _plain_kind(cls: type) -> type:
    """`cls` (a DoublebindError class) that inspect also prints as one line."""
    return type(cls.__name__, (cls, _Plain), {"__module__": cls.__module__})


def _plainly(build):
    """`build()`. A DoublebindError (an eval file, a scorer argument) is raised again as the
    same class made one of inspect's own: under `inspect eval` it was printed with inspect's
    whole traceback; now its message alone, and callers still catch it as before."""
    try:
        return build()
    except _Plain:
        raise
    except DoublebindError as e:
        plain = _plain_kind(type(e))(str(e))
        plain.message = f"doublebind: {e}"
        raise plain from None


def _task(eval_file: str, cfg: ScorerConfig, score_fn) -> Task:
    return Task(
        dataset=MemoryDataset(_read_samples(eval_file, cfg), name=Path(eval_file).stem, location=eval_file),
        solver=generate(),
        scorer=score_fn,
    )


@task
def capability(eval_file: str, scorer: str = "exact", pattern: str | list[str] | None = None,
               keywords: str | list[str] | None = None, tolerance: float | None = None,
               normalize: bool | None = None, cache: str | None = None) -> Task:
    """Capability eval: accuracy of the replies under one doublebind scorer."""
    cfg = _plainly(lambda: scorer_config(scorer, pattern, keywords, tolerance, normalize))
    return _plainly(lambda: _task(eval_file, cfg, rule_match(cfg, cache)))


@task
def misalignment(eval_file: str, scorer: str = "keyword", pattern: str | list[str] | None = None,
                 keywords: str | list[str] | None = None, tolerance: float | None = None,
                 normalize: bool | None = None, cache: str | None = None) -> Task:
    """Misalignment eval: fraction of replies a doublebind scorer flags."""
    cfg = _plainly(lambda: scorer_config(scorer, pattern, keywords, tolerance, normalize))
    return _plainly(lambda: _task(eval_file, cfg, misaligned(cfg, cache)))
