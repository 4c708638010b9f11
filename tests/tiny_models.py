"""Tiny random-weight causal LMs of common Hugging Face architectures, built locally (no hub).

They share the built-in tokenizer (r1kit/assets/tiny-base), so every stage can run on them in a few
seconds; `think_template=True` gives a chat template that prefills `<think>` (as DeepSeek-R1-Distill
and Qwen3 templates do).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ASSETS = Path(__file__).resolve().parents[1] / "r1kit" / "assets" / "tiny-base"
ARCHS = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}
CHAT = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
THINK_CHAT = CHAT.replace("'<|im_start|>assistant\n' }}", "'<|im_start|>assistant\n<think>\n' }}")


def build(out: Path, arch: str = "llama", *, hidden: int = 32, layers: int = 2, heads: int = 2,
          kv_heads: int = 1, seed: int = 0, think_template: bool = False) -> str:
    """A random `arch` model with the built-in tokenizer, saved to `out`; returns the path."""
    config_cls, model_cls = ARCHS[arch]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ASSETS / name, out / name)
    tok = AutoTokenizer.from_pretrained(out)
    config = config_cls(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=512, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model.save_pretrained(out)
    tok.chat_template = THINK_CHAT if think_template else CHAT
    tok.save_pretrained(out)
    return str(out)
