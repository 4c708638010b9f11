r"""The language of words and texts, for the language-consistency reward and filter [R1-SPEC.md §5].

R1 rewards "the proportion of target-language words in the CoT" and filters rejection-sampled
data for "mixed languages"; how words are tokenized and what the target language is are left open
[R1-SPEC.md §5, UNVERIFIED there]. The choices here:
- a word is a run of letters of any script; digits, symbols and punctuation are not words, so
  `47+8=55` has none. A CJK ideograph is a word by itself (Chinese puts no spaces between words).
  Mathematics is not words of any language either: math spans (`$...$`, `$$...$$`, `\(...\)`,
  `\[...\]`, the body of a math environment such as `\begin{align}`) and LaTeX commands
  (`\frac`, `\cdot`, `\alpha`) are removed first, but for the prose of `\text{...}` inside math,
  whose words count (English hidden in `$\text{so the answer is}$` is still English). `\$` is a
  literal dollar, and so is a postfix price, a `$` after a digit and before punctuation (`5$, а
  потом 10$`: the words between are prose). Code (`` `numpy.sum` ``, fenced blocks) and URLs
  are blanked like math, and single Latin
  or Greek letters (the variables `x`, `θ`, `π`; Greek letters are split from Latin ones, so
  `2πr` is two) are dropped, from the share's numerator and denominator alike: `Проверим:
  $2 \cdot 2 = 4$` is all Russian, `θ = π/4, since sin θ` all English. (Single Cyrillic letters,
  the words `в`, `и`, `с`, do count.)
- a word's language is its script: Latin "en", Cyrillic "ru", CJK ideographs "zh", Hangul "ko",
  kana "ja" (and in a text written with kana, its ideographs are Japanese kanji, "ja" too); any
  other script (a Greek word such as `αβ` included) or several scripts in one word is "other". This tells
  English from Russian and Chinese, which is what the built-in task mixes, but not English from
  French. For that, `lingua_labeler()` asks the lingua library about Latin-script words (where
  lingua is unsure, or has too few words to go on, a word keeps its script's label); any
  labeler (a function from a text to one language label per word) plugs into
  `language_consistency`, `mixing_rate` and `target_language`, and the rewards
  `language:lingua` / `language_threshold:lingua` use lingua's.
- the target language is the prompt's: the majority language of its words ("other" does not
  vote; "en" when nothing votes), unless the problem sets `meta["target_language"]` (an
  ISO 639-1 code its labeler produces: en, ru, zh, ko, ja by script; lingua's languages too). It is
  never `meta["language"]`: that is a coding problem's programming language ("python").
- the reasoning is what is inside `<think>…</think>` (see `reasoning_part`).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable

from r1kit.errors import UserError

Labeler = Callable[[str], list[str]]
"""A text -> the language of each of its words, in order (`script_labels` is the default)."""

DEFAULT_LANGUAGE = "en"

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df"
_CJK_RE = re.compile(f"[{_CJK}]")
_GREEK = "\u0370-\u03ff\u1f00-\u1fff"
# A Greek run is a word apart from the letters around it: `2πr` is the variables π and r.
_GREEK_RE = re.compile(f"[{_GREEK}]")
_WORD_RE = re.compile(
    rf"[{_CJK}]|(?:(?=[{_GREEK}])[^\W\d_])+|(?:(?![{_CJK}{_GREEK}])[^\W\d_])+")
# Math spans and LaTeX commands, blanked before words are found, by one left-to-right scan
# (`_hidden_spans`): a regex with a span per alternative retried its body from every `$`, which
# took minutes on 100k characters of escaped dollars. `\x` is one token wherever it is (`\$` a
# literal dollar, `\\` a backslash, never the start of `\[`). An inline `$` opens before a
# non-space and closes after one, not before a digit (pandoc's rule), so prices, "$5 and $10",
# stay text. Each span stops at the next opener or closer of its kind; a kind found unclosed
# once is not searched for again, so every character is read a bounded number of times.
# Code (`numpy.sum`, fenced blocks) and URLs are not words of a natural language either: they
# are blanked like math, so that a Russian reasoning naming `np.sum` is not mixed.
_SCAN_RE = re.compile(
    r"(?P<ticks>`+)|(?P<url>(?:https?|ftp)://[^\s<>\"'`]+|(?<![\w.])www\.[^\s<>\"'`]+)"
    r"|\\begin\{(?P<env>[^{}]*)\}|\\end\{[^{}]*\}|\\[A-Za-z]+|\\.|\$\$|\$",
    re.DOTALL)
# Environments whose body is mathematics (`\begin{align} x &= 1 \end{align}`); the body of any
# other (`itemize`) stays text.
_MATH_ENVS = {"equation", "align", "alignat", "flalign", "gather", "multline", "eqnarray",
              "displaymath", "math", "aligned", "gathered", "split", "cases", "array", "matrix",
              "pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix", "smallmatrix"}
# Text inside math is prose: `$\text{so the answer is}$` has words, which count.
_TEXT_ARG_RE = re.compile(
    r"\\(?:text(?:rm|bf|it|sf|tt|up|normal)?|mbox|intertext)\s*\{([^{}]*)\}")
_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
# A `$` after a digit and before punctuation is a postfix price ("5$, а потом 10$"), not math.
_AFTER_PRICE = set(".,;:!?)]»\"'…")
_ENDS = {  # an opener -> (its closer, the tokens its search looks at: escapes are skipped)
    "$": ("$", re.compile(r"\\.|\$", re.DOTALL)),
    "$$": ("$$", re.compile(r"\\.|\$\$", re.DOTALL)),
    "\\[": ("\\]", re.compile(r"\\.", re.DOTALL)),
    "\\(": ("\\)", re.compile(r"\\.", re.DOTALL)),
}


def _closer(text: str, opener: str, pos: int, unclosed: set[str]) -> re.Match | None:
    """The closer of `opener` after `pos`, or None where none comes before the next opener of
    the same kind (or the end; then `opener` joins `unclosed`, and is not searched for again)."""
    if opener in unclosed:
        return None
    closer, tokens = _ENDS[opener]
    for m in tokens.finditer(text, pos):
        if m.group() == closer:
            return m
        if m.group() == opener:
            return None
    unclosed.add(opener)
    return None


def _hidden_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) of each math span and LaTeX command of `text`, in order."""
    spans: list[tuple[int, int]] = []
    unclosed: set[str] = set()
    pos = 0
    while (m := _SCAN_RE.search(text, pos)) is not None:
        token, start, pos = m.group(), m.start(), m.end()
        env, ticks = m.group("env"), m.group("ticks")
        if ticks is not None:
            end = _code_end(text, len(ticks), pos, unclosed)
            if end is not None:
                spans.append((start, end))
                pos = end
        elif m.group("url") is not None:
            spans.append((start, pos))
        elif env is not None and env.rstrip("*") in _MATH_ENVS and env not in unclosed:
            end = text.find(f"\\end{{{env}}}", pos)
            if end < 0:
                unclosed.add(env)  # (not searched for again: a linear scan)
                spans.append((start, pos))
            else:
                pos = end + len(env) + 6
                spans.append((start, pos))
        elif token[1:2].isalpha():  # a command, \begin{...} and \end{...} included
            spans.append((start, pos))
        elif token in ("\\[", "\\(", "$$") or (token == "$" and _opens_inline(text, start)):
            end = _closer(text, token, pos, unclosed)
            if end is not None and (token != "$" or _closes_inline(text, end.start())):
                spans.append((start, end.end()))
                pos = end.end()
            elif token == "$$":  # unclosed: its second `$` may still open inline math
                pos = start + 1
    return spans


