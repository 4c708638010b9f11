"""Typed, frozen configs: the only home of defaults.

Each stage has one small dataclass made of sections. A config is built from the defaults, then a
YAML file (holding only overrides), then `--set section.key=value` overrides, in that order.
Every field carries a help string; `r1kit <stage> --help` prints them all. Unknown keys and values
of the wrong type (a list's items and a mapping's values too, as annotated: `list[str]`) are
`UserError`s that name the key, and the file and line when a --config file gave it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r1kit.errors import UserError
from r1kit.tasks.arithmetic import CorpusStyle
from r1kit.templates import TEMPLATES

TEMPLATE_NAMES = (*TEMPLATES, "chat")


def opt(default, help: str, *, low=None, above=None, high=None, choices=None):
    """A config field with its help string and the values a user may give it: at least `low`,
    more than `above`, at most `high`, one of `choices` (checked when a file or --set gives it)."""
    meta = {"help": help, "low": low, "above": above, "high": high, "choices": choices}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


class ConfigError(UserError):
    """A `UserError` about config key `key` (dotted), which `load_config` locates in its file."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key

    def __reduce__(self):  # pickled whole (torchrun's ranks share errors), not as args alone
        return type(self), (str(self), self.key)


class _Checked:
    """Every field's type (as annotated), range and choices are checked when a config is made,
    from Python too, as `Class.field` (a file or `--set` is checked earlier, with the key's full
    name)."""

    def __post_init__(self):
        for f in dataclasses.fields(self):  # Python's spellings of a config's types
            tp, value = _hints(type(self))[f.name], getattr(self, f.name)
            listed = (typing.get_origin(tp) or tp) is list
            if listed and isinstance(value, (str, os.PathLike)):  # stop="</answer>", as --set
                value = [value]
            if listed and isinstance(value, tuple):  # rollout.stop=("</answer>",)
                value = list(value)
            if listed and isinstance(value, list):  # students=[Path(...)]
                value = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
            elif isinstance(value, os.PathLike) and tp is str:  # run.out_dir=Path("runs")
                value = os.fspath(value)
            object.__setattr__(self, f.name, value)
        _check_fields(self, type(self).__name__)


