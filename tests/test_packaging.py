"""What an installed copy (a wheel, not the editable install CI uses) holds and what its user is told.

A data file the package-data globs miss would be left out of the wheel alone: every test of the
source tree still reads it from src/. Checked against pyproject.toml, not by building a wheel (seconds)."""

import fnmatch
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "greencallbacks"
# Extras that are the project's own tooling, not something a user installs the package with.
TOOLING_EXTRAS = {"test", "bench"}


def _pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("not run from the source tree")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_shipped_data_file_is_in_the_package_data():
    globs = _pyproject()["tool"]["setuptools"]["package-data"]["greencallbacks"]
    data = [path.relative_to(PACKAGE).as_posix() for path in (PACKAGE / "data").rglob("*")
            if path.is_file() and "__pycache__" not in path.parts]
    assert data, "no data files found"
    assert [name for name in data if not any(fnmatch.fnmatchcase(name, glob) for glob in globs)] == []


def test_every_install_command_the_package_prints_names_a_declared_extra():
    """An adapter, a sensor or the CLI that says `pip install 'greencallbacks[x]'` must name an
    extra that exists and installs the package it lacks."""
    extras = _pyproject()["project"]["optional-dependencies"]
    named = {(path.name, extra) for path in PACKAGE.rglob("*.py")
             for extra in re.findall(r"greencallbacks\[(\w+)\]", path.read_text(encoding="utf-8"))}
    assert named, "no install command found in the package"
    assert sorted(pair for pair in named if pair[1] not in extras) == []


def test_the_readme_names_every_extra_a_user_installs():
    """README.md is the wheel's long description: a user installing it reads there which extra
    brings which adapter. It named [amd] alone; the others were in pyproject.toml only."""
    extras = set(_pyproject()["project"]["optional-dependencies"]) - TOOLING_EXTRAS
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"(?:greencallbacks|'\.)\[(\w+)\]", readme))  # greencallbacks[x], or '.[x]' in a clone
    assert sorted(extras - named) == [] and sorted(named - extras) == []
