#!/usr/bin/env bash
# One call on the lent GPU machine: install the wheels carried in .whl (optuna and its
# database layer: scripts/../../shared/tools/gpu-wheels), restore the Triton and Inductor
# caches carried in .gpucache (so kernels compiled and tuned in an earlier call are not
# compiled or tuned again), run the stages given as arguments, and save logs, results and
# caches under $OUT.
#
#   bash scripts/gpu_session.sh "130:python3 -m pytest -m gpu tests/test_gpu_kernels.py" \
#                               "200:python3 benchmarks/kernels.py --models Llama-3-8B"
#
# Each stage is "SECONDS:COMMAND"; a stage that outlives its seconds is stopped and the next
# one runs. Full logs: $OUT/stageN.log; the terminal shows the last lines of each.
set -u
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/was_out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
# the package runs from this tree (no pip install there); a dist-info beside it makes its
# torch_dynamo_backends entry point visible, so backend="was" resolves as after pip install
di=/tmp/site/was_compile-0.0.0.dist-info
mkdir -p "$di"
printf 'Metadata-Version: 2.1\nName: was_compile\nVersion: 0.0.0\n' > "$di/METADATA"
printf '[torch_dynamo_backends]\nwas = was_compile.backend:was_backend\n' > "$di/entry_points.txt"
export TRITON_CACHE_DIR=/tmp/wascache/triton TORCHINDUCTOR_CACHE_DIR=/tmp/wascache/inductor
mkdir -p /tmp/wascache
[ -f .gpucache/caches.tgz ] && tar xzf .gpucache/caches.tgz -C /tmp/wascache
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, \
'triton', triton.__version__, 'transformers', transformers.__version__)"
i=0
for stage in "$@"; do
  i=$((i + 1))
  secs=${stage%%:*}
  cmd=${stage#*:}
  t0=$(date +%s)
  echo "=== stage $i (limit ${secs}s): $cmd"
  timeout -k 5 "$secs" bash -c "$cmd" > "$out/stage$i.log" 2>&1
  rc=$?
  tail -n 30 "$out/stage$i.log"
  echo "=== stage $i: rc $rc after $(( $(date +%s) - t0 ))s"
done
for f in benchmarks/results/kernels.json benchmarks/results/decode.json \
         benchmarks/results/search_cost.json; do
  [ -f "$f" ] && cp "$f" "$out/"
done
tar czf "$out/caches.tgz" -C /tmp/wascache triton inductor 2>/dev/null
size=$(stat -c %s "$out/caches.tgz" 2>/dev/null || echo 0)
if [ "$size" -gt 16000000 ]; then  # too big to come back: keep the Triton cache alone
  tar czf "$out/caches.tgz" -C /tmp/wascache triton
fi
ls -la "$out"
