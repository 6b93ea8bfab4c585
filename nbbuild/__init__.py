"""nbbuild: a notebook as an incremental build ("Build Systems à la Carte" for Jupyter).

    b = nbbuild.Build(".nbbuild", quota="2 GB", workers=4)

    @b.rule
    def words(path):
        return open(nbbuild.file(path)).read().split()

    @b.rule
    def count(path):
        return len(words(path))

    count("a.txt")            # builds incrementally; a second call runs nothing

Files a rule body writes are its outputs: stored with its value and put back when it is reused
(`nbbuild.output(path)` declares one written where nbbuild cannot see, by a subprocess, say).
"""
from __future__ import annotations

from .build import Build, BuildReport, TaskReport
from .errors import (BuildError, Cancelled, CycleError, NbbuildError, OutsideRuleError, RuleError, SettingError,
                     UnknownTargetError)
from .engine.files import file
from .engine.outputs import output
from .engine.rule import Rule
from .engine.task import Task

__all__ = [
    "Build", "BuildReport", "TaskReport", "Rule", "Task", "file", "output",
    "NbbuildError", "BuildError", "CycleError", "RuleError", "UnknownTargetError", "OutsideRuleError", "Cancelled",
    "SettingError",
]

__version__ = "0.1.0"



def load_ipython_extension(ipython):
    """`%load_ext nbbuild`: the magics of nbbuild.notebook.magics, and in a kernel the comm that
    nbbuild's JupyterLab extension opens (nbbuild.notebook.lab)."""
    from .notebook import lab, magics
    magics.load_ipython_extension(ipython)
    lab.load_ipython_extension(ipython)


def _jupyter_labextension_paths():
    """Where the prebuilt JupyterLab extension is (for `jupyter labextension develop .`); a wheel
    installs it in share/jupyter/labextensions/nbbuild."""
    return [{"src": "labextension", "dest": "nbbuild"}]


def unload_ipython_extension(ipython):
    from .notebook import lab, magics
    lab.unload_ipython_extension(ipython)
    magics.unload_ipython_extension(ipython)
