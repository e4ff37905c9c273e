"""The strict TOML reader shared by run cards and setup models.

:class:`Section` consumes one TOML table through typed getters that remember the keys they read;
:meth:`Section.finish` rejects the keys nobody read.  Every problem is a :class:`ConfigError`
whose message is one line naming the file, the key path and the offending value.  This module
also holds the signal-mass check shared by the run card and the per-channel tables.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastmc import SCHEMA_VERSION
from fastmc import units as u


class ConfigError(ValueError):
    """A malformed configuration; ``str(err)`` is a single line naming file, key and value."""


MISSING = object()
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_array_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


class Section:
    """A TOML table being consumed: typed getters that remember which keys were used.

    :meth:`finish` rejects the keys no getter read.  A table whose keys are all known up front
    (the top level of a file) declares them with :meth:`expect`, which rejects the others at
    once, so that a typo is reported as such rather than as the table or key it hides missing.
    """

    def __init__(self, path: Path, prefix: str, data: dict[str, Any]):
        self.path = path
        self.prefix = prefix
        self.data = data
        self.used: set[str] = set()
        self.known: tuple[str, ...] | None = None

    def key(self, name: str) -> str:
        name = name if _BARE_KEY.fullmatch(name) else f'"{name}"'
        return f"{self.prefix}{name}" if not self.prefix else f"{self.prefix}.{name}"

    def show(self, name: str, value: Any = MISSING, what: str = "key") -> str:
        """``key = value``, or ``[key]`` / ``[[key]]`` for a table / an array of tables (never dumped)."""
        if what == "table" or _is_table(value):
            return f"[{self.key(name)}]"
        if what == "array of tables" or _is_array_of_tables(value):
            return f"[[{self.key(name)}]]"
        return self.key(name) if value is MISSING else f"{self.key(name)} = {value!r}"

    def fail(self, name: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.show(name, value)}: {why}")

    def unknown(self, name: str, known: Sequence[str]) -> ConfigError:
        """The error for a key (or table) ``name`` not among ``known``, with the closest known name."""
        value = self.data[name]
        what = "table" if _is_table(value) else "array of tables" if _is_array_of_tables(value) else "key"
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = ""
        if close:
            hint = f" (did you mean {close[0] if what == 'key' else self.show(close[0], what=what)}?)"
        return self.fail(name, value, f"unknown {what}{hint}")

    def expect(self, known: Sequence[str]) -> None:
        """Declare every key this table may hold; raise at once on the first other one (in file order)."""
        self.known = tuple(known)
        for name in self.data:
            if name not in self.known:
                raise self.unknown(name, self.known)

    def raw(self, name: str, default: Any, what: str = "key") -> Any:
        if self.known is not None and name not in self.known:
            raise KeyError(f"{self.key(name)!r} is read but not declared in expect()")  # a bug in fastmc
        self.used.add(name)
        if name in self.data:
            return self.data[name]
        if default is MISSING:
            typo = self._typo(name)
            if typo is not None:  # the unknown key is the cause: report it first, as such
                raise self.fail(typo, self.data[typo], f"unknown {self._what(typo)} (did you mean "
                                f"{name if self._what(typo) == 'key' else self.show(name, what=what)}?)")
            raise ConfigError(f"{self.path}: {self.show(name, what=what)}: required {what} is missing")
        return default

    def _typo(self, name: str) -> str | None:
        """An unread, undeclared key of this table close to the missing ``name`` (a typo of it), or None."""
        unread = [k for k in self.data if k not in self.used and (self.known is None or k not in self.known)]
        close = difflib.get_close_matches(name, unread, n=1)
        return close[0] if close else None

    def _what(self, name: str) -> str:
        value = self.data[name]
        return "table" if _is_table(value) else "array of tables" if _is_array_of_tables(value) else "key"

    def number(
        self,
        name: str,
        default: Any = MISSING,
        *,
        gt: float | None = None,
        ge: float | None = None,
        lt: float | None = None,
        le: float | None = None,
        integer: bool = False,
    ) -> Any:
        value = self.raw(name, default)
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

    def string(self, name: str, default: Any = MISSING, choices: Sequence[str] | None = None) -> Any:
        value = self.raw(name, default)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(name, value, "must be a string")
        if choices is not None and value not in choices:
            raise self.fail(name, value, f"must be one of {', '.join(choices)}")
        return value

    def boolean(self, name: str, default: Any = MISSING) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, value, "must be true or false")
        return value

    def strings(self, name: str, default: Any = MISSING) -> tuple[str, ...]:
        value = self.raw(name, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, value, "must be a list of strings")
        return tuple(value)

    def numbers(self, name: str, default: Any = MISSING, *, gt: float | None = None,
                le: float | None = None) -> tuple[float, ...]:
        value = self.raw(name, default)
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            raise self.fail(name, value, "must be a list of finite numbers")
        for v in value:
            if (gt is not None and not v > gt) or (le is not None and not v <= le):
                raise self.fail(name, list(value), f"every value must be in ({gt:g}, {le:g}]")
        return tuple(float(v) for v in value)

    def table(self, name: str, default: Any = MISSING) -> Section:
        value = self.raw(name, default, "table")
        if not isinstance(value, dict):
            raise self.fail(name, value, "must be a table")
        return Section(self.path, self.key(name), value)

    def tables(self, name: str, default: Any = MISSING) -> list[Section]:
        value = self.raw(name, default, "array of tables")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(name, value, "must be an array of tables")
        return [Section(self.path, f"{self.key(name)}[{i}]", v) for i, v in enumerate(value)]

    def finish(self) -> None:
        """Raise on the first key (in file order) that no getter read, suggesting one that was read."""
        for name in self.data:
            if name not in self.used:
                raise self.unknown(name, sorted(self.used | set(self.known or ())))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_toml(path: Path, known: Sequence[str]) -> Section:
    """The top-level table of a file whose top-level keys are ``known`` (``schema_version`` among them).

    A wrong ``schema_version`` is reported first (another schema has other keys), then unknown
    top-level keys and tables, and only then a missing ``schema_version``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError as err:  # a binary file (an image, an HDF5 output) given as a card or model
        raise ConfigError(f"{path}: not a TOML text file (byte {err.start} is not UTF-8: a binary file?)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    root = Section(path, "", data)
    version = root.number("schema_version", None, integer=True)
    if version is not None and version != SCHEMA_VERSION:
        raise root.fail("schema_version", version, f"this fastmc reads schema_version {SCHEMA_VERSION}")
    root.expect(known)
    root.number("schema_version", integer=True)  # required
    return root


def validate_override(name: str, value: Any, check: Callable[[Any], bool], why: str, flag: str) -> None:
    """Raise a one-line ConfigError for a bad command-line override."""
    if not check(value):
        raise ConfigError(f"command line: {flag} = {value!r}: {why}")


# ----------------------------------------------------------------------------------------
# A check shared by the run card and the per-channel tables
# ----------------------------------------------------------------------------------------

SIGNAL_MODELS = ("z_prime", "dark_photon", "scalar")  # fastmc.physics.darkbrem.SIGNAL_MODELS
SIGNAL_MAX_MASS = 3000.0 * u.MeV  # below 2m_τ: the Z′ invisible branching fraction holds (darkbrem)


def check_signal_mass(mass_MeV: Any, fail: Callable[[str], Exception]) -> None:
    """Raise ``fail(why)`` unless 0 < mass ≤ SIGNAL_MAX_MASS (MeV)."""
    if not math.isfinite(mass_MeV) or not 0.0 < mass_MeV <= SIGNAL_MAX_MASS / u.MeV:
        raise fail(f"must be a finite mass in (0, {SIGNAL_MAX_MASS / u.MeV:g}] MeV")

