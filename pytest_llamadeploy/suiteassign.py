"""Which gate suite a test belongs to, and the refusal of a folder under ``suites/`` that is no suite.

A test belongs to the suite its ``@pytest.mark.llamadeploy_suite("name")`` names (on the
test, its class or its module's ``pytestmark``), else to the folder below ``suites/``
that is a suite's name (a built-in one, or one the env's policy declares under
``suites:``). A test under ``suites/`` that belongs to none would run in every stage of
every env, so a gate run refuses it before anything changes (:func:`unassigned`).

That check reads the files (their folders and, with :mod:`ast`, their markers) rather
than pytest's collected items: the lock and the ``started`` record are taken at
session start, before pytest collects, and under xdist the controller never collects
at all, while the refusal must leave the env as it was (exit 4). A marker pytest
would see and this reading cannot (one added by a hook) still assigns its test at
collection; a test that ends up in no suite there is deselected, never run in every
stage (plugin.py).
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterable, Sequence
from pathlib import Path

MARKER = "llamadeploy_suite"
#: The folder the gate suites live in (``testpaths = ["suites"]``, scaffold.py).
SUITES_DIR = "suites"


def suite_of_parts(parts: Sequence[str], catalogue: Iterable[str]) -> str | None:
    """The suite a test file's folders name: the deepest folder below ``suites/`` that is a suite's name."""
    names = set(catalogue)
    below = list(parts[:-1])
    if SUITES_DIR in below:  # only what is below suites/: a folder named `health` above the repository is no suite
        below = below[len(below) - below[::-1].index(SUITES_DIR):]
    return next((part for part in reversed(below) if part in names), None)


def suite_roots(args: Iterable[str], cwd: Path) -> list[Path]:
    """The ``suites/`` folders a run collects from: each one an argument is in or holds."""
    roots: list[Path] = []
    for path in [(cwd / arg.split("::")[0]).resolve() for arg in args]:
        parts = path.parts
        if SUITES_DIR in parts:
            root = Path(*parts[:len(parts) - parts[::-1].index(SUITES_DIR)])
        elif (path / SUITES_DIR).is_dir():
            root = path / SUITES_DIR
        else:
            continue
        if root.is_dir() and root not in roots:
            roots.append(root)
    return roots


def _marks_in(node: ast.AST) -> list[str]:
    """The suite names of every ``...llamadeploy_suite("name")`` call in ``node`` (string literals only)."""
    names = []
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if called == MARKER and call.args and isinstance(call.args[0], ast.Constant) \
                and isinstance(call.args[0].value, str):
            names.append(call.args[0].value)
    return names


def read_marks(source: str) -> tuple[list[str], list[str]]:
    """(every suite the file's markers name, the top-level tests no marker assigns).

    A module-level ``pytestmark`` assigns every test of the file; otherwise each top-level
    ``test_*`` function and ``Test*`` class needs its own decorator.
    """
    tree = ast.parse(source)
    if _pytestmark_in(tree.body):
        return _marks_in(tree), []
    unmarked = [stmt.name for stmt in tree.body
                if (isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name.startswith("test"))
                or (isinstance(stmt, ast.ClassDef) and stmt.name.startswith("Test") and not _pytestmark_in(stmt.body))
                if not any(_marks_in(d) for d in stmt.decorator_list)]
    return _marks_in(tree), unmarked


def _pytestmark_in(body: list[ast.stmt]) -> bool:
    """Does a module's (or class's) body assign ``pytestmark`` a suite marker?"""
    for stmt in body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets) and _marks_in(stmt):
            return True
    return False


def _test_files(root: Path, patterns: Sequence[str]) -> list[Path]:
    return sorted(p for p in root.rglob("*.py")
                  if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
                  and not any(part.startswith((".", "__")) for part in p.relative_to(root).parts))


def unassigned(roots: Iterable[Path], catalogue: Sequence[str], patterns: Sequence[str], policy_file: Path,
               env: str) -> list[str]:
    """Problems, one line each: test files under ``suites/`` in no suite, and markers naming no suite."""
    problems: list[str] = []
    known = ", ".join(catalogue)
    declare = (f"declare it in {policy_file} at the top level (suites: {{NAME: {{description: ...}}}}) and list it "
               "under the stages that must run it")
    for root in roots:
        for path in _test_files(root, patterns):
            rel = path.relative_to(root)
            try:
                marks, unmarked = read_marks(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # pytest reports the broken file itself when it collects it
            for name in dict.fromkeys(m for m in marks if m not in catalogue):
                problems.append(f"{path}: marked {MARKER}({name!r}), which is no suite of {env} (suites: {known}); "
                                f"{declare.replace('NAME', name)}, or fix the name")
            if suite_of_parts((root.name, *rel.parts), catalogue) is not None or not unmarked:
                continue
            folder = rel.parts[0] if len(rel.parts) > 1 else ""
            where = f"folder {root / folder}" if folder else f"{root} itself (not in a suite's folder)"
            problems.append(
                f"{path}: {', '.join(unmarked[:3])}{' ...' if len(unmarked) > 3 else ''} in {where}, which is no suite "
                f"of {env} (suites: {known}), would run in every stage; "
                + (f"{declare.replace('NAME', folder)}, " if folder else "move it into a suite's folder, ")
                + f"or mark its tests (pytestmark = pytest.mark.{MARKER}(\"<suite>\"))")
    return problems
