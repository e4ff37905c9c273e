"""The layers of fastmc's import graph (DESIGN.md §3, §8): no cycle, and no forbidden arrow.

Every ``import``/``from … import`` of every module under fastmc/ is read with ``ast`` — at module
level and inside functions alike (a function-local import is an edge too: it only defers the
cycle it would close).  ``from fastmc.a import b`` is an edge to ``fastmc.a.b`` when that is a
module, else to ``fastmc.a``.  The rules are the table :data:`FORBIDDEN` below, one reason each.
:func:`violations` is checked against the real tree and, to show that it can fail, against a copy
of the tree with a forbidden import injected.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

DATA = ("fastmc.config", "fastmc.geometry", "fastmc.materials", "fastmc.beam", "fastmc.units", "fastmc.species",
        "fastmc._pytree", "fastmc.rng")
KERNELS = ("fastmc.physics", "fastmc.transport", "fastmc.response", "fastmc.reconstruct", "fastmc.trackfit",
           "fastmc.selection")
DRIVERS = ("fastmc.chain", "fastmc.run", "fastmc.projection", "fastmc.runcard", "fastmc.api", "fastmc.io",
           "fastmc.distributed", "fastmc.sensitivity", "fastmc.optimise", "fastmc.validate", "fastmc.plots",
           "fastmc.numpy_baseline", "fastmc.export")

CHANNEL_MODULES = ("fastmc.channels.analog", "fastmc.channels.hadron_decay", "fastmc.channels.momentum_misreconstruction",
                   "fastmc.channels.calorimeter_nonhermeticity", "fastmc.channels.signal", "fastmc.channels.base")

# (importer prefixes, imported prefixes, why not); a name ending in "$" matches that module only.
# The command line (fastmc.cli, fastmc.__main__) may import anything.
FORBIDDEN: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (DATA, KERNELS + ("fastmc.channels",) + DRIVERS + ("fastmc.cli",),
     "data modules (cards, models, geometry, beam, materials, units) import no kernel: they are read by them"),
    (("fastmc.physics",), ("fastmc.transport", "fastmc.response", "fastmc.reconstruct", "fastmc.trackfit",
                           "fastmc.selection"),
     "physics/ holds the processes and their samplers; the transport and the response drive them"),
    (KERNELS, ("fastmc.channels",),
     "kernels know no channel: they declare the protocols a channel's proposals satisfy (DESIGN.md §8)"),
    (KERNELS + ("fastmc.channels",), DRIVERS + ("fastmc.cli",),
     "kernels and channels are called by the chain driver; they never drive a run"),
    (("fastmc.response",), ("fastmc.transport",),
     "the response reads the transport's truth record, it does not transport"),
    (("fastmc.chain",), ("fastmc.run", "fastmc.projection", "fastmc.io"),
     "the chain of one chunk knows nothing of the chunk loop, the projection or the files"),
    (CHANNEL_MODULES, ("fastmc.channels$", "fastmc.channels.registry$") + tuple(m + "$" for m in CHANNEL_MODULES[:-1]),
     "a channel module is one plug-in: it knows the interface (channels.base), not the registry or its siblings"),
    (("fastmc",), ("fastmc.cli",), "the command line is the top: nothing below it imports it"),
]
CHANNEL_WORDS = re.compile(r"hadron_decay|misreconstruction|nonhermeticity")


def module_files(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted((root / "fastmc").rglob("*.py")):
        parts = p.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_edges(root: Path) -> dict[str, set[tuple[str, int, tuple[str, ...]]]]:
    """module → {(imported module, line, names taken)} for every fastmc import in it."""
    mods = module_files(root)
    edges: dict[str, set] = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out |= {(a.name, node.lineno, ()) for a in node.names if a.name.split(".")[0] == "fastmc"}
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([mod] if mod else []))
                if mod.split(".")[0] != "fastmc":
                    continue
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    out.add((sub, node.lineno, ()) if sub in mods else (mod, node.lineno, (a.name,)))
        edges[name] = {e for e in out if e[0] != name}
    return edges


def _under(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p[:-1] if p.endswith("$") else (mod == p or mod.startswith(p + ".")) for p in prefixes)


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph = {m: sorted({t for t, _, _ in es if t in edges}) for m, es in edges.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def violations(root: Path) -> list[str]:
    edges = import_edges(root)
    mods = module_files(root)
    bad = [f"import cycle among {', '.join(c)}" for c in cycles(edges)]
    for src, es in edges.items():
        top = _under(src, ("fastmc.cli", "fastmc.__main__"))
        for dst, line in sorted({(d, ln) for d, ln, _ in es}):
            for importers, imported, why in FORBIDDEN:
                if not top and _under(src, importers) and _under(dst, imported):
                    bad.append(f"{mods[src].relative_to(root)}:{line}: {src} imports {dst}: {why}")
        for dst, line, names in sorted(es):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{mods[src].relative_to(root)}:{line}: {src} takes private {private} from {dst}: "
                           "a name another module uses is public")
    return sorted(set(bad))


def test_architecture_import_graph_has_no_cycle_and_no_forbidden_arrow():
    bad = violations(ROOT)
    assert not bad, "\n".join(bad)


def test_architecture_kernels_name_no_channel():
    """`grep hadron_decay|misreconstruction|nonhermeticity` finds nothing in physics/, the
    transport or the response: a kernel knows what a proposal provides, not who proposes it."""
    hits = []
    for p in [*(ROOT / "fastmc" / "physics").rglob("*.py"), *(ROOT / "fastmc" / "transport").rglob("*.py"),
              *(ROOT / "fastmc" / "response").rglob("*.py")]:
        hits += [f"{p.relative_to(ROOT)}:{i}" for i, line in enumerate(p.read_text().splitlines(), 1)
                 if CHANNEL_WORDS.search(line)]
    assert not hits, hits


@pytest.mark.parametrize("module,line,why", [
    ("fastmc/transport/step.py", "from fastmc.channels.signal import Signal", "kernels know no channel"),
    ("fastmc/physics/showers.py", "import fastmc.response", "physics/ holds the processes"),
    ("fastmc/config/model.py", "from fastmc.physics import PROCESSES", "data modules"),
    ("fastmc/geometry.py", "from fastmc.chain import prepare", "import cycle"),
    ("fastmc/channels/signal.py", "from fastmc.channels.registry import CHANNELS", "one plug-in"),
    ("fastmc/run.py", "from fastmc.reconstruct import _private_helper", "private"),
])
def test_architecture_checker_fails_on_an_injected_import(tmp_path, module, line, why):
    """The checker itself: a copy of the tree with one forbidden import added (inside a function,
    where cycles used to hide) is caught, with the reason from the table."""
    shutil.copytree(ROOT / "fastmc", tmp_path / "fastmc")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _injected():\n    {line}\n")
    found = [v for v in violations(tmp_path) if why in v]
    assert found, f"{line!r} in {module} was not caught"
