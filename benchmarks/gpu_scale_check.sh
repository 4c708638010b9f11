#!/usr/bin/env bash
# GPU check of the scale-out work (one GPU, well under 8 minutes): the CUDA path of every stage on
# tiny random Qwen2/Llama/Qwen3 models, LoRA on CUDA, the reference model offloaded to CPU between
# its passes (rl with beta > 0), and the LoRA vs full memory table with torch.cuda peak memory.
#   OUT=/tmp/out bash benchmarks/gpu_scale_check.sh
# .gpuwheels/ may hold wheels for packages the GPU image lacks (math-verify); nothing is fetched.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-python3}"
OUT="${OUT:-benchmarks/out/gpu_scale_check}"
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA here: this \
script checks the GPU path')" || exit 2
[[ -d .gpuwheels ]] && "$PY" -m pip install -q --no-index --find-links .gpuwheels math-verify
"$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/env.txt"
echo "== stages, LoRA and offload on CUDA (run.device=auto picks cuda)"
timeout 300 "$PY" -m pytest -p no:cacheprovider -q -x tests/test_lora.py tests/test_real_models.py \
    2>&1 | tail -15 | tee "$OUT/tests_cuda.txt"
echo "== LoRA vs full memory on CUDA"
timeout 200 "$PY" benchmarks/scale_memory.py --device cuda --skip-ranks \
    --out "$OUT/scale_memory_cuda.md" 2>&1 | tail -20
