"""`r1kit export RUN_OR_MODEL OUT`: a clean Hugging Face folder, ready for vLLM or transformers.

SOURCE is a model folder, a LoRA adapter folder (merged into its base), a run folder (its `final/`,
else its latest checkpoint) or a hub name. OUT gets the model weights (safetensors, any LoRA
merged), the tokenizer, a chat template and a generation_config with R1's recommended sampling
(T = 0.6, top-p 0.95, R1-SPEC §4.4), and `r1kit_export.json` saying where it came from.

Chat template: a run trained on the R1-Zero template (`data.template: r1_zero`) is exported with a
chat template that renders exactly that prompt for the last user message, so that a serving
engine's chat endpoint asks the model what it was trained on; otherwise the tokenizer's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from r1kit import checkpoint as ckpt
from r1kit.errors import UserError
from r1kit.models import DTYPES, load_model, resolve_model_path
from r1kit.rollout.hf import end_ids
from r1kit.templates import R1_ZERO_TEMPLATE

# The R1-Zero prompt as a Jinja chat template: the last user message is the question.
R1_ZERO_CHAT_TEMPLATE = (
    "{%- set q = (messages | selectattr('role', 'equalto', 'user') | list | last)['content'] -%}"
    + R1_ZERO_TEMPLATE.replace("{prompt}", "{{ q }}")
)


def resolve_source(source: str) -> str:
    """A model folder (or hub name) from what a user may point at: run folder -> final/."""
    if not source.strip():  # Path("") is the working directory
        raise UserError("the model path is empty: give a model folder, a run folder, a hub name "
                        "or builtin")
    path = Path(source).expanduser()
    if not path.exists():
        return resolve_model_path(source)  # 'builtin' or a hub name
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return str(path)
    if (path / "final" / "config.json").is_file():
        return str(path / "final")
    if (path / "checkpoints" / "latest").is_file():
        return str(ckpt.latest_checkpoint(path))
    raise UserError(f"{source}: neither a model folder (config.json), a LoRA adapter "
                    "(adapter_config.json) nor a run folder (final/ or checkpoints/)")


def template_of(source: str) -> str | None:
    """The prompt template `source` was trained on: r1_zero for a built-in base (whose tokenizer
    carries a chat template the model never saw), else the `data.template` of the run it came
    from (a run folder holding `source`: its `final/`, a checkpoint; two levels up at most);
    None when neither says. Only run folders count: any other config.yaml nearby (the current
    folder's) is not the model's."""
    path = Path(source).resolve()
    if (path / "r1kit_base.json").is_file():
        return "r1_zero"
    for folder in (path, *path.parents[:2]):
        config = folder / "config.yaml"
        is_run = any((folder / name).exists() for name in ("metrics.jsonl", "checkpoints", "final"))
        if config.is_file() and is_run:
            try:
                data = yaml.safe_load(config.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as e:  # guessing would pick a template
                raise UserError(f"{config}: unreadable ({type(e).__name__}), so the template "
                                "the model was trained with is unknown; repair it or name the "
                                "template (--template, or --set data.template=)") from None
            section = data.get("data") if isinstance(data, dict) else None
            return section.get("template") if isinstance(section, dict) else None
    return None


def saved_dtype(path: str) -> str:
    """The dtype the weights at `path` were saved in (an adapter's: its local base model's);
    float32 when it does not say."""
    folder = Path(path)
    adapter = folder / "adapter_config.json"
    if adapter.is_file():
        folder = Path(json.loads(adapter.read_text()).get("base_model_name_or_path") or "")
    config = folder / "config.json"
    data = json.loads(config.read_text()) if config.is_file() else {}
    name = data.get("dtype") or data.get("torch_dtype")
    return name if name in DTYPES else "float32"


def main(source: str, out: str, *, dtype: str = "", template: str = "") -> Path:
    """Write the export of `source` to `out` (atomically) and check that it loads back."""
    if dtype and dtype not in DTYPES:
        raise UserError(f"--dtype: unknown {dtype!r}; use one of {sorted(DTYPES)}")
    path = resolve_source(source)
    out = ckpt.check_model_out(out, source, path)
    dtype = dtype or saved_dtype(path)  # by default, the dtype the weights were trained in
    model, tokenizer = load_model(path, dtype, "cpu")  # an adapter: merged into its base
    template = template or template_of(path) or ("chat" if tokenizer.chat_template else "r1_zero")
    if template == "r1_zero":
        tokenizer.chat_template = R1_ZERO_CHAT_TEMPLATE
    elif not tokenizer.chat_template:
        raise UserError(f"{source}: the tokenizer has no chat template; export with --template "
                        "r1_zero")
    # every end the model was trained to stop at (Qwen's chat models: <|im_end|> and
    # <|endoftext|>), so that servers stop there too
    eos, ends = tokenizer.eos_token_id, end_ids(model, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=ends[0] if len(ends) == 1 else (ends or None),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        do_sample=True, temperature=0.6, top_p=0.95,
    )
    info = {"source": str(source), "resolved": path, "template": template, "dtype": dtype}
    ckpt.save_hf_folder(model, tokenizer, Path(out),
                        extra={"r1kit_export.json": json.dumps(info, indent=2) + "\n"})
    # What a server does first: load it back and render a chat prompt.
    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out).apply_chat_template(
        [{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True)
    print(f"exported {path} -> {out} ({template} template, {dtype})")
    return Path(out)
