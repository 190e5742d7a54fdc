# Sourced by the other scripts (from the repository root): use the active virtual environment, or
# the project's own `.venv` (created on first use, reused after). A system Python is often
# externally managed (PEP 668) and refuses `pip install`, so nothing here installs into it.
# Sets GC_PYTHON (the interpreter to use) and puts the environment's bin/ first on PATH.
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  GC_VENV="$VIRTUAL_ENV"
else
  GC_VENV="$(pwd)/.venv"
  # bin/pip, not bin/python: a venv made without ensurepip (Debian without python3-venv) has a
  # python but no pip, and would fail later with a less helpful message.
  if [ ! -x "$GC_VENV/bin/pip" ]; then
    echo "greencallbacks: creating the project virtual environment in $GC_VENV" >&2
    rm -rf "$GC_VENV"
    if ! "${GC_BASE_PYTHON:-python3}" -m venv "$GC_VENV"; then
      rm -rf "$GC_VENV"
      echo "greencallbacks: could not create $GC_VENV with '${GC_BASE_PYTHON:-python3} -m venv';" \
        "on Debian or Ubuntu install python3-venv (apt-get install python3-venv), or activate a" \
        "virtual environment of your own and run this again" >&2
      return 1
    fi
  fi
  # shellcheck disable=SC1091
  . "$GC_VENV/bin/activate"
fi
GC_PYTHON="$GC_VENV/bin/python"
export GC_VENV GC_PYTHON
