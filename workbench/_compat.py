"""The flat module names of workbench 0.1 (`workbench.smoothness`, `workbench.sweep`, ...) as
aliases of their homes in the layer subpackages (docs/architecture.md), so that every import in
users' notebooks and scripts keeps working: `import workbench.sweep`, `from workbench.detection
import compare_detectors`, `python -m workbench.detection`. An alias resolves on first import to
the very same module object as its home (patching one patches the other); modules inside the
package always import a module's home, never its alias (tests/test_architecture.py).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old flat name -> home, under workbench
ALIASES = {
    "_validate": "base._validate", "fileio": "base.fileio", "runstore": "base.runstore",
    "data": "base.data", "models": "base.models",
    "triggers": "attacks.triggers", "poison": "attacks.poison",
    "train": "training.train", "input_aware": "training.input_aware",
    "crafting": "training.crafting",
    "sampling": "estimator.sampling", "stats": "estimator.stats",
    "smoothness": "estimator.smoothness", "comparison": "estimator.comparison",
    "landscape": "estimator.landscape",
    "atlas": "studies.atlas", "sweepstore": "base.sweepstore", "attack_registry": "studies.attack_registry", "experiments": "studies.experiments", "patterns": "studies.patterns",
    "detection": "studies.detection", "sweep": "studies.sweep",
    "plots": "reports.plots", "report": "reports.report", "paper": "reports.paper",
    "widgets": "ui.widgets", "classroom": "ui.classroom", "cli": "ui.cli",
}
ALIASES_FULL = {f"workbench.{k}": f"workbench.{v}" for k, v in ALIASES.items()}
# `python -m workbench.<old name>`: the function that the old module's __main__ block called
MAINS = {"workbench.detection": ("workbench.reports.detection_report", "main")}


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `workbench.<old name>` and loads it as its home module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in ALIASES_FULL:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    _STAMPED = ("__name__", "__loader__", "__package__", "__spec__", "__path__", "__file__",
                "__cached__")

    def create_module(self, spec):
        module = importlib.import_module(ALIASES_FULL[spec.name])
        # the import system stamps the alias's name, loader and spec on the module it gets:
        # kept here, given back in exec_module
        spec.loader_state = {k: module.__dict__[k] for k in self._STAMPED if k in module.__dict__}
        return module

    def exec_module(self, module):
        own = module.__spec__.loader_state
        for k in self._STAMPED:
            if k in own:
                setattr(module, k, own[k])

    def get_code(self, fullname):
        """`python -m workbench.<old name>` runs what the old module's main block ran."""
        if fullname not in MAINS:
            raise ImportError(f"{fullname} is an alias of {ALIASES_FULL[fullname]}: run that one.")
        module, func = MAINS[fullname]
        # guarded: multiprocessing's spawned workers run the main module again as __mp_main__
        # (the multi-seed detection study's --workers), which must not start the command again
        return compile(f"import sys\nfrom {module} import {func}\n"
                       f"if __name__ == '__main__':\n    sys.exit({func}())",
                       f"<{fullname}>", "exec")

    def is_package(self, fullname):
        return False


def install() -> None:
    """Put the alias finder on sys.meta_path (once)."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(AliasFinder())
