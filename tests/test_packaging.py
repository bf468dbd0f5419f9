"""What the package needs at run time is what pyproject.toml installs for it."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vfmxai"
TEST_ONLY = {"captum", "pytest", "hypothesis", "selenium"}


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


def test_the_command_line_parser_and_the_vocabulary_import_no_torch():
    """`vfmxai --help` and every choice list are built from `vfmxai.vocabulary` alone."""
    code = (
        "import sys; from vfmxai import cli, vocabulary; cli._parser(); "
        "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('vfmxai')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split(" ", 1)[0] == "False", result.stdout


def test_each_word_has_one_definition_and_every_user_reads_it():
    from vfmxai import cli, data, runtime, vocabulary
    from vfmxai.config import DataConfig
    from vfmxai.data.synthetic import TASKS
    from vfmxai.evaluation import METHODS
    from vfmxai.metrics import perturbation

    assert data.DATASETS is vocabulary.DATASETS and tuple(data.FORMATS) == vocabulary.DATASETS
    assert METHODS is vocabulary.METHODS and runtime.PRECISIONS is vocabulary.PRECISIONS
    assert perturbation.SUBSTRATES is vocabulary.SUBSTRATES and perturbation.TARGET_MODES is vocabulary.TARGET_MODES
    assert tuple(TASKS) == vocabulary.SYNTHETIC_TASKS
    config = DataConfig()
    assert (config.n_train, config.n_val, config.n_test, config.synth_size) == (
        *vocabulary.SYNTHETIC_SPLITS.values(), vocabulary.SYNTHETIC_SIZE
    )
    parser = cli._parser()
    evaluate = parser._subparsers._group_actions[0].choices["evaluate"]
    choices = {a.dest: a.choices for a in evaluate._actions if a.choices}
    assert choices["dataset"] is vocabulary.DATASETS and choices["substrate"] is vocabulary.EVAL_SUBSTRATES
    assert choices["threshold_on"] is vocabulary.THRESHOLD_ON and choices["target"] is vocabulary.TARGET_MODES
    synth = parser.parse_args(["data", "synth", "--out", "x"])
    assert (synth.n_train, synth.n_val, synth.n_test, synth.size) == (600, 120, 120, 64)
