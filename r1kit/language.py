"""The language of words and texts, for the language-consistency reward and filter [R1-SPEC.md §5].

R1 rewards "the proportion of target-language words in the CoT" and filters rejection-sampled
data for "mixed languages"; how words are tokenized and what the target language is are left open
[R1-SPEC.md §5, UNVERIFIED there]. The choices here:
- a word is a run of letters of any script; digits, symbols and punctuation are not words, so
  `47+8=55` has none. A CJK ideograph is a word by itself (Chinese puts no spaces between words).
- a word's language is its script: Latin "en", Cyrillic "ru", CJK ideographs "zh"; any other script
  (Greek letters such as `α` included) or several scripts in one word is "other". This tells
  English from Russian and Chinese, which is what the built-in task mixes, but not English from
  French. For that, `lingua_labeler()` asks the lingua library about Latin-script words; any
  labeler (a function from a text to one language label per word) plugs into
  `language_consistency`, `mixing_rate` and `target_language`, and the rewards
  `language:lingua` / `language_threshold:lingua` use lingua's.
- the target language is the prompt's: the majority language of its words ("other" does not
  vote; "en" when nothing votes), unless the problem sets `meta["language"]`.
- the reasoning is what is inside `<think>…</think>` (see `reasoning_part`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

Labeler = Callable[[str], list[str]]
"""A text -> the language of each of its words, in order (`script_labels` is the default)."""

DEFAULT_LANGUAGE = "en"

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df"
_CJK_RE = re.compile(f"[{_CJK}]")
_WORD_RE = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W\d_])+")


def words(text: str) -> list[str]:
    """The words of `text`: runs of letters, each CJK ideograph on its own.

    >>> words("47 плюс 8 равно 55, wait: 55-9=46")
    ['плюс', 'равно', 'wait']
    >>> words("答案是46")
    ['答', '案', '是']
    """
    return _WORD_RE.findall(text)


def _script(ch: str) -> str:
    o = ord(ch)
    if o < 0x250 or 0x1E00 <= o <= 0x1EFF:  # Basic Latin .. Latin Extended-B, Extended Additional
        return "en"
    if 0x400 <= o <= 0x52F:  # Cyrillic and its supplement
        return "ru"
    if _CJK_RE.fullmatch(ch):
        return "zh"
    return "other"


def detect_word_language(word: str) -> str:
    """The language of one word by its script: "en", "ru", "zh" or "other" (see the module).

    >>> [detect_word_language(w) for w in ("wait", "naïve", "подожди", "答", "α", "plюс")]
    ['en', 'en', 'ru', 'zh', 'other', 'other']
    """
    scripts = {_script(ch) for ch in word}
    return scripts.pop() if len(scripts) == 1 else "other"


def script_labels(text: str) -> list[str]:
    """The default labeler: `detect_word_language` of each word of `text`."""
    return [detect_word_language(w) for w in words(text)]


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


def lingua_labeler(languages: tuple[str, ...] = LINGUA_LANGUAGES) -> Labeler:
    """A labeler for real text that tells apart languages sharing a script: each word keeps its
    script's label unless it is in Latin script, where lingua (`lingua-language-detector`,
    `pip install 'r1kit[lingua]'`) decides, by the span of the text it assigns the word to. The
    ISO 639-1 codes in `languages` are the candidates (load time and memory grow with them).
    """
    try:
        from lingua import IsoCode639_1, LanguageDetectorBuilder
    except ImportError:
        from r1kit.errors import UserError

        raise UserError("the lingua language detector is not installed: "
                        "pip install 'r1kit[lingua]'") from None
    try:
        codes = [getattr(IsoCode639_1, code.upper()) for code in languages]
    except AttributeError as e:
        from r1kit.errors import UserError

        raise UserError(f"lingua: unknown ISO 639-1 language code {e.name.lower()!r}") from None
    detector = LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()

    def labels(text: str) -> list[str]:
        spans = [(r.start_index, r.end_index, r.language.iso_code_639_1.name.lower())
                 for r in detector.detect_multiple_languages_of(text)]
        out = []
        for m in _WORD_RE.finditer(text):
            label = detect_word_language(m.group())
            if label == "en":  # Latin script: English or another Latin-script language
                label = next((lang for a, b, lang in spans if a <= m.start() < b), "other")
            out.append(label)
        return out

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


def problem_language(problem) -> str:
    """A problem's target language: `problem.meta["language"]` if set, else its prompt's."""
    return problem.meta.get("language") or target_language(problem.prompt)


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
