"""What the package needs at run time is what pyproject.toml installs for it."""

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vfmxai"
TEST_ONLY = {"captum", "pytest", "hypothesis"}


def _imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]


def test_no_library_module_imports_a_test_only_dependency():
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_top_level_names(p) & TEST_ONLY)
                 for p in PACKAGE.rglob("*.py")}
    assert {p: names for p, names in offenders.items() if names} == {}


def test_test_only_dependencies_are_in_the_dev_extra_alone():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not {_name(r) for r in project["dependencies"]} & TEST_ONLY
    assert {_name(r) for r in project["optional-dependencies"]["dev"]} >= TEST_ONLY
    pinned = {line.split("==")[0] for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    assert TEST_ONLY <= pinned


def test_every_package_data_pattern_matches_a_shipped_file():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vfmxai"]
    assert all(list(PACKAGE.glob(pattern)) for pattern in patterns), patterns
