#!/usr/bin/env bash
# The GPU checks of the inner loop, as one script of at most 6 device minutes (issue 27's "GPU" line):
#   1. the `gpu` equivalence test (K together = K alone in bf16; prints whether reruns are identical);
#   2. bench/overhead.py --device cuda at the tiny and smollm2-135m shapes, K = 1, 8, 32;
#   3. bench/inner_loop.py --device cuda --random-init at smollm2-135m's and qwen2.5-0.5b's shapes,
#      K = 1 and 32 (each finished setting's JSON is kept as it finishes, under $OUT/inner_loop/).
# Every piece writes into $OUT (default bench/out/gpu_check) as it finishes and has its own time limit,
# so a piece that runs long costs only itself.
#
#   bash bench/gpu_check.sh                                    # on the GPU machine
#   DEVICE=cpu CONTEXTS=2 KS=1,2 SHAPES=tiny OVERHEAD_KS=1,2 RANDOM_INIT=smollm2-135m SCALE=10 bash bench/gpu_check.sh
#                                                              # a small rehearsal on a CPU
# Needs, on a machine without network: shared/gpu (wheels and SmolLM2's tokenizer) and
# shared/data/squad inside the checkout (copied there, git-ignored; see shared/gpu/README.md).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu_check}
DEVICE=${DEVICE:-cuda}
CONTEXTS=${CONTEXTS:-8}
KS=${KS:-1,32}
OVERHEAD_KS=${OVERHEAD_KS:-1,8,32}
SHAPES=${SHAPES:-tiny,smollm2-135m}
RANDOM_INIT=${RANDOM_INIT:-smollm2-135m,qwen2.5-0.5b}
PY=${PY:-python3}
SCALE=${SCALE:-1}  # multiplies every time limit below (a CPU rehearsal needs far longer)
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! $PY -c "import trl, omegaconf, datasets" 2>/dev/null; then
  if [ -d shared/gpu/wheels ]; then  # the GPU image lacks these; install beside its own packages
    $PY -m pip install -q --no-index --no-deps --target /tmp/site shared/gpu/wheels/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    echo "missing trl/omegaconf/datasets and no shared/gpu/wheels to install them from" >&2
  fi
fi
$PY -c "import json, torch; from core.models import machine; print(json.dumps({'machine': machine(), \
'torch': torch.__version__, 'threads': torch.get_num_threads()}))" > "$OUT/machine.json"
[ "$DEVICE" = cuda ] && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

echo "== gpu equivalence test" >&2
GPU_MARK=$([ "$DEVICE" = cuda ] && echo "gpu" || echo "not gpu")
timeout $((45 * SCALE)) $PY -m pytest -q -s -m "$GPU_MARK" tests/student/test_batched.py -k "bf16" -p no:cacheprovider \
  > "$OUT/equivalence.txt" 2>&1
echo "   exit $?" >&2

for shape in ${SHAPES//,/ }; do
  echo "== overhead $shape" >&2
  timeout $(( $([ "$shape" = tiny ] && echo 45 || echo 60) * SCALE )) $PY bench/overhead.py --device "$DEVICE" --shape "$shape" --ks "$OVERHEAD_KS" \
    > "$OUT/overhead_$shape.json" 2> "$OUT/overhead_$shape.err"
  echo "   exit $?" >&2
done

for shape in ${RANDOM_INIT//,/ }; do
  echo "== inner_loop $shape" >&2
  timeout $(( $([ "$shape" = smollm2-135m ] && echo 120 || echo 90) * SCALE )) $PY bench/inner_loop.py --device "$DEVICE" --random-init "$shape" --ks "$KS" --contexts "$CONTEXTS" \
    --naive-contexts 2 --reference-contexts 1 --out "$OUT/inner_loop" \
    > "$OUT/inner_loop_$shape.json" 2> "$OUT/inner_loop_$shape.err"
  echo "   exit $?" >&2
done
