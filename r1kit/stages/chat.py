"""`r1kit chat MODEL`: talk to a model in the terminal, tokens streamed as they are sampled, the
reasoning (`<think>…</think>`) shown apart from the answer.

MODEL is a model folder, a hub name, or a run folder (its `final/`). The prompt is, by default, the
template the model was trained on (its run's `data.template`; R1-Zero's for the built-in bases),
else the model's own chat template (`--template chat`) when it has one; earlier turns
are kept without their reasoning, as DeepSeek recommends for multi-turn use of R1. Sampling
defaults are R1's recommended T = 0.6, top-p 0.95 (R1-SPEC §4.4).
"""

from __future__ import annotations

import sys
from threading import Thread

import torch
from transformers import TextIteratorStreamer

from r1kit.errors import UserError
from r1kit.models import load_model, pick_device
from r1kit.rollout.hf import end_ids
from r1kit.stages.export import resolve_source, template_of
from r1kit.templates import prefills_think, render_prompt

OPEN, CLOSE = "<think>", "</think>"


class ReasoningPrinter:
    """Writes streamed text under a `[reasoning]` heading until `</think>`, then under `[answer]`;
    `<answer>` tags are dropped. Tags split across pieces are held back until complete.

    >>> import io; out = io.StringIO(); p = ReasoningPrinter(out)
    >>> for piece in ["<thi", "nk> 2+2 is 4 </th", "ink> <answer>4</answer>"]: p.feed(piece)
    >>> p.close(); print(out.getvalue())
    [reasoning]
     2+2 is 4 
    [answer]
     4
    <BLANKLINE>
    """

    def __init__(self, out=sys.stdout, prefilled: bool = False):
        self.out, self.buf, self.state = out, "", "reasoning" if prefilled else "start"
        self.answer = ""
        if prefilled:
            self.out.write("[reasoning]\n")

    def feed(self, text: str) -> None:
        self.buf += text
        while True:
            if self.state == "start":
                stripped = self.buf.lstrip()
                if len(stripped) < len(OPEN) and OPEN.startswith(stripped):
                    return  # could still become <think>
                if stripped.startswith(OPEN):
                    self.buf, self.state = stripped[len(OPEN):], "reasoning"
                    self.out.write("[reasoning]\n")
                    continue
                self.state = "answer"
                self.out.write("[answer]\n")
                continue
            if self.state == "reasoning":
                i = self.buf.find(CLOSE)
                if i < 0:
                    self._emit(self._safe(CLOSE))
                    return
                self._emit(self.buf[:i])
                self.buf, self.state = self.buf[i + len(CLOSE):], "answer"
                self.out.write("\n[answer]\n")
                continue
            text = self._safe("<answer>", "</answer>")
            clean = text.replace("<answer>", "").replace("</answer>", "")
            self.answer += clean
            self._emit(clean)
            return

    def _safe(self, *tags: str) -> str:
        """The buffer's text that cannot be the start of one of `tags`; the rest stays buffered."""
        keep = 0
        for tag in tags:
            for n in range(min(len(tag) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(tag[:n]):
                    keep = max(keep, n)
                    break
        text, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return text

    def _emit(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def close(self) -> None:
        if self.state == "start" and self.buf:
            self.out.write("[answer]\n")
        rest = self.buf.replace("<answer>", "").replace("</answer>", "")
        self.answer += rest if self.state != "reasoning" else ""
        self._emit(rest + "\n")
        self.buf = ""


def main(source: str, *, template: str = "auto", max_new_tokens: int = 1024,
         temperature: float = 0.6, top_p: float = 0.95, device: str = "auto",
         dtype: str = "float32", input_fn=input, out=sys.stdout) -> int:
    """Read questions from `input_fn` until EOF, `exit` or `quit` (`/reset` forgets the turns)."""
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    path = resolve_source(source)
    model, tok = load_model(path, dtype, pick_device(device))
    model.eval()
    if template == "auto":  # what it was trained on, else its own chat template if it has one
        template = template_of(path) or (
            "chat" if getattr(tok, "chat_template", None) else "r1_zero")
    if template == "chat" and not getattr(tok, "chat_template", None):
        raise UserError(f"{source}: the tokenizer has no chat template; use --template r1_zero")
    out.write(f"r1kit chat: {path} ({template} template). Empty line, exit or Ctrl-D to quit; "
              "/reset forgets the conversation.\n")
    history: list[dict] = []
    while True:
        try:
            question = input_fn("> ").strip()
        except EOFError:
            break
        if question in ("", "exit", "quit"):
            break
        if question == "/reset":
            history = []
            continue
        if template == "chat":
            history.append({"role": "user", "content": question})
            prompt = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        else:
            prompt = render_prompt(question, template, tok)
        answer = _reply(model, tok, prompt, template, max_new_tokens, temperature, top_p, out)
        if template == "chat":
            history.append({"role": "assistant", "content": answer.strip()})
    return 0


def _reply(model, tok, prompt, template, max_new_tokens, temperature, top_p, out) -> str:
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(**enc, streamer=streamer, max_new_tokens=max_new_tokens,
                  do_sample=temperature > 0, pad_token_id=tok.pad_token_id,
                  eos_token_id=end_ids(model, tok))  # as sampling in training stops
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    if template == "r1_zero":  # the R1-Zero format ends with the answer tag
        kwargs.update(stop_strings=["</answer>"], tokenizer=tok)
    failed: list[BaseException] = []
    worker = Thread(target=_generate, args=(model, kwargs, failed), daemon=True)
    worker.start()
    printer = ReasoningPrinter(out, prefilled=prefills_think(prompt))
    for piece in streamer:
        printer.feed(piece)
    printer.close()
    worker.join()
    if failed:
        raise failed[0]
    return printer.answer


@torch.no_grad()
def _generate(model, kwargs, failed: list) -> None:
    """`generate` in the worker thread; an error is kept for the caller, and the stream ended so
    that the caller does not wait for tokens forever."""
    try:
        model.generate(**kwargs)
    except BaseException as e:  # noqa: BLE001 -- re-raised in the calling thread
        failed.append(e)
        kwargs["streamer"].end()
