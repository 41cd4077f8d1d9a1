"""Logical axes, the ("data", "model") mesh and the rules that connect them.

Every parameter and the main activations are annotated with *logical* axis names
(``("vocab", "embed")``, ``("batch", "length", "heads", "head_dim")``, ...). :data:`RULES`
maps them onto a 2-D mesh: the batch over ``"data"``, heads / MLP hidden units / vocabulary
over ``"model"``, everything else replicated. A dimension that the mesh axis does not
divide is replicated instead (a 1-kv-head model on a 2-way ``"model"`` axis, or the
259-id byte vocabulary), so any config runs on any mesh.

Activation annotations (:func:`constrain`) apply only while a mesh is set with
``jax.set_mesh(mesh)``; without one the model runs unannotated on one device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

DATA = "data"  # mesh axis for data parallelism (the batch)
MODEL = "model"  # mesh axis for model parallelism (heads, MLP, vocabulary)

# logical axis -> mesh axis (None = replicated).
RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", DATA),
    ("length", None),
    ("cache_length", None),
    ("embed", None),
    ("vocab", MODEL),
    ("heads", MODEL),
    ("kv_heads", MODEL),
    ("head_dim", None),
    ("mlp", MODEL),
)

LogicalAxes = tuple[str | None, ...]


def make_mesh(data: int = 1, model: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ``(data, model)`` mesh over the first ``data * model`` devices.

  Args:
    data: size of the data-parallel axis.
    model: size of the model-parallel axis.
    devices: devices to use (default ``jax.devices()``).

  Raises:
    ValueError: fewer devices than ``data * model``.
  """
  devices = list(jax.devices() if devices is None else devices)
  if data < 1 or model < 1:
    raise ValueError(f"make_mesh: axis sizes must be >= 1, found data={data}, model={model}")
  if data * model > len(devices):
    raise ValueError(f"make_mesh: a ({data}, {model}) mesh needs {data * model} devices, "
                     f"found {len(devices)}")
  grid = np.asarray(devices[:data * model], dtype=object).reshape(data, model)
  return Mesh(grid, (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto))


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh_shape: Mapping[str, int] | None = None,
                    rules: Sequence[tuple[str, str | None]] = RULES) -> PartitionSpec:
  """The mesh ``PartitionSpec`` of an array with logical ``axes``.

  Args:
    axes: one logical name (or None) per dimension.
    shape: the array's shape; with ``mesh_shape``, dimensions the mesh axis does not
      divide are replicated.
    mesh_shape: ``{mesh axis: size}``; mesh axes absent from it are not used.
    rules: logical -> mesh axis pairs.

  Raises:
    ValueError: a logical axis without a rule, or ``shape`` of another rank.
  """
  table = dict(rules)
  if shape is not None and len(shape) != len(axes):
    raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
  spec: list[str | None] = []
  used: set[str] = set()
  for i, name in enumerate(axes):
    mesh_axis = None
    if name is not None:
      if name not in table:
        raise ValueError(f"no sharding rule for logical axis {name!r}; rules cover "
                         f"{sorted(table)}")
      mesh_axis = table[name]
    if mesh_axis is not None and mesh_shape is not None:
      size = mesh_shape.get(mesh_axis)
      if size is None or (shape is not None and shape[i] % size):
        mesh_axis = None
    if mesh_axis in used:  # a mesh axis may shard one dimension only
      mesh_axis = None
    if mesh_axis is not None:
      used.add(mesh_axis)
    spec.append(mesh_axis)
  return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, axes: Sequence[str | None],
                   shape: Sequence[int]) -> NamedSharding:
  """``NamedSharding`` on ``mesh`` for an array of ``shape`` with logical ``axes``."""
  return NamedSharding(mesh, logical_to_spec(axes, shape, dict(mesh.shape)))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Annotates an activation with logical axes; a no-op when no mesh is set, or inside
  a ``shard_map`` over every mesh axis (each device runs on its own block there)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or AxisType.Auto not in mesh.axis_types:
    return x
  return jax.lax.with_sharding_constraint(
      x, logical_to_spec(axes, x.shape, dict(mesh.shape)))


def tree_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh) -> Any:
  """``NamedSharding`` for every leaf of ``shapes_tree`` (arrays or ShapeDtypeStructs).

  ``axes_tree`` has the same structure with a tuple of logical names per leaf.
  """
  return jax.tree.map(lambda axes, x: named_sharding(mesh, axes, x.shape),
                      axes_tree, shapes_tree, is_leaf=lambda v: isinstance(v, tuple))


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
  """Leading axis over ``"data"`` (when it divides), the rest replicated."""
  return named_sharding(mesh, ("batch",) + (None,) * (len(shape) - 1), shape)