def _code_end(text: str, n: int, pos: int, unclosed: set[str]) -> int | None:
    """Where code opened by `n` backticks ending at `pos` ends (markdown's rules): a fence (3 or
    more) at the next run at least as long, else the end of the text; inline code at the next
    run of exactly `n`, else None (the backticks are literal)."""
    if n >= 3:
        m = re.compile(f"`{{{n},}}").search(text, pos)
        return m.end() if m else len(text)
    key = "`" * n
    m = None if key in unclosed else re.compile(f"(?<!`){key}(?!`)").search(text, pos)
    if m is None:
        unclosed.add(key)  # (not searched for again: a linear scan)
    return m.end() if m else None


def _opens_inline(text: str, i: int) -> bool:
    if i + 1 >= len(text) or text[i + 1].isspace():
        return False
    return not (i > 0 and text[i - 1].isdigit() and text[i + 1] in _AFTER_PRICE)


def _closes_inline(text: str, i: int) -> bool:
    return not text[i - 1].isspace() and not text[i + 1 : i + 2].isdigit()


def _is_variable(word: str) -> bool:
    """A single Latin or Greek letter: a variable or constant (`x`, `θ`, `π`), not a word."""
    return len(word) == 1 and (_script(word) == "en" or _GREEK_RE.match(word) is not None)


