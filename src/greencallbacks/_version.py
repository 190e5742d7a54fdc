"""The version, written once: ``RELEASE``, which ``pyproject.toml`` reads (setuptools' ``attr:``,
from this file's text, without importing the package), and ``__version__``, which every record
carries as ``tool_version``.

Imported from a git checkout (``<clone>/src/greencallbacks``), ``__version__`` adds the commit
checked out as a PEP 440 local label, ``0.2.0.dev0+g1a2b3c4d5e6f``, so that records of two
development states are told apart (they all said 0.1.0). It is read from ``.git``'s own files at
import: a few small reads, no subprocess, no git needed. Changes not committed yet are not seen.
An installed copy (a wheel, an sdist) says ``RELEASE`` alone.
"""

from __future__ import annotations

import os

RELEASE = "0.2.0.dev0"

_HEX = frozenset("0123456789abcdef")


def checkout_commit(package_dir: str) -> str | None:
    """The commit checked out in the git clone whose ``src/`` holds ``package_dir``; None for a
    copy outside a clone, an unborn branch, or a ``.git`` that cannot be read."""
    src = os.path.dirname(package_dir)
    if os.path.basename(src) != "src":
        return None
    root = os.path.dirname(src)
    git = os.path.join(root, ".git")
    try:
        if os.path.isfile(git):  # a worktree's (or submodule's) pointer: "gitdir: <path>"
            pointer = _read(git)
            if not pointer.startswith("gitdir:"):
                return None
            git = os.path.join(root, pointer[len("gitdir:"):].strip())
        head = _read(os.path.join(git, "HEAD"))
        if head.startswith("ref:"):  # a branch (else a detached HEAD: the commit itself)
            ref = head[len("ref:"):].strip()
            # A worktree keeps its HEAD, the clone it belongs to keeps the branches.
            common = os.path.join(git, "commondir")
            places = [git] + ([os.path.join(git, _read(common))] if os.path.isfile(common) else [])
            head = next((sha for sha in (_ref(place, ref) for place in places) if sha), "")
    except (OSError, UnicodeDecodeError):
        return None
    return head if len(head) in (40, 64) and set(head) <= _HEX else None


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read().strip()


def _ref(git: str, ref: str) -> str | None:
    """``ref``'s commit: its own file, else its line in ``packed-refs`` (where ``git gc`` moves it)."""
    try:
        return _read(os.path.join(git, ref))
    except OSError:
        pass
    try:
        with open(os.path.join(git, "packed-refs"), encoding="utf-8") as packed:
            for line in packed:
                sha, _, name = line.strip().partition(" ")
                if name == ref:
                    return sha
    except OSError:
        pass
    return None


def version_of(package_dir: str) -> str:
    """``RELEASE``, with the commit checked out where ``package_dir`` lies in a git clone."""
    commit = checkout_commit(package_dir)
    return f"{RELEASE}+g{commit[:12]}" if commit else RELEASE


__version__ = version_of(os.path.dirname(os.path.abspath(__file__)))
