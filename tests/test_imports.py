"""The import boundaries the layout promises, each checked in a fresh interpreter: which heavy
libraries a module may pull in when it is imported (not when its functions run).

- `search/tune/` is the only part of `search` that imports Ray (the driver reaches Ray through
  it and through Ray's own calls in the driver, never at import of a Ray-free module);
- `awd` imports neither Ray nor MLflow nor Optuna; its config and the dataset registry not
  even torch;
- the command lines' modules import none of the heavy libraries, so that ``--help`` and a
  refused flag answer at once;
- `search.tracking`, `search.stages`, `spaces` and `reports` are Ray-free.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("ray", "mlflow", "torch", "optuna", "pandas", "scipy", "pyarrow", "sklearn",
         "matplotlib")


def modules_of(package: str) -> list[str]:
    """The package and every module under it (``__main__`` files included)."""
    root = REPO / package.replace(".", "/")
    names = [package]
    for info in pkgutil.walk_packages([str(root)], prefix=f"{package}."):
        names.append(info.name)
    return sorted(names)


def loaded_in_stages(stages: list[list[str]]) -> list[set[str]]:
    """In one fresh interpreter, import each stage's modules in turn; after each stage, the
    heavy libraries in ``sys.modules``. None of a stage's modules loads a library that is not
    there after it (the earlier stages' modules load no more than what follows them)."""
    code = ("import importlib, json, sys\n"
            "stages, seen = json.loads(sys.argv[1]), []\n"
            "for stage in stages:\n"
            "    for name in stage:\n"
            "        importlib.import_module(name)\n"
            f"    seen.append(sorted(h for h in {HEAVY!r} if h in sys.modules))\n"
            "print(json.dumps(seen))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(stages)], cwd=REPO,
                          text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [set(libs) for libs in json.loads(proc.stdout.strip().splitlines()[-1])]


CLI_MODULES = ["search.run", "reports.__main__", "awd.train"]
LIGHT = ["awd.config", "awd.errors", "awd.data", "awd.data.registry", "awd.files", "search.uris",
         "search.options", "search.schema", "search.results", "search.errors", "search.state",
         "search.storage", "search.lock", "search.diskspace", "search.tune", "search.tracking",
         "search.stages",
         "reports", "reports.errors"]
RAY_USERS = ("search.tune.", "search.driver")  # the driver through search.tune.session


def test_each_layer_loads_only_what_it_may():
    """Stage 1, the command lines and the light modules: no heavy library. Stage 2, all of
    `awd`: torch, not Ray, MLflow or Optuna. Stage 3, everything but `search/tune/` and the
    driver: not Ray (and MLflow, torch and Optuna are seen: the check sees what is there)."""
    ray_free = [m for p in ("awd", "spaces", "search", "reports") for m in modules_of(p)
                if not m.startswith(RAY_USERS)]
    assert {"search.stages.confirm", "search.tracking.registry", "reports.build",
            "search.evaluate", "search.state"} <= set(ray_free)
    light, awd, rest = loaded_in_stages([CLI_MODULES + LIGHT, modules_of("awd"), ray_free])
    assert light == set()
    assert awd & {"ray", "mlflow", "optuna"} == set() and "torch" in awd
    assert "ray" not in rest and {"mlflow", "torch", "optuna"} <= rest


def test_the_command_lines_answer_help_without_heavy_libraries():
    for module in CLI_MODULES:
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "--help"],
                              cwd=REPO, text=True, capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "usage: python -m" in proc.stdout
        imported = {line.split("|")[-1].strip().split(".")[0]
                    for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert imported.isdisjoint(HEAVY), (module, sorted(imported & set(HEAVY)))


def test_only_search_tune_imports_ray_in_its_code():
    """A static check beside the runtime one: no ``import ray`` / ``from ray`` at module level
    outside `search/tune/` (the driver reaches Ray through `search.tune.session`; the
    confirmation stage imports it inside the function that runs Tune)."""
    offenders = []
    for path in sorted((REPO / "search").rglob("*.py")) + sorted((REPO / "reports").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("search/tune/"):
            continue
        for line in path.read_text().splitlines():
            if line.startswith(("import ray", "from ray")):
                offenders.append(f"{rel}: {line}")
    assert offenders == []
