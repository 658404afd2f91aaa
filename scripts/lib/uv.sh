# Sourced by scripts/run and scripts/test: puts the uv release the workspace pins (pyproject.toml,
# test group) into ./.tools, once, and defines `uv` to run it. The project's own environment is
# ./.venv, made by `uv sync` from uv.lock.
PYTHON="${PYTHON:-python3}"
UV_VERSION="$(sed -n 's/^ *"uv==\([0-9.]*\)".*/\1/p' pyproject.toml)"
if [ -z "$UV_VERSION" ]; then
  echo "pyproject.toml pins no uv release (\"uv==X.Y.Z\" in the test group)" >&2
  exit 2
fi
if [ "$(.tools/bin/uv --version 2>/dev/null | cut -d" " -f2)" != "$UV_VERSION" ]; then
  echo "Installing uv $UV_VERSION into .tools ..."
  "$PYTHON" -m venv .tools
  .tools/bin/python -m pip install --quiet "uv==$UV_VERSION"
fi
# The machine's own CPython: uv never downloads an interpreter (see pyproject.toml).
export UV_PYTHON="${UV_PYTHON:-$("$PYTHON" -c 'import sys; print(sys.executable)')}"
uv() { .tools/bin/uv "$@"; }
