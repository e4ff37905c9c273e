"""The strict TOML reader shared by run cards and setup models.

:class:`_Section` consumes one TOML table through typed getters that remember the keys they read;
:meth:`_Section.finish` rejects the keys nobody read.  Every problem is a :class:`ConfigError`
whose message is one line naming the file, the key path and the offending value.  This module
also holds the signal-mass check shared by the run card and the per-channel tables.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastmc import SCHEMA_VERSION
from fastmc import units as u


class ConfigError(ValueError):
    """A malformed configuration; ``str(err)`` is a single line naming file, key and value."""


_MISSING = object()


class _Section:
    """A TOML table being consumed: typed getters that remember which keys were used."""

    def __init__(self, path: Path, prefix: str, data: dict[str, Any]):
        self.path = path
        self.prefix = prefix
        self.data = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}" if not self.prefix else f"{self.prefix}.{name}"

    def fail(self, name: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.key(name)} = {value!r}: {why}")

    def _raw(self, name: str, default: Any) -> Any:
        self.used.add(name)
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise ConfigError(f"{self.path}: {self.key(name)}: required key is missing")
        return default

    def number(
        self,
        name: str,
        default: Any = _MISSING,
        *,
        gt: float | None = None,
        ge: float | None = None,
        lt: float | None = None,
        le: float | None = None,
        integer: bool = False,
    ) -> Any:
        value = self._raw(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, value, "must be a number")
        if integer:
            if isinstance(value, float):
                if not value.is_integer():
                    raise self.fail(name, value, "must be an integer")
                value = int(value)
        elif not math.isfinite(value):
            raise self.fail(name, value, "must be finite")
        if gt is not None and not value > gt:
            raise self.fail(name, value, f"must be > {gt:g}")
        if ge is not None and not value >= ge:
            raise self.fail(name, value, f"must be >= {ge:g}")
        if lt is not None and not value < lt:
            raise self.fail(name, value, f"must be < {lt:g}")
        if le is not None and not value <= le:
            raise self.fail(name, value, f"must be <= {le:g}")
        return value

    def string(self, name: str, default: Any = _MISSING, choices: Sequence[str] | None = None) -> Any:
        value = self._raw(name, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(name, value, "must be a string")
        if choices is not None and value not in choices:
            raise self.fail(name, value, f"must be one of {', '.join(choices)}")
        return value

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        value = self._raw(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, value, "must be true or false")
        return value

    def strings(self, name: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self._raw(name, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, value, "must be a list of strings")
        return tuple(value)

    def numbers(self, name: str, default: Any = _MISSING, *, gt: float | None = None,
                le: float | None = None) -> tuple[float, ...]:
        value = self._raw(name, default)
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            raise self.fail(name, value, "must be a list of finite numbers")
        for v in value:
            if (gt is not None and not v > gt) or (le is not None and not v <= le):
                raise self.fail(name, list(value), f"every value must be in ({gt:g}, {le:g}]")
        return tuple(float(v) for v in value)

    def table(self, name: str, default: Any = _MISSING) -> _Section:
        value = self._raw(name, default)
        if not isinstance(value, dict):
            raise self.fail(name, value, "must be a table")
        return _Section(self.path, self.key(name), value)

    def tables(self, name: str, default: Any = _MISSING) -> list[_Section]:
        value = self._raw(name, default)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(name, value, "must be an array of tables")
        return [_Section(self.path, f"{self.key(name)}[{i}]", v) for i, v in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            k = unknown[0]
            raise ConfigError(f"{self.path}: {self.key(k)} = {self.data[k]!r}: unknown key")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_toml(path: Path) -> _Section:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    root = _Section(path, "", data)
    version = root.number("schema_version", integer=True)
    if version != SCHEMA_VERSION:
        raise root.fail("schema_version", version, f"this fastmc reads schema_version {SCHEMA_VERSION}")
    return root


def validate_override(name: str, value: Any, check: Callable[[Any], bool], why: str, flag: str) -> None:
    """Raise a one-line ConfigError for a bad command-line override."""
    if not check(value):
        raise ConfigError(f"command line: {flag} = {value!r}: {why}")


# ----------------------------------------------------------------------------------------
# A check shared by the run card and the per-channel tables
# ----------------------------------------------------------------------------------------

SIGNAL_MAX_MASS = 3000.0 * u.MeV  # below 2m_τ: the Z′ invisible branching fraction holds (darkbrem)


def check_signal_mass(mass_MeV: Any, fail: Callable[[str], Exception]) -> None:
    """Raise ``fail(why)`` unless 0 < mass ≤ SIGNAL_MAX_MASS (MeV)."""
    if not math.isfinite(mass_MeV) or not 0.0 < mass_MeV <= SIGNAL_MAX_MASS / u.MeV:
        raise fail(f"must be a finite mass in (0, {SIGNAL_MAX_MASS / u.MeV:g}] MeV")

