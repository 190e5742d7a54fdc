# Sourced by the other scripts: use the active virtual environment, or the project's own `.venv`
# (created on first use). A system Python is often externally managed (PEP 668) and refuses
# `pip install`, so set-up never installs into it.
if [ -n "${VIRTUAL_ENV:-}" ]; then
  GC_PYTHON="$VIRTUAL_ENV/bin/python"
else
  GC_VENV="$(pwd)/.venv"
  if [ ! -x "$GC_VENV/bin/python" ]; then
    echo "greencallbacks: creating the project virtual environment in $GC_VENV" >&2
    python3 -m venv "$GC_VENV"
  fi
  # shellcheck disable=SC1091
  . "$GC_VENV/bin/activate"
  GC_PYTHON="$GC_VENV/bin/python"
fi
export GC_PYTHON
