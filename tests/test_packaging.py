"""The project installs as a named, versioned package, and `make help` lists every target."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)


def test_project_is_named_and_versioned_with_the_requirements_as_dependencies():
    config = _pyproject()
    project = config["project"]
    assert project["name"] == "csl-partial-labels"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    # The pins have one owner: the requirements files, read by setuptools at install time.
    dynamic = config["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"] == {"file": ["requirements.txt"]}
    assert "dependencies" in project["dynamic"]


def test_every_script_and_package_named_for_installation_exists():
    setuptools = _pyproject()["tool"]["setuptools"]
    for module in setuptools["py-modules"]:
        assert os.path.isfile(os.path.join(REPO, f"{module}.py")), module
    scripts = {name[:-3] for name in os.listdir(REPO) if name.endswith(".py")}
    assert scripts == set(setuptools["py-modules"])  # no top-level script left out of the install
    for package in setuptools["packages"]["find"]["include"]:
        if "*" not in package:
            assert os.path.isfile(os.path.join(REPO, package.replace(".", os.sep), "__init__.py")), package


def test_make_help_lists_every_phony_target():
    makefile = open(os.path.join(REPO, "Makefile"), encoding="utf-8").read()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.MULTILINE).group(1).split()
    shown = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout
    listed = [line.split()[0] for line in shown.splitlines() if line.strip()]
    assert sorted(listed) == sorted(phony)
