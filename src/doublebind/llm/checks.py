"""What `doublebind validate` reads of a Hugging Face organism config beyond its fields: the
files it names. Loading the config checks that each eval and implant file exists; a build
would then stop minutes later, after the models load, on a file that does not parse, on an
item its scorer cannot score (no target, no keywords, a pattern that does not compile), or
on a local model folder that is not there (or an implant item without a response).
`check_inputs` reads them now, with the messages a build would give: each item is scored
once against an empty completion.

Not checked: hub ids (nothing here reaches the hub, and a name such as `org/model` may be
either a hub id or a folder, see `config.resolve_paths`), and `dataset:` eval sets (loading
one may download it).
"""

from __future__ import annotations

from pathlib import Path

from doublebind.errors import DoublebindError
from doublebind.llm.config import HFOrganismConfig
from doublebind.llm.organism import eval_sets, jsonl_items, missing_folders
from doublebind.llm.scorers import score


def check_inputs(cfg: HFOrganismConfig) -> int:
    """Read every file `cfg` names (paths already resolved by loading it); raise the first
    problem as one line. Returns how many files were read."""
    read = 0
    for role in ("teacher", "base", "trusted"):
        spec = getattr(cfg, role)
        if spec is None:
            continue
        for field, problem in missing_folders(spec):  # as `resolve_model` refuses them
            raise DoublebindError(f"{role}.{field}: {problem}")
        if spec.implant is not None:
            pairs = jsonl_items(Path(spec.implant.file), "implant")
            read += 1
            if any(not isinstance(it.get("response"), str) for it in pairs):  # as `implant` refuses it
                raise DoublebindError(f"{spec.implant.file}: every implant item needs a string 'response'")
    for role, es in eval_sets(cfg).items():
        if es.file is None:
            continue
        items = jsonl_items(Path(es.file))[: es.limit]
        read += 1
        if es.scorer.kind == "judge":  # its only need of an item, a prompt, jsonl_items checked
            continue
        for item in items:  # an empty completion: the scorer's own checks of the item (target, keywords, pattern)
            try:
                score(es.scorer, "", item)
            except DoublebindError as e:
                raise DoublebindError(f"{es.file} ({role}): {e}") from None
    return read


def unset_api_keys(cfg: HFOrganismConfig, environ=None) -> list[str]:
    """One note per judge whose `api_key_env` names a variable this environment does not set:
    its requests go without an Authorization header (right for a local judge, a 401 minutes
    into a build for a hosted one). The variable's name only, never a value."""
    import os

    environ = os.environ if environ is None else environ
    notes = []
    for role, es in eval_sets(cfg).items():
        judge = getattr(es.scorer, "judge", None)
        if es.scorer.kind == "judge" and judge is not None and judge.api_key_env and not environ.get(judge.api_key_env):
            notes.append(f"{role}: the judge's api_key_env {judge.api_key_env} is not set here, so its requests "
                         f"to {judge.base_url} go without an API key")
    return notes
