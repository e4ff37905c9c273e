"""Differentiable optimisation of a setup's geometry: ``fastmc optimize``.

What moves.  A model declares its optimisable numbers as ``[optimise."<element>.<field>"]`` tables
with ``min``, ``max`` (the file's unit) and an optional ``cost_per_unit`` (fields:
:data:`fastmc.config.OPTIMISE_FIELDS` — positions, slab depths, field integrals, tracker
resolutions); everything else is frozen.  They are leaves of the :class:`fastmc.geometry.Setup`
pytree, so moving them never recompiles.  The optimiser works in unconstrained coordinates
ζ = logit((x − min)/(max − min)).

Soft mode.  The objective is evaluated on the same chain as every projection, with three changes
(static switches; hard mode is untouched):

* every cut of the card's first region is a product of logistic edges of width
  temperature × |cut| (:func:`fastmc.selection.soft_pass`);
* discrete draws whose law depends on a slab's length (interaction counts, hadron absorption)
  are drawn from a frozen *reference* geometry ``x_ref`` and reweighted to ``x``
  (:func:`fastmc.transport.transport`): for fixed keys the estimate is smooth in the depths and
  its gradient at x = x_ref is the pathwise + likelihood-ratio gradient (unbiased for the soft
  objective; Glasserman (2004) §7.2–7.3);
* a leading neutral hadron meets slab apertures with logistic edges.

Continuous draws (positions, angles, energies, resolutions, field integrals) are pathwise with
common random numbers: one key per step (or per ``resample_every`` steps).  Hit categories
(efficiency, tails, pile-up) do not depend on optimisable numbers and stay discrete.

Objective.  The background B = Σ_c MOT·⟨w·s⟩_c over the card's biased channels and the signal
yield Y = MOT·BR·⟨w·s⟩_signal per g² at a benchmark mass (the signal channel of
:mod:`fastmc.sensitivity`: one forced dark-boson emission in the target) give Punzi's figure of
merit FOM = Y/(a/2 + √B) (G. Punzi, PHYSTAT 2003, arXiv:physics/0308063, eq. (7); a = 1.28 for a
one-sided 90 % CL), which is ∝ 1/g²_up for small B and does not need the signal's coupling.
loss = −log FOM + w_c·h(cost/budget − 1) + w_L·h(length/max_length − 1), with the smooth hinge
h(t) = softplus(20 t)/20 and cost = Σ cost_per_unit·x.

The result is not the soft objective: the optimised model is written out and re-run in hard mode
with fresh keys (``fastmc project`` and the signal channel), beside the baseline.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fastmc import units as u
from fastmc.chain import SoftMode, prepare, simulate_events
from fastmc.config import OPTIMISE_FIELDS, ConfigError, OptimiseParam, RunConfig, load_model
from fastmc.io import atomic_h5, provenance, write_header
from fastmc.physics.darkbrem import build_emission_tables, invisible_branching
from fastmc.projection import projection
from fastmc.run import run
from fastmc.selection import soft_pass
from fastmc.sensitivity import signal_run_config, signal_yields, target_material

HINGE_SHARPNESS = 20.0


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static (hashable) description of the objective: changing it recompiles."""
    params: tuple[tuple[int, str, float], ...]  # (element index, Element attribute, scale) per parameter
    channels: tuple[Any, ...]  # fastmc.channels.base.Channel of each background channel
    opts_bkg: Any
    opts_sig: Any
    signal: Any  # the signal channel
    signal_slot: int  # final slot of the first region
    batch: int


@dataclasses.dataclass
class Problem:
    """Everything fixed during one optimisation."""
    cfg: RunConfig
    params: tuple[OptimiseParam, ...]
    spec: Spec
    data: dict[str, Any]  # pytree: setups, physics, selection, channel params
    br_invisible: float
    lo: np.ndarray
    hi: np.ndarray
    x0: np.ndarray
    cost: np.ndarray
    first_last: tuple[int, int]


