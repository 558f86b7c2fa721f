#!/usr/bin/env bash
# LightGBM lives only in the benchmark's own venv, never in the project's: bench/gbm.py runs its
# gradient-boosting row as a subprocess with this venv's python (bench/gbm_worker.py). Idempotent:
# reruns reuse the venv and skip the install once lightgbm imports.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-gbm"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import lightgbm" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "lightgbm>=4,<5" numpy
fi
"$venv/bin/python" -c "import lightgbm, numpy; print('lightgbm', lightgbm.__version__, 'numpy', numpy.__version__, 'in', '$venv')"