def _prose(text: str) -> str:
    """`text` with its math spans and LaTeX commands blanked (same length: offsets still hold)."""
    pieces, last = [], 0
    for start, end in _hidden_spans(text):
        span = text[start:end]  # math or a command, else code or a URL: all blank
        pieces += [text[last:start],
                   _blank_math(span) if span[0] in "$\\" else " " * (end - start)]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _blank_math(span: str) -> str:
    """`span` blanked but for the prose of its `\text{...}` arguments (their commands blanked)."""
    pieces, last = [], 0
    for m in _TEXT_ARG_RE.finditer(span):
        pieces += [" " * (m.start(1) - last),
                   _COMMAND_RE.sub(lambda c: " " * len(c.group()), m.group(1))]
        last = m.end(1)
    pieces.append(" " * (len(span) - last))
    return "".join(pieces)


def _word_matches(prose: str) -> list[re.Match]:
    """The words (see `words`) of a text already through `_prose`, as matches for offsets."""
    return [m for m in _WORD_RE.finditer(prose) if not _is_variable(m.group())]


def words(text: str) -> list[str]:
    r"""The words of `text`: runs of letters, each CJK ideograph on its own, outside math spans
    and LaTeX commands; single Latin or Greek letters (variables) are not words.

    >>> words("47 плюс 8 равно 55, wait: 55-9=46")
    ['плюс', 'равно', 'wait']
    >>> words("答案是46")
    ['答', '案', '是']
    >>> words(r"so $x = \frac{1}{2}$, then \(y\) is x \cdot θ")
    ['so', 'then', 'is']
    """
    return [m.group() for m in _word_matches(_prose(text))]


def _script(ch: str) -> str:
    o = ord(ch)
    if o < 0x250 or 0x1E00 <= o <= 0x1EFF:  # Basic Latin .. Latin Extended-B, Extended Additional
        return "en"
    if 0x400 <= o <= 0x52F:  # Cyrillic and its supplement
        return "ru"
    if _CJK_RE.fullmatch(ch):
        return "zh"
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:  # Hangul
        return "ko"
    if 0x3041 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF:  # hiragana, katakana (and ー)
        return "ja"
    return "other"


def detect_word_language(word: str) -> str:
    """The language of one word by its script: "en", "ru", "zh", "ko", "ja" (kana) or "other"
    (see the module).

    >>> [detect_word_language(w) for w in ("wait", "naïve", "подожди", "答", "생각", "です", "α")]
    ['en', 'en', 'ru', 'zh', 'ko', 'ja', 'other']
    """
    scripts = {_script(ch) for ch in word}
    return scripts.pop() if len(scripts) == 1 else "other"