def build_problem(cfg: RunConfig, batch: int | None = None) -> Problem:
    """Prepare the background channels and the signal channel of ``cfg`` for the soft objective."""
    params = cfg.model.optimise
    if not params:
        raise ConfigError(f"{cfg.model.path}: optimise: the model declares no optimisable number "
                          '(add [optimise."ELEMENT.FIELD"] tables with min and max)')
    st = cfg.optimise
    bsz = int(batch or st.batch)
    cfg_b = cfg.with_overrides(channels=st.channels, chunk_size=bsz, save_events=False)
    prep_b = prepare(cfg_b)
    cfg_s = signal_run_config(cfg).with_overrides(chunk_size=bsz)
    prep_s = prepare(cfg_s)
    mass = st.signal_mass_MeV * u.MeV
    sig = cfg.channel_settings["signal"]
    tab = build_emission_tables(sig.model, mass, target_material(cfg, prep_s.setup))
    setup = prep_b.setup
    spec_params = tuple((setup.index(p.element), OPTIMISE_FIELDS[p.field][0], p.scale) for p in params)
    region = cfg.regions[0][0]
    signal_slot = [i for i, s in enumerate(prep_b.selection.slots()) if s[0] == region][-1]
    spec = Spec(spec_params, tuple(prep_b.channels[ch] for ch in cfg_b.channels), prep_b.options, prep_s.options,
                prep_s.channels["signal"], signal_slot, bsz)
    data = {
        "setup": setup,
        "physics_b": prep_b.physics,
        "physics_s": prep_s.physics,
        "selection": prep_b.selection,
        "params_b": {ch: prep_b.params[ch] for ch in cfg_b.channels},
        "params_s": dataclasses.replace(prep_s.params["signal"], admixture=None, tables=tab),
        "showers_b": prep_b.showers,
        "showers_s": prep_s.showers,
        "mot": jnp.asarray(cfg.mot, jnp.result_type(float)),
    }
    lo = np.array([p.lo for p in params])
    hi = np.array([p.hi for p in params])
    x0 = np.array([p.value for p in params])
    return Problem(cfg, params, spec, data, invisible_branching(sig.model, mass), lo, hi, x0,
                   np.array([p.cost_per_unit for p in params]), (0, len(setup.elements) - 1))


def apply_params(setup, spec_params, x):
    """The setup with the optimisable leaves set from ``x`` (file units; traced or concrete)."""
    els = list(setup.elements)
    for i, (j, attr, scale) in enumerate(spec_params):
        old = getattr(els[j], attr)
        els[j] = dataclasses.replace(els[j], **{attr: (x[i] * scale).astype(old.dtype)})
    return dataclasses.replace(setup, elements=tuple(els))


def _channel_events(setup, setup_ref, physics, selection, key, opts, channel, params, showers, temperature, slot,
                    bsz):
    """Per-event contributions w·s (B,) of one channel in soft mode: weight × soft pass."""
    out = simulate_events(setup, physics, key, opts, channel, params, showers, SoftMode(setup_ref, temperature))
    variables, log_w = out.variables, out.log_w
    s = soft_pass(selection, variables, jnp.ones((bsz,), bool), temperature)[slot]
    ok = jnp.isfinite(log_w)
    w = jnp.where(ok, jnp.exp(jnp.where(ok, log_w, 0.0)), 0.0)
    return w * s


def event_terms(x, x_ref, key, temperature, data, spec: Spec) -> dict[str, jnp.ndarray]:
    """Soft-mode per-event contributions: ``B_<channel>`` (events at MOT per generated muon, (B,))
    and ``signal`` (emission probability × soft pass per muon for g = 1, (B,))."""
    setup = apply_params(data["setup"], spec.params, x)
    setup_ref = apply_params(data["setup"], spec.params, jax.lax.stop_gradient(x_ref))
    out = {}
    for i, ch in enumerate(spec.channels):
        c = _channel_events(setup, setup_ref, data["physics_b"], data["selection"], jax.random.fold_in(key, i),
                            spec.opts_bkg, ch, data["params_b"][ch.name], data["showers_b"], temperature,
                            spec.signal_slot, spec.batch)
        out[f"B_{ch.name}"] = data["mot"] * c
    out["signal"] = _channel_events(setup, setup_ref, data["physics_s"], data["selection"],
                                    jax.random.fold_in(key, 1000), spec.opts_sig, spec.signal, data["params_s"],
                                    data["showers_s"], temperature, spec.signal_slot, spec.batch)
    return out


