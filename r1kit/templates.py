"""Prompt templates.

`R1_ZERO_TEMPLATE` is the R1-Zero template verbatim from the R1 report (R1-SPEC.md §2.1, Table 1
of arXiv 2501.12948 v1). `{prompt}` is replaced by the question.
"""

from __future__ import annotations

import dataclasses

from r1kit.errors import UserError

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)

TEMPLATES = {"r1_zero": R1_ZERO_TEMPLATE, "plain": "{prompt}"}


def render_prompt(question: str, template: str = "r1_zero", tokenizer=None) -> str:
    """Wrap a bare question in a named template.

    `template="chat"` uses the tokenizer's own chat template (a Qwen/Llama instruct model), with the
    question as the single user turn and the generation prompt appended.
    """
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer that has a chat_template")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES) + ['chat']}")
    return TEMPLATES[template].format(prompt=question)


def check_template(template: str, tokenizer, where: str = "data.template") -> None:
    """A `UserError` naming `where` if `template` cannot render with `tokenizer` (the chat
    template on a tokenizer that has none)."""
    try:
        render_prompt("", template, tokenizer)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def prefills_think(prompt: str) -> bool:
    """Does the rendered prompt open the reasoning itself (a chat template ending in `<think>`,
    as DeepSeek-R1-Distill's and Qwen3's thinking templates do)? Its completion then starts inside
    the reasoning, without the opening tag.

    >>> prefills_think("<|im_start|>assistant\\n<think>\\n"), prefills_think("Assistant:")
    (True, False)
    """
    return prompt.rstrip().endswith("<think>")


def think_opening(prompt: str) -> str:
    """The opening of the reasoning that `prompt` supplies (its text from the last `<think>` on,
    `"<think>\\n"` for DeepSeek-R1-Distill's template), or "" when it prefills none: what a
    completion sampled from it lacks of the model's whole turn.

    >>> think_opening("<|im_start|>assistant\\n<think>\\n"), think_opening("Assistant:")
    ('<think>\\n', '')
    """
    return prompt[prompt.rfind("<think>"):] if prefills_think(prompt) else ""


def mark_prefill(problem, prompt: str):
    """`problem` flagged `meta["prefilled_think"]` when `prompt` prefills `<think>`, so that the
    format rewards read its completions as starting inside the reasoning (TRL #6966, open-r1 #560)."""
    if not prefills_think(prompt) or problem.meta.get("prefilled_think"):
        return problem
    return dataclasses.replace(problem, meta={**problem.meta, "prefilled_think": True})
