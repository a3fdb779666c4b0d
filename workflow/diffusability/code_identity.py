"""The code identity of a command: a hash of exactly the package code it runs, comments aside.

Snakemake reruns a job when its shell command, params or inputs change, but it cannot see the
Python code that ``diffusability <command>`` imports. Each rule therefore puts the code identity
of its command into its params (see ``workflow/rules/common.smk``): a real change to a module the
command imports reruns that rule and everything downstream; a change elsewhere, or to a comment
or docstring only, reruns nothing. The same params enter the key of Snakemake's between-workflow
output cache, so a cache entry is never reused across a code change.

What a command runs
    The function registered for the command (``args.func``), every package module imported in
    that function's body or at the top of its module, and, transitively, every package module
    those import — at module level or inside any of their functions (a module is the unit: its
    lazy imports count as soon as it is reached). Imports outside the package (torch, numpy, …)
    are covered by the software identity instead: the versions of the installed distributions
    the package depends on.

What counts as a change
    The module's abstract syntax tree with docstrings removed (``ast.dump`` without line
    numbers): comments, blank lines, formatting and docstrings do not change it.

Examples
--------
>>> identity = command_identity("trajectory-metrics")
>>> len(identity), identity == command_identity("trajectory-metrics")
(16, True)
>>> "diffusability.metrics.trajectory" in command_modules("trajectory-metrics")
True
>>> "diffusability.tokenizers.train" in command_modules("trajectory-metrics")
False
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "diffusability"
ROOT = Path(__file__).resolve().parent
#: Distributions whose versions define the numerical results besides the package's own code.
SOFTWARE = ("torch", "numpy", "scipy", "safetensors", "pandas", "pyarrow", "scikit-learn", "pingouin",
            "opentsne", "accelerate", "transformers", "timm")


def _module_path(name: str) -> Path | None:
    """The source file of package module ``name`` (a package's ``__init__.py``), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """Package modules named by one import statement inside ``module``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    if node.level:
        parts = module.split(".")
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != PACKAGE:
        return []
    # `from .x import y`: y may be a submodule (from . import tables) or a name inside x
    names = [f"{base}.{alias.name}" for alias in node.names]
    return [base] + [name for name in names if _module_path(name) is not None]


@functools.lru_cache(maxsize=None)
def _parsed(name: str) -> ast.Module:
    path = _module_path(name)
    return ast.parse(path.read_text(), filename=str(path))


@functools.lru_cache(maxsize=None)
def _lazy_exports(package: str) -> dict[str, str]:
    """A package's lazily exported names (``_EXPORTS = {name: module}`` in its ``__init__``) → modules."""
    path = _module_path(package)
    if path is None or path.name != "__init__.py":
        return {}
    for node in _parsed(package).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            out = {}
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                    module = value.value if value.value.startswith(PACKAGE) else f"{package}.{value.value}"
                    out[key.value] = module
            return out
    return {}


def _imports(name: str, tree: ast.AST) -> set[str]:
    """Package modules imported anywhere in ``tree`` (a module or one definition of module ``name``),
    names exported lazily by a package (``from pkg import name``, ``pkg.name``) resolved to their module."""
    is_package = _module_path(name).name == "__init__.py"
    found: set[str] = set()
    bound_packages: dict[str, str] = {}  # local name → package with lazy exports
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(m for m in _resolve(name, node, is_package) if _module_path(m) is not None)
        if isinstance(node, ast.ImportFrom):
            base = _resolve(name, node, is_package)
            for alias in node.names:
                for candidate in base[:1]:
                    exports = _lazy_exports(candidate)
                    if alias.name in exports:
                        found.add(exports[alias.name])
                    if _lazy_exports(f"{candidate}.{alias.name}"):
                        bound_packages[alias.asname or alias.name] = f"{candidate}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound_packages:
            exports = _lazy_exports(bound_packages[node.value.id])
            if node.attr in exports:
                found.add(exports[node.attr])
    return {m for m in found if _module_path(m) is not None}


@functools.lru_cache(maxsize=None)
def _module_imports(name: str) -> frozenset[str]:
    """Every package import anywhere in module ``name`` (parsed once per process)."""
    return frozenset(_imports(name, _parsed(name)))


def _top_level_imports(name: str) -> set[str]:
    tree = _parsed(name)
    top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
    return _imports(name, top)


def _parents(name: str) -> set[str]:
    """The packages above ``name``: importing a.b.c runs a/__init__ and a/b/__init__ too."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


@functools.lru_cache(maxsize=None)
def _closure(start: frozenset[str], without: frozenset[str] = frozenset()) -> frozenset[str]:
    """Modules reached from ``start``: each one's imports are followed. The packages above a module
    (whose ``__init__`` runs on import) count with their own code, but their imports are followed
    only when the package itself is imported by name (``from ..evaluation import inception_score``):
    a package's other re-exports are not the code a submodule runs."""
    seen: set[str] = set()
    parents_only: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or name in without or _module_path(name) is None:
            continue
        seen.add(name)
        parents_only.discard(name)
        todo.extend(_module_imports(name))
        parents_only.update(p for p in _parents(name) if p not in seen)
    return frozenset(seen | {p for p in parents_only if _module_path(p) is not None})


def _registrations(module: str) -> dict[str, str]:
    """{command: function} registered by ``module``'s ``register``: each ``add_parser("name", …)``
    followed by ``set_defaults(func=function)`` (read from the source, nothing imported)."""
    found, current = {}, None
    calls = [n for n in ast.walk(_parsed(module)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    for call in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
        if call.func.attr == "add_parser" and call.args and isinstance(call.args[0], ast.Constant):
            current = call.args[0].value
        elif call.func.attr == "set_defaults" and current is not None:
            for keyword in call.keywords:
                if keyword.arg == "func" and isinstance(keyword.value, ast.Name):
                    found[current] = keyword.value.id
    return found


@functools.lru_cache(maxsize=None)
def _all_registrations() -> dict[str, tuple[str, str]]:
    """{command: (module, function)} over every package module that adds a parser (read once)."""
    table: dict[str, tuple[str, str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        if "add_parser(" not in path.read_text():
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join((PACKAGE, *parts[:-1])) if parts[-1] == "__init__" else ".".join((PACKAGE, *parts))
        for command, function in _registrations(module).items():
            table.setdefault(command, (module, function))
    return table


def _command_entry(command: str) -> tuple[str, str]:
    """(module, function) registered for ``command``: found in whichever package module adds its parser
    (a command module may delegate to another one's ``register``)."""
    try:
        return _all_registrations()[command]
    except KeyError:
        raise KeyError(f"unknown command {command!r}") from None


def command_modules(command: str, without: tuple[str, ...] = ()) -> list[str]:
    """Sorted package modules that ``diffusability <command>`` can execute (see the module doc).

    The command's own module counts with its code, but only the imports of the registered
    function (and the module's top-level imports) are followed: a module that bundles several
    commands does not tie each to the others' dependencies. ``without`` names modules a job does
    not run although the command could (an optional feature switched off in its spec, e.g. the
    tokenizer monitor): they and what only they import are left out.
    """
    module, function = _command_entry(command)
    start = (_function_imports(module, function) | _top_level_imports(module)) - {module}
    return sorted(_closure(frozenset(start), frozenset(without)) | {module} | _parents(module))


def _function_imports(module: str, function: str) -> set[str]:
    """Imports in ``function``'s body and in the bodies of the module's own functions and classes it
    refers to, transitively (a command's run function calls helpers defined beside it)."""
    definitions = {node.name: node for node in _parsed(module).body
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    found: set[str] = set()
    seen: set[str] = set()
    todo = [function]
    while todo:
        name = todo.pop()
        if name in seen or name not in definitions:
            continue
        seen.add(name)
        node = definitions[name]
        found |= _imports(module, node)
        todo.extend(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in definitions)
    return found


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=None)
def module_fingerprint(name: str) -> str:
    """SHA-256 of module ``name``'s code without comments, formatting or docstrings."""
    path = _module_path(name)
    tree = _strip_docstrings(ast.parse(path.read_text(), filename=str(path)))
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _installed_versions() -> tuple[tuple[str, str | None], ...]:
    from importlib import metadata

    found = []
    for name in SOFTWARE:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, None))
    return tuple(found)


def software_versions() -> dict[str, str | None]:
    """The installed version of each distribution of :data:`SOFTWARE`, in that order (None: not installed).

    Returns
    -------
    dict
        ``{"torch": "2.5.1", …}``: what :func:`software_identity` hashes, recorded in every artifact's
        provenance so a reader sees the versions, not only whether they changed.
    """
    return dict(_installed_versions())


@functools.lru_cache(maxsize=None)
def software_identity() -> str:
    """SHA-256 (16 hex digits) of the installed versions of :data:`SOFTWARE` (absent ones count as absent)."""
    versions = [f"{name}=={version}" if version is not None else f"{name} absent"
                for name, version in _installed_versions()]
    return hashlib.sha256("\n".join(versions).encode()).hexdigest()[:16]


#: Environment variable through which a workflow hands the identities it computed while parsing the DAG to
#: its jobs (:func:`publish_identity`): each job records its command's identity in its provenance, and
#: recomputing it (every module parsed, ~0.3 s) was a tenth of a small job's time.
ENVIRONMENT = "DIFFUSABILITY_CODE_IDENTITIES"


def source_signature() -> str:
    """SHA-256 of every package source file's path, size and modification time (no content read, ~2 ms).

    Any edit of a package file changes it, so an identity published under one signature is only reused
    while the sources are untouched.
    """
    digest = hashlib.sha256()
    for path in sorted(ROOT.rglob("*.py")):
        status = path.stat()
        digest.update(f"{path.relative_to(ROOT).as_posix()}:{status.st_size}:{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def publish_identity(command: str) -> None:
    """Add ``command``'s identity (:func:`command_identity`) to :data:`ENVIRONMENT`, which the jobs inherit.

    The entry is stored under the current :func:`source_signature`; an entry of another signature is
    replaced. A job finds it through :func:`command_identity`, which uses it only while the signature
    still holds (an edit after the workflow started makes the job compute its identity itself).
    """
    import json
    import os

    signature = source_signature()
    try:
        published = json.loads(os.environ.get(ENVIRONMENT, ""))
        if not isinstance(published, dict) or published.get("signature") != signature:
            raise ValueError
    except ValueError:
        published = {"signature": signature, "identities": {}}
    published["identities"][command] = _computed_identity(command, ())
    os.environ[ENVIRONMENT] = json.dumps(published, sort_keys=True)


def _published_identity(command: str) -> str | None:
    """The identity a workflow published for ``command`` under the current source signature, or None."""
    import json
    import os

    text = os.environ.get(ENVIRONMENT)
    if not text:
        return None
    try:
        published = json.loads(text)
        identity = published["identities"][command]
        valid = published["signature"] == source_signature() and isinstance(identity, str)
    except (ValueError, KeyError, TypeError):
        return None
    return identity if valid else None


@functools.lru_cache(maxsize=None)
def command_identity(command: str, without: tuple[str, ...] = ()) -> str:
    """The code identity (16 hex digits) of ``diffusability <command>``: its modules' fingerprints.

    Parameters
    ----------
    command : str
        A subcommand of the ``diffusability`` CLI, e.g. ``"sample"``.
    without : tuple of str
        Modules this job does not run (see :func:`command_modules`).

    Returns
    -------
    str
        Equal for equal code (comments, formatting and docstrings aside) wherever the package lives.
        Inside a workflow job the identity the workflow published (:func:`publish_identity`) is taken
        while no package file changed since.
    """
    if not without:
        published = _published_identity(command)
        if published is not None:
            return published
    return _computed_identity(command, tuple(without))


@functools.lru_cache(maxsize=None)
def _computed_identity(command: str, without: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in command_modules(command, without):
        digest.update(f"{name}:{module_fingerprint(name)}\n".encode())
    return digest.hexdigest()[:16]


def rule_identity(command: str, without: tuple[str, ...] = ()) -> str:
    """What a rule puts into its params: the command's code identity and the software identity."""
    return f"{command_identity(command, tuple(without))}-{software_identity()}"


def _cli_main() -> None:  # pragma: no cover - a developer's look at the graph
    import sys

    for command in sys.argv[1:]:
        print(command, command_identity(command))
        for name in command_modules(command):
            print("   ", name)


if __name__ == "__main__":  # pragma: no cover
    _cli_main()
