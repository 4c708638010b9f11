"""Any Hugging Face causal LM: every stage on tiny random Qwen2, Llama and Qwen3 models (the Qwen3
one with a chat template that prefills `<think>`), reasoning-gym problems, chat and export."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1kit.cli import main as cli
from r1kit.errors import UserError
from r1kit.rewards import get_reward
from r1kit.stages import chat
from r1kit.tasks.base import Problem
from r1kit.templates import R1_ZERO_TEMPLATE, mark_prefill, render_prompt
from tests.tiny_models import build

ZERO = ["rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=4", "rl.lr=0.05",
        "rl.warmup_steps=1", "rl.beta=0.01", "rl.dynamic_sampling=false",
        "rollout.max_new_tokens=8", "eval.num_problems=2", "eval.k=1", "eval.every=0",
        "eval.max_new_tokens=8", "data.train_size=16", "run.report_to=[]",
        "rewards.weights={accuracy: 1.0, format: 0.1, length_test: 1.0}"]


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


from r1kit.rewards import register  # the accuracy of a random model is 0: give RL a signal


@register("length_test")
def _length(completion: str, problem) -> float:
    return min(1.0, len(completion) / 30)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_every_stage_runs_on_a_tiny_random(arch, tmp_path):
    think = arch == "qwen3"
    model = build(tmp_path / arch, arch, think_template=think)
    out = ["--set", f"run.out_dir={tmp_path}"]
    template = "chat" if think else "r1_zero"

    # ---- rl (and zero: the same stage) with the model's chat template or R1-Zero's
    assert cli(["rl", "--model", model, *out, *_sets(*ZERO, "run.name=rl",
                                                     f"data.template={template}")]) == 0
    before, after = load_file(f"{model}/model.safetensors"), load_file(
        str(tmp_path / "rl" / "final" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2]

    # ---- sft
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+1?", "completion": f"<think> {a}+1 is "
                                        f"{a + 1} </think> <answer> {a + 1} </answer>"}) + "\n"
                            for a in range(6)))
    assert cli(["sft", "--model", model, *out, *_sets(
        "run.name=sft", f"data.train_file={data}", "sft.epochs=1", "sft.batch_size=3",
        "sft.micro_batch_size=2", "eval.num_problems=0", "run.report_to=[]",
        f"data.template={template}")]) == 0
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["last_loss"] < summary["first_loss"] * 1.5

    # ---- sample and eval
    assert cli(["sample", "--model", model, *out, *_sets(
        "run.name=sample", "sample.num_prompts=2", "sample.samples_per_prompt=2",
        "sample.batch_size=2", "rollout.max_new_tokens=8", f"data.template={template}")]) == 0
    assert (tmp_path / "sample" / "progress.json").is_file()
    assert cli(["eval", "--model", str(tmp_path / "rl" / "final"), *out, *_sets(
        "run.name=eval", "eval.num_problems=2", "eval.k=1", "eval.max_new_tokens=8",
        f"data.template={template}")]) == 0
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())


def test_prefilled_think_template_is_scored_as_reasoning(tmp_path):
    """TRL #6966 / open-r1 #560: a template that ends in `<think>` must not zero the format."""
    tok = AutoTokenizer.from_pretrained(build(tmp_path / "m", "qwen3", think_template=True))
    prompt = render_prompt("1+1?", "chat", tok)
    assert prompt.endswith("<think>\n")
    problem = mark_prefill(Problem("p", "1+1?", "2"), prompt)
    completion = "1+1 is 2 </think> <answer> 2 </answer>"
    for name in ("format", "think_format", "accuracy"):
        assert get_reward(name)(completion, problem) == 1.0, name
    assert get_reward("format")(completion, Problem("p", "1+1?", "2")) == 0.0
    # a second <think> after the prefilled one is a malformed completion
    assert get_reward("format")("<think> " + completion, problem) == 0.0


def test_reasoning_gym_problems_use_its_scorer(tmp_path):
    pytest.importorskip("reasoning_gym")
    model = build(tmp_path / "m", "llama")
    assert cli(["zero", "--model", model, "--task", "reasoning_gym:countdown",
                *_sets(*ZERO, f"run.out_dir={tmp_path}", "run.name=rg", "rl.steps=1",
                       "rollout.max_new_tokens=4", "eval.max_new_tokens=4")]) == 0
    assert json.loads((tmp_path / "rg" / "summary.json").read_text())["steps"] == 1
    from r1kit.config import DataConfig
    from r1kit.runs import load_problems

    train, heldout = load_problems(DataConfig(source="reasoning_gym:countdown", train_size=4), 2)
    assert not {p.id for p in train} & {p.id for p in heldout}
    acc = get_reward("accuracy")
    p = train[0]
    assert acc(f"<think>...</think><answer>{p.answer}</answer>", p) == 1.0
    assert acc("<answer>1+1</answer>", p) < 1.0 and acc("no answer", p) == 0.0
    # a big training set is made as it is read, the same problems whenever they are read
    big = load_problems(DataConfig(source="reasoning_gym:countdown+basic_arithmetic",
                                   train_size=20_000), 2)[0]
    assert len(big) == 20_000 and len(big.made) == 0
    assert big[-1].id == "rg-basic_arithmetic-train-0-9999" and big[3] == train[3]
    assert [q.id for q in big[2:4]] == [train[2].id, train[3].id] and len(big.made) == 3
    held = tmp_path / "held.jsonl"  # held-out problems from a file, training from the library
    held.write_text('{"prompt": "Compute 1+1", "answer": "2"}\n')
    train2, heldout2 = load_problems(DataConfig(source="reasoning_gym:countdown", train_size=4,
                                                eval_source=str(held)), 2)
    assert [p.answer for p in heldout2] == ["2"] and len(train2) == 4


