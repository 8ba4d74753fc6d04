"""Tests of the shared configuration loader (hub/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hub.config import ConfigSpec, each, in_range, positive, setting, valid_regex
from hub.errors import ConfigError


def _even(value: int) -> None:
    if value % 2:
        raise ValueError("must be even")


@dataclass(frozen=True)
class Demo:
    url: str = setting("redis://127.0.0.1:6379/0", help="where",
                       redact=lambda u: u.replace("secret", "***"))
    interval: float = setting(1.0, help="seconds", validator=in_range(0.1, 60))
    count: int = setting(4, help="how many", validator=_even)
    verbose: bool = setting(False, help="talk more")
    path: Path | None = setting(None, help="a file")
    limit: float | None = setting(None, help="optional limit", validator=positive)
    targets: tuple[str, ...] = setting((), help="repeatable")
    ratios: tuple[float, ...] = setting((0.5,), help="numbers", validator=each(in_range(0, 1)))
    pattern: str = setting("^x$", help="a regex", validator=valid_regex)
    level: str = setting("info", help="level", choices=("debug", "info"))
    token: str = setting("", help="a secret", secret=True)
    name: str = setting(help="computed", factory=lambda: "computed-default",
                        default_doc="the host name")


def _cross(settings: Demo) -> None:
    if settings.verbose and settings.level != "debug":
        raise ValueError("--verbose needs --level debug")


SPEC = ConfigSpec(Demo, prog="demo", description="a demo", section="demo", checks=(_cross,))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(text)
    return path


def test_defaults_apply_when_nothing_is_set() -> None:
    """With no flag, variable or file, every setting has its default (factories included)."""
    loaded = SPEC.load([], environ={})
    assert loaded.settings == Demo()
    assert loaded.settings.name == "computed-default"
    assert set(loaded.sources.values()) == {"default"}


def test_every_kind_of_value_parses_from_flags() -> None:
    """Flags of each type become typed values; list flags repeat."""
    loaded = SPEC.load([
        "--interval", "2.5", "--count", "6", "--verbose", "--level", "debug", "--path", "~/x",
        "--limit", "3", "--targets", "a", "--targets", "b,c", "--ratios", "0.1,0.2",
    ], environ={})
    s = loaded.settings
    assert (s.interval, s.count, s.verbose, s.limit) == (2.5, 6, True, 3.0)
    assert s.path == Path("~/x").expanduser()
    assert s.targets == ("a", "b", "c")
    assert s.ratios == (0.1, 0.2)
    assert loaded.sources["interval"] == "flag"


def test_precedence_is_flags_then_env_then_file_then_default(tmp_path: Path) -> None:
    """A flag beats the environment, which beats the TOML file, which beats the default."""
    path = _write(tmp_path, "interval = 3.0\ncount = 8\nlevel = 'debug'\n")
    env = {"METRICS_HUB_INTERVAL": "4", "METRICS_HUB_COUNT": "10"}
    loaded = SPEC.load(["--config", str(path), "--interval", "5"], environ=env)
    assert loaded.settings.interval == 5.0
    assert loaded.settings.count == 10
    assert loaded.settings.level == "debug"
    assert loaded.settings.targets == ()
    assert loaded.sources["interval"] == "flag"
    assert loaded.sources["count"] == "env METRICS_HUB_COUNT"
    assert loaded.sources["level"] == f"file {path}"
    assert loaded.config_path == path


def test_section_variable_and_table_override_the_shared_ones(tmp_path: Path) -> None:
    """METRICS_HUB_DEMO_X beats METRICS_HUB_X, and the [demo] table beats top-level keys."""
    path = _write(tmp_path, "count = 8\ninterval = 2.0\n[demo]\ncount = 12\n"
                            "[gateway]\nport = 8080\n")
    env = {"METRICS_HUB_INTERVAL": "4", "METRICS_HUB_DEMO_INTERVAL": "6",
           "METRICS_HUB_CONFIG": str(path)}
    settings = SPEC.load([], environ=env).settings
    assert settings.interval == 6.0
    assert settings.count == 12


def test_env_values_parse_lists_booleans_and_empty_optionals() -> None:
    """Env lists are comma-separated, booleans accept yes/no, an empty optional is None."""
    env = {"METRICS_HUB_TARGETS": "a, b,,c", "METRICS_HUB_VERBOSE": "yes",
           "METRICS_HUB_LEVEL": "debug", "METRICS_HUB_LIMIT": "", "METRICS_HUB_PATH": " "}
    settings = SPEC.load([], environ=env).settings
    assert settings.targets == ("a", "b", "c")
    assert settings.verbose is True
    assert settings.limit is None
    assert settings.path is None


def test_toml_arrays_and_types(tmp_path: Path) -> None:
    """TOML arrays fill list settings; ints are accepted for floats; dashes work in keys."""
    path = _write(tmp_path, "targets = ['x', 'y']\nratios = [0, 1]\ninterval = 2\n"
                            "verbose = true\nlevel = 'debug'\n")
    settings = SPEC.load(["--config", str(path)], environ={}).settings
    assert settings.targets == ("x", "y")
    assert settings.ratios == (0.0, 1.0)
    assert settings.interval == 2.0


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--interval", "abc"], {}, "--interval abc: expected a number"),
    (["--interval", "0"], {}, "--interval 0: must be from 0.1 to 60"),
    (["--interval", "nan"], {}, "--interval nan: expected a finite number"),
    ([], {"METRICS_HUB_COUNT": "3"}, "METRICS_HUB_COUNT=3: must be even"),
    ([], {"METRICS_HUB_COUNT": "2.5"}, "METRICS_HUB_COUNT=2.5: expected a whole number"),
    ([], {"METRICS_HUB_VERBOSE": "maybe"}, "METRICS_HUB_VERBOSE=maybe: expected true or false"),
    (["--level", "loud"], {}, "--level loud: must be one of debug, info"),
    (["--ratios", "0.5,2"], {}, "--ratios 0.5,2: item 2.0: must be from 0 to 1"),
    (["--pattern", "("], {}, "--pattern (: not a valid regular expression"),
    (["--limit", "-1"], {}, "--limit -1: must be greater than 0"),
    (["--verbose"], {}, "--verbose needs --level debug"),
    (["--bogus"], {}, "unrecognized arguments: --bogus"),
    (["--interv", "2"], {}, "unrecognized arguments: --interv"),
])
def test_a_bad_value_is_one_line_that_says_what_to_fix(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    """Each bad value gives a ConfigError of one line naming its origin and the fix."""
    with pytest.raises(ConfigError) as info:
        SPEC.load(argv, environ=env)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    """A missing file, invalid TOML, a wrong type or an unknown key is a one-line error."""
    with pytest.raises(ConfigError, match="cannot read the file"):
        SPEC.load(["--config", str(tmp_path / "missing.toml")], environ={})
    bad = _write(tmp_path, "interval = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SPEC.load(["--config", str(bad)], environ={})
    typed = _write(tmp_path, "interval = 'fast'\n")
    with pytest.raises(ConfigError, match=r"interval = fast in .*: expected a number"):
        SPEC.load(["--config", str(typed)], environ={})
    typo = _write(tmp_path, "intervall = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'intervall'; did you mean 'interval'"):
        SPEC.load(["--config", str(typo)], environ={})
    nested = _write(tmp_path, "[demo]\n[demo.inner]\nx = 1\n")
    with pytest.raises(ConfigError, match="unexpected table 'inner'"):
        SPEC.load(["--config", str(nested)], environ={})


def test_secrets_never_appear_in_errors_or_descriptions() -> None:
    """A secret or redacted value is hidden in error messages and in --print-config output."""
    with pytest.raises(ConfigError) as info:
        SPEC.load(["--level", "x"], environ={"METRICS_HUB_TOKEN": "hunter2"})
    assert "hunter2" not in str(info.value)
    loaded = SPEC.load(["--url", "redis://:secret@h/0"], environ={"METRICS_HUB_TOKEN": "hunter2"})
    text = loaded.describe(SPEC)
    assert "hunter2" not in text
    assert "secret" not in text
    assert "url = redis://:***@h/0  # flag" in text


def test_schema_lists_every_flag_and_variable() -> None:
    """The schema and its Markdown table name every option's flag and variable."""
    rows = SPEC.schema()
    assert {r["name"] for r in rows} >= {"config", "print_config", "url", "targets", "name"}
    table = SPEC.markdown_table()
    for option in SPEC.options:
        assert f"`{option.flag}`" in table
        assert f"`{option.env}`" in table
    assert "the host name" in table


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints every flag and raises SystemExit(0), as argparse does."""
    with pytest.raises(SystemExit) as info:
        SPEC.load(["--help"], environ={})
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--interval" in out
    assert "METRICS_HUB_INTERVAL" in out


def test_bool_flags_have_negations() -> None:
    """A boolean setting gets --x and --no-x; the last one given wins."""
    assert SPEC.load(["--verbose", "--no-verbose"], environ={}).settings.verbose is False


def test_print_config_is_reported() -> None:
    """--print-config is passed back to the caller, which prints and exits."""
    assert SPEC.load(["--print-config"], environ={}).print_config is True
    assert SPEC.load([], environ={}).print_config is False


def test_a_spec_refuses_fields_it_cannot_load() -> None:
    """A field without setting(), or of an unsupported type, is a programming error."""

    @dataclass(frozen=True)
    class Plain:
        x: int = 1

    with pytest.raises(TypeError, match="not a setting"):
        ConfigSpec(Plain, prog="p", description="d")

    @dataclass(frozen=True)
    class Listy:
        x: list[int] = setting(help="no", factory=list)

    with pytest.raises(TypeError, match="unsupported type"):
        ConfigSpec(Listy, prog="p", description="d")
