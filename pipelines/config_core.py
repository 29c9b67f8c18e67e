"""The floor of the params layer: what pipelines/config.py, pipelines/text/config.py, the graph and
the stage declarations share, importing nothing of the project.

:class:`ConfigError`, the names of seeded cells (``qks@s1``) and what a method file
declares (``CODE_DEPS``, ``CORPORA``, its ``Config``'s defaults), read with ``ast`` so
that building the graph imports no method (hence no torch). :mod:`pipelines.config`
re-exports every name here.
"""

from __future__ import annotations

import functools
import pkgutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A bad params file: the message says which file, which key and what to do."""


# -------------------------------------------------------------------------------- seeds
SEED_SEP = "@s"


def seeded(variant: str, seed: int) -> str:
    """The cell name of one training seed of a variant: ``qks@s1``."""
    return f"{variant}{SEED_SEP}{seed}"


def split_seed(cell: str) -> tuple[str, int | None]:
    """``qks@s1`` -> ("qks", 1); ``qks`` -> ("qks", None)."""
    base, sep, tail = cell.rpartition(SEED_SEP)
    if sep and tail.isdigit():
        return base, int(tail)
    return cell, None


# ------------------------------------------------------------------------------ methods
def available_methods() -> list[str]:
    """Method names = the modules of pipelines/methods (no registry to fill by import)."""
    import pipelines.methods as pkg

    return sorted(
        m.name
        for m in pkgutil.iter_modules(pkg.__path__)
        if not m.name.startswith("_") and m.name != "base"
    )


def method_code_deps(name: str) -> tuple[str, ...]:
    """A method module's ``CODE_DEPS`` (extra source files whose change reruns its cells),
    read with ``ast`` so the graph is built without importing the method (or torch).
    ``CODE_DEPS`` must be a literal tuple or list of repo-relative paths."""
    import ast

    path, tree = _module_ast(name)
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign) and node.value is not None
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == "CODE_DEPS" for t in targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise ConfigError(
                    f"{path}:{node.lineno}: CODE_DEPS must be a literal tuple of paths"
                ) from None
            return tuple(str(v) for v in value)
    return ()


def _module_ast(name: str):
    """(path, parsed module) of a method file, without importing it; parsed once per
    version of the file (the graph asks for every cell)."""
    if name not in available_methods():
        raise ConfigError(f"unknown method {name!r} (known: {available_methods()})")
    path = REPO_ROOT / "pipelines" / "methods" / f"{name}.py"
    return path, _parse(str(path), path.stat().st_mtime_ns)


def module_constants(tree) -> dict[str, object]:
    """``NAME = <literal>`` assignments at a parsed module's top level (read with ``ast``)."""
    import ast

    consts: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
                consts[target.id] = node.value.value
    return consts


@functools.lru_cache(maxsize=64)
def _parse(path: str, mtime_ns: int):
    import ast

    return ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)


def method_corpora(name: str) -> dict[str, str]:
    """``{corpus kind: default corpus name}`` a method reads, without importing it (torch).

    Read with ``ast``: the method class's ``CORPORA`` (a literal tuple of kinds, or of
    module-level string constants) and its ``Config``'s ``corpus`` field default (else the
    kind itself). The graph makes a cell depend on these corpora; a variant's ``corpus:``
    option names another corpus of that kind (single-kind methods). A method may read fewer
    at run time (``Method.corpora()``), never more."""
    import ast

    path, tree = _module_ast(name)
    consts = module_constants(tree)

    def value(expr: ast.expr) -> object:
        if isinstance(expr, ast.Name) and expr.id in consts:
            return consts[expr.id]
        try:
            return ast.literal_eval(expr)
        except ValueError:
            raise ConfigError(
                f"{path}:{expr.lineno}: CORPORA and Config.corpus must be literals "
                "or module-level string constants"
            ) from None

    kinds: tuple[str, ...] = ()
    default: str | None = None
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for node in cls.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "CORPORA" for t in node.targets)
                and isinstance(node.value, ast.Tuple | ast.List)
            ):
                kinds = tuple(str(value(e)) for e in node.value.elts)
            if (
                cls.name == "Config"
                and isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == "corpus"
                and node.value is not None
            ):
                default = str(value(node.value))
    if not kinds:
        return {}
    if len(kinds) == 1 and default is not None:
        return {kinds[0]: default}
    return {k: k for k in kinds}
