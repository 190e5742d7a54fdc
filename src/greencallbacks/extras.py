"""Optional dependencies: the error that says what installs a missing one."""

from __future__ import annotations

import importlib.util

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


# The modules of Keras 3's backends that are packages of their own (its numpy backend needs none).
KERAS_BACKENDS = ("tensorflow", "jax", "torch", "openvino")


def missing_keras_backend(error: ImportError) -> ModuleNotFoundError | None:
    """What to raise when ``import keras`` failed for want of its backend, else None.

    The [keras] extra installs Keras alone: its default backend, TensorFlow, is not installed with
    it, nor by [all] (whose torch Keras does not pick by itself). Keras' own error names a module
    deep inside it; this one says which backend and how to choose one that is installed.
    """
    backend = (error.name or "").partition(".")[0]
    if not isinstance(error, ModuleNotFoundError) or backend not in KERAS_BACKENDS:
        return None
    if _installed(backend):  # installed, but broken: its own error says more
        return None
    others = [name for name in KERAS_BACKENDS if name != backend]
    installed = [name for name in others if _installed(name)]
    other = (f"name one installed here in KERAS_BACKEND ({', '.join(installed)})" if installed
             else f"install another and name it in KERAS_BACKEND ({', '.join(others)})")
    return ModuleNotFoundError(
        f"greencallbacks.keras needs Keras' backend {backend}, which is not installed (no extra installs "
        f"a backend): install it, or {other}", name=error.name)


def _installed(module: str) -> bool:
    """Whether ``module`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: in sys.modules without a spec
        return False