def section(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


# ----------------------------------------------------------------------------- base model


@dataclass(frozen=True)
class BaseConfig(_Checked):
    """`r1kit base`: build and pretrain the built-in tiny base model."""

    out: str = opt("", "output folder; empty = the cache folder (R1KIT_CACHE or ~/.cache/r1kit)")
    seed: int = opt(0, "seed for corpus, initialisation and batches (the build is deterministic)")
    arch: str = opt("llama", "llama | qwen2: the transformers architecture (students: tiny-qwen)")
    hidden_size: int = opt(128, "model width", low=1)
    intermediate_size: int = opt(384, "MLP width", low=1)
    num_layers: int = opt(3, "transformer layers", low=1)
    num_heads: int = opt(4, "attention heads", low=1)
    num_kv_heads: int = opt(0, "key/value heads (grouped-query attention); 0 = num_heads", low=0)
    device: str = opt("cpu", "where to pretrain: cpu | cuda (not part of the cache key; a cuda "
                             "build is the same recipe, not bit-identical to a cpu one)")
    vocab_size: int = opt(1024, "BPE vocabulary size before the tag tokens", low=1)
    corpus_docs: int = opt(200_000, "number of worked solutions in the pretraining corpus", low=1)
    tasks: list[str] = opt(
        ["arithmetic"], "tasks of the corpus, documents split evenly: arithmetic, code "
        "(worked one-line programs, r1kit/tasks/code.py; the builtin:code base)",
    )
    steps: int = opt(3000, "pretraining optimizer steps", low=1)
    batch_size: int = opt(64, "documents per pretraining step", low=1)
    lr: float = opt(3e-3, "peak learning rate (AdamW, cosine decay to 10%)", above=0)
    warmup_steps: int = opt(100, "linear warm-up steps", low=0)
    corpus: CorpusStyle = section(CorpusStyle, "how sloppy the worked solutions are")


# ----------------------------------------------------------------------------- R1-Zero


@dataclass(frozen=True)
class RunConfig(_Checked):
    name: str = opt("", "run folder name under out_dir; empty = <stage>-<timestamp>")
    out_dir: str = opt("runs", "where run folders are created")
    seed: int = opt(0, "seed for sampling, data order and initialisation")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    threads: int = opt(0, "torch intra-op threads on CPU; 0 = torch's default", low=0)
    checkpoint_every: int = opt(25, "write a resumable checkpoint every N steps (0 = only at end)",
                                low=0)
    log_completions: int = opt(4, "completions per step written to completions.jsonl", low=0)
    report_to: list[str] = opt(
        ["tensorboard"],
        "metric writers besides metrics.jsonl: tensorboard (the run folder's tb/), wandb "
        "(pip install 'r1kit[wandb]'; offline without an API key); [] = none",
    )


ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class ModelConfig(_Checked):
    path: str = opt("builtin", "HF model name or folder; 'builtin' = the built-in tiny base model")
    dtype: str = opt("auto", "auto (bfloat16 on a CUDA GPU that has it, else float32) | float32 | "
                     "bfloat16 | float16 (not for training)",
                     choices=("auto", "float32", "bfloat16", "float16"))
    gradient_checkpointing: bool = opt(
        False, "recompute activations in backward: less memory, ~30% more compute (training stages)"
    )
    master_weights: bool = opt(
        True, "full fine-tuning in bfloat16 keeps float32 weights and optimizer state and computes "
        "in bfloat16 (autocast), as mixed precision does (LoRA: the adapters are float32 "
        "anyway); false trains the bfloat16 weights "
        "themselves: half the memory, but updates below bfloat16's resolution (about 1/256 of a "
        "weight) are lost, so small learning rates barely move it")
    attn_implementation: str = opt(
        "auto", "attention kernel: auto (transformers' choice: SDPA where the model has it, else "
        "eager) | sdpa | eager | flash_attention_2 | flash_attention_3 (pip install flash-attn; "
        "CUDA)", choices=ATTENTION)

    def __post_init__(self):
        super().__post_init__()
        if not self.path.strip():  # else the loader's error would be `: not a model folder`
            raise UserError("config key 'model.path' is empty: give a model folder, a hub name or "
                            "builtin")


@dataclass(frozen=True)
class LoraConfig(_Checked):
    r: int = opt(0, "LoRA rank; 0 = full fine-tuning (peft: pip install 'r1kit[lora]')", low=0)
    alpha: float = opt(32.0, "LoRA scaling alpha (the update is scaled by alpha / r)", above=0)
    dropout: float = opt(0.0, "dropout on the LoRA input, in SFT only (RL turns dropout off, so "
                         "that the importance ratio is not noise)", low=0, high=0.99)
    target_modules: list[str] = opt(["all-linear"], "module names to adapt; all-linear = every "
                                                    "linear layer but the output head")

    def __post_init__(self):
        super().__post_init__()
        given = [f"lora.{f.name}" for f in dataclasses.fields(self)
                 if f.name != "r" and getattr(self, f.name) != _default(f)]
        if self.r == 0 and given:  # `--lora alpha=16` alone would quietly train every weight
            raise UserError(f"config key 'lora.r' must be > 0 to train adapters "
                            f"({', '.join(given)} given); without it the whole model trains")


@dataclass(frozen=True)
class DistConfig(_Checked):
    strategy: str = opt(
        "ddp", "under torchrun / --nproc N: ddp (a replica per process) | fsdp (FSDP2 fully_shard "
        "per layer, for models that do not fit one device; full fine-tuning only)",
    )


@dataclass(frozen=True)
class DataConfig(_Checked):
    source: str = opt(
        "builtin",
        "'builtin' (arithmetic chains), 'builtin:carry' (the harder tier: every step carries), "
        "'builtin:code' (one-line Python functions with tests), a .jsonl file of {prompt, answer} "
        "(or {prompt, tests}; .json, .csv, .parquet too), hf:NAME_OR_PATH, or "
        "reasoning_gym:NAME[+NAME...] (r1kit[reasoning-gym])",
    )
    split: str = opt("train", "split for hf: sources")
    eval_source: str = opt("", "held-out problems; empty = builtin held-out split, or the same file")
    eval_split: str = opt("test", "split for an hf: eval source")
    prompt_key: str = opt("prompt", "field holding the question")
    answer_key: str = opt("answer", "field holding the reference answer")
    template: str = opt("r1_zero", "r1_zero (R1-SPEC §2.1) | plain | chat (tokenizer's template)",
                        choices=TEMPLATE_NAMES)
    train_size: int = opt(20_000, "training problems of a builtin or reasoning_gym source",
                          low=1)


@dataclass(frozen=True)
class RolloutConfig(_Checked):
    engine: str = opt("hf", "hf (transformers; CPU or GPU) or vllm (CUDA; pip install "
                      "'r1kit[vllm]')")
    vllm_mode: str = opt("colocate", "vllm: colocate (in the training process, on its GPU; the "
                         "weights are synced in place after each update) or server (a `vllm "
                         "serve` on another GPU; weights over NCCL)")
    vllm_server_url: str = opt("http://localhost:8000", "vllm_mode=server: the server's URL")
    vllm_gpu_memory_utilization: float = opt(0.3, "vllm_mode=colocate: share of the GPU's "
                                             "memory vLLM may take (the rest trains)",
                                             above=0, high=1)
    vllm_max_model_len: int = opt(0, "vllm_mode=colocate: prompt + completion tokens vLLM "
                                  "reserves its KV cache for (0 = the longest training prompt + "
                                  "rollout.max_new_tokens, at most the model's context)",
                                  low=0)
    vllm_enforce_eager: bool = opt(False, "vllm_mode=colocate: no compile or CUDA graphs (starts "
                                   "in seconds, samples slower: for short checks)")
    temperature: float = opt(1.0, "sampling temperature for RL rollouts (R1-Zero: 1.0)", low=0)
    top_p: float = opt(1.0, "nucleus sampling for rollouts", above=0, high=1)
    max_new_tokens: int = opt(64, "completion budget; longer completions are truncated", low=1)
    stop: list[str] = opt(["</answer>"], "strings that end a completion (besides EOS)")


@dataclass(frozen=True)
class RLConfig(_Checked):
    steps: int = opt(300, "rollout steps (one rollout = B*G completions)", low=0)
    prompts_per_step: int = opt(16, "B: prompts per rollout step", low=1)
    group_size: int = opt(8, "G: completions per prompt (the advantage is relative to them)",
                          low=2)
    updates_per_rollout: int = opt(1, "mu: minibatch updates against the same pi_old (R1-Zero: 16)",
                                   low=1)
    reuse_sampling_logprobs: bool = opt(
        True, "mu > 1: pi_old is the log-probs the hf engine kept while sampling (no extra pass) "
        "when the policy computes in float32; false = recompute them (always done in bf16/fp16, "
        "whose decode-step rounding differs from the training forward's by up to 0.1 nats, and "
        "with vllm, whose kernels differ)",
    )
    micro_batch_size: int = opt(64, "completions per forward/backward; gradients are accumulated",
                                low=1)
    max_tokens_per_micro_batch: int = opt(
        0, "token budget of a micro-batch (prompt + completion per row); lowers micro_batch_size "
        "to fit, in whole groups (0 = no budget)", low=0,
    )
    offload_ref: bool = opt(True, "on a GPU, keep the reference model in CPU memory between passes")
    lr: float = opt(1e-4, "peak learning rate (AdamW)", above=0)
    warmup_steps: int = opt(5, "linear warm-up steps, then the schedule", low=0)
    lr_schedule: str = opt("constant", "after warm-up: constant | cosine (down to rl.min_lr on "
                           "the last step)", choices=("constant", "cosine"))
    min_lr: float = opt(0.0, "lr_schedule=cosine: the learning rate of the last step", low=0)
    weight_decay: float = opt(0.0, "AdamW weight decay", low=0)
    grad_clip: float = opt(1.0, "max global gradient norm", above=0)
    beta: float = opt(0.0, "KL coefficient to the reference (k3); R1-Zero used 0.001", low=0)
    ref_reset_every: int = opt(0, "copy the policy into the reference every N steps (R1: 400)",
                               low=0)
    eps_low: float = opt(0.2, "lower clip range", low=0, high=1)
    eps_high: float = opt(0.28, "upper clip range (DAPO clip-higher)", low=0)
    aggregation: str = opt("token_mean", "token_mean | seq_mean_token_mean | constant",
                           choices=("token_mean", "seq_mean_token_mean", "constant"))
    scale_by_std: bool = opt(True, "divide advantages by the group std (False = Dr. GRPO)")
    ratio_level: str = opt("token", "token | sequence (GSPO)", choices=("token", "sequence"))
    rollout_correction: str = opt(
        "off", "importance weights pi_old / pi_sampler on the surrogate, for the gap between the "
        "sampler's log-probs and the training forward's (vLLM's kernels, bf16): off | "
        "token_truncate | token_mask | sequence_truncate | sequence_mask (truncate caps the "
        "weight at rollout_correction_max; mask drops tokens or whole sequences outside "
        "[rollout_correction_min, rollout_correction_max])",
        choices=("off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
    )
    rollout_correction_max: float = opt(2.0, "the correction's upper bound C", above=0)
    rollout_correction_min: float = opt(0.0, "the correction's lower bound (truncate: the least "
                                        "weight; mask: weights below it drop)", low=0)
    dynamic_sampling: bool = opt(True, "drop groups whose rewards are all equal from the loss "
                                 "(DAPO's filter; rl.dynamic_sampling_rounds refills the batch)")
    dynamic_sampling_rounds: int = opt(
        1, "dynamic_sampling: sample up to this many batches of B prompts a step until B groups "
        "with unequal rewards are kept, and update on the first B (DAPO's refill, verl's "
        "max_num_gen_batches); 1 = filter only", low=1)
    overlong_filter: bool = opt(False, "mask the loss of truncated completions (DAPO)")
    max_bad_steps: int = opt(3, "stop after this many consecutive non-finite steps", low=1)
    stuck_steps: int = opt(5, "warn when every group has had equal rewards this many steps", low=1)

    def __post_init__(self):
        super().__post_init__()
        if self.dynamic_sampling_rounds > 1 and not self.dynamic_sampling:
            raise UserError("config key 'rl.dynamic_sampling_rounds' refills the batch after "
                            "dynamic sampling's filter; it needs rl.dynamic_sampling=true")
        _check_min_lr(self, "rl")
        if self.rollout_correction_min >= self.rollout_correction_max:
            raise UserError("config keys 'rl.rollout_correction_min' and "
                            "'rl.rollout_correction_max': the lower bound must be below the "
                            f"upper; got {self.rollout_correction_min} and "
                            f"{self.rollout_correction_max}")


@dataclass(frozen=True)
class RewardsConfig(_Checked):
    weights: dict[str, float] = opt(
        {"accuracy": 1.0, "format": 0.1},
        "reward name -> weight; the total is the weighted sum (R1-SPEC §2.2). A --config file's "
        "mapping replaces the whole default one; --set rewards.weights.NAME=W adds or changes one",
    )
    timeout_s: float = opt(5.0, "per-call time limit; a reward over it scores as a failure",
                           above=0)
    modules: list[str] = opt([], "Python modules to import first, whose @register calls add "
                             "rewards (e.g. [myrewards] for ./myrewards.py)")
    active_last: dict[str, int] = opt(
        {}, "reward name -> N: that reward counts only in the last N steps (R1-SPEC §3.2: the "
        "preference reward, reward_model:PATH, ran in the last 400 of 1,700 steps)",
    )


@dataclass(frozen=True)
class CodeConfig(_Checked):
    all_or_nothing: bool = opt(False, "code reward: 1 only if every test passes (default: the share)")
    wall_s: float = opt(4.0, "wall-clock limit per program, s (its whole process group is killed)",
                        above=0)
    cpu_s: int = opt(2, "CPU-time limit per program, s", low=1)
    memory_mb: int = opt(256, "address-space limit per process of a program, MiB (a program "
                         "that forks: up to 16 processes)", low=1)
    workers: int = opt(0, "programs run at once; 0 = one per CPU core", low=0)
    unsafe_allow_unsandboxed: bool = opt(
        False, "where bubblewrap cannot run, run model-written code UNCONFINED with only resource "
        "limits (logged loudly); same as --unsafe-allow-unsandboxed",
    )


@dataclass(frozen=True)
class EvalConfig(_Checked):
    every: int = opt(50, "evaluate every N steps (0 = only before and after)", low=0)
    num_problems: int = opt(200, "held-out problems", low=0)
    k: int = opt(4, "samples per problem for pass@1 and cons@k (R1-SPEC §4.4)", low=1)
    temperature: float = opt(0.6, "sampling temperature (R1-SPEC §4.4: 0.6)", low=0)
    top_p: float = opt(0.95, "nucleus sampling (R1-SPEC §4.4: 0.95)", above=0, high=1)
    max_new_tokens: int = opt(64, "completion budget at evaluation", low=1)
    batch_size: int = opt(256, "completions generated at once", low=1)


@dataclass(frozen=True)
class ZeroConfig(_Checked):
    """`r1kit zero`: GRPO on verifiable rewards straight from the base model (R1-SPEC §1-§3.1)."""

    run: RunConfig = section(RunConfig, "run folder, seed, device")
    model: ModelConfig = section(ModelConfig, "policy (and reference) model")
    data: DataConfig = section(DataConfig, "problems")
    rollout: RolloutConfig = section(RolloutConfig, "sampling during RL")
    rl: RLConfig = section(RLConfig, "GRPO")
    rewards: RewardsConfig = section(RewardsConfig, "reward functions and weights")
    code: CodeConfig = section(CodeConfig, "running model-written code: sandbox limits, scoring")
    eval: EvalConfig = section(EvalConfig, "held-out evaluation")
    lora: LoraConfig = section(LoraConfig, "LoRA adapters instead of full fine-tuning")
    dist: DistConfig = section(DistConfig, "multi-process training (torchrun)")


# ----------------------------------------------------------------------------- SFT


@dataclass(frozen=True)
class SFTDataConfig(_Checked):
    train_file: str = opt("", "JSONL of {prompt, completion} pairs to train on (required)")
    eval_source: str = opt(
        "", "held-out problems: a .jsonl of {prompt, answer}, hf:NAME_OR_PATH; empty = builtin"
    )
    eval_split: str = opt("test", "split for an hf: eval source")
    prompt_key: str = opt("prompt", "field of eval_source holding the question")
    answer_key: str = opt("answer", "field of eval_source holding the reference answer")
    template: str = opt("r1_zero", "prompt template for training and eval: r1_zero | plain | chat",
                        choices=TEMPLATE_NAMES)
    max_len: int = opt(
        256, "max tokens of prompt + completion + EOS; longer ones are cut (0 = the longest "
        "example of train_file, measured with the model's tokenizer: nothing is cut)", low=0,
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_len == 1:  # (the prompt alone is longer; 0 is "the longest example")
            raise ConfigError("config key 'data.max_len' must be 0 (the longest example) or at "
                              "least 2, got 1", "data.max_len")


@dataclass(frozen=True)
class SFTTrainConfig(_Checked):
    epochs: int = opt(2, "passes over train_file (R1-SPEC §3.2: 2-3)", low=1)
    lr: float = opt(5e-5, "peak learning rate, AdamW (R1-SPEC §3.2 cold start: 5e-5)", above=0)
    min_lr: float = opt(5e-6, "the cosine decay ends here on the last step (R1-SPEC §3.2: 5e-6)",
                        low=0)
    warmup_steps: int = opt(10, "linear warm-up optimizer steps", low=0)
    batch_size: int = opt(32, "examples per optimizer step (R1: 128; distillation: 64)", low=1)
    micro_batch_size: int = opt(32, "examples per forward/backward; gradients are accumulated",
                                low=1)
    weight_decay: float = opt(0.0, "AdamW weight decay", low=0)
    grad_clip: float = opt(1.0, "max global gradient norm", above=0)

    def __post_init__(self):
        super().__post_init__()
        _check_min_lr(self, "sft")


def _check_min_lr(s, section: str) -> None:
    """The cosine decays from `lr` to `min_lr`: a higher `min_lr` would climb instead."""
    if s.min_lr > s.lr:
        raise UserError(f"config keys '{section}.min_lr' and '{section}.lr': need "
                        f"{section}.min_lr <= {section}.lr; got min_lr={s.min_lr}, lr={s.lr}")


@dataclass(frozen=True)
class SFTConfig(_Checked):
    """`r1kit sft`: completion-only SFT (cold start, rejection-sampled SFT, distillation)."""

    run: RunConfig = section(RunConfig, "run folder, seed, device")
    model: ModelConfig = section(ModelConfig, "model to fine-tune (R1: the base model)")
    data: SFTDataConfig = section(SFTDataConfig, "training pairs and held-out problems")
    sft: SFTTrainConfig = section(SFTTrainConfig, "optimisation (R1-SPEC §3.2, §3.5)")
    code: CodeConfig = section(CodeConfig, "sandbox for held-out problems with tests (code)")
    eval: EvalConfig = section(EvalConfig, "held-out evaluation before and after (0 problems = none)")
    lora: LoraConfig = section(LoraConfig, "LoRA adapters instead of full fine-tuning")
    dist: DistConfig = section(DistConfig, "multi-process training (torchrun)")


@dataclass(frozen=True)
class EvalStageConfig(_Checked):
    """`r1kit eval`: pass@1, pass@k and cons@k of any model folder on a problem set."""

    run: RunConfig = section(RunConfig, "run folder, seed, device")
    model: ModelConfig = section(ModelConfig, "model to evaluate")
    data: DataConfig = section(DataConfig, "problems (eval_source, or the builtin held-out split)")
    rollout: RolloutConfig = section(RolloutConfig, "stop strings")
    code: CodeConfig = section(CodeConfig, "sandbox for problems with tests (code)")
    eval: EvalConfig = section(EvalConfig, "sampling and sizes")


# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class RejectionSamplingConfig(_Checked):
    samples_per_prompt: int = opt(4, "completions sampled per prompt", low=1)
    num_prompts: int = opt(500, "train prompts to sample: a seeded random subset (never held-out)",
                           low=1)
    batch_size: int = opt(32, "prompts per generation call; progress is saved after each batch",
                          low=1)
    max_per_prompt: int = opt(1, "distinct kept completions per prompt at most (0 = no limit)",
                              low=0)
    filters: list[str] = opt(
        ["not_truncated", "correct", "well_formed", "single_language", "no_repetition",
         "short_paragraphs"],
        "filters applied in order (r1kit/filters.py): not_truncated, correct, well_formed, "
        "any_format, think_format (</think> then a final answer, as R1-Distill writes), "
        "single_language, no_repetition, short_paragraphs, no_code_blocks",
    )
    cold_start_format: bool = opt(
        False, "rewrite kept completions as <think>…</think> summary <answer>…</answer> "
        "(R1-SPEC §5; needs the 'correct' filter)",
    )
    readable: bool = opt(
        True, "with cold_start_format, also put the reasoning in the task's readable form "
        "(built-in arithmetic: '47+8=55, 55-9=46, so the total is 46'; r1kit/filters.py READABLE)",
    )
    general_data: str = opt(
        "", "non-reasoning SFT data mixed in, answered without <think> (R1-SPEC §3.2): '' (none), "
        "'builtin' (greetings, one-step number questions) or a JSONL of {prompt, completion}",
    )
    general_samples: int = opt(
        0, "how many non-reasoning records: generated for 'builtin', the first N of a file "
        "(0 = all)", low=0,
    )
    language_tolerance: float = opt(
        0.0, "single_language keeps reasoning with a target-language word share >= 1 - this",
        low=0, high=1,
    )
    repeat_ngram: int = opt(4, "no_repetition: n of the word n-grams counted (long CoT: 12 or "
                            "more)", low=1)
    max_repeats: int = opt(3, "no_repetition: rejects when an n-gram occurs more often than this "
                           "(long CoT: 10 or more)", low=1)
    max_paragraph_chars: int = opt(1000, "short_paragraphs: longest paragraph allowed, in chars",
                                   low=1)


@dataclass(frozen=True)
class SampleConfig(_Checked):
    """`r1kit sample`: rejection sampling / cold-start data into an SFT JSONL (R1-SPEC §5)."""

    run: RunConfig = section(RunConfig, "run folder, seed, device")
    model: ModelConfig = section(ModelConfig, "model to sample (R1: R1-Zero or the RL checkpoint)")
    data: DataConfig = section(DataConfig, "problems (their train split is sampled)")
    rollout: RolloutConfig = section(RolloutConfig, "sampling (R1 cold start: T = 1.0)")
    sample: RejectionSamplingConfig = section(
        RejectionSamplingConfig, "samples per prompt, filters, output format"
    )
    code: CodeConfig = section(
        CodeConfig, "sandbox for problems with tests (code): the `correct` filter runs the programs"
    )


# ----------------------------------------------------------------------------- distillation


@dataclass(frozen=True)
class DistillStagesConfig(_Checked):
    teacher: str = opt(
        "", "teacher (required): a model folder, a run folder with final/, or a pipeline folder "
        "(its 07-r1/final)",
    )
    students: list[str] = opt(
        ["tiny-qwen", "tiny-llama"],
        "students: presets tiny-qwen | tiny-llama (r1kit/students.py), model folders or hub names",
    )
    dtype: str = opt("auto", "dtype of teacher and students: auto (bfloat16 on a CUDA GPU that "
                     "has it, else float32) | float32 | bfloat16",
                     choices=("auto", "float32", "bfloat16", "float16"))
    max_len: int = opt(
        0, "students' SFT: max tokens of prompt + completion + EOS (data.max_len of r1kit sft); "
        "0 = the longest kept sample, measured with each student's tokenizer (nothing is cut); "
        "a cap cuts longer samples (keep it within the student's context)", low=0,
    )
    gradient_checkpointing: bool = opt(
        False, "students' SFT: recompute activations in backward (model.gradient_checkpointing): "
        "less memory for long samples, ~30% more compute",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_len == 1:
            raise ConfigError("config key 'distill.max_len' must be 0 (the longest sample) or at "
                              "least 2, got 1", "distill.max_len")


@dataclass(frozen=True)
class DistillConfig(_Checked):
    """`r1kit distill`: sample the teacher, keep verified samples, SFT each student (R1-SPEC §3.5).

    Sizes are for the built-in task on a CPU; the paper used ~800k samples and 2-3 epochs.
    """

    run: RunConfig = section(RunConfig, "distill folder, seed, device (parts are sub-folders)")
    distill: DistillStagesConfig = section(DistillStagesConfig, "teacher and students")
    data: DataConfig = section(DataConfig, "problems: the train split is sampled, held-out compared")
    rollout: RolloutConfig = field(
        default_factory=lambda: RolloutConfig(temperature=0.6, top_p=0.95),
        metadata={"help": "teacher sampling (T = 0.6, top-p 0.95: R1's recommended settings)"},
    )
    sample: RejectionSamplingConfig = field(
        default_factory=lambda: RejectionSamplingConfig(
            num_prompts=3000, batch_size=64, max_per_prompt=1,
            filters=["not_truncated", "correct", "think_format", "single_language",
                     "no_repetition"],
        ),
        metadata={"help": "teacher samples per prompt, prompts and the verification filters"},
    )
    sft: SFTTrainConfig = field(
        default_factory=lambda: SFTTrainConfig(
            epochs=10, lr=1e-3, min_lr=1e-4, warmup_steps=10, batch_size=32, micro_batch_size=32
        ),
        metadata={"help": "student SFT, no RL (R1-SPEC §3.5: 2-3 epochs on 800k samples, cosine "
                          "to lr/10; here 10 epochs on ~3k: 3 gave tiny-llama 25% of the teacher's "
                          "pass@1, 10 gave 75%, benchmarks/results/distill_tiny.md)"},
    )
    code: CodeConfig = section(
        CodeConfig, "sandbox for problems with tests (code): verifying samples, evaluation"
    )
    eval: EvalConfig = field(
        default_factory=lambda: EvalConfig(max_new_tokens=96),
        metadata={"help": "teacher and students on the same held-out problems (96 tokens: a "
                          "Qwen2-style student spells numbers digit by digit)"},
    )


# ----------------------------------------------------------------------------- R1 pipeline


@dataclass(frozen=True)
class PipelineStagesConfig(_Checked):
    zero_steps: int = opt(300, "01-zero: GRPO steps from the base model (recipes/tiny/zero.yaml)",
                          low=1)
    cold_start_prompts: int = opt(800, "02-cold-start: train prompts sampled from Zero", low=1)
    cold_start_samples: int = opt(4, "02-cold-start: completions per prompt (T = 1.0)", low=1)
    reasoning_rl_steps: int = opt(100, "04-dev2: GRPO steps from Dev1 (reasoning RL)", low=1)
    language_reward: float = opt(
        0.2, "04-dev2 and 07-r1: weight of the language-consistency reward (0 = off; R1-SPEC §5)",
        low=0,
    )
    format_reward: float = opt(
        0.1, "04-dev2 and 07-r1: weight of summary_format, the cold-start format Dev1 learns",
        low=0,
    )
    rejection_prompts: int = opt(1500, "05-rejection: train prompts sampled from Dev2", low=1)
    rejection_samples: int = opt(4, "05-rejection: completions per prompt", low=1)
    final_rl_steps: int = opt(150, "07-r1: GRPO steps from Dev3", low=1)
    final_temperature: float = opt(0.7, "07-r1: rollout temperature (R1-SPEC §3.2: 0.7)", above=0)
    language_form: str = opt(
        "language", "the language reward of 04-dev2 and 07-r1: 'language' (the paper's proportion) "
        "or 'language_threshold' (1 when the share is >= 0.95); ':lingua' forms tell apart "
        "languages sharing a script (fr, de, ...; r1kit[lingua])",
        choices=("language", "language_threshold", "language:lingua",
                 "language_threshold:lingua"),
    )
    general_samples: int = opt(
        100, "05-rejection: built-in non-reasoning records mixed into Dev3's SFT data (0 = none; "
        "sample.general_data names a JSONL of your own instead)", low=0,
    )
    preference_model: str = opt(
        "", "07-r1: a sequence-classification model scoring the summary (reward_model:PATH); "
        "'' = none",
    )
    preference_weight: float = opt(1.0, "07-r1: weight of the preference reward", low=0)
    preference_steps: int = opt(
        0, "07-r1: the preference reward counts only in the last N steps (0 = all; R1: 400 of "
        "1,700)", low=0,
    )
    distill: bool = opt(
        False, "08-distill: distil R1 into pipeline.students by SFT (r1kit distill, R1-SPEC §3.5); "
        "their rows join the table",
    )
    students: list[str] = opt(["tiny-qwen", "tiny-llama"],
                              "08-distill: presets, model folders or hub names")
    distill_prompts: int = opt(3000, "08-distill: train prompts sampled from R1", low=1)
    distill_samples: int = opt(4, "08-distill: completions per prompt (at most one kept per prompt)",
                               low=1)


@dataclass(frozen=True)
class PipelineConfig(_Checked):
    """`r1kit pipeline`: the DeepSeek-R1 recipe, Zero -> cold start -> Dev1 -> Dev2 -> Dev3 -> R1.

    The shared sections apply to every stage; each stage's size comes from `pipeline.*`, so
    `rl.steps`, `sample.num_prompts`, `sample.samples_per_prompt` and the rewards are set per
    stage by the pipeline (see r1kit/stages/pipeline.py).
    """

    run: RunConfig = section(RunConfig, "pipeline folder, seed, device (stages are sub-folders)")
    model: ModelConfig = section(ModelConfig, "the base model (Zero, Dev1 and Dev3 start from it)")
    data: DataConfig = section(DataConfig, "problems for every stage and the held-out table")
    rollout: RolloutConfig = field(
        default_factory=lambda: RolloutConfig(max_new_tokens=96),
        metadata={"help": "sampling in RL and sampling stages (96 tokens: the readable "
                          "cold-start form is longer than R1-Zero's)"},
    )
    rl: RLConfig = field(
        default_factory=lambda: RLConfig(beta=1e-3, ref_reset_every=100),
        metadata={"help": "GRPO settings of the three RL stages (steps: pipeline.*_steps)"},
    )
    sft: SFTTrainConfig = field(
        default_factory=lambda: SFTTrainConfig(
            epochs=3, lr=1e-3, min_lr=1e-4, warmup_steps=5, batch_size=16, micro_batch_size=16
        ),
        metadata={"help": "both SFT stages (Dev1, Dev3; 08-distill uses r1kit distill's own); lr "
                          "sized for the tiny built-in model (5e-4 left it half in the old format)"},
    )
    sample: RejectionSamplingConfig = field(
        default_factory=lambda: RejectionSamplingConfig(
            cold_start_format=True, filters=[*RejectionSamplingConfig().filters, "no_code_blocks"]),
        metadata={"help": "filters and format of both sampling stages (sizes: pipeline.*); R1 "
                          "also drops reasoning with code blocks (R1-SPEC §5)"},
    )
    code: CodeConfig = section(
        CodeConfig, "sandbox for problems with tests (code): every stage and the table"
    )
    eval: EvalConfig = field(
        default_factory=lambda: EvalConfig(max_new_tokens=96),
        metadata={"help": "held-out evaluation inside stages and for the table"},
    )
    pipeline: PipelineStagesConfig = section(PipelineStagesConfig, "per-stage sizes and rewards")


# ----------------------------------------------------------------------------- machinery

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a mapping"}


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _is(value: Any, tp: type) -> bool:
    """Whether `value` is a `tp` (a key of `_TYPE_NAMES`) as a config holds it: a bool is no
    number (True would pass for 1), an int is a float (1 for 1.0)."""
    if tp in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if tp is float else tp)


def _check_type(value: Any, tp: Any, key: str, what: str = "") -> None:
    """Refuse `value` unless it is of the annotated type `tp`: a section (its dataclass), bool,
    int, float, str, list[T] or dict[str, T], whose items are checked too."""
    what = what or f"config key '{key}'"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, tp):
            raise ConfigError(f"{what} must be a {tp.__name__} section, got {value!r}", key)
        if not isinstance(value, _Checked):  # a section without checks of its own (CorpusStyle)
            _check_fields(value, key)
        return
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin not in _TYPE_NAMES:
        raise TypeError(f"unsupported config type {tp} for {key}")
    if not _is(value, origin):
        raise ConfigError(f"{what} must be {_TYPE_NAMES[origin]}, got {value!r}", key)
    if origin is list and args:
        for i, item in enumerate(value, 1):
            _check_type(item, args[0], key, f"{what} item {i}")
    if origin is dict and args:
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{what} key {k!r} must be a string", key)
            _check_type(v, args[1], f"{key}.{k}")


def _check_fields(obj, name: str) -> None:
    """The type, range and choices of every field of dataclass `obj`, named `name.field`."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{name}.{f.name}"
        _check_type(value, _hints(type(obj))[f.name], key)
        _check_range(value, f.metadata, key)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """A file's or --set's `value` of config key `key`, typed `tp`, with YAML's leniencies: a
    number for a string (`name: 2025`), one string for a list (`--set rollout.stop=</answer>`),
    numbers for floats (`_floats`). A number among a list's strings is refused, not turned into
    text: it is more likely a mistake (a token id in rollout.stop, a layer index in
    lora.target_modules) than a name."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section; give a mapping, got {value!r}",
                              key)
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp) or tp
    if origin is str and _is(value, float):
        value = str(value)
    if origin is list and isinstance(value, str):
        value = [value]
    value = _floats(value, tp)
    _check_type(value, tp, key)
    return value


