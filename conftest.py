# Root conftest: wiring only. The plugin itself is installed through the
# pytest11 entry point (pyproject.toml); gate suites live in suites/ (the
# default testpaths) and the project's own tests in tests/.
