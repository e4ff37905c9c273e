"""The cut flow as data.

A run card defines named regions, each an ordered list of cuts ``min <= var <= max`` on the
reconstructed variables (:func:`fastmc.config.selection_variables`).  :class:`Selection` is a
pytree: variable names and region names are static, cut values are leaves (moving a cut never
recompiles).  Hard cuts (this module) make every reported number; the smooth relaxation used by
optimisation lives beside them and is never used for a projection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fastmc._pytree import pytree_dataclass, static_field
from fastmc.config import RunConfig


@pytree_dataclass
class Cut:
    lo: jnp.ndarray
    hi: jnp.ndarray
    var: str = static_field()


@pytree_dataclass
class Region:
    cuts: tuple[Cut, ...]
    name: str = static_field()


@pytree_dataclass
class Selection:
    regions: tuple[Region, ...]

    def slots(self) -> list[tuple[str, int, str]]:
        """(region, step, label) of every tally slot: step 0 = all generated, j = after j cuts."""
        out = []
        for r in self.regions:
            out.append((r.name, 0, "generated"))
            for j, c in enumerate(r.cuts):
                out.append((r.name, j + 1, _describe(c)))
        return out


def _describe(c: Cut) -> str:
    lo, hi = float(c.lo), float(c.hi)
    if jnp.isfinite(lo) and jnp.isfinite(hi):
        return f"{lo:g} <= {c.var} <= {hi:g}"
    if jnp.isfinite(lo):
        return f"{c.var} >= {lo:g}"
    return f"{c.var} <= {hi:g}"


TRIGGER_VAR = "trigger"  # 1 if the event fired the trigger, else 0: always integrated (pass_weights)


def build_selection(cfg: RunConfig) -> Selection:
    """The card's regions; with a ``[trigger]``, every region's first cut is ``trigger >= 0.5``
    (so the cut flow shows it first).  The chain integrates it (``integrated["trigger"]``,
    :func:`pass_weights`): the event keeps P(trigger) in its weight instead of a 0/1 draw."""
    dtype = jnp.result_type(float)
    regions = []
    trig = ((Cut(lo=jnp.asarray(0.5, dtype), hi=jnp.asarray(jnp.inf, dtype), var=TRIGGER_VAR),)
            if getattr(cfg, "trigger", None) is not None else ())
    for name, cuts in cfg.regions:
        regions.append(
            Region(
                name=name,
                cuts=trig + tuple(
                    Cut(
                        lo=jnp.asarray(-jnp.inf if c.min is None else c.min, dtype),
                        hi=jnp.asarray(jnp.inf if c.max is None else c.max, dtype),
                        var=c.var,
                    )
                    for c in cuts
                ),
            )
        )
    return Selection(regions=tuple(regions))


def pass_masks(selection: Selection, variables: dict[str, jnp.ndarray], valid: jnp.ndarray) -> jnp.ndarray:
    """(n_slots, B) boolean masks, cumulative along each region's cut flow (hard cuts)."""
    masks = []
    for r in selection.regions:
        m = valid
        masks.append(m)
        for c in r.cuts:
            v = variables[c.var]
            m = m & (v >= c.lo) & (v <= c.hi)
            masks.append(m)
    return jnp.stack(masks)


def final_slots(selection: Selection) -> np.ndarray:
    """Index of each region's last slot (all its cuts applied) in the (n_slots, …) pass masks."""
    return np.cumsum([len(r.cuts) + 1 for r in selection.regions]) - 1


def pass_weights(selection: Selection, variables: dict[str, jnp.ndarray], valid: jnp.ndarray,
                 integrated: dict | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Hard cuts with some cuts integrated: ``(masks, log_p)``, both (n_slots, B).

    ``integrated[var](lo, hi)`` gives, per event, log P(lo ≤ var ≤ hi | the event's other draws)
    for a variable whose distribution given the rest of the event a channel knows in closed form
    (conditional Monte Carlo: the indicator of the cut is replaced by its conditional expectation,
    which leaves the estimate unbiased and cannot increase its variance — Rao–Blackwell;
    e.g. Owen, *Monte Carlo theory, methods and examples* (2013), §8.7).  A cut on such a variable
    keeps the events with P > 0 and adds log P to their weight from that step on.  Without
    ``integrated`` this is :func:`pass_masks` with ``log_p = 0``.
    """
    integrated = integrated or {}
    masks, logs = [], []
    zero = jnp.zeros(valid.shape, jnp.result_type(float))
    for r in selection.regions:
        m, lp = valid, zero
        masks.append(m)
        logs.append(lp)
        for c in r.cuts:
            if c.var in integrated:
                lpc = integrated[c.var](c.lo, c.hi)
                ok = lpc > -jnp.inf
                m = m & ok
                lp = lp + jnp.where(ok, lpc, 0.0)
            else:
                v = variables[c.var]
                m = m & (v >= c.lo) & (v <= c.hi)
            masks.append(m)
            logs.append(lp)
    return jnp.stack(masks), jnp.stack(logs)


def soft_pass(selection: Selection, variables: dict[str, jnp.ndarray], valid: jnp.ndarray, temperature) -> jnp.ndarray:
    """(n_slots, B) pass *weights* in [0, 1]: every cut ``lo <= v <= hi`` relaxed to
    σ((v − lo)/τ_lo)·σ((hi − v)/τ_hi), τ = temperature × max(|cut|, 1) in the variable's unit
    (a logistic edge as wide as ``temperature`` of the cut value).  For optimisation only
    (``fastmc optimize``); every reported number uses :func:`pass_masks`.

    Variables set to ±inf for events without a track give exactly 0 or 1 with zero gradient
    (inputs are cleaned with ``where`` on both sides, so no NaN reaches the gradient).
    """
    out = []
    for r in selection.regions:
        m = valid.astype(jnp.result_type(float))
        out.append(m)
        for c in r.cuts:
            v = variables[c.var]
            finite = jnp.isfinite(v)
            v_safe = jnp.where(finite, v, 0.0)
            for bound, sign in ((c.lo, 1.0), (c.hi, -1.0)):
                b_fin = jnp.isfinite(bound)
                b_safe = jnp.where(b_fin, bound, 0.0)
                tau = temperature * jnp.maximum(jnp.abs(b_safe), 1.0)
                s = jax.nn.sigmoid(sign * (v_safe - b_safe) / tau)
                # an infinite variable passes a bound iff it lies on the right side of it
                s = jnp.where(finite, s, (sign * v > sign * b_safe).astype(s.dtype))
                m = m * jnp.where(b_fin, s, 1.0)
            out.append(m)
    return jnp.stack(out)
