#!/usr/bin/env bash
# jrnn vs torch (cuDNN) vs Flax on a CUDA GPU: a fresh machine with Python and PyPI, or one whose
# python3 already holds the frameworks (--no-install).
#
#   bash benchmarks/gpu.sh [benchmarks.run options...]      e.g. --configs lstm gru --reps 20
#   bash benchmarks/gpu.sh --dry-run                        the same without CUDA: CPU, --quick
#   bash benchmarks/gpu.sh --no-install [...]               a machine without PyPI whose python3
#                                                           already has jax (CUDA), torch, flax
#                                                           and optax: no venv, no install
#
# Writes $OUT/gpu_table.md and .json (benchmarks.run), $OUT/gpu_parallel.md and .json
# (benchmarks.parallel), $OUT/gpu_deer.md and .json (benchmarks.deer) and $OUT/gpu_log.txt (OUT
# defaults to /tmp/jrnn-bench-out). Environment: PYTHON (python3), VENV (/tmp/jrnn-bench-venv;
# reused when it exists), JAX_CUDA (cuda13, the CUDA of PyPI's torch 2.13 wheels; cuda12 for
# older drivers), BENCH_TIMEOUT (seconds for benchmarks.run, 360), PARALLEL_TIMEOUT
# (benchmarks.parallel, 240), DEER_TIMEOUT (benchmarks.deer, 240). Each table is rewritten after
# every configuration, so a run cut short still leaves the configurations it finished.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
INSTALL=1
while [[ "${1:-}" == "--dry-run" || "${1:-}" == "--no-install" ]]; do
    [[ "$1" == "--dry-run" ]] && DRY_RUN=1
    [[ "$1" == "--no-install" ]] && INSTALL=0
    shift
done
OUT="${OUT:-/tmp/jrnn-bench-out}"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-/tmp/jrnn-bench-venv}"
JAX_CUDA="${JAX_CUDA:-cuda13}"
JAX_VERSION="0.10.2"  # the version the CPU table was measured with
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_log.txt") 2>&1

step() { echo "== $(date +%T) $*"; }
fail() {
    echo "gpu.sh: $*"
    exit 1
}

step "nvidia-smi"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi || echo "nvidia-smi failed"
else
    echo "no nvidia-smi on this machine"
fi

run_args=(--device gpu)
((DRY_RUN)) && run_args=(--device cpu --quick)
if ((INSTALL)); then
    step "environment $VENV"
    if [[ ! -x "$VENV/bin/python" ]]; then
        "$PYTHON" -m venv "$VENV" ||
            fail "'$PYTHON -m venv' failed (Debian/Ubuntu: apt-get install python3-venv), or set VENV"
    fi
    PY="$VENV/bin/python"
    "$PY" --version
    packages=(-e '.[bench]' "jax[$JAX_CUDA]==$JAX_VERSION")
    ((DRY_RUN)) && packages=(-e '.[bench]' "jax==$JAX_VERSION")
    step "install ${packages[*]}"
    "$PY" -m pip install -q --progress-bar off -U pip
    "$PY" -m pip install -q --progress-bar off "${packages[@]}" || fail "pip install failed"
else
    PY="$(command -v "$PYTHON")" || fail "no '$PYTHON' on this machine"
    step "no install: $PY as it is, jrnn from $(pwd)"
    "$PY" --version
    export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi

step "what the frameworks see"
"$PY" - <<'EOF' || fail "jax, torch or flax does not import"
import flax, jax, torch
print("jax", jax.__version__, jax.devices())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("flax", flax.__version__)
EOF

step "benchmark"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # leave GPU memory to torch too
timeout "${BENCH_TIMEOUT:-360}" "$PY" -m benchmarks.run "${run_args[@]}" "$@" \
    --out "$OUT/gpu_table.md"
status=$?
if ((status == 124)); then
    echo "gpu.sh: the benchmark ran out of time; $OUT/gpu_table.md holds the configurations done"
elif ((status != 0)); then
    echo "gpu.sh: the benchmark failed (exit $status)"
fi

step "parallel in time"  # minGRU, minLSTM, LRU: associative vs sequential, vs LSTM/GRU and memax
parallel_args=(--steps 128 1000 10000 100000 --reps 5)
((DRY_RUN)) && parallel_args=(--quick)
timeout "${PARALLEL_TIMEOUT:-240}" "$PY" -m benchmarks.parallel "${parallel_args[@]}" \
    --out "$OUT/gpu_parallel.md"
parallel_status=$?
((parallel_status == 124)) && echo "gpu.sh: benchmarks.parallel ran out of time"
((parallel_status != 0 && parallel_status != 124)) && echo "gpu.sh: benchmarks.parallel failed"
((status == 0)) && status=$parallel_status

step "Newton methods"  # DEER, quasi-DEER, ELK against the scan (no compiled path on GPU)
deer_args=(--methods scan quasi-deer deer elk --reps 3)
((DRY_RUN)) && deer_args=(--quick)
timeout "${DEER_TIMEOUT:-240}" "$PY" -m benchmarks.deer "${deer_args[@]}" --out "$OUT/gpu_deer.md"
deer_status=$?
((deer_status == 124)) && echo "gpu.sh: benchmarks.deer ran out of time"
((deer_status != 0 && deer_status != 124)) && echo "gpu.sh: benchmarks.deer failed"
((status == 0)) && status=$deer_status
step "done: $OUT/gpu_table.md, $OUT/gpu_parallel.md, $OUT/gpu_deer.md"
exit "$status"
