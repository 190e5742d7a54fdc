"""Optional dependencies: the error that says what installs a missing one."""

from __future__ import annotations

LIGHTNING = "pip install 'greencallbacks[lightning]'"
PLOT = "pip install 'greencallbacks[plot]'"


def missing(error: ImportError, needed_by: str, packages: tuple[str, ...], install: str) -> ImportError:
    """What to raise when ``needed_by`` could not import one of ``packages``; ``install`` is the fix.

    Still a ``ModuleNotFoundError`` with the module's name, for code that catches it. Anything
    else that failed (a framework's own backend missing, a broken install) is ``error`` itself:
    ``install`` would not fix it.
    """
    package = (error.name or "").partition(".")[0]  # what pip installs, not a submodule
    if not isinstance(error, ModuleNotFoundError) or package not in packages:
        return error
    return ModuleNotFoundError(f"{needed_by} needs {package}, which is not installed: {install}", name=error.name)