def _floats(value: Any, tp: Any) -> Any:
    """`value` with floats where `tp` has them, a mapping's values too: YAML 1.1 reads 5e-5 (no
    dot) as a string, and 1 is an int."""
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if tp is float and _is(value, float):
        return float(value)
    if origin is dict and args and isinstance(value, dict):
        return {k: _floats(v, args[1]) for k, v in value.items()}
    if origin is list and args and isinstance(value, list):
        return [_floats(v, args[0]) for v in value]
    return value


def _build(cls, values: dict, prefix: str = ""):
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise ConfigError(f"unknown config key '{prefix}{k}'; known keys here: "
                              f"{', '.join(sorted(names))}", f"{prefix}{k}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = _coerce(values[f.name], _hints(cls)[f.name], prefix + f.name)
            _check_range(kwargs[f.name], f.metadata, prefix + f.name)
    try:
        return cls(**kwargs)
    except UserError as e:  # a check across keys (RLConfig's min_lr and lr): the section's
        raise ConfigError(str(e), prefix.rstrip(".")) from None


def _check_range(value: Any, meta, key: str) -> None:
    low, above, high, choices = (meta.get(k) for k in ("low", "above", "high", "choices"))
    bounded = (low, above, high) != (None, None, None)
    if bounded and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}", key)
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, choices))}; "
                          f"got {value!r}", key)
    if low is not None and value < low:
        raise ConfigError(f"config key '{key}' must be at least {low}, got {value!r}", key)
    if above is not None and value <= above:
        raise ConfigError(f"config key '{key}' must be more than {above}, got {value!r}", key)
    if high is not None and value > high:
        raise ConfigError(f"config key '{key}' must be at most {high}, got {value!r}", key)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """`tree[a][b]... = value` for the key `a.b...`, making the sections it lacks."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise UserError(f"config key '{dotted}': '{k}' is not a section")
    node[keys[-1]] = value


def load_config(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """Defaults <- YAML file <- `key.sub=value` overrides; returns a frozen `cls`. An error about
    a key the file gave names the file and the key's line."""
    if isinstance(overrides, str):  # would be read letter by letter
        raise UserError("load_config: give the overrides as a list of 'key=value' strings, not "
                        f"one string ({overrides!r})")
    tree: dict = to_dict(cls())
    lines: dict[str, int] = {}
    if path:
        loaded, lines = _read_yaml(Path(path))
        _merge(tree, loaded, cls)
    given = []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        tp = _field_type(cls, key)
        if tp is str:  # text as typed: YAML would cut `exp #1` at the '#', read 0123 as octal
            value = raw
        else:
            try:
                value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
            except yaml.YAMLError as e:
                if tp in (list, dict) or typing.get_origin(tp) in (list, dict):
                    problem = getattr(e, "problem", None) or " ".join(str(e).split())
                    raise UserError(f"--set {item}: invalid value ({problem})") from None
                value = raw
        set_dotted(tree, key, value)
        given.append(key)
    try:
        return _build(cls, tree)
    except ConfigError as e:
        line = _line_of(e.key, lines, given)
        if line is None:
            raise
        raise UserError(f"{Path(path)}:{line}: {e}") from None


