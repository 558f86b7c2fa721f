#!/usr/bin/env bash
# statsforecast (and its numba) lives only in the benchmark's own venv, never in the project's:
# bench/forecast.py runs its AutoETS row as a subprocess with this venv's python. Idempotent:
# reruns reuse the venv and skip the install once statsforecast imports.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-statsforecast"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import statsforecast" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "statsforecast>=2,<3"
fi
"$venv/bin/python" -c "import statsforecast, numpy; print('statsforecast', statsforecast.__version__, 'numpy', numpy.__version__, 'in', '$venv')"