def script_labels(text: str) -> list[str]:
    """The default labeler: `detect_word_language` of each word of `text`; ideographs are "ja"
    in a text written with kana (`KANA_SHARE`; Chinese has none, but may quote a Japanese word).

    >>> script_labels("答案は46です"), script_labels("答案是46")
    (['ja', 'ja', 'ja', 'ja'], ['zh', 'zh', 'zh'])
    """
    return _kanji([detect_word_language(w) for w in words(text)])


KANA_SHARE = 0.1
"""Ideographs are Japanese kanji where kana words are at least this share of a text's kana and
ideograph words: Japanese prose has a kana particle every few kanji (`二次方程式の解を求める`:
0.3), while Chinese quoting a Japanese name (「なな」) has one in dozens of ideographs."""


def _kanji(labels: list[str]) -> list[str]:
    """A text's word labels with its ideographs "ja" if it is written with kana (`KANA_SHARE`)."""
    kana, ideographs = labels.count("ja"), labels.count("zh")
    if not kana or kana < KANA_SHARE * (kana + ideographs):
        return labels
    return ["ja" if label == "zh" else label for label in labels]


SCRIPT_LANGUAGES = ("en", "ru", "zh", "ko", "ja")
script_labels.languages = SCRIPT_LANGUAGES  # what it can label a word (besides "other")


def language_consistency(
    text: str, target: str, labeler: Labeler = script_labels
) -> float | None:
    """Share of the words of `text` in the `target` language; None if `text` has no words.

    >>> language_consistency("so 47 plus 8 is 55, wait", "en")
    1.0
    >>> language_consistency("47 плюс 8 is 55, so wait", "en")
    0.75
    >>> language_consistency("47+8=55", "en") is None
    True
    """
    labels = labeler(text)
    if not labels:
        return None
    return sum(1 for label in labels if label == target) / len(labels)


def mixing_rate(texts: list[str], targets: list[str], labeler: Labeler = script_labels) -> float:
    """Language-mixing rate: the share of texts with words whose words are not all in their
    target language (texts without words do not count); 0.0 when no text has words.

    >>> mixing_rate(["so 47 plus 8", "47 плюс 8, so", "47+8=55"], ["en", "en", "en"])
    0.5
    """
    shares = [language_consistency(t, target, labeler) for t, target in zip(texts, targets)]
    shares = [s for s in shares if s is not None]
    return sum(1 for s in shares if s < 1.0) / len(shares) if shares else 0.0


LINGUA_LANGUAGES = ("en", "fr", "de", "es", "it", "pt")
"""The languages `lingua_labeler` tells apart by default; more cost load time and memory."""

LINGUA_MIN_WORDS = 2
LINGUA_MIN_CONFIDENCE = 0.5
"""Below these, a span's Latin words keep their script's label ("en"): lingua calls a lone
"Compute" German and "Is it prime?" Portuguese, each at a confidence under 0.4, while it is
sure (0.9 and more) of a French or German sentence."""


