"""Shared fixtures.  Physics tables are cached per test session in a temporary folder unless
FASTMC_CACHE is set (CI sets nothing: the first test that needs tables builds them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs"
MODELS = ROOT / "models"
# the tests' small analog-only card (runs/quickstart.toml runs three channels; see the card's header)
ANALOG_CARD = ROOT / "tests" / "data" / "analog_card.toml"


@pytest.fixture(scope="session", autouse=True)
def _table_cache(tmp_path_factory):
    if "FASTMC_CACHE" not in os.environ:
        os.environ["FASTMC_CACHE"] = str(tmp_path_factory.mktemp("fastmc_cache"))
    yield


@pytest.fixture
def quickstart_card() -> Path:
    return ANALOG_CARD


def write_card(tmp_path: Path, text: str, model_text: str | None = None, name: str = "card.toml") -> Path:
    """Write a run card (and optionally a model next to it, referenced as model.toml)."""
    if model_text is not None:
        (tmp_path / "model.toml").write_text(model_text)
    p = tmp_path / name
    p.write_text(text)
    return p


# The files whose tests take longest (compile-bound: a few XLA programs of a minute or more each)
# run first, so that under pytest-xdist (one file per worker at a time) no long file starts last
# and leaves the other worker idle: longest-processing-time-first scheduling.
_LONG_FIRST = ("test_optimise.py", "test_channels.py", "test_scaling.py", "test_showers.py", "test_cli.py",
               "test_chain.py", "test_signal.py")


def pytest_addoption(parser):
    parser.addoption("--gold", action="store_true", help="run the whole regression tier (tests/test_gold.py)")
    parser.addoption("--regen-gold", action="store_true", help="rewrite the gold numbers (on purpose only)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--gold"):
        skip = pytest.mark.skip(reason="gold tier: run with --gold (tests/test_gold.py)")
        for item in items:
            if item.get_closest_marker("gold") is not None:
                item.add_marker(skip)
    rank = {name: i for i, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