def test_chat_streams_reasoning_apart_and_export_makes_a_servable_folder(tmp_path):
    model = build(tmp_path / "m", "llama")
    questions = iter(["What is 2+2?"])
    shown = io.StringIO()

    def ask(_):
        try:
            return next(questions)
        except StopIteration:
            raise EOFError from None

    assert chat.main(model, template="r1_zero", max_new_tokens=6, temperature=0.0,
                     input_fn=ask, out=shown) == 0
    assert "r1kit chat:" in shown.getvalue() and "[answer]" in shown.getvalue()

    printed = io.StringIO()
    printer = chat.ReasoningPrinter(printed, prefilled=True)
    for piece in ("2+2", " is 4 </thi", "nk>\n\n<ans", "wer>4</answer>"):
        printer.feed(piece)
    printer.close()
    assert printed.getvalue() == "[reasoning]\n2+2 is 4 \n[answer]\n\n\n4\n"
    assert printer.answer == "\n\n4"

    out = tmp_path / "served"
    assert cli(["export", model, str(out), "--template", "r1_zero"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
                 "chat_template.jinja", "r1kit_export.json"):
        assert (out / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(out)
    rendered = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                       tokenize=False, add_generation_prompt=True)
    assert rendered == R1_ZERO_TEMPLATE.format(prompt="What is 2+2?")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["temperature"] == 0.6 and gen["top_p"] == 0.95
    a, b = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (model, out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cli(["export", model, str(out)]) == 0  # a model folder is replaced by the new export

    # an export never replaces a folder it would lose: other files, its own source, a parent
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    for target in (tmp_path / "notes", Path(model), tmp_path):
        assert cli(["export", model, str(target)]) == 2, target
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert (Path(model) / "config.json").is_file()


def test_export_keeps_the_trained_dtype_and_every_end_token(tmp_path):
    path = build(tmp_path / "m", "llama")
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    model.generation_config.eos_token_id = [5, tok.eos_token_id]  # e.g. <|im_end|>, <|endoftext|>
    model.to(torch.bfloat16).save_pretrained(path)
    out = tmp_path / "served"
    assert cli(["export", path, str(out), "--template", "r1_zero"]) == 0
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [
        5, tok.eos_token_id]
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert json.loads((out / "r1kit_export.json").read_text())["dtype"] == "bfloat16"


def test_chat_reports_a_generation_error_instead_of_waiting_for_tokens(tmp_path, monkeypatch):
    import threading

    from transformers import LlamaForCausalLM

    def boom(self, **kwargs):
        raise RuntimeError("generation broke")

    monkeypatch.setattr(LlamaForCausalLM, "generate", boom)
    model = build(tmp_path / "m", "llama")
    questions = iter(["What is 2+2?"])
    result = {}

    def talk():
        try:
            chat.main(model, template="r1_zero", input_fn=lambda _: next(questions),
                      out=io.StringIO())
        except RuntimeError as e:
            result["error"] = str(e)

    worker = threading.Thread(target=talk, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and result == {"error": "generation broke"}


def test_chat_uses_the_template_the_model_was_trained_on(tmp_path, monkeypatch):
    from r1kit.stages.base import PACKAGED_BASE
    from r1kit.stages.export import template_of

    assert template_of(str(PACKAGED_BASE)) == "r1_zero"  # its tokenizer has a chat template
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("data: {template: plain}\n")
    assert template_of(str(run / "final")) == "plain"
    (run / "config.yaml").write_text("data: [unclosed\n")  # unreadable: not a guess
    with pytest.raises(UserError, match="config.yaml: unreadable .* name the template"):
        template_of(str(run / "final"))
    assert template_of(build(tmp_path / "m", "llama")) is None
    # an unrelated config.yaml in the current folder is not the model's run
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text("rl:\n  steps: 10\n")
    shutil.copytree(PACKAGED_BASE, work / "mybase")
    monkeypatch.chdir(work)
    assert template_of("mybase") == "r1_zero"
    (work / "config.yaml").write_text("just text\n")
    assert template_of(build(work / "m2", "llama")) is None


def test_export_merges_a_lora_adapter(tmp_path):
    pytest.importorskip("peft")
    from r1kit import lora
    from r1kit.config import LoraConfig

    model = build(tmp_path / "m", "qwen2")
    policy = lora.apply(AutoModelForCausalLM.from_pretrained(model), LoraConfig(r=2, alpha=4.0))
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    policy.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(model).save_pretrained(tmp_path / "adapter")
    want = policy.merge_and_unload().state_dict()
    assert cli(["export", str(tmp_path / "adapter"), str(tmp_path / "out")]) == 0
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert not (Path(tmp_path / "out") / "adapter_config.json").exists()
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_a_mistyped_local_folder_is_not_taken_for_a_hub_name(tmp_path, monkeypatch):
    from r1kit.models import is_local_path, load_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("runs/typo", "runs/x/final", "./m", "~/nothing-here-r1kit"):
        assert is_local_path(path)
        with pytest.raises(UserError, match="no such folder"):
            load_model(path)
    assert not is_local_path("Qwen/Qwen2.5-0.5B") and not is_local_path("gpt2")
    for stage in (["chat", "runs/zz"], ["export", "runs/nope", "out"]):
        assert cli(stage) == 2
