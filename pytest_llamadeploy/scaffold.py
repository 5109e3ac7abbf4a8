"""``llamadeploy init [DIR]``: start another repository with the gate suites, the policies and the workflow.

The files come from the installed package (``pytest_llamadeploy/_templates``,
put there by the build: see setup.py and ``_shipped.py``), or from the
repository itself when this is a source checkout (an editable install). Init
never changes a file that exists with other content unless ``--force``; it
names every such file and writes nothing at all when it refuses. A file that
already has the content init would write is left alone, so running init twice
is harmless.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ._shipped import SHIPPED, TEMPLATES

DISTRIBUTION = "pytest-llamadeploy"
REQUIREMENTS = "requirements-llamadeploy.txt"

#: The pytest settings a repository needs so that ``pytest --env=... --stage=...`` collects the gate suites
#: (and not the repository's own tests, which would otherwise run in every stage).
PYTEST_SETTINGS = """[tool.pytest.ini_options]
# The deployment gates: `pytest --env=E --stage=S --release=R` collects suites/ (llamadeploy init).
# Your own tests keep running with `pytest tests`.
testpaths = ["suites"]
"""

MIGRATIONS_README = """# Database migrations

The migrate stage (`pytest --env=E --stage=migrate`) applies `NNNN_name.sql` files from this folder
in name order, each with its `NNNN_name.rollback.sql`; the preflight checks every migration has one.
The folder is the policy key `database.migrations_dir`.
"""


#: What the gates and the sandbox write into the repository, never to be committed.
GITIGNORE = (".llamadeploy/", "allure-results/", "allure-report/", "reports/", "tools/allure/node_modules/")


class InitError(Exception):
    """Init cannot go on; the message says what was checked and the fix."""


@dataclass(frozen=True)
class Planned:
    path: str  # relative to the target directory, with forward slashes
    content: bytes
    origin: str  # where it comes from, for the listing


def version() -> str:
    """The installed distribution's version (``llamadeploy --version``)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def template_root() -> Path:
    """Where the shipped files live: the installed package's ``_templates``, else this source checkout."""
    # Beside this module, not importlib.resources: pytest_llamadeploy is a namespace package (no
    # __init__.py), for which Python 3.11's resources.files() returns a MultiplexedPath that fails
    # under an editable install. pip installs a wheel as files, so the folder is right here.
    packaged = Path(__file__).resolve().with_name(TEMPLATES)
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "suites").is_dir():
        return checkout
    raise InitError(f"{packaged} is missing and {checkout} is not a source checkout: this installation "
                    f"was built without its shipped files; reinstall with `pip install --force-reinstall {DISTRIBUTION}`")


def shipped_files(root: Path) -> list[tuple[str, Path]]:
    """(relative path, file) for every pattern of ``_shipped.SHIPPED``; a pattern matching nothing is an error."""
    found: list[tuple[str, Path]] = []
    for pattern in SHIPPED:
        matches = [p for p in sorted(root.glob(pattern)) if p.is_file() and "__pycache__" not in p.parts]
        if not matches:
            raise InitError(f"{root}: no file matches {pattern!r}; the installation is incomplete: reinstall "
                            f"{DISTRIBUTION}")
        found += [(p.relative_to(root).as_posix(), p) for p in matches]
    return found


def _has_pytest_settings(target: Path) -> str | None:
    """The file that already holds this repository's pytest settings, if any."""
    for name, marker in (("pytest.ini", "[pytest]"), ("pyproject.toml", "[tool.pytest.ini_options]"),
                         ("tox.ini", "[pytest]"), ("setup.cfg", "[tool:pytest]")):
        path = target / name
        if path.is_file() and marker in path.read_text(encoding="utf-8", errors="replace"):
            return name
    return None


def plan(target: Path, pinned: str) -> tuple[list[Planned], list[str]]:
    """The files to write and the manual steps left (settings init must not edit into an existing file)."""
    root = template_root()
    files = [Planned(rel, path.read_bytes(), "shipped") for rel, path in shipped_files(root)]
    files.append(Planned(REQUIREMENTS, (
        "# What CI installs for the deployment gates (.github/workflows/*.yml: pip install -r this file).\n"
        f"{DISTRIBUTION}=={pinned}\n").encode(), "generated"))
    files.append(Planned("sql/migrations/README.md", MIGRATIONS_README.encode(), "generated"))
    manual: list[str] = []
    ignore = target / ".gitignore"
    if not ignore.exists():
        files.append(Planned(".gitignore", ("# llamadeploy's runs, sandbox state and reports\n"
                                            + "\n".join(GITIGNORE) + "\n").encode(), "generated"))
    else:
        present = set(ignore.read_text(encoding="utf-8", errors="replace").split())
        missing = [line for line in GITIGNORE if line not in present]
        if missing:
            manual.append(".gitignore exists: add " + ", ".join(missing))
    holder = _has_pytest_settings(target)
    if holder is None and not (target / "pyproject.toml").exists():
        files.append(Planned("pyproject.toml", PYTEST_SETTINGS.encode(), "generated"))
    else:
        where = holder or "pyproject.toml"
        manual.append(f"{where} exists: make its pytest settings collect the gate suites, e.g.\n"
                      + "\n".join("    " + line for line in PYTEST_SETTINGS.splitlines()))
    return files, manual


def conflicts(target: Path, files: list[Planned]) -> list[str]:
    """Files that exist with other content (or are not files): init would overwrite them."""
    found = []
    for item in files:
        path = target / item.path
        if path.is_dir() or (path.exists() and path.read_bytes() != item.content):
            found.append(item.path)
    return found


def init(target: Path, *, force: bool = False, out=print) -> int:  # noqa: ANN001 - print-like
    try:
        files, manual = plan(target, version())
    except InitError as exc:
        out(f"llamadeploy init: {exc}")
        return 2
    clashing = conflicts(target, files)
    if clashing and not force:
        out(f"llamadeploy init: refused, nothing written: {len(clashing)} file(s) in {target} exist with other "
            "content and would be overwritten:")
        for rel in clashing:
            out(f"  would overwrite {rel}")
        out("re-run with --force to overwrite them, or init into an empty directory and merge by hand")
        return 2
    written = 0
    for item in files:
        path = target / item.path
        if path.is_file() and path.read_bytes() == item.content:
            continue
        if path.is_dir():
            out(f"llamadeploy init: {path} is a directory; remove it and re-run")
            return 2
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.content)
        written += 1
        out(f"  {'overwrote' if item.path in clashing else 'wrote'} {item.path}")
    out(f"llamadeploy init: {written} file(s) written, {len(files) - written} already up to date, in {target}")
    for step in manual:
        out(f"to do by hand: {step}")
    out("next, in that directory:\n"
        f"  pip install -r {REQUIREMENTS}\n"
        "  llamadeploy policy check                      # the policies, validated and guarded\n"
        "  llamadeploy sandbox up                        # the local rehearsal of production\n"
        "  pytest --env=sandbox --stage=verify           # a gate against what the sandbox serves\n"
        "  llamadeploy sandbox down\n"
        "then set the deploy command (deploy.argv) and targets in policies/prod.yaml, dev.yaml, staging.yaml")
    return 0


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default=".", type=Path, help="repository to set up (default: .)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite files that exist with other content (each is named)")


def run(args: argparse.Namespace) -> int:
    target: Path = args.dir
    if target.exists() and not target.is_dir():
        print(f"llamadeploy init: {target} is a file; give a directory", file=sys.stderr)
        return 2
    target.mkdir(parents=True, exist_ok=True)
    return init(target, force=args.force)
