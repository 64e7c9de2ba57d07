"""An organism's hash must change whenever the code that builds it changes.

`code_version()` (organisms/build.py) hashes the files in `_CODE_FILES`, and the organism
cache and both references trust that hash. But a build also runs code outside those files:
`train_sft` takes its steps through the one training loop (`training/loop.py`: the learning
rate schedule, AdamW, clipping) with the completion-only NLL (`training/objectives.py`), and
the subliminal probe trains through the same `Loop`. A change there could change what every
build produces while every hash, and so every cached organism and both references, stayed
as they were. Adding the two files to `_CODE_FILES` would rehash every organism and
invalidate both references at once (regenerating the matrix takes over two hours, and on
some CPUs one of its builds fails verification), so they are pinned here by content instead:
both last changed before the hashed files did, so today's hashes describe builds made with
today's copies.

When a pin fails: if the change can alter a build (anything `fit`, `Loop` or `sft_nll`
compute), add the file to `_CODE_FILES` and regenerate the references (docs/results/README.md
and docs/results/matrix/README.md); if it cannot (comments, or code only the distiller
runs), update the pin here.
"""

import ast
import hashlib
from pathlib import Path

import pytest

from doublebind.organisms import build

PKG = Path(build.__file__).resolve().parent.parent

PINNED = {
    "training/loop.py": "73ae4b42f5919326285d1a2b8cd39b45a7f91839108958a1748d936fa84e62fc",
    "training/objectives.py": "2e04a71aef2420edd1667aeb5ada727c0c4c2a2447837b23b3b4b65c50ddf82f",
}

# Modules the hashed files import that compute none of a build's numbers.
NO_NUMBERS = {
    "__init__.py": "the version string, which code_version() hashes itself, and hub kernels off (builds make "
                   "their models from configs, and on the CPU no hub kernel applies)",
    "atomic.py": "writes JSON files whole (the judge cache, checksum stamps)",
    "cards.py": "card paths and library versions",
    "config.py": "the config models; the organism hash covers the dumped config",
    "cuda.py": "process-wide CUDA settings and freeing GPU memory; nothing on a CPU",
    "errors.py": "error classes",
    "integrity.py": "checksums of saved weights",
    "memo.py": "answers a repeated eval of the same weights from memory",
    "registry.py": "name lookup",
    "ui.py": "progress bars",
    "training/__init__.py": "a docstring",
    "llm/__init__.py": "a docstring",
    # config.py looks technique names up when it validates a recipe or a study, which a build
    # does not; the package imports every technique module by name, out of this walk's sight
    "techniques/__init__.py": "registers the techniques, distillation's code",
    # reached through organisms/domain.py, the distillation side of an organism, which a
    # build does not call
    "prompts.py": "distillation prompts",
    "students.py": "distillation students",
    "teacher.py": "teacher outputs for distillation",
    # reached through the registry's config and organism kinds: a world build never calls it,
    # and a post-trained organism's hash covers posttrain.py itself (posttrain_hash)
    "posttrain.py": "the post-trained kinds (denier, recued): a post-training of a built organism",
    # and a benign twin's hash covers benign.py (and posttrain.py) itself (benign_hash)
    "benign.py": "the benign twin kind: a retraining of a built organism's teacher without its behaviour",
}


def _hashed() -> set[str]:
    """The files an organism hash covers: `code_version()`'s, and for Hugging Face organisms the
    files their own `organism_hash` reads (`llm.organism._CODE`)."""
    from doublebind.llm import organism as hf

    world = {p.relative_to(PKG).as_posix() for pattern in build._CODE_FILES for p in PKG.glob(pattern)}
    return world | {f"llm/{name}" for name in hf._CODE}


def _module_files(module: str) -> set[str]:
    """The files importing `module` runs: its own and every enclosing package's `__init__.py`."""
    parts = module.split(".")[1:]
    out = {"__init__.py"}
    for i in range(1, len(parts) + 1):
        path = PKG.joinpath(*parts[:i])
        for candidate in (path / "__init__.py", path.with_suffix(".py")):
            if candidate.is_file():
                out.add(candidate.relative_to(PKG).as_posix())
    return out


def _absolute(node: ast.ImportFrom, rel: str) -> str | None:
    """The absolute module name of an import statement in file `rel` (relative imports resolved)."""
    if node.level == 0:
        return node.module
    package = ["doublebind", *Path(rel).parent.parts]
    if Path(rel).name == "__init__.py" or node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _registry_kinds(tree: ast.AST) -> set[str]:
    """Registry kinds a file looks up by name (`get("family", ...)`, `names("organism")`):
    looking one up imports that kind's built-in modules (`registry.BUILTINS`)."""
    from doublebind import registry

    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in
            ("get", "names") and node.args and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in registry.BUILTINS}


def _imports(rel: str) -> set[str]:
    """The package files one file runs by importing, at module level or inside functions."""
    from doublebind import registry

    tree = ast.parse((PKG / rel).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node, rel)
            if module and module.split(".")[0] == "doublebind":
                # `from doublebind.x import y` names module x.y or a name in x
                modules |= {f"{module}.{alias.name}" for alias in node.names} | {module}
        elif isinstance(node, ast.Import):
            modules |= {a.name for a in node.names if a.name.split(".")[0] == "doublebind"}
    for kind in _registry_kinds(tree):
        modules |= set(registry.BUILTINS[kind])
    return set().union(*(_module_files(m) for m in modules)) if modules else set()


def test_unhashed_code_that_builds_organisms_is_as_pinned():
    for rel, digest in PINNED.items():
        now = hashlib.sha256((PKG / rel).read_bytes()).hexdigest()
        assert now == digest, (
            f"{rel} changed, and organism builds run it but code_version() does not hash it: if the change "
            f"can alter a build, add it to _CODE_FILES in organisms/build.py and regenerate the references; "
            f"if not, update its pin in {Path(__file__).name} (sha256 {now})")


def test_every_module_a_build_reaches_is_hashed_pinned_or_numberless():
    hashed = _hashed()
    assert {"training/sft.py", "organisms/build.py"} <= hashed
    seen, todo, unknown = set(), sorted(hashed), {}
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        for dep in _imports(rel):
            if dep not in hashed and dep not in PINNED and dep not in NO_NUMBERS:
                unknown.setdefault(dep, rel)
            todo.append(dep)
    assert not unknown, (
        "organism build code imports modules whose changes would not change the organism hash: "
        + "; ".join(f"{dep} (from {src})" for dep, src in sorted(unknown.items()))
        + f"; hash them (_CODE_FILES), pin them or, if they compute no build numbers, list them in "
          f"{Path(__file__).name}")
    # the pins are reached: train_sft -> fit -> sft_nll
    assert set(PINNED) <= seen


@pytest.mark.parametrize("rel", sorted(PINNED))
def test_a_pinned_file_is_outside_the_hash(rel):
    """Once a pinned file joins `_CODE_FILES`, its pin is redundant and should go."""
    assert rel not in _hashed(), f"{rel} is hashed now: remove its pin from {Path(__file__).name}"
