#!/usr/bin/env bash
# A short GPU check (about 3 minutes on one H100 without vLLM, under 8 with it: the GRPO run's
# engine starts eager, rollout_cuda.py's compile as a real run's do), from the repository root:
#   bash benchmarks/gpu_check.sh            # results under ${OUT:-benchmarks/out/gpu_check}
# 1. the gpu-marked tests (CUDA training path; vLLM engine where vLLM is importable);
# 2. the CUDA training path on the tiny model: 5 GRPO steps of `r1kit zero` (model.dtype=auto:
#    bf16 where the GPU has it; rl.rollout_correction=token_truncate logs the sampler's log-prob
#    gap), and, where vLLM is importable, 5 more with rollout.engine=vllm (colocated; weights
#    synced after every update; the gap between vLLM's log-probs and the training forward's);
# 3. rollout tokens/s (benchmarks/rollout_cuda.py): r1kit's HF engine vs `generate` on CUDA, for
#    the tiny base (fp32) and a random 71M-parameter Llama (bf16), and, where vLLM is importable,
#    vLLM on the same prompts and settings.
# Nothing here downloads a model: the tiny base ships in r1kit/assets/tiny-base. A step that fails
# or times out is reported (and listed in $OUT/failures.txt); the script then goes on, and exits 1
# at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
OUT="${OUT:-benchmarks/out/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
rm -f "$OUT/failures.txt"
fail() { echo "!! FAILED: $1 (exit $2)" | tee -a "$OUT/failures.txt"; }

"$PY" - <<'EOF' | tee "$OUT/env.txt"
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("vllm importable:", importlib.util.find_spec("vllm") is not None)
EOF

echo "== gpu tests"
# only the files that hold gpu-marked tests: the device image may lack CPU-side dependencies
# (it has no `datasets`), which would stop collection of unrelated files
# (the vLLM test builds its engine with enforce_eager: no compile)
timeout 240 "$PY" -m pytest -q -rs -m gpu -p no:cacheprovider $(grep -l "mark.gpu" tests/*.py) \
    2>&1 | tail -5 | tee "$OUT/gpu_tests.txt" || fail "gpu tests" $?

echo "== CUDA training path: r1kit zero, 5 steps"
timeout 180 "$PY" -m r1kit.cli zero --config recipes/tiny/zero.yaml --set run.device=cuda \
    --set rl.steps=5 --set eval.num_problems=20 --set eval.every=0 --set run.checkpoint_every=0 \
    --set rl.rollout_correction=token_truncate \
    --set run.out_dir="$OUT" --set run.name=zero-cuda 2>&1 | tail -15 | tee "$OUT/zero_cuda.txt" \
    || fail "r1kit zero on CUDA" $?
grep -ho '"train/rollout_logprob_gap": [0-9.e-]*' "$OUT/zero-cuda/metrics.jsonl" \
    | tee "$OUT/zero_cuda_gap.txt" || fail "no train/rollout_logprob_gap in zero-cuda" $?

if "$PY" -c "import vllm" 2>/dev/null; then
  echo "== GRPO with vLLM rollouts (colocated): r1kit zero, 5 steps"
  timeout 240 "$PY" -m r1kit.cli zero --config recipes/tiny/zero.yaml --set run.device=cuda \
      --set rollout.engine=vllm --set rollout.vllm_enforce_eager=true --set rl.steps=5 --set eval.num_problems=20 --set eval.every=0 \
      --set run.checkpoint_every=0 --set rl.rollout_correction=token_truncate \
      --set run.out_dir="$OUT" --set run.name=zero-vllm 2>&1 | tail -15 \
      | tee "$OUT/zero_vllm.txt" || fail "r1kit zero with vLLM rollouts" $?
  grep -ho '"train/rollout_logprob_gap": [0-9.e-]*' "$OUT/zero-vllm/metrics.jsonl" \
      | tee "$OUT/zero_vllm_gap.txt" || fail "no train/rollout_logprob_gap in zero-vllm" $?
fi

echo "== rollout tokens/s on CUDA (benchmarks/rollout_cuda.py)"
# (two vLLM engines, one per model, each compiled at startup)
timeout 420 "$PY" benchmarks/rollout_cuda.py 2>&1 | tee "$OUT/rollout_cuda.txt" \
    || fail "rollout tokens/s" $?
echo "results in $OUT"
if [[ -s "$OUT/failures.txt" ]]; then
  echo "some steps failed:"
  cat "$OUT/failures.txt"
  exit 1
fi
