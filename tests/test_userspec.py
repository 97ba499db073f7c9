"""MODULE:CALLABLE specs: their shape, and resolving them from a file or a module."""

import pytest

from securefl.config import RunConfig
from securefl.exceptions import ConfigValueError
from securefl.userspec import check_spec, describe, is_user_spec, load_callable
from tests.helpers import byo_model


def test_a_spec_is_a_string_with_a_colon():
    assert is_user_spec("a.py:f") and is_user_spec("pkg.mod:f")
    assert not is_user_spec("mlp") and not is_user_spec(3)


@pytest.mark.parametrize("spec", [":f", "a.py:", "a.py:1f", "a.py:f-g", " :f"])
def test_bad_shapes_are_refused_by_the_config(spec):
    with pytest.raises(ConfigValueError) as info:
        RunConfig(model=spec)
    assert info.value.field == "model" and "MODULE:CALLABLE" in info.value.reason
    with pytest.raises(ConfigValueError):
        check_spec("dataset", spec)


def test_config_keeps_specs_as_plain_strings():
    config = RunConfig(model="x.py:make", dataset="pkg.data:load")  # not resolved here
    assert config.to_flat()["model"] == "x.py:make"
    assert RunConfig.from_flat(config.to_flat()) == config
    with pytest.raises(ConfigValueError, match="MODULE:CALLABLE"):
        RunConfig(model="resnet")


def test_load_from_a_file_once_and_from_a_module(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text("COUNT = [0]\nCOUNT[0] += 1\ndef make():\n    return 42\nclass K:\n    @staticmethod\n    def build():\n        return 7\n")
    fn = load_callable("model", f"{f}:make")
    assert fn() == 42 and load_callable("model", f"{f}:K.build")() == 7
    assert fn.__globals__["COUNT"] == [1]  # the file ran once for both look-ups
    assert load_callable("model", "tests.helpers.byo_model:factory") is byo_model.factory


def test_load_errors_name_the_field_and_spec(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    dep = tmp_path / "dep.py"
    dep.write_text("import no_such_dependency_xyz\n")
    cases = [
        (f"{tmp_path}/nope.py:f", "not found"),
        (f"{bad}:f", "RuntimeError: boom"),
        (f"{dep}:f", "no_such_dependency_xyz"),
        ("no_such_pkg_xyz.mod:f", "no module named 'no_such_pkg_xyz.mod'"),
        ("tests.helpers.byo_model:missing", "defines no 'missing'"),
        ("tests.helpers.byo_model:CALLS", "not a callable"),
    ]
    for spec, words in cases:
        with pytest.raises(ConfigValueError) as info:
            load_callable("dataset", spec)
        assert info.value.field == "dataset" and info.value.value == spec and words in info.value.reason, info.value


def test_describe_names_module_and_qualname():
    assert describe(byo_model.factory) == "tests.helpers.byo_model:factory"
    assert describe((1, 2)) == "builtins:tuple"
