"""Section.parse: defaults filled, and one short line per problem naming the full key."""

from typing import Literal

import pytest
from pydantic import Field

from frcnn_pipeline.config import ParameterError, RuntimeParams, Section, TrainParams
from frcnn_pipeline.config.section import describe_type


class Inner(Section):
    size: int = Field(3, ge=1)
    mode: Literal["fast", "slow"] = "fast"


class Outer(Section):
    name: str = "x"
    ratio: float = 0.5
    sizes: list[int] = Field([1, 2], min_length=2, max_length=2, description="two sizes")
    paths: str | list[str] | None = None
    inner: Inner = Inner()


def problems(value, key="outer"):
    with pytest.raises(ParameterError) as raised:
        Outer.parse(value, key)
    return raised.value.problems


def test_partial_sections_take_the_defaults_and_none_is_empty():
    assert Outer.parse({"inner": {"size": 5}}, "outer").model_dump() == {
        "name": "x", "ratio": 0.5, "sizes": [1, 2], "paths": None, "inner": {"size": 5, "mode": "fast"},
    }  # fmt: skip
    assert Outer.parse(None, "outer") == Outer()
    assert Outer.parse({"ratio": 1}, "outer").ratio == 1.0  # an integer is a number


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ({"nmae": "y"}, "outer.nmae: unknown parameter; did you mean outer.name?"),
        ({"inner": {"szie": 2}}, "outer.inner.szie: unknown parameter; did you mean outer.inner.size?"),
        ({"zzz": 1}, "outer.zzz: unknown parameter; valid keys here: name, ratio, sizes, paths, inner"),
        ({"inner": {"size": "abc"}}, "outer.inner.size: 'abc' is not an integer"),
        ({"inner": {"size": 2.0}}, "outer.inner.size: 2.0 is not an integer"),
        ({"inner": {"size": True}}, "outer.inner.size: True is not an integer"),
        ({"ratio": "0.5"}, "outer.ratio: '0.5' is not a number"),
        ({"name": 3}, "outer.name: 3 is not a string"),
        ({"inner": {"size": 0}}, "outer.inner.size: 0 must be >= 1"),
        ({"inner": {"mode": "quick"}}, "outer.inner.mode: 'quick' is not one of 'fast' or 'slow'"),
        ({"inner": 7}, "outer.inner: 7 is not a section of key: value pairs"),
        ({"sizes": [1]}, "outer.sizes: [1] has 1 item(s), needs 2 (two sizes)"),
        ({"sizes": [1, "b"]}, "outer.sizes[1]: 'b' is not an integer"),
        ({"sizes": 4}, "outer.sizes: 4 is not a list"),
        ({"paths": 4}, "outer.paths: 4 is not a string, a list of strings or null"),
    ],
)
def test_each_problem_is_one_line_naming_the_key(value, line):
    assert problems(value) == [line]


def test_every_problem_of_a_section_is_reported_at_once():
    assert sorted(problems({"nmae": "y", "inner": {"size": 0, "mode": "quick"}})) == [
        "outer.inner.mode: 'quick' is not one of 'fast' or 'slow'",
        "outer.inner.size: 0 must be >= 1",
        "outer.nmae: unknown parameter; did you mean outer.name?",
    ]


def test_the_issue_examples():
    with pytest.raises(ParameterError, match=r"^runtime.nproc_per_nod: unknown parameter; did you mean "
                                              r"runtime.nproc_per_node\?$"):  # fmt: skip
        RuntimeParams.parse({"nproc_per_nod": 8}, "runtime")
    with pytest.raises(ParameterError, match=r"^train.solver.max_iter: 'abc' is not an integer$"):
        TrainParams.parse({"solver": {"max_iter": "abc"}}, "train")


def test_cross_field_checks_name_their_section():
    with pytest.raises(ParameterError, match=r"^train.solver: set max_iter or epochs"):
        TrainParams.parse({"solver": {"epochs": None}}, "train")


def test_validated_sections_are_read_only():
    with pytest.raises(ValueError, match="frozen"):
        RuntimeParams().nproc_per_node = 8


def test_a_parameter_error_is_a_value_error_with_an_optional_heading():
    error = ParameterError(["a: bad", "b: worse"], heading="Invalid:", footer="see docs")
    assert isinstance(error, ValueError) and error.problems == ["a: bad", "b: worse"]
    assert str(error) == "Invalid:\n  a: bad\n  b: worse\nsee docs"


def test_types_read_as_a_user_would():
    assert describe_type(int | None) == "an integer or null"
    assert describe_type(Literal["dynamic"] | float) == "'dynamic' or a number"
    assert describe_type(list[float]) == "a list of numbers"
