"""Strict configuration: every malformed input → ConfigError naming file, key and value."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fastmc import units as u
from fastmc.config import ConfigError, load_model
from fastmc.runcard import load_run

from .conftest import ANALOG_CARD, MODELS, RUNS

CARD = (ANALOG_CARD).read_text()
MODEL = (MODELS / "na64mu_2022.toml").read_text()


def _card(tmp_path: Path, card: str = CARD, model: str = MODEL) -> Path:
    (tmp_path / "model.toml").write_text(model)
    p = tmp_path / "card.toml"
    p.write_text(card.replace('model = "../../models/na64mu_2022.toml"', 'model = "model.toml"'))
    return p


def test_config_quickstart_loads_with_units():
    cfg = load_run(RUNS / "quickstart.toml")
    assert cfg.model.beam.momentum == pytest.approx(160 * u.GeV)
    assert cfg.model.element("ECAL").thickness == pytest.approx(450.0)  # 150 × 3 mm
    assert cfg.model.element("MM1").z == pytest.approx(-2000.0)
    assert cfg.model.beam.divergence_sigma == pytest.approx(0.5e-3)
    assert [r for r, _ in cfg.regions] == ["signal", "control"]
    assert len(cfg.sha256) == 64


CASES = [
    # (description, transform(card, model) -> (card, model), expected key, expected value text)
    ("unknown run key", lambda c, m: (c.replace("seed = 20221", "seed = 20221\nsede = 3"), m), "run.sede", "3"),
    ("wrong type", lambda c, m: (c.replace("seed = 20221", 'seed = "abc"'), m), "run.seed", "'abc'"),
    ("negative n_muons", lambda c, m: (c.replace("n_muons = 262144", "n_muons = -5"), m), "run.n_muons", "-5"),
    ("non-finite mot", lambda c, m: (c.replace("mot = 1.98e10", "mot = nan"), m), "run.mot", "nan"),
    ("inf mot", lambda c, m: (c.replace("mot = 1.98e10", "mot = inf"), m), "run.mot", "inf"),
    ("unknown channel", lambda c, m: (c.replace('channels = ["analog"]', 'channels = ["analogue"]'), m), "run.channels", "analogue"),
    ("bad cut variable", lambda c, m: (c.replace('var = "p_out_GeV", max = 80.0', 'var = "p_outt", max = 80.0'), m),
     "selection.signal.cuts[3].var", "p_outt"),
    ("cut without bounds", lambda c, m: (c.replace('{ var = "p_out_GeV", max = 80.0 }', '{ var = "p_out_GeV" }'), m),
     "selection.signal.cuts[3].var", "p_out_GeV"),
    ("bad scattering model", lambda c, m: (c.replace('scattering = "highland_single"', 'scattering = "moliere"'), m),
     "physics.scattering", "moliere"),
    ("bad process", lambda c, m: (c.replace("v_cut = 1e-3", 'v_cut = 1e-3\nbrems = "brems.xyz"'), m), "physics.brems", "brems.xyz"),
    ("v_cut out of range", lambda c, m: (c.replace("v_cut = 1e-3", "v_cut = 0.9"), m), "physics.v_cut", "0.9"),
    ("missing model", lambda c, m: (c.replace('model = "../../models/na64mu_2022.toml"', 'model = "nope.toml"'), m), "run.model", "nope.toml"),
    ("schema version", lambda c, m: (c.replace("schema_version = 1", "schema_version = 7"), m), "schema_version", "7"),
    ("model negative thickness", lambda c, m: (c, m.replace("thickness_mm = 20.0", "thickness_mm = -20.0")),
     "elements[10].thickness_mm", "-20.0"),
    ("model unknown material", lambda c, m: (c, m.replace('material = "scintillator"\nthickness_mm = 20.0', 'material = "unobtainium"\nthickness_mm = 20.0')),
     "elements[10].material", "unobtainium"),
    ("model unknown key", lambda c, m: (c, m.replace("efficiency = 0.98             # approx.", "efficency = 0.98")),
     "elements[0].efficency", "0.98"),
    ("model overlapping elements", lambda c, m: (c, m.replace("z_m = 0.50", "z_m = 0.30")), "elements[10].z_m", "0.3"),
    ("model efficiency > 1", lambda c, m: (c, m.replace("efficiency = 0.98             # approx.", "efficiency = 1.5")),
     "elements[0].efficiency", "1.5"),
    ("model bad layers", lambda c, m: (c, m.replace('layers = [["lead", 1.5], ["scintillator", 1.5]]', 'layers = [["lead", -1.5]]')),
     "elements[9].layers", "-1.5"),
    ("model spectrometer wrong tracker", lambda c, m: (c, m.replace('upstream = ["MM3", "MM4", "MM5"]', 'upstream = ["MM3", "ECAL"]')),
     "spectrometers[1].upstream", "ECAL"),
    ("model beam momentum", lambda c, m: (c, m.replace("momentum_GeV = 160.0", "momentum_GeV = -160.0")), "beam.momentum_GeV", "-160.0"),
    ("deflect_follow out of range", lambda c, m: (c + "\n[channels.momentum_misreconstruction]\ndeflect_follow = [0.4, -1.0]\n", m),
     "channels.momentum_misreconstruction.deflect_follow", "-1.0"),
    ("deflect_follow with the integrated kink cut", lambda c, m: (c + "\n[channels.momentum_misreconstruction]\ndeflect_follow = [0.4]\n", m),
     "channels.momentum_misreconstruction.deflect_follow", "integrate_kink"),
    ("integrate_kink not a boolean", lambda c, m: (c + '\n[channels.momentum_misreconstruction]\nintegrate_kink = "yes"\n', m),
     "channels.momentum_misreconstruction.integrate_kink", "yes"),
    ("hadron_r95_lambda not positive", lambda c, m: (c + "\n[showers]\nhadron_r95_lambda = -1.0\n", m),
     "showers.hadron_r95_lambda", "-1.0"),
    ("lateral not a boolean", lambda c, m: (c + '\n[showers]\nlateral = "yes"\n', m),
     "showers.lateral", "yes"),
    ("leading_charged above 1", lambda c, m: (c + "\n[showers]\nleading_charged = 1.5\n", m),
     "showers.leading_charged", "1.5"),
    ("deflect_follow not a list", lambda c, m: (c + '\n[channels.momentum_misreconstruction]\ndeflect_follow = "x"\n', m),
     "channels.momentum_misreconstruction.deflect_follow", "x"),
]


@pytest.mark.parametrize("desc,transform,key,value", CASES, ids=[c[0] for c in CASES])
def test_config_malformed_one_line_error(tmp_path, desc, transform, key, value):
    card, model = transform(CARD, MODEL)
    path = _card(tmp_path, card, model)
    with pytest.raises(ConfigError) as err:
        load_run(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert key in msg, msg
    assert value in msg, msg
    assert re.match(r"^\S+\.toml: ", msg), msg  # names the file


def test_config_not_toml(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("schema_version = 1\n[run\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_run(p)


def test_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_model(tmp_path / "absent.toml")


def test_config_mixture_materials_are_shared():
    cfg = load_run(ANALOG_CARD)
    hcal = {cfg.model.element(f"HCAL{i}").material for i in range(1, 5)}
    assert hcal == {"iron25mm+scintillator4mm"}


def test_config_process_names_match_the_physics_registry():
    """The config checks process names against plain data; it must equal the physics registry."""
    from fastmc.config import PROCESS_NAMES
    from fastmc.physics import PROCESSES

    assert PROCESS_NAMES == tuple(PROCESSES)


KERNELS = ("physics", "transport", "response", "reconstruct", "run", "selection", "beam", "channels")


def _fastmc_imports(path: Path) -> set[str]:
    """The fastmc modules a file imports anywhere (module level, in functions, under TYPE_CHECKING)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # "from fastmc import units"
    return {m for m in out if m.split(".")[0] == "fastmc"}