def lingua_labeler(languages: tuple[str, ...] = LINGUA_LANGUAGES,
                   min_words: int = LINGUA_MIN_WORDS,
                   min_confidence: float = LINGUA_MIN_CONFIDENCE) -> Labeler:
    """A labeler for real text that tells apart languages sharing a script: each word keeps its
    script's label unless it is in Latin script, where lingua (`lingua-language-detector`,
    `pip install 'r1kit[lingua]'`) decides, by the span of the text it assigns the word to. The
    ISO 639-1 codes in `languages` are the candidates (load time and memory grow with them).

    A span of fewer than `min_words` words, or whose language lingua gives a confidence under
    `min_confidence`, keeps the script label: short prompts, mostly numbers (`Compute 86+7-4+5`),
    are English far more often than lingua's guess, and a mislabelled prompt makes every word of
    the reasoning foreign. A problem in a Latin-script language other than English with a short
    prompt names its language (`meta["target_language"]`). Math is removed first (`words`).
    """
    try:
        from lingua import IsoCode639_1, LanguageDetectorBuilder
    except ImportError:
        raise UserError("the lingua language detector is not installed: "
                        "pip install 'r1kit[lingua]'") from None
    try:
        codes = [getattr(IsoCode639_1, code.upper()) for code in languages]
    except AttributeError as e:
        raise UserError(f"lingua: unknown ISO 639-1 language code {e.name.lower()!r}") from None
    detector = LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()

    def labels(text: str) -> list[str]:
        prose = _prose(text)
        matches = _word_matches(prose)
        out = _kanji([detect_word_language(m.group()) for m in matches])
        latin = [i for i, label in enumerate(out) if label == "en"]
        if not latin:  # lingua decides only between Latin-script languages
            return out
        spans = detector.detect_multiple_languages_of(prose)
        starts = [r.start_index for r in spans]  # in order and disjoint: bisect, not a scan
        in_span: dict[int, list[int]] = {}
        for i in latin:
            j = bisect_right(starts, matches[i].start()) - 1
            if j >= 0 and matches[i].start() < spans[j].end_index:
                in_span.setdefault(j, []).append(i)
        for j, members in in_span.items():
            r = spans[j]
            label = r.language.iso_code_639_1.name.lower()
            if label == DEFAULT_LANGUAGE or len(members) < min_words:
                continue
            text_j = prose[r.start_index:r.end_index]
            if detector.compute_language_confidence(text_j, r.language) < min_confidence:
                continue
            for i in members:
                out[i] = label
        return out

    labels.languages = tuple(dict.fromkeys(SCRIPT_LANGUAGES + tuple(languages)))
    return labels


def target_language(prompt: str, labeler: Labeler = script_labels) -> str:
    """The majority language of the prompt's words ("other" does not vote; ties go to the one
    seen first); "en" when no word votes.

    >>> target_language("Compute 47+8-9"), target_language("Вычислите 47+8, please")
    ('en', 'ru')
    >>> target_language("47+8-9")
    'en'
    """
    votes = Counter(label for label in labeler(prompt) if label != "other")
    return max(votes, key=votes.__getitem__) if votes else DEFAULT_LANGUAGE


TARGET_KEY = "target_language"
"""The `Problem.meta` key (and data-file field) naming the language the reasoning should be in."""


def normalize_target(value):
    """A `target_language` as written, as the ISO 639-1 code the labelers give: case and
    surrounding spaces ignored, a BCP-47 region or script subtag dropped (`en-US`, `zh-Hans`; a
    locale's `zh_CN` too); an empty string is no target (None), as a blank CSV cell is. Any other
    value comes back as it is, for `check_language` to reject.

    >>> [normalize_target(v) for v in ("EN", " en-US ", "zh-Hans", "zh_CN", "", None, 7)]
    ['en', 'en', 'zh', 'zh', None, None, 7]
    """
    if not isinstance(value, str):
        return value
    return re.split(r"[-_]", value.strip().lower(), maxsplit=1)[0] or None


def problem_language(problem, labeler: Labeler = script_labels) -> str:
    """A problem's target language: `problem.meta["target_language"]` if set, else its prompt's
    (by `labeler`). Never `meta["language"]`, a coding problem's programming language.

    >>> from r1kit.tasks.base import Problem
    >>> problem_language(Problem("p", "Write f with f(0)=7", "", {"language": "python"}))
    'en'
    >>> problem_language(Problem("p", "Compute 47+8", "55", {"target_language": "ru"}))
    'ru'
    """
    return normalize_target(problem.meta.get(TARGET_KEY)) or target_language(problem.prompt,
                                                                              labeler)


def reasoning_share(completion: str, problem) -> float | None:
    """The statistic `train/language` and the pipeline table report: the share of the problem's
    target language in the completion's reasoning, by script labels; None where the reasoning
    has no words, or the target is one scripts cannot tell (`fr`: not measured, not 0)."""
    target = problem_language(problem)
    if target not in SCRIPT_LANGUAGES:
        return None
    return language_consistency(reasoning_part(completion), target)


