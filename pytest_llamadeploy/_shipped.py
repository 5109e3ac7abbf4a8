"""What ``llamadeploy init`` gives another repository, as paths of this repository.

The build (setup.py) copies these files into the wheel under
``pytest_llamadeploy/_templates/`` at the same relative paths; ``llamadeploy
init`` copies them from there (or, in a source checkout, from the repository
itself). One list, no second copy in the source tree. This module imports
nothing: setup.py reads it before the package can be imported.
"""

#: Glob patterns relative to the repository root (``**`` recurses).
SHIPPED = (
    "policies/*.yaml",
    "suites/**/*.py",
    ".github/workflows/*.yml",
    "tools/allure/package.json",
    "tools/allure/package-lock.json",
)

#: Folder inside the installed package that holds the shipped files.
TEMPLATES = "_templates"