def from_dict(cls, tree: dict):
    """A `cls` from a mapping such as `to_dict` writes (keys it lacks take their defaults)."""
    full: dict = to_dict(cls())
    _merge(full, tree, cls)
    return _build(cls, full)


def _field_type(cls, dotted: str):
    """The declared type of config key `dotted` of `cls`, or None if there is no such key."""
    for i, name in enumerate(parts := dotted.split(".")):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if name not in fields:
            return None
        tp = _hints(cls).get(name)
        if i == len(parts) - 1:
            return tp
        cls = tp
    return None


def _merge(tree: dict, new: dict, cls) -> None:
    """A file's mapping into `tree`, section by section. Any other value replaces the default
    whole, a mapping too: `rewards.weights: {code: 1.0}` in a file is all the weights, while
    `--set rewards.weights.NAME=W` changes one (`set_dotted`)."""
    for k, v in new.items():
        tp = _hints(cls).get(k)
        if dataclasses.is_dataclass(tp) and isinstance(v, dict) and isinstance(tree.get(k), dict):
            _merge(tree[k], v, tp)
        else:
            tree[k] = v


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (two `rl:` blocks), of
    which PyYAML would keep the last without a word."""

    def construct_mapping(self, node, deep=False):
        first: dict = {}  # key -> its line
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` repeats keys on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                again = key in first
            except TypeError:  # unhashable: SafeLoader says so below
                continue
            if again:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first[key] + 1})",
                    key_node.start_mark)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _read_yaml(p: Path) -> tuple[dict, dict[str, int]]:
    """A --config file's mapping, and the line of each of its keys (dotted, nested ones too)."""
    if not p.is_file():
        raise UserError(f"{p}: no such config file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start})") from None
    try:
        node, loaded = _compose(text)
    except yaml.MarkedYAMLError as e:  # one line, not PyYAML's several with a caret
        mark, context = e.problem_mark, ""
        if e.context and e.context_mark:
            context = (f" ({e.context} at line {e.context_mark.line + 1}, column "
                       f"{e.context_mark.column + 1})")
        raise UserError(f"{p}:{mark.line + 1}:{mark.column + 1}: invalid YAML: "
                        f"{e.problem}{context}") from None
    except yaml.reader.ReaderError as e:  # a control character
        raise UserError(f"{p}:{text.count(chr(10), 0, e.position) + 1}: invalid YAML: character "
                        f"#x{e.character:04x} is not allowed") from None
    if loaded is None:  # an empty file
        return {}, {}
    if not isinstance(loaded, dict):
        raise UserError(f"{p}: the top level must be a mapping of sections")
    return loaded, _key_lines(node)


