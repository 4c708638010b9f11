"""The built-in base model: a tokenizer trained with `tokenizers`, a Llama causal LM, and the
pretraining that makes it a plausible, imperfect "base model" for R1-Zero (DESIGN.md, fixed points).

Everything is a plain Hugging Face artefact: the folder loads with `AutoModelForCausalLM` and
`AutoTokenizer`, so every later code path is the one a Qwen user takes.

Departures from a real base model, on purpose:
- the corpus is only worked solutions of the built-in task, written in the R1-Zero template, with
  the slips, re-checks and second-language traces described in `r1kit.tasks.arithmetic`;
- the BPE pre-tokenizer splits runs of digits from other text but not on whitespace, so every
  number below 100 becomes one token (as in GPT-2's vocabulary, unlike Qwen2's single digits) and
  the fixed template compresses to a few tokens. A model of this size on 2 cores learns 2-digit
  arithmetic as a lookup over number tokens in minutes; with single-digit tokens it had learned
  only 17% of steps after 20 minutes (measured once when the tokenizer was chosen);
- the architecture is Llama rather than Qwen2 because transformers reloads a Qwen2 folder's
  tokenizer as `Qwen2Tokenizer`, which swaps in its own whitespace-splitting pre-tokenizer; a Llama
  folder whose tokenizer_config says `TokenizersBackend` reloads `tokenizer.json` exactly as
  trained (checked at build time).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from r1kit.config import BaseConfig
from r1kit.errors import UserError
from r1kit.tasks.arithmetic import RU_EQUALS, RU_OPS, RU_WAIT, sample_problems, worked_solution
from r1kit.templates import render_prompt

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|im_start|>", "<|im_end|>"]
# Ordinary added tokens, so that decoding with skip_special_tokens=True keeps them.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def corpus(n: int, cfg: BaseConfig, seed: int) -> list[str]:
    """`n` pretraining documents: template + sloppy worked solution + EOS, train split only.

    With several `cfg.tasks` each gets an equal share, shuffled together; arithmetic alone gives
    exactly the documents of the first builds (the shipped base depends on them).
    """
    tasks = list(cfg.tasks)
    unknown = [t for t in tasks if t not in ("arithmetic", "code")]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        raise UserError(f"tasks: give distinct tasks among arithmetic, code; got {tasks}")
    share = n // len(tasks)
    docs: list[str] = []
    if "arithmetic" in tasks:
        rng = random.Random(f"corpus-{seed}")
        problems = sample_problems(share, "train", seed=seed)
        docs += [render_prompt(p.prompt) + worked_solution(p, rng, cfg.corpus) + EOS
                 for p in problems]
    if "code" in tasks:
        from r1kit.tasks import code

        rng = random.Random(f"code-corpus-{seed}")
        train = code.sample_problems(10**6, "train", seed=seed)  # all of them, drawn repeatedly
        docs += [render_prompt(p.prompt) + code.worked_solution(p, rng, code.CodeStyle()) + EOS
                 for p in (rng.choice(train) for _ in range(share))]
    if len(tasks) > 1:
        random.Random(f"mix-{seed}").shuffle(docs)
    return docs


# Qwen2's own pre-tokenization (transformers' Qwen2Tokenizer): words, single digits, punctuation.
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
               r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


def build_tokenizer(texts: list[str], vocab_size: int, arch: str = "llama"
                    ) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`. For `qwen2` it uses Qwen2's own normalizer and
    pre-tokenizer, because transformers reloads any Qwen2 folder as `Qwen2Tokenizer`, which
    rebuilds them from the vocabulary whatever tokenizer.json says; numbers are then single digits,
    as in a real Qwen2.5 student."""
    tok = Tokenizer(models.BPE(unk_token=None))
    if arch == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte stays encodable
        show_progress=False,
    )
    # Pieces between digits; Russian words are listed once more so they get whole-word tokens.
    extra = [f" {w} " for w in (*RU_OPS.values(), RU_EQUALS, RU_WAIT)] * 50
    tok.train_from_iterator(texts + extra, trainer=trainer)
    tok.add_tokens(TAG_TOKENS)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=512,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def build_model(cfg: BaseConfig, tokenizer: PreTrainedTokenizerFast):
    """A freshly initialised causal LM of `cfg.arch` (Llama for the teacher lineage; Qwen2 or
    Llama for the distillation students, R1-SPEC §3.5)."""
    if cfg.arch not in ARCHS:
        raise UserError(f"arch: unknown architecture {cfg.arch!r}; use one of {sorted(ARCHS)}")
    config_cls, model_cls = ARCHS[cfg.arch]
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(cfg.seed)
    model = model_cls(config)
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id
    )
    return model


def _batches(ids: list[list[int]], batch_size: int, pad_id: int, rng: random.Random):
    """Endless length-bucketed batches (padding to the batch's longest doc, right-padded)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    while True:
        rng.shuffle(chunks)
        for chunk in chunks:
            width = max(len(ids[i]) for i in chunk)
            x = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                x[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            yield x, mask


def pretrain(model, tokenizer, texts: list[str], cfg: BaseConfig, log=print) -> list[float]:
    """Plain next-token pretraining with AdamW, warm-up and cosine decay; returns the loss curve."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    batches = _batches(ids, cfg.batch_size, tokenizer.pad_token_id, random.Random(cfg.seed))
    device = torch.device(cfg.device)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses, t0 = [], time.time()
    for step in range(cfg.steps):
        x, mask = next(batches)  # (N, L)
        x, mask = x.to(device), mask.to(device)
        labels = x.masked_fill(mask == 0, -100)  # (N, L); each doc's own EOS stays a target
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"pretrain step {step:5d}/{cfg.steps}  loss {loss.item():.4f}  {time.time() - t0:6.1f}s")
    model.to("cpu").eval()
    return losses


def build_base(cfg: BaseConfig, out: Path, log=print) -> dict:
    """Build, pretrain and save the base model to `out`; returns its build record."""
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    texts = corpus(cfg.corpus_docs, cfg, cfg.seed)
    tokenizer = build_tokenizer(texts[:5000], cfg.vocab_size, cfg.arch)
    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"base model: {cfg.arch}, {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}")
    losses = pretrain(model, tokenizer, texts, cfg, log=log)
    record = {
        "params": n_params,
        "vocab": len(tokenizer),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "build_seconds": time.time() - t0,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "device")},
        "device": cfg.device,
    }
    from r1kit.checkpoint import save_hf_folder

    save_hf_folder(model, tokenizer, out, extra={"r1kit_base.json": json.dumps(record, indent=2)})
    _check_reload(out, tokenizer, texts[:100])
    return record


def _check_reload(out: Path, tokenizer, texts: list[str]) -> None:
    """The saved folder must tokenize exactly as the tokenizer the model was trained with."""
    reloaded = AutoTokenizer.from_pretrained(out)
    ours = tokenizer(texts, add_special_tokens=False)["input_ids"]
    theirs = reloaded(texts, add_special_tokens=False)["input_ids"]
    if ours != theirs:
        raise RuntimeError(f"{out}: the reloaded tokenizer ({type(reloaded).__name__}) differs")
