"""A digest of the package code a job runs, for Snakemake params: the between-workflow output cache hashes a
rule's script and params but not the library the script calls, so without it a changed scorer would be served
stale scores from the cache. Standard library only: the Snakefile calls it at parse time without importing torch.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from pathlib import Path


def _module_file(name: str) -> Path | None:
    """The source file of a package module, found without importing anything (importing would pull in torch)."""
    package = name.split(".")[0]
    spec = importlib.util.find_spec(package)  # a top-level name: located, not executed
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    elif Path(__file__).parent.name == package:  # this file was loaded by path (the package is not installed)
        root = Path(__file__).parent
    else:
        raise ImportError(f"package {package} not found")
    relative = Path(*name.split(".")[1:])
    for candidate in (root / relative / "__init__.py", root / relative.with_suffix(".py") if relative.parts else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def _package_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Names of the package's modules imported anywhere in the module (also inside functions)."""
    package = module.split(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts if is_package else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from ctxaware import scoring` imports a submodule, `from ctxaware.x import f` the module x
            names = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == package or name.startswith(package + "."):
                found.add(name)
    return found


def code_digest(*modules: str) -> str:
    """sha256 (16 hex digits) over the syntax trees of the given modules, their package's __init__ and every
    module of that package they import, transitively; comments, formatting and docstrings do not change it."""
    seen: dict[str, str] = {}
    todo = [*{module.split(".")[0] for module in modules}, *modules]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:  # e.g. `from ctxaware.x import function`: not a module
            seen[name] = ""
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        todo.extend(_package_imports(tree, name, path.name == "__init__.py"))
        seen[name] = ast.dump(_strip_docstrings(tree))
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(f"{name}\0{seen[name]}\0".encode())
    return digest.hexdigest()[:16]


CACHE_VARIABLE = "SNAKEMAKE_OUTPUT_CACHE"  # where Snakemake's between-workflow cache lives


def check_output_cache(cache_rules, environ) -> None:
    """With the between-workflow cache on (`--cache`, or `cache: true` in a profile: cache_rules is not None), the
    cache's directory must be set and exist; Snakemake itself only warns, then fails on the first cached rule."""
    if cache_rules is None:
        return
    location = environ.get(CACHE_VARIABLE)
    if not location:
        raise ValueError(
            f"the between-workflow cache is on (--cache, or `cache: true` in the profile, e.g. profiles/slurm) but "
            f"{CACHE_VARIABLE} is not set: export {CACHE_VARIABLE}=<a directory every checkout can write, e.g. "
            "/shared/ctxaware-cache> (README, Slurm cluster)"
        )
    if "://" not in location and not Path(location).is_dir():
        raise ValueError(f"{CACHE_VARIABLE}={location} is not a directory: create it (mkdir -p {location})")
