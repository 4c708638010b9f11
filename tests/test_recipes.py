"""Every recipe loads against its stage's config (no unknown keys, right types), names the hardware
it was sized for and the exact launch command, and its batch arithmetic works on that many
processes: whole groups per rank, per minibatch and per micro-batch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from r1kit.cli import STAGES
from r1kit.config import load_config

RECIPES = sorted((Path(__file__).parents[1] / "recipes").rglob("*.yaml"))
REAL = [p for p in RECIPES if "tiny" not in p.parts]


def _launch(path: Path) -> tuple[str, int]:
    """(stage, processes) from the recipe's `# Launch:` header line."""
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    launch = next((line for line in header if line.startswith("# Launch:")), None)
    assert launch, f"{path}: no '# Launch:' line in the header"
    assert f"--config {path.relative_to(path.parents[2])}" in launch, launch
    stage = re.search(r"(?:-m r1kit|r1kit) (\w+)", launch).group(1)
    procs = re.search(r"--nproc(?:_per_node)?[ =](\d+)", launch)
    return stage, int(procs.group(1)) if procs else 1


def test_there_are_gpu_recipes():
    names = {p.parent.name + "/" + p.name for p in REAL}
    assert "qwen2.5-math-1.5b/zero-8gpu.yaml" in names
    assert "distill/qwen2.5-1.5b-student-1gpu.yaml" in names


@pytest.mark.parametrize("path", REAL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_is_valid_for_its_hardware(path):
    text = path.read_text()
    sized = re.search(r"^# Sized for: .*(GPU|CPU)", text, re.MULTILINE)
    assert sized, f"{path}: no '# Sized for:' line"
    stage, ranks = _launch(path)
    cfg = load_config(STAGES[stage][0], path)  # UserError on any unknown key or wrong type
    if hasattr(cfg, "rl"):
        rl = cfg.rl
        assert rl.prompts_per_step % ranks == 0, "prompts per step must split over the ranks"
        groups = rl.prompts_per_step // ranks
        assert groups % rl.updates_per_rollout == 0, "each minibatch must hold whole groups"
        rows = groups // rl.updates_per_rollout * rl.group_size
        assert rl.micro_batch_size % rl.group_size == 0, "micro-batches hold whole groups"
        assert rows % rl.micro_batch_size == 0, "a minibatch must be whole micro-batches"
        if rl.max_tokens_per_micro_batch:
            budget_rows = rl.max_tokens_per_micro_batch // cfg.rollout.max_new_tokens
            assert budget_rows >= rl.group_size, "the token budget must fit one group"
        if getattr(cfg, "lora", None) and cfg.lora.r:
            assert rl.ref_reset_every == 0, "LoRA keeps the base as the reference"
    if hasattr(cfg, "sft"):
        s = cfg.sft
        assert s.batch_size % ranks == 0 and (s.batch_size // ranks) % s.micro_batch_size == 0
    assert getattr(getattr(cfg, "model", None), "path", "x") != "builtin", "a real model"


def test_a_wrong_key_in_a_recipe_is_named(tmp_path):
    from r1kit.config import ZeroConfig
    from r1kit.errors import UserError

    bad = tmp_path / "bad.yaml"
    bad.write_text("rl:\n  prompts_per_stp: 4\n")
    with pytest.raises(UserError, match="prompts_per_stp"):
        load_config(ZeroConfig, bad)
