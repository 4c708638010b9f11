"""`r1kit sample`: rejection sampling and cold-start data, an SFT JSONL made of a model's own
filtered samples (R1-SPEC §3.2, §5).

R1 builds SFT data from its own models twice: the cold start from R1-Zero (T = 1.0; correct and
readable outputs, rewritten as reasoning then summary), and ~600k rejection-sampled reasoning
samples from the stage-1 RL checkpoint (several per prompt; the correct ones, without mixed
languages, long paragraphs or code blocks). One run does either, batch by batch:
    generate  samples_per_prompt completions for each prompt of a batch of TRAIN problems (a seeded
              random subset; held-out problems are never sampled)
    score     accuracy, format and language of every completion, time-bounded as in RL; for
              problems with tests also `code` (the programs run in the sandbox, `code.*`)
    filter    the named filters in order (r1kit/filters.py); a rejection counts under the first
              filter that fails
    keep      up to max_per_prompt distinct passing completions per prompt, first sampled first
              (the rest count as `duplicate` / `max_per_prompt`, an empty one as `empty`: SFT
              refuses it); rewritten in the cold-start format when asked
    write     the batch's rows to sft.jsonl, then progress.json (atomically)
At the end, counts.json: generated = kept + the sum of `rejected`, plus per-prompt and reward
statistics. generation.json records the model and sampling settings.

sft.jsonl rows are {"prompt": the bare question, "completion", "id", "answer", "sample"} (+
"original" when rewritten): `r1kit sft` renders the prompt template itself, so train it with the
same data.template as used here (generation.json has it). The completion is the model's whole turn:
where the template prefilled `<think>`, the row opens it again (`"<think>\n"` + the sampled text),
and `r1kit sft` drops that tag where its own template prefills one. Non-reasoning records
(`sample.general_data`, r1kit/tasks/general.py) follow the reasoning rows, marked "kind": "general";
counts.json's `general` says how many.

Resume: each batch's rows are appended and flushed before progress.json records them, so a killed
run loses at most the batch in flight; `--resume` cuts sft.jsonl back to the recorded rows and goes
on. Each batch samples with its own generator, seeded by run.seed and the batch index, so a resumed
run writes the same rows as an uninterrupted one. progress.json records the config too: a resume
refuses a config.yaml edited since in the model, data, sampling or seed (`runs.FIXED_ON_RESUME`).

Departures from the paper, on purpose: no generative judge for answers rules cannot check
(DeepSeek-V3 in R1), non-reasoning data from a file or a tiny built-in generator rather than
DeepSeek-V3's SFT set, and a deterministic cold-start rewrite instead of DeepSeek-V3 and human
refinement.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from r1kit.checkpoint import atomic_write_text
from r1kit.config import SampleConfig, to_dict
from r1kit.errors import UserError
from r1kit.filters import (
    Candidate,
    FilterChain,
    build_filters,
    check_filter_targets,
    to_cold_start,
)
from r1kit.language import SCRIPT_LANGUAGES, TARGET_KEY, normalize_target
from r1kit.models import load_model, pick_device
from r1kit.rewards import code as code_reward
from r1kit.rewards.extract import extract_answer
from r1kit.rewards.language import language as language_reward
from r1kit.rewards.scoring import RewardSpec, bounded, score
from r1kit.rollout.hf import sample
from r1kit.runs import RunFolder, check_resume_config, load_problems
from r1kit.tasks.base import Problem
from r1kit.tasks.general import load_general
from r1kit.templates import check_template, mark_prefill, render_prompt, think_opening

log = logging.getLogger("r1kit")

SCORED = ("accuracy", "format")  # rewards computed for every sample (filters, stats)
CODE = "code"  # also scored where problems have tests: a program is correct when all tests pass


def main(cfg: SampleConfig, resume: str | None = None) -> dict:
    """One rejection-sampling run; its summary. With `resume` (its folder), `cfg` only says the stage: the
    run goes on with its saved config.yaml (edit that file to change a setting)."""
    if resume:
        run = RunFolder.open(cfg, "sample", resume, checkpoints=False)
        cfg = run.cfg
        chain, problems, general = _inputs(cfg)
    else:
        chain, problems, general = _inputs(cfg)  # bad settings fail before a run folder is made
        run = RunFolder.open(cfg, "sample")
        cfg = run.cfg
    state = _load_progress(run, chain)  # (settings changed since: an error before the model loads)
    if cfg.rollout.engine != "hf":  # `r1kit sample` refuses it; given by a pipeline's RL stages
        log.warning(f"rollout.engine={cfg.rollout.engine} is for RL: {run.path.name} samples with "
                    "the hf engine")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = pick_device(cfg.run.device)
    with run.discarded_on_error():
        model, tokenizer = load_model(cfg.model.path, cfg.model.dtype, device,
                                      cfg.model.attn_implementation)
        check_template(cfg.data.template, tokenizer)
    s, ro_cfg = cfg.sample, cfg.rollout
    G = s.samples_per_prompt
    batches = [problems[i : i + s.batch_size] for i in range(0, len(problems), s.batch_size)]
    with_tests = any(code_reward.has_tests(p) for p in problems)
    specs = [RewardSpec(name, 1.0) for name in SCORED + ((CODE,) if with_tests else ())]
    out = run.path / "sft.jsonl"

    _cut_rows(out, state["rows"] + state.get("general_rows", 0))
    if state["batches_done"]:
        log.warning(f"resumed {run.path} after batch {state['batches_done']} "
                    f"({state['rows']} rows kept so far)")
    run.write_json("generation.json", _generation_info(cfg, len(problems)))
    tally = state["tally"]

    bar = tqdm(total=len(problems), initial=tally["prompts"], desc="sample", unit="prompt",
               dynamic_ncols=True, mininterval=1.0)
    for b in range(state["batches_done"], len(batches)):
        chunk = batches[b]

        # ---------------------------------------------------------------- generate
        t0 = time.perf_counter()
        prompts = [render_prompt(p.prompt, cfg.data.template, tokenizer) for p in chunk]
        chunk = [mark_prefill(p, text) for p, text in zip(chunk, prompts)]  # `<think>` in prompt
        gen = torch.Generator(device=device).manual_seed(cfg.run.seed * 1_000_003 + b)
        model.eval()
        ro = sample(model, tokenizer, prompts, G, max_new_tokens=ro_cfg.max_new_tokens,
                    temperature=ro_cfg.temperature, top_p=ro_cfg.top_p, stop=ro_cfg.stop,
                    generator=gen)
        t1 = time.perf_counter()

        # ---------------------------------------------------------------- score
        per_row = [p for p in chunk for _ in range(G)]
        scores = score(ro.texts, per_row, specs, ro.num_tokens, ro_cfg.max_new_tokens)
        scores.per_reward["language"] = bounded(  # time-bounded as the rewards are
            lambda pair: language_statistic(*pair), list(zip(ro.texts, per_row)),
            LANGUAGE_TIMEOUT_S, lambda pair: None)
        t2 = time.perf_counter()

        # ---------------------------------------------------------------- filter and keep
        rows = []
        for i, problem in enumerate(chunk):
            candidates = [
                Candidate(ro.texts[r], problem, ro.num_tokens[r], ro.truncated[r],
                          {name: values[r] for name, values in scores.per_reward.items()})
                for r in range(i * G, (i + 1) * G)
            ]
            rows += keep_for_prompt(candidates, chain, s.max_per_prompt, s.cold_start_format,
                                    tally, readable=s.readable, opening=think_opening(prompts[i]))
        t3 = time.perf_counter()

        # ---------------------------------------------------------------- write
        _append_rows(out, rows)
        for name, t in (("generate", t1 - t0), ("score", t2 - t1), ("filter", t3 - t2)):
            tally["seconds"][name] += t
        state["batches_done"], state["rows"] = b + 1, state["rows"] + len(rows)
        run.write_json("progress.json", state)
        bar.update(len(chunk))
        bar.set_postfix(kept=tally["kept"], generated=tally["generated"])
    bar.close()

    if general and not state.get("general_rows"):
        # After the reasoning rows, once: a resumed run cut sft.jsonl back to those above.
        _append_rows(out, general)
        state["general_rows"] = len(general)
        run.write_json("progress.json", state)
    counts = _counts(tally)
    counts["general"] = state.get("general_rows", 0)
    run.write_json("counts.json", counts)
    _print_counts(counts, out)
    print(f"run folder: {run.path}")
    return counts


# -------------------------------------------------------------------------------- pieces

LANGUAGE_TIMEOUT_S = 5.0  # as a reward call (`scoring.score`'s default)


def language_statistic(completion: str, problem: Problem) -> float | None:
    """The `language` reward, for counts.json only; None (not measured) for a problem whose
    target_language the script labeler has no words in (`fr`): a statistic must not stop the
    run as the reward would (the filters that need a label are checked when the run starts)."""
    if normalize_target(problem.meta.get(TARGET_KEY)) not in (None, *SCRIPT_LANGUAGES):
        return None
    return language_reward(completion, problem)


def keep_for_prompt(candidates: list[Candidate], chain: FilterChain, max_per_prompt: int,
                    cold_start: bool, tally: dict, readable: bool = True,
                    opening: str = "") -> list[dict]:
    """The SFT rows kept from one prompt's samples; every sample is counted in `tally`, as kept or
    under the first reason it was dropped (a filter, `empty`, `duplicate`, `max_per_prompt`).

    A row's completion is the model's whole turn: `opening` (the `<think>` a prefilling template
    put in the prompt, `templates.think_opening`) comes first, so that a student whose template
    does not prefill learns to open its reasoning; `r1kit sft` drops it again where the student's
    template prefills too (`sft.after_prompt`)."""
    rows, seen, passing = [], set(), 0
    for j, c in enumerate(candidates):
        tally["generated"] += 1
        tally["correct"] += c.scores.get(CODE if code_reward.has_tests(c.problem) else
                                         "accuracy") == 1.0
        tally["well_formed"] += c.scores.get("format") == 1.0
        tally["truncated"] += c.truncated
        tally["tokens"] += c.num_tokens
        if c.scores.get("language") is not None:
            tally["language_sum"] += c.scores["language"]
            tally["language_n"] += 1
        failure = chain.first_failure(c)
        if failure is not None:
            tally["rejected"][failure[0]] += 1
            continue
        passing += 1
        row = {"prompt": c.problem.prompt, "completion": opening + c.text, "id": c.problem.id,
               "answer": c.problem.answer, "sample": j}
        if cold_start:
            task = c.problem.meta.get("task") if readable else None
            row["completion"] = to_cold_start(c.text, extract_answer(c.text) or c.problem.answer,
                                              task)
            row["original"] = c.text
        if not (row["completion"] if cold_start else c.text).strip():  # (no filter asked for an
            # answer) SFT refuses it, and a prefilled opening alone teaches nothing
            tally["rejected"]["empty"] = tally["rejected"].get("empty", 0) + 1
        elif row["completion"] in seen:
            tally["rejected"]["duplicate"] += 1
        elif max_per_prompt and len(rows) >= max_per_prompt:
            tally["rejected"]["max_per_prompt"] += 1
        else:
            rows.append(row)
            seen.add(row["completion"])
    tally["prompts"] += 1
    tally["kept"] += len(rows)
    tally["prompts_with_kept"] += bool(rows)
    hist = tally["passing_per_prompt"]
    hist[str(passing)] = hist.get(str(passing), 0) + 1
    return rows


def _inputs(cfg: SampleConfig) -> tuple[FilterChain, list[Problem], list[dict]]:
    """(filter chain, the train problems to sample, the non-reasoning rows to mix in), checking
    the settings a user can get wrong."""
    s = cfg.sample  # (the ranges of its sizes are checked by the config itself)
    if s.cold_start_format and "correct" not in s.filters:
        raise UserError("sample.cold_start_format needs the 'correct' filter: the summary states "
                        "the completion's answer, which must be right")
    chain = build_filters(list(s.filters), language_tolerance=s.language_tolerance,
                          repeat_ngram=s.repeat_ngram, max_repeats=s.max_repeats,
                          max_paragraph_chars=s.max_paragraph_chars)
    train, _ = load_problems(cfg.data, 0)
    if s.num_prompts > len(train):
        log.warning(f"sample.num_prompts={s.num_prompts} but the train split has {len(train)} "
                    "problems; sampling all of them")
    rng = random.Random(f"sample-{cfg.run.seed}")
    picked = rng.sample(range(len(train)), min(s.num_prompts, len(train)))
    if s.general_samples and not s.general_data:
        log.warning(f"sample.general_samples={s.general_samples} does nothing without "
                    "sample.general_data (builtin or a JSONL file)")
    general = load_general(s.general_data, s.general_samples, cfg.run.seed) if s.general_data else []
    problems = [train[i] for i in picked]
    check_filter_targets(problems, s.filters)  # not at the first batch holding such a problem
    code_reward.configure_for(problems, cfg.code)
    return chain, problems, general


def _new_tally(chain: FilterChain) -> dict:
    return {
        "prompts": 0, "generated": 0, "kept": 0, "prompts_with_kept": 0,
        "rejected": {**dict.fromkeys(chain.names, 0), "duplicate": 0, "max_per_prompt": 0},
        "passing_per_prompt": {}, "correct": 0, "well_formed": 0, "truncated": 0, "tokens": 0,
        "language_sum": 0.0, "language_n": 0,
        "seconds": {"generate": 0.0, "score": 0.0, "filter": 0.0},
    }


def _load_progress(run: RunFolder, chain: FilterChain) -> dict:
    """The progress of a resumed run (checked against config.yaml, which may have been edited
    since), else a new one; both record the config the batches are sampled with."""
    new = {"batches_done": 0, "rows": 0, "tally": _new_tally(chain), "config": to_dict(run.cfg)}
    saved = run.read_state("progress.json")
    if saved is None:
        return new
    if isinstance(saved, dict):  # (an edited sample.filters: said so, not a tally's lack)
        check_resume_config(run.cfg, saved.get("config"), run.path / "progress.json",
                            run.path / "config.yaml")
    problem = _progress_problem(saved, new["tally"])
    if problem:  # a file edited or written by something else: not a KeyError later
        raise UserError(f"{run.path / 'progress.json'}: not the progress of this sampling run "
                        f"({problem}); start a new run")
    return {**saved, "config": new["config"]}


def _progress_problem(saved, new_tally: dict) -> str | None:
    """What a saved progress.json lacks that a resumed run reads (None: nothing)."""
    if not isinstance(saved, dict):
        return "not a JSON object"
    for key in ("batches_done", "rows"):
        if not isinstance(saved.get(key), int) or saved[key] < 0:
            return f"{key!r} is missing or not a count"
    tally = saved.get("tally")
    if not isinstance(tally, dict) or not isinstance(tally.get("rejected"), dict):
        return "'tally' is missing or incomplete"
    missing = [f"tally.{k}" for k in new_tally if k not in tally]
    missing += [f"tally.rejected.{k}" for k in new_tally["rejected"] if k not in tally["rejected"]]
    return f"no {', '.join(missing)}" if missing else None


def _cut_rows(path: Path, rows: int) -> None:
    """Keep the first `rows` complete lines of `path`: drop what the batch in flight wrote."""
    if not path.exists():
        if rows:
            raise UserError(f"{path}: missing, but progress.json records {rows} rows")
        return
    lines = path.read_bytes().split(b"\n")  # the last item is b"" or a partial line
    if len(lines) - 1 < rows:
        raise UserError(f"{path}: {len(lines) - 1} rows, but progress.json records {rows}")
    if len(lines) - 1 > rows or lines[-1]:
        log.warning(f"{path}: dropping {len(lines) - 1 - rows} rows of an unfinished batch")
        atomic_write_text(path, b"".join(line + b"\n" for line in lines[:rows]).decode("utf-8"))


def _append_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(_jsonl_line(r) for r in rows)
        f.flush()
        os.fsync(f.fileno())


def _jsonl_line(record: dict) -> str:
    """One JSON line; the line separators `json.dumps` leaves raw are escaped, so that readers
    splitting on any line break (`str.splitlines`) still see one record per line."""
    text = json.dumps(record, ensure_ascii=False)
    for ch in ("\u2028", "\u2029", "\x85"):
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return text + "\n"


def _generation_info(cfg: SampleConfig, num_prompts: int) -> dict:
    r, s = cfg.rollout, cfg.sample
    return {
        "model": cfg.model.path, "dtype": cfg.model.dtype, "data_source": cfg.data.source,
        "template": cfg.data.template, "num_prompts": num_prompts,
        "samples_per_prompt": s.samples_per_prompt, "temperature": r.temperature,
        "top_p": r.top_p, "max_new_tokens": r.max_new_tokens, "stop": list(r.stop),
        "seed": cfg.run.seed, "filters": list(s.filters), "max_per_prompt": s.max_per_prompt,
        "cold_start_format": s.cold_start_format, "readable": s.readable,
        "general_data": s.general_data, "general_samples": s.general_samples,
    }


def _counts(t: dict) -> dict:
    n = max(t["generated"], 1)
    return {
        "prompts": t["prompts"],
        "generated": t["generated"],
        "kept": t["kept"],
        "rejected": t["rejected"],
        "passed_filters": t["kept"] + t["rejected"]["duplicate"] + t["rejected"]["max_per_prompt"]
        + t["rejected"].get("empty", 0),
        "prompts_with_kept": t["prompts_with_kept"],
        "passing_per_prompt": {k: t["passing_per_prompt"][k]
                               for k in sorted(t["passing_per_prompt"], key=int)},
        "accuracy": t["correct"] / n,
        "format": t["well_formed"] / n,
        "language": t["language_sum"] / t["language_n"] if t["language_n"] else None,
        "truncated": t["truncated"] / n,
        "mean_tokens": t["tokens"] / n,
        "seconds": {k: round(v, 2) for k, v in t["seconds"].items()},
    }


def _print_counts(c: dict, out: Path) -> None:
    print(f"{c['generated']} samples of {c['prompts']} prompts: kept {c['kept']} "
          f"({c['prompts_with_kept']} prompts with at least one) -> {out}")
    for name, count in c["rejected"].items():
        print(f"  rejected by {name:<18}{count:>8}")
    if c.get("general"):
        print(f"  plus {c['general']} non-reasoning records (sample.general_data)")
    print(f"  sampler accuracy {c['accuracy']:.3f}  format {c['format']:.3f}  "
          f"truncated {c['truncated']:.3f}")