def test_config_imports_no_kernel():
    """fastmc.config is a data layer: it imports no kernel (nor driver, nor channel)."""
    files = sorted((Path(__file__).parents[1] / "fastmc" / "config").glob("*.py"))
    assert files
    for f in files:
        bad = sorted(m for m in _fastmc_imports(f) if m.split(".")[1:2] and m.split(".")[1] in KERNELS)
        assert not bad, f"{f.name} imports {bad}"


TYPOS = [
    # (description, transform(card, model) -> (card, model), expected substrings of the one-line message)
    ("unknown table and missing [run]", lambda c, m: (c.replace("[run]", "[rnu]"), m),
     ("[rnu]", "unknown table", "did you mean [run]?")),
    ("unknown top-level key and missing [run]",
     lambda c, m: (c.replace("schema_version = 1", "schema_version = 1\nsede = 3").replace("[run]", "[xyz]"), m),
     ("sede = 3", "unknown key")),
    ("typo'd table", lambda c, m: (c.replace("[physics]", "[phyiscs]"), m),
     ("[phyiscs]", "unknown table", "did you mean [physics]?")),
    ("typo'd nested table", lambda c, m: (c + "\n[channels.hadron_decy]\nkaon_generation_fraction = 1.0\n", m),
     ("[channels.hadron_decy]", "unknown table", "did you mean [channels.hadron_decay]?")),
    ("typo'd key", lambda c, m: (c.replace("seed = 20221", "sed = 20221"), m),
     ("run.sed = 20221", "unknown key", "did you mean seed?")),
    ("typo'd required key", lambda c, m: (c.replace("n_muons = 262144", "n_muon = 262144"), m),
     ("run.n_muon = 262144", "unknown key", "did you mean n_muons?")),  # issue #26: the typo first
    ("model typo'd table", lambda c, m: (c, m.replace("[beam]", "[bem]")),
     ("[bem]", "unknown table", "did you mean [beam]?")),
    ("model typo'd array of tables", lambda c, m: (c, m.replace("[[elements]]", "[[element]]", 1)),
     ("[[element]]", "unknown array of tables", "did you mean [[elements]]?")),
    ("typo'd cut bound",
     lambda c, m: (c.replace('{ var = "p_out_GeV", max = 80.0 }', '{ var = "p_out_GeV", mx = 80.0 }'), m),
     ("selection.signal.cuts[3].mx = 80.0", "unknown key", "did you mean max?")),
    ("model typo'd optimise element", lambda c, m: (c, m + '\n[optimise."ECL.z_m"]\nmin = -1\nmax = 1\n'),
     ('[optimise."ECL.z_m"]', "no element 'ECL'", "did you mean 'ECAL'?")),
]


@pytest.mark.parametrize("desc,transform,needles", TYPOS, ids=[t[0] for t in TYPOS])
def test_config_unknown_names_reported_first_with_a_suggestion(tmp_path, desc, transform, needles):
    """A typo is reported as such (before any table or key it hides is reported missing), on one
    line naming the file, the key and the value, with the closest known name; a table is named,
    never dumped."""
    card, model = transform(CARD, MODEL)
    path = _card(tmp_path, card, model)
    with pytest.raises(ConfigError) as err:
        load_run(path)
    msg = str(err.value)
    assert "\n" not in msg and "{" not in msg, msg
    assert re.match(r"^\S+\.toml: ", msg), msg
    for needle in needles:
        assert needle in msg, msg