def hinge(t):
    """Smooth max(t, 0): softplus(k t)/k, k = HINGE_SHARPNESS."""
    return jax.nn.softplus(HINGE_SHARPNESS * t) / HINGE_SHARPNESS


def penalties(x, setup, settings: dict) -> dict[str, jnp.ndarray]:
    """Cost and length penalties (smooth hinges) of parameters ``x`` on ``setup``."""
    cost = jnp.sum(settings["cost_per_unit"] * x)
    out = {"cost": cost, "penalty_cost": jnp.zeros_like(cost), "length_m": jnp.zeros_like(cost),
           "penalty_length": jnp.zeros_like(cost)}
    if settings.get("budget") is not None:
        out["penalty_cost"] = settings["cost_weight"] * hinge(cost / settings["budget"] - 1.0)
    first, last = setup.elements[0], setup.elements[-1]
    length = (last.z + last.thickness - first.z) / u.m
    out["length_m"] = length
    if settings.get("max_length_m") is not None:
        out["penalty_length"] = settings["length_weight"] * hinge(length / settings["max_length_m"] - 1.0)
    return out


def fom(signal_yield, background, a):
    """Punzi's figure of merit Y/(a/2 + √B) (arXiv:physics/0308063 eq. (7))."""
    return signal_yield / (0.5 * a + jnp.sqrt(jnp.maximum(background, 0.0) + 1e-12))


def objective_from_means(means, x, data, settings, spec: Spec):
    """(loss, components) from the channel means of :func:`event_terms` and the parameters."""
    bkg = sum(means[f"B_{ch.name}"] for ch in spec.channels)
    y = data["mot"] * settings["br"] * means["signal"]
    f = fom(y, bkg, settings["punzi_a"])
    pen = penalties(x, apply_params(data["setup"], spec.params, x), settings)
    loss = -jnp.log(jnp.maximum(f, 1e-300)) + pen["penalty_cost"] + pen["penalty_length"]
    comps = {**means, "background": bkg, "signal_events_g1": y, "fom": f, **pen}
    return loss, comps


@functools.partial(jax.jit, static_argnames=("spec",))
def value_and_grad(x, x_ref, key, temperature, data, settings, spec: Spec):
    """Loss, components and ∂loss/∂x — compiled once per problem; x, x_ref, key, temperature and
    every geometry number are traced (moving them never recompiles).

    The per-event contributions are differentiated in forward mode (``jax.jacfwd``: one tangent
    per parameter, a handful of them, and no reverse pass through the transport scan).  An event
    whose tangent is not finite (a float overflow at a singular point of the chain, e.g. an
    extreme shower-fluctuation draw) is left out of the gradient — not of the value — and counted
    in the component ``n_nonfinite_tangents``; the chain rule through the means is then exact.
    """
    def f(xx):
        ev = event_terms(xx, x_ref, key, temperature, data, spec)
        return ev, ev

    jac, ev = jax.jacfwd(f, has_aux=True)(x)
    means = {k: jnp.mean(v) for k, v in ev.items()}
    dmeans, bad = {}, jnp.zeros((), jnp.int32)
    for k, jk in jac.items():  # (B, n_params)
        fin = jnp.all(jnp.isfinite(jk), axis=1)
        bad = bad + jnp.sum(~fin)
        dmeans[k] = jnp.mean(jnp.where(fin[:, None], jk, 0.0), axis=0)
    (loss, comps), (g_m, g_x) = jax.value_and_grad(objective_from_means, argnums=(0, 1), has_aux=True)(
        means, x, data, settings, spec)
    g = g_x + sum(g_m[k] * dmeans[k] for k in means)
    comps = {**comps, "n_nonfinite_tangents": bad}
    return loss, comps, g


def settings_tree(problem: Problem) -> dict[str, Any]:
    st = problem.cfg.optimise
    dt = jnp.result_type(float)
    out = {"cost_per_unit": jnp.asarray(problem.cost, dt), "br": jnp.asarray(problem.br_invisible, dt),
           "punzi_a": jnp.asarray(st.punzi_a, dt), "cost_weight": jnp.asarray(st.cost_weight, dt),
           "length_weight": jnp.asarray(st.length_weight, dt)}
    if st.budget is not None:
        out["budget"] = jnp.asarray(st.budget, dt)
    if st.max_length_m is not None:
        out["max_length_m"] = jnp.asarray(st.max_length_m, dt)
    return out


