"""Fuzzing the config loader: random dotted keys (real and made up), values and types, through `apply_overrides`
and through an edited config.json. Each either gives a config whose every field has its declared type and
passes `check_config`, or raises VfmxaiError with one line; a value of the wrong type is never stored.

Budget: 100 examples per test, derandomised and without hypothesis' example database (as
test_reliability_fuzz.py), so the suite cannot flake.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfmxai.config import RunConfig, apply_overrides, check_config, preset
from vfmxai.errors import VfmxaiError

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

DEFAULT = RunConfig()
SECTIONS = [f.name for f in dataclasses.fields(DEFAULT) if dataclasses.is_dataclass(getattr(DEFAULT, f.name))]
REAL_KEYS = sorted(f"{section}.{f.name}" for section in SECTIONS for f in dataclasses.fields(getattr(DEFAULT, section)))
TOP_KEYS = ["preset", "classifier", *SECTIONS]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=2),
    max_leaves=6,
)
raw_texts = st.one_of(
    st.text(max_size=16),
    st.sampled_from(["true", "False", "NaN", "Infinity", "-1", "0", "1", "1.5", "1e400", "[1,2]", "[2,3]", "{}",
                     "null", "auto", "fp32", "bf16", "spread", "first", "0,4,8", "64", "4096", "4097", "10**9"]),
    json_values.map(json.dumps),
)
keys = st.one_of(
    st.sampled_from(REAL_KEYS),
    st.sampled_from(TOP_KEYS),
    st.builds(lambda a, b: f"{a}.{b}", st.sampled_from([*SECTIONS, "nope", ""]), st.text(max_size=8)),
    st.text(max_size=20),
)


def _matches(hint, value) -> bool:
    """Whether `value` is of the annotation `hint` exactly (a bool is no int; a float is finite)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(a, value) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(args[0], v) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return type(value) is float and math.isfinite(value)
    return type(value) is hint


def assert_valid(config: RunConfig) -> None:
    for section in SECTIONS:
        part = getattr(config, section)
        hints = typing.get_type_hints(type(part))
        for field in dataclasses.fields(part):
            value = getattr(part, field.name)
            assert _matches(hints[field.name], value), f"{section}.{field.name}={value!r} is not {hints[field.name]}"
    assert type(config.preset) is str and type(config.classifier) is str
    check_config(config)  # in range too, and still valid when checked again


def assert_one_line(err: VfmxaiError) -> None:
    message = str(err)
    assert message and "\n" not in message and "Traceback" not in message


@FUZZ
@given(st.lists(st.tuples(keys, raw_texts), min_size=1, max_size=4))
def test_overrides_give_a_valid_config_or_one_line(overrides):
    config = preset("toy")
    items = [f"{key}={raw}" for key, raw in overrides]
    try:
        check_config(apply_overrides(config, items))
    except VfmxaiError as err:
        assert_one_line(err)
        return
    assert_valid(config)


@FUZZ
@given(st.lists(st.tuples(keys, json_values), min_size=1, max_size=4))
def test_an_edited_config_file_loads_valid_or_is_one_line(tmp_path_factory, edits):
    data = preset("toy").to_dict()
    for key, value in edits:
        section, dot, field = key.partition(".")
        if dot and isinstance(data.get(section), dict):
            data[section][field] = value
        else:
            data[key] = value
    path = Path(tmp_path_factory.mktemp("config")) / "config.json"
    path.write_text(json.dumps(data))
    try:
        config = RunConfig.load(path)
    except VfmxaiError as err:
        assert_one_line(err)
        assert str(err).startswith(f"{path}: ")
        return
    assert_valid(config)