def _compose(text: str):
    """(the YAML node tree of `text`, for the keys' lines; the data it holds)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _key_lines(node, prefix: str = "") -> dict[str, int]:
    """Dotted key -> its line (from 1), for every key of a YAML mapping node, nested ones too."""
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                lines[prefix + key.value] = key.start_mark.line + 1
                lines.update(_key_lines(value, prefix + key.value + "."))
    return lines


def _line_of(key: str, lines: dict[str, int], given: list[str]) -> str | None:
    """The line of the file that gave config key `key` (or the section or mapping holding it);
    'N and --set' when --set changed keys inside it too; None when --set gave it."""
    parts = key.split(".")
    above = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]  # key, its section, ...
    if any(k in given for k in above):
        return None
    line = next((lines[k] for k in above if k in lines), None)
    if line is None:
        return None
    return f"{line} and --set" if any(g.startswith(key + ".") for g in given) else str(line)


def describe(cls, prefix: str = "", default=None) -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf field, for --help. A section's defaults are those of
    the instance its parent builds (PipelineConfig's `rl` is not RLConfig())."""
    rows = []
    default = cls() if default is None else default
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(type(value), prefix + f.name + ".", value)
        else:
            rows.append((prefix + f.name, repr(value), f.metadata.get("help", "")))
    return rows
