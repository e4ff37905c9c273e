"""A minimal frozen-dataclass pytree (the idea of jax-md's ``dataclasses.py`` / equinox Modules).

``@pytree_dataclass`` makes a frozen dataclass and registers it with
``jax.tree_util.register_dataclass``: fields are array leaves unless declared with
``static_field()``, in which case they are part of the tree structure (hashable, compared for
equality by ``jit``: changing them recompiles, changing a leaf does not).

No validation belongs in ``__post_init__``: it also runs on traced values.  Validate in the
``from_config``/``build_*`` constructors, on concrete input.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_T = TypeVar("_T")


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is static (part of the treedef, not a leaf)."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata["static"] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def pytree_dataclass(cls: type[_T]) -> type[_T]:
    """Frozen dataclass registered as a JAX pytree (leaves = non-static fields)."""
    import jax

    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    data = [f.name for f in fields if not f.metadata.get("static", False)]
    meta = [f.name for f in fields if f.metadata.get("static", False)]
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    return cls


def replace(obj: _T, **changes: Any) -> _T:
    """``dataclasses.replace`` re-exported for frozen pytrees."""
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
