#!/usr/bin/env bash
# One GRPO step, r1kit vs Hugging Face TRL's GRPOTrainer, on the same tiny model and configuration
# (8 prompts x 8 completions, 64 new tokens, beta=0.04, 10 steps, seed 0; see
# ../shared/peer-bench/RESULTS.md). Runs both alternately, REPS times each, then summarizes.
#
#   bash benchmarks/run_trl_comparison.sh             # the full comparison (3 + 3 runs, ~4 min)
#   bash benchmarks/run_trl_comparison.sh --setup-only  # only the TRL venv and the tiny model
#   STEPS=2 REPS=1 OUT_DIR=benchmarks/out/smoke RESULTS=benchmarks/out/smoke/report.md \
#       bash benchmarks/run_trl_comparison.sh            # a quick smoke run
#
# TRL is installed only here, in benchmarks/.venv-trl (gitignored), exactly as RESULTS.md does:
# torch==2.13.0 first, then `trl math-verify "torch==2.13.0"`, each after a --dry-run whose plan
# must not hold any torch but 2.13.0 (nor CUDA wheels). Outputs go to benchmarks/out/ (raw JSON,
# logs, the tiny model) and benchmarks/results/grpo_step_vs_trl.md. shared/ is only read.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PEER_BENCH="${PEER_BENCH:-$ROOT/../shared/peer-bench}"
PEER_BENCH="$(cd "$PEER_BENCH" && pwd)"
PYTHON="${PYTHON:-python3}"            # interpreter the TRL venv is made from
R1KIT_PY="${R1KIT_PY:-$ROOT/.venv/bin/python}"
TRL_VENV="${TRL_VENV:-$ROOT/benchmarks/.venv-trl}"  # override: an existing TRL venv
TRL_PY="$TRL_VENV/bin/python"
MODEL="$ROOT/benchmarks/out/tiny-model"
OUT="${OUT_DIR:-$ROOT/benchmarks/out/trl_comparison}"
RESULTS="${RESULTS:-$ROOT/benchmarks/results/grpo_step_vs_trl.md}"
REPS="${REPS:-3}"
STEPS="${STEPS:-10}"
RUN_TIMEOUT="${RUN_TIMEOUT:-900}"
TORCH_PIN="torch==2.13.0"
export PYTHONDONTWRITEBYTECODE=1       # never try to write __pycache__ into the read-only shared/

SETUP_ONLY=0
[[ "${1:-}" == "--setup-only" ]] && SETUP_ONLY=1

log() { printf '\n=== %s\n' "$*"; }

# Abort unless a `pip install --dry-run --report` plan keeps torch at 2.13.0 and pulls no CUDA.
check_plan() {
    local report="$1"
    "$TRL_PY" - "$report" <<'EOF'
import json, sys
plan = json.load(open(sys.argv[1])).get("install", [])
items = [(i["metadata"]["name"], i["metadata"]["version"]) for i in plan]
print("pip plan:", " ".join(f"{n}-{v}" for n, v in items) or "(nothing to install)")
bad = [f"{n}-{v}" for n, v in items
       if (n.lower() == "torch" and v.split("+")[0] != "2.13.0")
       or n.lower().startswith("nvidia-") or n.lower() == "triton"]
if bad:
    sys.exit(f"ABORT: the install plan would bring {', '.join(bad)}; only torch 2.13.0 (CPU) "
             "is allowed. Nothing was installed.")
EOF
}

pip_install_checked() {  # pip install ARGS..., after a dry run whose plan passes check_plan
    local report="$TRL_VENV/.pip-plan.json"
    "$TRL_PY" -m pip install --dry-run --quiet --report "$report" "$@"
    check_plan "$report"
    "$TRL_PY" -m pip install "$@"
}

# ------------------------------------------------------------------ (a) the TRL venv
if [[ ! -f "$TRL_VENV/.installed" ]]; then
    log "creating $TRL_VENV (TRL for this benchmark only)"
    [[ -x "$TRL_PY" ]] || "$PYTHON" -m venv "$TRL_VENV"
    "$TRL_PY" -m pip install --upgrade pip
    pip_install_checked "$TORCH_PIN"
    pip_install_checked trl math-verify "$TORCH_PIN"
    "$TRL_PY" -m pip check || true
    "$TRL_PY" -m pip freeze > "$TRL_VENV/requirements.freeze.txt"
    touch "$TRL_VENV/.installed"
fi
"$TRL_PY" -c 'import torch, trl; assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__; print("TRL venv: torch", torch.__version__, "trl", trl.__version__)'

# ------------------------------------------------------------------ (b) the peer tiny model
if [[ ! -f "$MODEL/model.safetensors" ]]; then
    log "building the peer tiny model into $MODEL"
    "$R1KIT_PY" "$PEER_BENCH/make_tiny_model.py" --out "$MODEL"
fi
[[ "$SETUP_ONLY" == 1 ]] && { log "setup done"; exit 0; }

# ------------------------------------------------------------------ (c) alternate runs
mkdir -p "$OUT/logs" "$OUT/trl-output" "$(dirname "$RESULTS")"
rm -f "$OUT"/trl_run*.json "$OUT"/r1kit_run*.json
COMMAND="bash benchmarks/run_trl_comparison.sh"
[[ "$REPS" != 3 || "$STEPS" != 10 ]] && COMMAND="STEPS=$STEPS REPS=$REPS $COMMAND"

run_trl() {
    log "TRL run $1/$REPS"
    timeout "$RUN_TIMEOUT" "$TRL_PY" "$PEER_BENCH/trl_grpo_bench.py" --model "$MODEL" \
        --steps "$STEPS" --output-dir "$OUT/trl-output" --json "$OUT/trl_run$1.json" \
        2>&1 | tee "$OUT/logs/trl_run$1.log"
}
run_r1kit() {
    log "r1kit run $1/$REPS"
    timeout "$RUN_TIMEOUT" "$R1KIT_PY" benchmarks/grpo_step_speed.py --model "$MODEL" \
        --peer-bench "$PEER_BENCH" --steps "$STEPS" --json "$OUT/r1kit_run$1.json" \
        2>&1 | tee "$OUT/logs/r1kit_run$1.log"
}
# Alternate, and swap which goes first each repetition (TRL, r1kit, r1kit, TRL, TRL, r1kit).
for i in $(seq 1 "$REPS"); do
    if (( i % 2 )); then run_trl "$i"; run_r1kit "$i"; else run_r1kit "$i"; run_trl "$i"; fi
done

# ------------------------------------------------------------------ (d) summary
log "summary"
"$R1KIT_PY" benchmarks/summarize_trl_comparison.py --dir "$OUT" --out "$RESULTS" \
    --command "$COMMAND"
