"""Build step only (metadata lives in pyproject.toml): ship the gate suites, the policies and the
workflow inside the wheel, under pytest_llamadeploy/_templates/, for ``llamadeploy init``.

They stay where they are in the repository (suites/, policies/, .github/workflows/); the copy exists
only in the build tree, so there is never a second source to keep in step. The list is
pytest_llamadeploy/_shipped.py.
"""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithTemplates(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's own files (pytest_llamadeploy/scaffold.py)
        shipped = runpy.run_path(str(ROOT / "pytest_llamadeploy" / "_shipped.py"))
        target = Path(self.build_lib) / "pytest_llamadeploy" / shipped["TEMPLATES"]
        if target.exists():
            shutil.rmtree(target)
        copied = 0
        for pattern in shipped["SHIPPED"]:
            matches = [p for p in sorted(ROOT.glob(pattern)) if p.is_file() and "__pycache__" not in p.parts]
            if not matches:
                raise SystemExit(f"setup.py: {pattern!r} (pytest_llamadeploy/_shipped.py) matches no file in {ROOT}")
            for source in matches:
                dest = target / source.relative_to(ROOT)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest)
                copied += 1
        print(f"setup.py: {copied} shipped files in {target}")


setup(cmdclass={"build_py": BuildPyWithTemplates})
