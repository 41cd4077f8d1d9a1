"""The import rules of DESIGN's layering, checked on the real modules.

Two checks per rule, because each alone misses something:

* dynamic: every module of a layer is imported in a fresh interpreter, and
  ``sys.modules`` is inspected afterwards (catches what a module drags in through other
  packages, for example a library that imports TensorFlow);
* static: every ``import`` statement in the layer's source, including those inside
  functions (deferred imports run only on some paths), is read with ``ast``.

The modules of a layer are found on disk, so a new module is covered the day it is added.
One interpreter imports the whole layer (the modules one module loads are a subset of
what the whole layer loads); only when a rule is broken is each module imported on its
own, to name the culprit.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The layers that must stay free of the Beam stages, the TFDS builders and TensorFlow:
# a trainer runs on a GPU / TPU host with JAX alone (../shared/STACK.md, "GPU hosts").
_JAX_SIDE = ("rlds_lm.trainers", "rlds_lm.models", "rlds_lm.teacher", "rlds_lm.tasks")
_FORBIDDEN_ON_JAX_SIDE = ("pipelines", "builders", "tensorflow", "apache_beam")
# What the trainers may import of rlds_lm: the layers below them (DESIGN, "Layers").
_TRAINERS_MAY_IMPORT = ("rlds_lm._compat", "rlds_lm.models", "rlds_lm.teacher",
                        "rlds_lm.tasks", "rlds_lm.read", "rlds_lm.schema",
                        "rlds_lm.recorder", "rlds_lm.publish", "rlds_lm.tokenizers",
                        "rlds_lm.validate", "rlds_lm.logs", "rlds_lm.view",
                        "rlds_lm.trainers")


def _modules(package: str) -> list[str]:
  """The package and every module below it, found on disk (not imported)."""
  path = os.path.join(REPO, *package.split("."))
  if not os.path.isdir(path):
    return []
  names = [package]
  for info in pkgutil.walk_packages([path], prefix=package + "."):
    names.append(info.name)
  return sorted(names)


def _source_file(module: str) -> str:
  base = os.path.join(REPO, *module.split("."))
  return os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"


def _imported_names(module: str) -> set[str]:
  """Absolute names of every module an ``import`` statement in ``module`` names."""
  with open(_source_file(module), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  package = module if _source_file(module).endswith("__init__.py") else (
      module.rpartition(".")[0])
  out: set[str] = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: resolve against the module's package
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
      else:
        prefix = node.module or ""
      out.add(prefix)
      # `from pkg import mod` may name a submodule: keep both spellings.
      out.update(f"{prefix}.{alias.name}" for alias in node.names)
  return out


def _loaded_after_import(modules: list[str]) -> list[str]:
  """sys.modules (top-level and full names) after importing ``modules`` afresh."""
  code = ("import importlib, json, sys\n"
          f"for name in {modules!r}:\n"
          "  importlib.import_module(name)\n"
          "print(json.dumps(sorted(sys.modules)))\n")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             TF_CPP_MIN_LOG_LEVEL="3")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=600, cwd=REPO, env=env, check=False)
  assert done.returncode == 0, f"importing {modules} failed:\n{done.stderr[-3000:]}"
  return json.loads(done.stdout.strip().splitlines()[-1])


def _offending(loaded: list[str], forbidden: tuple[str, ...]) -> list[str]:
  return sorted({m.split(".")[0] for m in loaded
                 if m.split(".")[0] in forbidden or m in forbidden})


def _culprits(modules: list[str], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
  return {m: bad for m in modules
          if (bad := _offending(_loaded_after_import([m]), forbidden))}


@pytest.mark.parametrize("package", _JAX_SIDE)
def test_jax_side_loads_no_pipelines_builders_tensorflow_or_beam(package):
  modules = _modules(package)
  if not modules:
    pytest.skip(f"{package} does not exist")
  bad = _offending(_loaded_after_import(modules), _FORBIDDEN_ON_JAX_SIDE)
  if bad:
    pytest.fail(f"importing {package} loaded {bad}; per module: "
                f"{_culprits(modules, _FORBIDDEN_ON_JAX_SIDE)}")


@pytest.mark.parametrize("package", _JAX_SIDE)
def test_jax_side_has_no_deferred_import_of_pipelines_builders_tensorflow_or_beam(package):
  found = {m: sorted(n for n in _imported_names(m)
                     if n.split(".")[0] in _FORBIDDEN_ON_JAX_SIDE)
           for m in _modules(package)}
  assert not {m: names for m, names in found.items() if names}


def test_trainers_import_only_the_layers_below_them():
  found = {}
  for module in _modules("rlds_lm.trainers"):
    names = [n for n in _imported_names(module)
             if n.split(".")[0] == "rlds_lm" and n != "rlds_lm"
             and not any(n == ok or n.startswith(ok + ".") for ok in _TRAINERS_MAY_IMPORT)]
    if names:
      found[module] = sorted(names)
  assert not found, f"trainers import modules outside {_TRAINERS_MAY_IMPORT}: {found}"


def test_schema_loads_no_other_module_of_the_project():
  ours = ("rlds_lm", "pipelines", "builders", "benchmarks")
  loaded = [m for m in _loaded_after_import(["rlds_lm.schema"])
            if m.split(".")[0] in ours]
  # The package's own __init__ runs first; it must not pull in the rest. It does run the
  # compatibility layer (quieting the stack before anything loads), a leaf that imports
  # nothing of ours.
  assert set(loaded) <= {"rlds_lm", "rlds_lm.schema", "rlds_lm._compat"}, sorted(loaded)
  assert {n.split(".")[0] for n in _imported_names("rlds_lm.schema")}.isdisjoint(ours)
  compat = {n for n in _imported_names("rlds_lm._compat") if n.split(".")[0] in ours}
  assert compat <= {"rlds_lm"}, compat


def test_pipelines_never_load_the_trainers():
  modules = _modules("pipelines")
  loaded = _loaded_after_import(modules)
  bad = sorted(m for m in loaded if m == "rlds_lm.trainers"
               or m.startswith("rlds_lm.trainers."))
  assert not bad, f"importing the pipelines loaded {bad}"
  static = {m: sorted(n for n in _imported_names(m) if n.startswith("rlds_lm.trainers"))
            for m in modules}
  assert not {m: n for m, n in static.items() if n}