def evaluate(problem: Problem, x, key, x_ref=None, temperature=None):
    """(loss, components, gradient) as numpy, at ``x`` with the frozen proposal at ``x_ref`` (default x)."""
    dt = jnp.result_type(float)
    x = jnp.asarray(x, dt)
    x_ref = x if x_ref is None else jnp.asarray(x_ref, dt)
    t = jnp.asarray(problem.cfg.optimise.temperature if temperature is None else temperature, dt)
    loss, comps, g = value_and_grad(x, x_ref, key, t, problem.data, settings_tree(problem), problem.spec)
    return float(loss), {k: float(v) for k, v in comps.items()}, np.asarray(g, dtype=np.float64)


def to_unconstrained(x, lo, hi):
    f = np.clip((np.asarray(x) - lo) / (hi - lo), 1e-6, 1 - 1e-6)
    return np.log(f) - np.log1p(-f)


def from_unconstrained(z, lo, hi):
    return lo + (hi - lo) / (1.0 + np.exp(-np.asarray(z)))


def optimise(problem: Problem, steps: int | None = None, seed: int | None = None, progress: bool = True,
             log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Adam (Kingma & Ba, arXiv:1412.6980, Alg. 1, β = (0.9, 0.999)) on ζ; returns the history."""
    from tqdm import tqdm

    st = problem.cfg.optimise
    n = int(steps or st.steps)
    seed = problem.cfg.seed if seed is None else seed
    lo, hi = problem.lo, problem.hi
    z = to_unconstrained(problem.x0, lo, hi)
    m, v = np.zeros_like(z), np.zeros_like(z)
    b1, b2, eps = 0.9, 0.999, 1e-8
    hist: dict[str, list] = {"loss": [], "grad_norm": [], "x": [], "seconds": []}
    base = jax.random.key(seed)
    t0 = time.perf_counter()
    for step in tqdm(range(n + 1), desc="optimising", unit="step", disable=not progress, dynamic_ncols=True):
        x = from_unconstrained(z, lo, hi)
        key = jax.random.fold_in(base, step // st.resample_every)
        loss, comps, gx = evaluate(problem, x, key)
        gz = gx * (x - lo) * (hi - x) / (hi - lo)
        hist["loss"].append(loss)
        hist["grad_norm"].append(float(np.linalg.norm(gz)))
        hist["x"].append(x.copy())
        hist["seconds"].append(time.perf_counter() - t0)
        for k, val in comps.items():
            hist.setdefault(k, []).append(val)
        if not np.all(np.isfinite(gz)):
            named = dict(zip([p.name for p in problem.params], gx))
            raise FloatingPointError(f"non-finite gradient at step {step}: {named}")
        bad = int(comps["n_nonfinite_tangents"])
        log(f"step {step:3d}: loss {loss:.4f}  FOM {comps['fom']:.4g}  B {comps['background']:.4g}  "
            + "  ".join(f"{p.name}={xi:.4g}" for p, xi in zip(problem.params, x))
            + (f"  ({bad} events with non-finite tangents left out of the gradient)" if bad else ""))
        if step == n:
            break
        m = b1 * m + (1 - b1) * gz
        v = b2 * v + (1 - b2) * gz * gz
        mh, vh = m / (1 - b1 ** (step + 1)), v / (1 - b2 ** (step + 1))
        z = z - st.learning_rate * mh / (np.sqrt(vh) + eps)
    out = {k: np.asarray(val) for k, val in hist.items()}
    out["x_final"] = hist["x"][-1]
    out["names"] = [p.name for p in problem.params]
    return out


# ----------------------------------------------------------------------------------------
# writing the optimised model; hard-mode evaluation
# ----------------------------------------------------------------------------------------

def file_values(params: tuple[OptimiseParam, ...], x) -> list[float | int]:
    """Values to write in the model file: n_layers rounded to the nearest integer within bounds."""
    out: list[float | int] = []
    for p, xi in zip(params, x):
        if p.field == "n_layers":
            k = round(float(xi))
            k = min(max(k, math.ceil(p.lo)), math.floor(p.hi))
            out.append(k)
        else:
            out.append(float(f"{float(xi):.6g}"))
    return out


def write_model(src: Path, dst: Path, params: tuple[OptimiseParam, ...], x, header: str) -> Path:
    """Copy model ``src`` to ``dst`` with the optimised values (comments kept), then validate it."""
    lines = Path(src).read_text().splitlines()
    values = file_values(params, x)
    # element blocks: [[elements]] ... up to the next [[ or [ table of another array
    starts = [i for i, ln in enumerate(lines) if ln.strip() == "[[elements]]"]
    for p, val in zip(params, values):
        done = False
        for k, s in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(lines)
            block = range(s, end)
            if not any(re.match(rf'\s*name\s*=\s*"{re.escape(p.element)}"', lines[i]) for i in block):
                continue
            for i in block:
                mt = re.match(rf"(\s*{p.field}\s*=\s*)([^#\s]+)(.*)$", lines[i])
                if mt:
                    lines[i] = f"{mt.group(1)}{val}{mt.group(3)}  # fastmc optimize (was {mt.group(2)})"
                    done = True
                    break
            break
        if not done:
            raise ConfigError(f"{src}: cannot find {p.field} of element {p.element!r} to write the optimised value")
    for i, ln in enumerate(lines):
        mt = re.match(r'(\s*name\s*=\s*")([^"]*)(".*)$', ln)
        if mt:  # the model's own name (the first top-level key named name)
            lines[i] = f"{mt.group(1)}{mt.group(2)}_optimised{mt.group(3)}"
            break
    text = "\n".join("# " + h if h else "#" for h in header.splitlines()) + "\n" + "\n".join(lines) + "\n"
    tmp = Path(str(dst) + ".tmp")
    tmp.write_text(text)
    try:
        load_model(tmp)
    except ConfigError:
        tmp.unlink()
        raise
    tmp.replace(dst)
    return dst


def write_card(card: Path, model: Path, dst: Path) -> Path:
    """Copy run card ``card`` to ``dst`` with ``run.model`` pointing at ``model``."""
    text = Path(card).read_text()
    rel = Path(__import__("os").path.relpath(Path(model).resolve(), Path(dst).resolve().parent))
    new, n = re.subn(r'(?m)^(\s*model\s*=\s*")[^"]*(".*)$', lambda mt: f"{mt.group(1)}{rel.as_posix()}{mt.group(2)}",
                     text, count=1)
    if n != 1:
        raise ConfigError(f"{card}: run.model: cannot rewrite the model path")
    dst.write_text(new)
    return dst


def hard_evaluation(cfg: RunConfig, seed: int, n_muons: int, progress: bool = False,
                    log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Hard-mode background (every channel of the optimisation), signal yield and FOM with errors."""
    st = cfg.optimise
    cfg_b = cfg.with_overrides(channels=st.channels, seed=seed, n_muons=n_muons, save_events=False,
                               chunk_size=min(cfg.chunk_size, n_muons))
    res = run(cfg_b, progress=progress)
    proj = projection(cfg_b, res)
    bkg = sum(c["expected"] for c in proj["channels"].values())
    bkg_err = math.sqrt(sum(c["stat_err"] ** 2 for c in proj["channels"].values()))
    rows, _, _ = signal_yields(cfg_b, [st.signal_mass_MeV * u.MeV], cfg.channel_settings["signal"].model,
                               n_muons=n_muons, log=log)
    y = cfg.mot * rows[0]["yield_per_mot_g1"]
    y_err = cfg.mot * rows[0]["yield_per_mot_g1_err"]
    den = 0.5 * st.punzi_a + math.sqrt(max(bkg, 0.0))
    f = y / den
    # δFOM: independent samples for Y and B; ∂FOM/∂B = −FOM/(2√B·den)
    d_b = f / (2.0 * math.sqrt(bkg) * den) * bkg_err if bkg > 0 else 0.0
    f_err = math.sqrt((y_err / den) ** 2 + d_b**2)
    return {"channels": {k: {"expected": c["expected"], "stat_err": c["stat_err"], "n_selected": c["n_selected"],
                             "upper_limit_90": c.get("upper_limit_90")} for k, c in proj["channels"].items()},
            "background": bkg, "background_err": bkg_err, "signal_events_g1": y, "signal_events_g1_err": y_err,
            "efficiency": rows[0]["efficiency"], "fom": f, "fom_err": f_err, "seed": seed, "n_muons": n_muons,
            "model": str(cfg.model.path), "seconds": res.seconds}, res


def write_history(path: Path, cfg: RunConfig, problem: Problem, hist: dict[str, Any], evaluation: dict[str, Any],
                  model_text: str, result, command_line: str) -> None:
    """HDF5: /optimise (per-step loss, components, gradient norm, parameters), /evaluation, provenance."""
    import json


    with atomic_h5(Path(path)) as f:
        write_header(f, "optimise", command_line, None if result is None else provenance(cfg, result))
        g = f.create_group("config")
        g.attrs["json"] = json.dumps(cfg.to_dict())
        g.attrs["run_card"] = Path(cfg.path).read_text() if Path(cfg.path).is_file() else ""
        g.attrs["model"] = Path(cfg.model.path).read_text() if Path(cfg.model.path).is_file() else ""
        o = f.create_group("optimise")
        for k, v in hist.items():
            if k in ("names", "x_final"):
                continue
            o.create_dataset(k, data=np.asarray(v, dtype=np.float64))
        o.attrs["names"] = json.dumps([p.name for p in problem.params])
        o.attrs["units"] = json.dumps([p.unit for p in problem.params])
        o.attrs["min"] = problem.lo
        o.attrs["max"] = problem.hi
        o.attrs["x_final"] = np.asarray(hist["x_final"], dtype=np.float64)
        o.attrs["settings_json"] = json.dumps(dataclasses.asdict(cfg.optimise))
        o.attrs["optimised_model"] = model_text
        e = f.create_group("evaluation")
        for k, v in evaluation.items():
            e.attrs[k] = json.dumps(v)


def read_history(path: Path) -> dict[str, Any]:
    import json

    import h5py

    with h5py.File(path, "r") as f:
        o = f["optimise"]
        out = {k: np.asarray(o[k]) for k in o}
        out["names"] = json.loads(o.attrs["names"])
        out["units"] = json.loads(o.attrs["units"])
        out["min"], out["max"] = np.asarray(o.attrs["min"]), np.asarray(o.attrs["max"])
        out["evaluation"] = {k: json.loads(v) for k, v in f["evaluation"].attrs.items()}
    return out


def format_evaluation(names: list[str], x0, x1, evaluation: dict[str, Any]) -> str:
    """Before/after table: parameters, then the hard-mode numbers with their statistical errors."""
    lines = ["parameter                       baseline      optimised"]
    for n, a, b in zip(names, x0, x1):
        lines.append(f"  {n:28s} {a:12.5g}   {b:12.5g}")
    base, opt = evaluation.get("baseline"), evaluation.get("optimised")
    if base and opt:
        lines.append("hard mode, fresh keys             baseline                 optimised")
        for ch in base["channels"]:
            a, b = base["channels"][ch], opt["channels"][ch]
            lines.append(f"  B {ch:29s} {a['expected']:10.4g} ± {a['stat_err']:<9.3g}  "
                         f"{b['expected']:10.4g} ± {b['stat_err']:.3g}")
        rows = (("background", "B total"), ("signal_events_g1", "signal events, g = 1"), ("fom", "FOM (Punzi)"))
        for key, label in rows:
            err = {"background": "background_err", "signal_events_g1": "signal_events_g1_err", "fom": "fom_err"}[key]
            lines.append(f"  {label:31s} {base[key]:10.4g} ± {base[err]:<9.3g}  {opt[key]:10.4g} ± {opt[err]:.3g}")
        ratio = opt["fom"] / base["fom"]
        rerr = ratio * math.hypot(base["fom_err"] / base["fom"], opt["fom_err"] / opt["fom"])
        lines.append(f"  FOM ratio optimised/baseline    {ratio:.4f} ± {rerr:.4f}")
    return "\n".join(lines)
