"""The configuration loader every metrics-hub process shares: one declarative spec per process.

A process declares its settings once, as a frozen dataclass whose fields are made with
``setting()`` (type from the annotation, default, help, validator). ``ConfigSpec`` derives from
it the command-line flags, the ``METRICS_HUB_*`` environment variables and the TOML keys, and
loads them with the precedence flags > environment > TOML file > defaults. Any bad value raises
ConfigError with one line naming where the value came from and what to fix; processes print that
line and exit 2. docs/collector.md describes the rules for users.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

from hub.errors import ConfigError

ENV_PREFIX = "METRICS_HUB_"
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
_META_KEY = "metrics_hub.setting"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SCALARS: tuple[type, ...] = (str, int, float, bool, Path)

T = TypeVar("T")
Validator = Callable[[Any], None]


# -- declaring ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SettingMeta:
    """What ``setting()`` records on a dataclass field, beside its default."""

    help: str
    validator: Validator | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    secret: bool = False
    redact: Callable[[str], str] | None = None
    default_doc: str | None = None
    reloadable: bool = True


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    factory: Callable[[], Any] | None = None,
    validator: Validator | None = None,
    choices: Iterable[Any] | None = None,
    metavar: str | None = None,
    secret: bool = False,
    redact: Callable[[str], str] | None = None,
    default_doc: str | None = None,
    reloadable: bool = True,
) -> Any:
    """A dataclass field that is also a configuration option.

    ``validator`` gets the parsed value and raises ValueError with a message saying what a good
    value is. ``secret`` hides the value wherever it is printed; ``redact`` instead shows it
    through a function (a URL without its password, say). ``default_doc`` describes a default
    that ``factory`` computes ("the host name"). ``reloadable=False`` marks settings that a
    running process cannot change on SIGHUP (the process decides what to do about it).
    """
    meta = SettingMeta(
        help=help, validator=validator, choices=tuple(choices) if choices is not None else None,
        metavar=metavar, secret=secret, redact=redact, default_doc=default_doc,
        reloadable=reloadable,
    )
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={_META_KEY: meta})
    if default is dataclasses.MISSING:
        raise TypeError("setting() needs a default or a factory")
    return dataclasses.field(default=default, metadata={_META_KEY: meta})


# -- validators -----------------------------------------------------------------------------
def positive(value: float | int | None) -> None:
    """Accept None or a number greater than 0."""
    if value is not None and not value > 0:
        raise ValueError("must be greater than 0")


def non_negative(value: float | int | None) -> None:
    """Accept None or a number of at least 0."""
    if value is not None and not value >= 0:
        raise ValueError("must be 0 or more")


def in_range(low: float, high: float) -> Validator:
    """A validator accepting None or numbers from ``low`` to ``high`` inclusive."""

    def check(value: float | int | None) -> None:
        if value is not None and not low <= value <= high:
            raise ValueError(f"must be from {low:g} to {high:g}")

    return check


def each(validator: Validator) -> Validator:
    """A validator applying ``validator`` to every item of a list setting."""

    def check(values: Sequence[Any]) -> None:
        for item in values:
            try:
                validator(item)
            except ValueError as exc:
                raise ValueError(f"item {item!r}: {exc}") from None

    return check


def valid_regex(value: str | None) -> None:
    """Accept None, or a string that compiles as a Python regular expression."""
    if value is None:
        return
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None


def valid_redis_url(value: str | None) -> None:
    """Accept None, an empty string (no URL given) or a URL the connection factory can use."""
    if value:
        from hub.redis_url import parse_url  # redis-py is imported only where a URL is checked

        try:
            parse_url(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


def valid_key_prefix(value: str | None) -> None:
    """Accept None or a Redis key prefix (hub/keys.py's rule)."""
    from hub.keys import PREFIX_RE

    if value is not None and PREFIX_RE.fullmatch(value) is None:
        raise ValueError("use 1-64 of [A-Za-z0-9_.:-]")


# -- the options a spec derives -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Option:
    """One option: its names in every source, its type and its documentation."""

    name: str
    type: type  # the scalar type (str, int, float, bool, Path)
    optional: bool  # None is a valid value
    repeated: bool  # a list: a flag given several times, a comma list in env, a TOML array
    default: Any
    meta: SettingMeta
    section: str | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def section_env(self) -> str | None:
        """The process-specific variable (``METRICS_HUB_COLLECTOR_INTERVAL``), read first."""
        if self.section is None:
            return None
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"

    @property
    def help(self) -> str:
        return self.meta.help

    @property
    def type_name(self) -> str:
        base = {str: "string", int: "integer", float: "number", bool: "boolean",
                Path: "path"}[self.type]
        if self.repeated:
            return f"list of {base}s"
        return f"{base} or empty" if self.optional else base

    @property
    def default_text(self) -> str:
        """The default as the docs and --help show it."""
        if self.meta.default_doc is not None:
            return self.meta.default_doc
        return self.show(self.default)

    def show(self, value: Any) -> str:
        """``value`` as it may be printed: secrets hidden or redacted."""
        if value is None:
            return "(unset)"
        if self.repeated:
            return ",".join(self._show_one(item) for item in value) or "(none)"
        return self._show_one(value)

    def show_raw(self, value: Any) -> str:
        """One raw value (a flag's text, an env value, a TOML item) as it may be printed."""
        if isinstance(value, list):
            return "[" + ", ".join(self._show_one(item) for item in value) + "]"
        return self._show_one(value)

    def _show_one(self, value: Any) -> str:
        if self.meta.secret:
            return "***"
        if isinstance(value, bool):
            return "true" if value else "false"
        text = str(value)
        return self.meta.redact(text) if self.meta.redact is not None else text

    # -- parsing -------------------------------------------------------------------------
    def parse_text(self, text: str) -> Any:
        """Parse a flag or environment value; ValueError says what a good value is."""
        if self.repeated:
            return tuple(self._scalar_from_text(p.strip()) for p in text.split(",") if p.strip())
        if self.optional and text.strip() == "":
            return None
        return self._scalar_from_text(text.strip() if self.type is not str else text)

    def _scalar_from_text(self, text: str) -> Any:
        if self.type is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected true or false (also 1/0, yes/no, on/off)")
        if self.type is int:
            try:
                return int(text, 10)
            except ValueError:
                raise ValueError("expected a whole number") from None
        if self.type is float:
            try:
                number = float(text)
            except ValueError:
                raise ValueError("expected a number") from None
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
        if self.type is Path:
            return Path(text).expanduser()
        return text

    def parse_toml(self, value: Any) -> Any:
        """Check and convert a value read from TOML."""
        if self.repeated:
            if isinstance(value, str):
                return self.parse_text(value)
            if not isinstance(value, list):
                raise ValueError(f"expected an array of {self.type_name[8:]}")
            return tuple(self._scalar_from_toml(item) for item in value)
        if self.optional and value == "":
            return None
        return self._scalar_from_toml(value)

    def _scalar_from_toml(self, value: Any) -> Any:
        kind = self.type
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("expected a whole number")
            return value
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("expected a number")
            if not math.isfinite(value):
                raise ValueError("expected a finite number")
            return float(value)
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return Path(value).expanduser() if kind is Path else value

    def check(self, value: Any) -> None:
        """Apply choices and the validator; ValueError says what to fix."""
        if self.meta.choices is not None and value is not None:
            items = value if self.repeated else (value,)
            for item in items:
                if item not in self.meta.choices:
                    allowed = ", ".join(str(c) for c in self.meta.choices)
                    raise ValueError(f"must be one of {allowed}")
        if self.meta.validator is not None:
            self.meta.validator(value)


def _option_type(annotation: Any, name: str) -> tuple[type, bool, bool]:
    """(scalar type, optional, repeated) of a settings field annotation."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != 1 or len(typing.get_args(annotation)) != 2:
            raise TypeError(f"setting {name}: only 'X | None' unions are supported")
        optional, annotation = True, members[0]
        origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) != 2 or args[1] is not Ellipsis or args[0] not in _SCALARS or optional:
            raise TypeError(f"setting {name}: lists must be declared tuple[X, ...]")
        return args[0], False, True
    if annotation not in _SCALARS:
        raise TypeError(f"setting {name}: unsupported type {annotation!r}")
    return annotation, optional, False


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")


# -- loading -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Loaded(Generic[T]):
    """The result of loading: the settings, where each value came from, and how to reload."""

    settings: T
    sources: Mapping[str, str]  # option name -> "flag", "env NAME", "file PATH", "default"
    config_path: Path | None
    argv: tuple[str, ...]
    print_config: bool = False

    def describe(self, spec: ConfigSpec[T]) -> str:
        """One line per option, ``name = value  # source``, with secrets hidden."""
        lines = []
        for option in spec.options:
            value = getattr(self.settings, option.name)
            lines.append(f"{option.name} = {option.show(value)}  # {self.sources[option.name]}")
        return "\n".join(lines)


class ConfigSpec(Generic[T]):
    """Flags, environment variables and TOML keys of one process, derived from its settings.

    ``section`` names the process's table in a shared TOML file (``[collector]``): top-level
    keys apply to every process, the section's keys override them, other tables are ignored
    (they belong to other processes). Unknown keys in what this process reads are errors, so
    a typo never passes silently. ``checks`` validate combinations of settings.
    """

    def __init__(
        self,
        settings_type: type[T],
        *,
        prog: str,
        description: str,
        section: str | None = None,
        checks: Sequence[Callable[[T], None]] = (),
    ) -> None:
        if not dataclasses.is_dataclass(settings_type):
            raise TypeError("ConfigSpec needs a dataclass of setting() fields")
        self.settings_type = settings_type
        self.prog = prog
        self.description = description
        self.section = section
        self.checks = tuple(checks)
        hints = typing.get_type_hints(settings_type)
        options = []
        for fld in dataclasses.fields(settings_type):
            meta = fld.metadata.get(_META_KEY)
            if meta is None:
                raise TypeError(f"field {fld.name} of {settings_type.__name__} is not a setting()")
            scalar, optional, repeated = _option_type(hints[fld.name], fld.name)
            if fld.default is not dataclasses.MISSING:
                default = fld.default
            else:
                default = None  # from a factory, computed per load
            options.append(Option(fld.name, scalar, optional, repeated, default, meta, section))
        self.options: tuple[Option, ...] = tuple(options)
        self._by_name = {o.name: o for o in self.options}

    def option(self, name: str) -> Option:
        return self._by_name[name]

    # -- argparse ------------------------------------------------------------------------
    def parser(self) -> argparse.ArgumentParser:
        """The argparse parser; every option's value stays a string until ``load`` parses it."""
        parser = _Parser(
            prog=self.prog, description=self.description, allow_abbrev=False,
            argument_default=argparse.SUPPRESS,
            epilog=f"Every option also reads {ENV_PREFIX}<NAME> from the environment and "
                   "<name> from the TOML file; flags win over the environment, which wins "
                   "over the file.",
        )
        parser.add_argument("--config", metavar="PATH",
                            help=f"TOML file with settings (env {CONFIG_ENV})")
        parser.add_argument("--print-config", action="store_true",
                            help="print the effective settings and where each came from, "
                                 "then exit")
        for option in self.options:
            text = f"{option.help} (default: {option.default_text}; env {option.env})"
            text = text.replace("%", "%%")
            if option.type is bool and not option.repeated:
                parser.add_argument(option.flag, dest=option.name, help=text,
                                    action=argparse.BooleanOptionalAction)
            elif option.repeated:
                parser.add_argument(option.flag, dest=option.name, help=text + "; repeatable",
                                    action="append", metavar=option.meta.metavar or "VALUE")
            else:
                parser.add_argument(option.flag, dest=option.name, help=text,
                                    metavar=option.meta.metavar or option.type_name.upper()
                                    .split()[0])
        return parser

    def load(
        self,
        argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Loaded[T]:
        """Read flags, environment and TOML file; return valid settings or raise ConfigError.

        ``--help`` prints the help and raises SystemExit(0), as argparse does.
        """
        args = list(argv) if argv is not None else []
        env = os.environ if environ is None else environ
        namespace = vars(self.parser().parse_args(args))
        path_text = namespace.get("config")
        path_origin = "--config"
        if path_text is None and env.get(CONFIG_ENV, "").strip():
            path_text, path_origin = env[CONFIG_ENV], CONFIG_ENV
        config_path = Path(path_text).expanduser() if path_text else None
        file_values = self._read_file(config_path, path_origin) if config_path else {}

        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for option in self.options:
            found = self._resolve(option, namespace, env, file_values, config_path)
            if found is None:
                sources[option.name] = "default"
                continue
            value, origin, source = found
            try:
                option.check(value)
            except ValueError as exc:
                raise ConfigError(f"{origin}: {exc}") from None
            values[option.name] = value
            sources[option.name] = source
        try:
            settings = self.settings_type(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid settings: {exc}") from exc
        for option in self.options:  # defaults (and factory defaults) are checked too
            if sources[option.name] == "default":
                try:
                    option.check(getattr(settings, option.name))
                except ValueError as exc:
                    raise ConfigError(
                        f"default of {option.flag} ({option.default_text}): {exc}; "
                        f"set {option.flag} or {option.env}"
                    ) from None
        for check in self.checks:
            try:
                check(settings)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return Loaded(settings, sources, config_path, tuple(args),
                      bool(namespace.get("print_config", False)))

    def load_or_exit_code(self, argv: Sequence[str] | None = None) -> Loaded[T] | int:
        """What a process's main() does first: the loaded settings, or the exit code to
        return at once: 2 after printing a ConfigError's one line, 0 after --help or
        --print-config. ``argv`` defaults to ``sys.argv[1:]``."""
        args = sys.argv[1:] if argv is None else list(argv)
        try:
            loaded = self.load(args)
        except ConfigError as exc:
            print(f"{self.prog}: {exc}", file=sys.stderr)
            return 2
        except SystemExit as exc:  # --help, or argparse's own usage error (code 2)
            return exc.code if isinstance(exc.code, int) else 0
        if loaded.print_config:
            print(loaded.describe(self))
            return 0
        return loaded

    def _resolve(
        self,
        option: Option,
        namespace: Mapping[str, Any],
        env: Mapping[str, str],
        file_values: Mapping[str, Any],
        path: Path | None,
    ) -> tuple[Any, str, str] | None:
        """(value, where it came from as the error shows it, source) of one option.

        None means nothing set it: the default applies.
        """
        if option.name in namespace:
            raw = namespace[option.name]
            if option.type is bool and not option.repeated:
                return raw, option.flag if raw else "--no-" + option.flag[2:], "flag"
            texts = raw if option.repeated else [raw]
            origin = " ".join(f"{option.flag} {_quote(option.show_raw(t))}" for t in texts)
            try:
                if option.repeated:
                    value = tuple(item for text in raw for item in option.parse_text(text))
                else:
                    value = option.parse_text(raw)
            except ValueError as exc:
                raise ConfigError(f"{origin}: {exc}") from None
            return value, origin, "flag"
        for name in (option.section_env, option.env):
            if name is not None and name in env:
                origin = f"{name}={_quote(option.show_raw(env[name]))}"
                try:
                    return option.parse_text(env[name]), origin, f"env {name}"
                except ValueError as exc:
                    raise ConfigError(f"{origin}: {exc}") from None
        if option.name in file_values:
            raw = file_values[option.name]
            origin = f"{option.name} = {_quote(option.show_raw(raw))} in {path}"
            try:
                return option.parse_toml(raw), origin, f"file {path}"
            except ValueError as exc:
                raise ConfigError(f"{origin}: {exc}") from None
        return None

    def _read_file(self, path: Path, origin: str) -> dict[str, Any]:
        """The TOML keys this process reads: top level, overridden by its section."""
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"{origin} {path}: cannot read the file ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin} {path}: not valid TOML ({exc})") from None
        merged: dict[str, Any] = {}
        self._take_keys(data, merged, path, where="")
        section = data.get(self.section) if self.section else None
        if section is not None:
            if not isinstance(section, dict):
                raise ConfigError(f"{path}: [{self.section}] must be a table")
            self._take_keys(section, merged, path, where=f" [{self.section}]")
        return merged

    def _take_keys(
        self, table: Mapping[str, Any], into: dict[str, Any], path: Path, where: str
    ) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                if where:
                    raise ConfigError(f"{path}{where}: unexpected table {key!r}")
                continue  # another process's section
            name = key.replace("-", "_")
            if name not in self._by_name:
                hint = difflib.get_close_matches(name, list(self._by_name), n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigError(f"{path}{where}: unknown setting {key!r}{suggestion}")
            into[name] = value

    # -- documentation ---------------------------------------------------------------------
    def schema(self) -> list[dict[str, str]]:
        """Every option with its flag, variables, TOML key, type, default and help."""
        rows = [
            {"name": "config", "flag": "--config", "env": CONFIG_ENV, "toml": "",
             "type": "path", "default": "(none)",
             "help": "TOML file with settings (top-level keys, then the "
                     f"[{self.section}] table)" if self.section else "TOML file with settings"},
            {"name": "print_config", "flag": "--print-config", "env": "", "toml": "",
             "type": "flag", "default": "", "help": "print the effective settings and "
                                                     "where each came from, then exit"},
        ]
        for option in self.options:
            rows.append({
                "name": option.name, "flag": option.flag, "env": option.env,
                "toml": option.name, "type": option.type_name,
                "default": option.default_text, "help": option.help,
            })
        return rows

    def markdown_table(self) -> str:
        """The options as a Markdown table (docs/collector.md embeds this)."""
        lines = ["| flag | environment | type | default | description |",
                 "| --- | --- | --- | --- | --- |"]
        for row in self.schema():
            env = f"`{row['env']}`" if row["env"] else ""
            default = f"`{row['default']}`".replace("|", "\\|") if row["default"] else ""
            lines.append(f"| `{row['flag']}` | {env} | {row['type']} | {default} | "
                         f"{row['help'].replace('|', chr(92) + '|')} |")
        return "\n".join(lines)


def _quote(text: str) -> str:
    return repr(text) if (not text or any(c.isspace() for c in text)) else text
