#!/usr/bin/env bash
# GPU smoke check (no CUDA in CI or on the dev machine): the ci preset end to end on CUDA with every
# method, in fp32 and in bf16 mixed precision, with a wall time each. Writes logs and leaderboards
# flat into $OUT (default /tmp/gpu-smoke). Needs torch with CUDA plus kdbench's dependencies; on a
# machine without the network, carry rouge-score and nltk as wheels (see the session note).
#     OUT=/tmp/g bash benchmarks/gpu_smoke.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-smoke}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
for dt in float32 bfloat16; do
  run=/tmp/gpu-smoke-runs/ci-$dt
  SECONDS=0
  python3 run_bench.py --preset ci --methods all --device cuda --dtype $dt --out $run --no-progress \
    > "$OUT/ci-$dt.log" 2>&1
  rc=$?
  echo "ci --methods all --device cuda --dtype $dt: rc=$rc wall=${SECONDS} s"
  cp "$run/leaderboard.md" "$OUT/leaderboard-$dt.md" 2>/dev/null
  cp "$run/cost.md" "$OUT/cost-$dt.md" 2>/dev/null
  grep -E "error|Error|failed|Traceback" "$OUT/ci-$dt.log" | head -20
done