TARGET_LANGUAGES = tuple(dict.fromkeys(SCRIPT_LANGUAGES + LINGUA_LANGUAGES))
"""The targets a built-in labeler can produce (the lingua ones with `language:lingua`)."""


def check_language(value, languages: tuple[str, ...] | None, where: str) -> str:
    """`value` if it is one of `languages` (a labeler's: what it can label a word; None: any
    string), else a `UserError` naming `where`: no word would be in it, every reasoning would
    score 0.

    >>> check_language("ru", SCRIPT_LANGUAGES, "x")
    'ru'
    >>> check_language("English", SCRIPT_LANGUAGES, "a.jsonl:3: field 'target_language'")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    r1kit.errors.UserError: a.jsonl:3: field 'target_language' is 'English', not a language ...
    """
    if isinstance(value, str) and (languages is None or value in languages):
        return value
    hint = ""
    if languages == SCRIPT_LANGUAGES and normalize_target(value) in LINGUA_LANGUAGES:
        hint = "; the others need the lingua detector (the language:lingua reward)"
    raise UserError(f"{where} is {value!r}, not a language the labeler gives words: one of "
                    f"{', '.join(languages or ())} (ISO 639-1 codes){hint}")


def checked_problem_language(problem, labeler: Labeler = script_labels) -> str:
    """`problem_language`, with a `meta["target_language"]` that `labeler` cannot produce a
    `UserError` (for the reward and the filter; statistics take `problem_language` as it is)."""
    raw = problem.meta.get(TARGET_KEY)
    target, languages = normalize_target(raw), getattr(labeler, "languages", None)
    if target is not None and not (isinstance(target, str)
                                   and (languages is None or target in languages)):
        # raises, naming the value as written
        check_language(raw, languages, f"problem {problem.id!r}: meta {TARGET_KEY!r}")
    return problem_language(problem, labeler)


def check_targets(problems, languages: tuple[str, ...], what: str, fix: str,
                  context: str = "") -> None:
    """A `UserError` naming the first of `problems` whose `meta["target_language"]` is not one of
    `languages` (those `what`, a reward or filter, can label a word with), with `fix`: the
    reward or filter would raise only when it first meets that problem, maybe a whole stage
    later, so a stage checks its problems when it starts. A generated problem set that says it
    carries no targets (`has_targets = False`: reasoning-gym's, made lazily) is not read through.
    """
    if getattr(problems, "has_targets", None) is False:
        return
    bad = [p for p in problems
           if normalize_target(p.meta.get(TARGET_KEY)) not in (None, *languages)]
    if not bad:
        return
    more = f" (and {len(bad) - 1} more problems)" if len(bad) > 1 else ""
    raise UserError(
        f"{context}problem {bad[0].id!r}{more}: target_language {bad[0].meta[TARGET_KEY]!r}, but "
        f"{what} labels words only as {', '.join(languages)}, so every reasoning would score 0 "
        f"for it; {fix}")


def reasoning_part(completion: str) -> str:
    """The reasoning of a completion: the text between `<think>` and the first `</think>`; the text
    before `</think>` when the opening tag is missing (a prompt that prefills `<think>`); the text
    after `<think>` when it is never closed (a truncated completion); else the whole completion.

    >>> reasoning_part("<think> 47+8=55 </think> <answer> 55 </answer>")
    ' 47+8=55 '
    >>> reasoning_part("47+8=55 </think> <answer> 55 </answer>"), reasoning_part("<think> 47+8")
    ('47+8=55 ', ' 47+8')
    >>> reasoning_part("The answer is 55.")
    'The answer is 55.'
    """
    end = completion.find("</think>")
    if end < 0:
        start = completion.find("<think>")
        return completion if start < 0 else completion[start + len("<think>") :]
    start = completion.rfind("<think>", 0, end)
    return completion[start + len("<think>") if start >= 0 else 0 : end]
