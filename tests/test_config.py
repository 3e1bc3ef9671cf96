import pytest

from aifeedback.config import BackendConfig, GenerateConfig, build_config, parse_overrides
from aifeedback.errors import ConfigError


def test_unknown_key_is_an_error_naming_it(tmp_path):
    p = tmp_path / "gen.yaml"
    p.write_text("limit: 3\nsampling:\n  temprature: 0.2\n")
    with pytest.raises(ConfigError, match="sampling.temprature"):
        build_config(GenerateConfig, p)


def test_unknown_top_level_key(tmp_path):
    p = tmp_path / "gen.yaml"
    p.write_text("batchsize: 4\n")
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        build_config(GenerateConfig, p)


def test_yaml_then_flags(tmp_path):
    p = tmp_path / "gen.yaml"
    p.write_text("limit: 3\nsampling:\n  n: 2\n  temperature: 0.2\n")
    cfg = build_config(GenerateConfig, p, parse_overrides(["sampling.n=4", "backend.model=./m"]))
    assert cfg.limit == 3 and cfg.sampling.n == 4 and cfg.sampling.temperature == 0.2 and cfg.backend.model == "./m"


@pytest.mark.parametrize(
    "override, match",
    [
        ("sampling.temperature=-1", "temperature"),
        ("sampling.top_p=0", "top_p"),
        ("sampling.max_new_tokens=0", "max_new_tokens"),
        ("sampling.n=nope", "sampling.n"),
        ("backend.kind=tgi", "backend.kind"),
        ("backend.base_url=localhost:8000", "'backend.base_url' is a setting of the openai backend"),
    ],
)
def test_invalid_values_say_what_was_expected(override, match):
    with pytest.raises(ConfigError, match=match):
        build_config(GenerateConfig, None, parse_overrides([override]))


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["sampling.n"])


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(GenerateConfig, tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(GenerateConfig, p)


def test_backend_identity_is_what_changes_outputs():
    a = BackendConfig(kind="openai", max_concurrency=2).identity()
    b = BackendConfig(kind="openai", max_concurrency=64).identity()
    assert a == b
    assert BackendConfig(kind="openai", model="x").identity() != a
    assert BackendConfig(kind="openai", top_logprobs=5).identity() != a  # tests/test_config_backends.py checks every setting


def test_one_problem_is_one_line():
    with pytest.raises(ConfigError) as err:
        build_config(GenerateConfig, None, parse_overrides(["sampling.temprature=0.2"]))
    assert "\n" not in str(err.value) and str(err.value).startswith("invalid GenerateConfig from defaults + flags: unknown key 'sampling.temprature'")
    with pytest.raises(ConfigError) as err:
        build_config(GenerateConfig, None, parse_overrides(["sampling.temprature=0.2", "limit=0"]))
    assert len(str(err.value).splitlines()) == 3
