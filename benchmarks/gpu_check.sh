#!/usr/bin/env bash
# A short GPU check (well under 8 minutes on one H100), run from the repository root:
#   bash benchmarks/gpu_check.sh            # results under ${OUT:-benchmarks/out/gpu_check}
# 1. the gpu-marked tests (CUDA training path; vLLM engine where vLLM is importable);
# 2. the CUDA training path on the tiny model: 5 GRPO steps of `r1kit zero` (model.dtype=auto:
#    bf16 where the GPU has it), and, where vLLM is importable, 5 more with rollout.engine=vllm
#    (colocated; weights synced after every update);
# 3. rollout tokens/s: r1kit's HF engine vs `generate` on CUDA (benchmarks/rollout_speed.py), and,
#    where vLLM is importable, vLLM on the same prompts and settings.
# Nothing here downloads a model: the tiny base ships in r1kit/assets/tiny-base.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
OUT="${OUT:-benchmarks/out/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

"$PY" - <<'EOF' | tee "$OUT/env.txt"
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("vllm importable:", importlib.util.find_spec("vllm") is not None)
EOF

echo "== gpu tests"
timeout 240 "$PY" -m pytest tests -q -m gpu -p no:cacheprovider --continue-on-collection-errors 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt" || true

echo "== CUDA training path: r1kit zero, 5 steps"
timeout 180 "$PY" -m r1kit.cli zero --config recipes/tiny/zero.yaml --set run.device=cuda \
    --set rl.steps=5 --set eval.num_problems=20 --set eval.every=0 --set run.checkpoint_every=0 \
    --set run.out_dir="$OUT" --set run.name=zero-cuda 2>&1 | tail -15 | tee "$OUT/zero_cuda.txt" || true

if "$PY" -c "import vllm" 2>/dev/null; then
  echo "== GRPO with vLLM rollouts (colocated): r1kit zero, 5 steps"
  timeout 240 "$PY" -m r1kit.cli zero --config recipes/tiny/zero.yaml --set run.device=cuda \
      --set rollout.engine=vllm --set rl.steps=5 --set eval.num_problems=20 --set eval.every=0 \
      --set run.checkpoint_every=0 --set run.out_dir="$OUT" --set run.name=zero-vllm 2>&1 \
      | tail -15 | tee "$OUT/zero_vllm.txt" || true
fi

echo "== rollout tokens/s on CUDA"
timeout 120 "$PY" - <<'EOF' 2>&1 | tee "$OUT/rollout_cuda.txt" || true
import importlib.util, statistics, time, torch
from r1kit.models import load_model
from r1kit.rollout.hf import sample
from r1kit.tasks.arithmetic import sample_problems
from r1kit.templates import render_prompt

model, tok = load_model("r1kit/assets/tiny-base", "float32", "cuda")
model.eval()
prompts = [render_prompt(p.prompt) for p in sample_problems(8, "train", 0)]
enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
ids, mask = (enc[k].repeat_interleave(8, 0).cuda() for k in ("input_ids", "attention_mask"))

def r1kit_hf(seed):
    ro = sample(model, tok, prompts, 8, max_new_tokens=64, generator=torch.Generator("cuda").manual_seed(seed))
    return sum(ro.num_tokens)

def generate(seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                             max_new_tokens=64, pad_token_id=tok.pad_token_id)
    c = out[:, ids.shape[1]:]
    e = c == tok.eos_token_id
    return int(torch.where(e.any(1), e.int().argmax(1) + 1, c.shape[1]).sum())

sides = {"generate": generate, "r1kit_hf": r1kit_hf}
if importlib.util.find_spec("vllm"):
    from r1kit.rollout import make_engine
    engine = make_engine("vllm", "r1kit/assets/tiny-base", vllm_gpu_memory_utilization=0.3)
    sides["vllm"] = lambda seed: sum(engine.sample(model, tok, prompts, 8, max_new_tokens=64,
        generator=torch.Generator("cuda").manual_seed(seed)).num_tokens)
rates = {k: [] for k in sides}
for rep in range(6):
    for name, fn in sides.items():
        torch.cuda.synchronize(); t = time.perf_counter(); n = fn(rep); torch.cuda.synchronize()
        if rep:
            rates[name].append(n / (time.perf_counter() - t))
for name, r in rates.items():
    print(f"{name}: median {statistics.median(r):.0f} tok/s over {len(r)} calls "
          f"({statistics.median(r) / statistics.median(rates['generate']):.2f}x generate)")
EOF
echo "results in $OUT"
