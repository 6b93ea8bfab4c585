"""In-process IPython shells for tests that drive magics without a kernel."""
from __future__ import annotations

import contextlib

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config


def fresh_shell() -> InteractiveShell:
    """A new IPython InteractiveShell singleton for an in-process test, as a new kernel would have.

    matplotlib_inline enables its figure formats once per process (it remembers
    `configure_inline_support.current_backend`), not once per shell: a second shell in the same
    process would show an inline figure as its text repr only. Forget it, as a new process would."""
    InteractiveShell.clear_instance()
    with contextlib.suppress(ImportError):
        from matplotlib_inline.backend_inline import configure_inline_support
        configure_inline_support.__dict__.pop("current_backend", None)
    # history in memory: no history-saving thread and sqlite file per shell (tests make hundreds)
    return InteractiveShell.instance(config=Config({"HistoryManager": {"hist_file": ":memory:"}}))
