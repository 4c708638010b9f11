"""Language consistency (words, scripts, target language, the two reward forms), the
rejection-sampling filters, the filter chain's counts and the cold-start rewrite (R1-SPEC.md §5)."""

from __future__ import annotations

import doctest
import random
from pathlib import Path

import pytest

import r1kit.filters
import r1kit.language
import r1kit.rewards.language
from r1kit.errors import UserError
from r1kit.filters import (
    Candidate,
    build_filters,
    correct,
    no_code_blocks,
    no_repetition,
    not_truncated,
    short_paragraphs,
    single_language,
    to_cold_start,
    well_formed,
)
from r1kit.language import (
    detect_word_language,
    language_consistency,
    reasoning_part,
    target_language,
    words,
)
from r1kit.rewards import get_reward
from r1kit.rewards.language import make_language, make_language_threshold
from r1kit.rewards.scoring import RewardSpec, score
from r1kit.sft import after_prompt
from r1kit.tasks.arithmetic import CorpusStyle, correct_solution, sample_problems, worked_solution
from r1kit.tasks.base import Problem

EN = Problem("p", "Compute 47+8-9", "46")


@pytest.mark.parametrize("module", [r1kit.language, r1kit.rewards.language, r1kit.filters])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


# --- words and languages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("47+8=55, 55-9=46", []),  # numbers and symbols are not words
        ("wait, 47+8=55", ["wait"]),
        ("подожди, 47 плюс 8 равно 55", ["подожди", "плюс", "равно"]),
        ("x_1 = 2y", []),  # digits and underscores split words; one-letter ones are variables
        ("答案是 46, so", ["答", "案", "是", "so"]),  # one word per ideograph
        ("don't", ["don"]),
        ("", []),
    ],
)
def test_words(text, expected):
    assert words(text) == expected


@pytest.mark.parametrize(
    ("word", "language"),
    [("Wait", "en"), ("café", "en"), ("Ñandú", "en"), ("равно", "ru"), ("ЁЖ", "ru"),
     ("答", "zh"), ("π", "other"), ("こんにちは", "ja"), ("مرحبا", "other"), ("plюс", "other")],
)
def test_detect_word_language(word, language):
    assert detect_word_language(word) == language


TINY_BASE = Path(__file__).resolve().parents[1] / "r1kit" / "assets" / "tiny-base"


def test_language_consistency_on_hand_made_texts():
    english = "First add eight, then take away nine: the result is 46."
    russian = "Сначала прибавим восемь, потом вычтем девять: получится 46."
    assert language_consistency(english, "en") == 1.0
    assert language_consistency(russian, "en") == 0.0
    assert language_consistency(russian, "ru") == 1.0
    # 4 English words (so, plus, is, wait) and 2 Russian (минус, равно): 4/6 and 2/6
    mixed = "so 47 plus 8 is 55, wait, 55 минус 9 равно 46"
    assert language_consistency(mixed, "en") == pytest.approx(4 / 6)
    assert language_consistency(mixed, "ru") == pytest.approx(2 / 6)
    assert language_consistency(mixed, "zh") == 0.0
    assert language_consistency("47+8=55, 55-9=46", "en") is None  # no words: 0/0
    assert language_consistency("", "en") is None
    # CJK: 3 ideographs and 1 Latin word
    assert language_consistency("答案是 46 ok", "zh") == pytest.approx(3 / 4)


def test_a_library_detector_plugs_in_as_a_labeler():
    def by_suffix(text: str) -> list[str]:  # a stand-in for a real detector: "-ez" words are French
        return ["fr" if w.endswith("ez") else "en" for w in words(text)]

    assert language_consistency("calculez then add", "fr", by_suffix) == pytest.approx(1 / 3)
    assert target_language("Calculez vite", by_suffix) == "fr"
    reward = make_language(by_suffix)
    assert reward("<think> calculez then add </think>", Problem("p", "Calculez 1+1", "2")) == \
        pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("prompt", "language"),
    [("Compute 47+8-9", "en"), ("Вычислите 47+8-9", "ru"), ("计算 47+8", "zh"), ("47+8-9", "en"),
     ("Вычислите 47+8, then answer", "en"),  # 2 English words to 1 Russian
     ("Вычислите, please", "ru"),  # a tie goes to the first seen
     ("α+β", "en"),  # "other" does not vote
     ("47에 8을 더하면 얼마입니까?", "ko"),
     ("47と8の和を計算してください", "ja"),  # kanji with kana: Japanese, not Chinese
     ("计算47与8的和", "zh")],
)
def test_target_language(prompt, language):
    assert target_language(prompt) == language


def test_korean_and_japanese_reasoning_is_measured_against_its_prompt():
    from r1kit.language import reasoning_share

    ko = Problem("p", "47에 8을 더하면 얼마입니까?", "55")
    assert reasoning_share("<think> 47 더하기 8은 55입니다 </think> <answer>55</answer>", ko) == 1.0
    assert reasoning_share("<think> 47 plus 8 is 55 </think> <answer>55</answer>", ko) == 0.0
    mixed = "<think> 47 더하기 8, so 55 </think>"
    assert language_consistency(reasoning_part(mixed), "ko") == 0.5  # 더하기 and so
    ja = Problem("p", "47と8の和を計算してください", "55")
    assert reasoning_share("<think> 47と8を足すと55です </think>", ja) == 1.0
    assert reasoning_share("<think> 47加8等于55 </think>", ja) == 0.0  # Chinese
    # one kana word does not make Chinese Japanese: a quoted name, or a switch after one word
    zh = Problem("p", "计算四十七加八的和", "55")
    quoting = "<think> 我们先把四十七和八相加，就像书里说的「なな」一样，结果是五十五 </think>"
    assert reasoning_share(quoting, zh) == pytest.approx(25 / 26)  # all but the quoted word
    assert reasoning_share("<think> まず、我们来计算一下四十七加八等于五十五 </think>", ja) < 0.1


@pytest.mark.parametrize(
    ("completion", "reasoning"),
    [
        ("<think> a </think> <answer> b </answer>", " a "),
        ("a </think> <answer> b </answer>", "a "),  # prefilled <think>
        ("<think> a, then", " a, then"),  # truncated before </think>
        ("no tags at all", "no tags at all"),
        ("pre <think> a </think> b </think>", " a "),  # the first closing tag ends it
    ],
)
def test_reasoning_part(completion, reasoning):
    assert reasoning_part(completion) == reasoning


# --- the two reward forms ---------------------------------------------------------------------


def test_language_rewards_proportion_and_threshold():
    language, threshold = get_reward("language"), get_reward("language_threshold")
    # 19 English words and 1 Russian: 0.95, exactly the default threshold
    at = "<think> " + "so " * 19 + "итак </think> <answer> 46 </answer>"
    # 18 and 1: 18/19 < 0.95
    below = "<think> " + "so " * 18 + "итак </think> <answer> 46 </answer>"
    assert language(at, EN) == pytest.approx(0.95) and threshold(at, EN) == 1.0
    assert language(below, EN) == pytest.approx(18 / 19) and threshold(below, EN) == 0.0
    assert make_language_threshold(0.9)(below, EN) == 1.0
    # only the reasoning counts: Russian after </think> does not
    assert language("<think> so </think> ответ <answer> 46 </answer>", EN) == 1.0
    # no words in the reasoning: nothing mixed, the same reward as all-English words (a filler
    # "wait" earns nothing); no reasoning at all: not scorable
    for r in (language, threshold):
        assert r("<think> 47+8=55 </think> <answer> 55 </answer>", EN) == 1.0
        assert r("<think> 47+8=55, wait </think> <answer> 55 </answer>", EN) == 1.0
        assert r("<think>  </think> <answer> 55 </answer>", EN) is None
    # the problem may name its language
    ru = Problem("p", "Compute 47+8", "55", {"target_language": "ru"})
    assert language("<think> 47 плюс 8 равно 55 </think>", ru) == 1.0
    with pytest.raises(ValueError, match="threshold"):
        make_language_threshold(1.5)


def test_language_reward_in_weighted_scoring():
    texts = ["<think> so, 47 plus 8 </think> <answer> 55 </answer>",
             "<think> 47 плюс 8 </think> <answer> 55 </answer>",
             "<think></think> <answer> 55 </answer>"]
    s = score(texts, [EN] * 3, [RewardSpec("accuracy", 1.0), RewardSpec("language", 1.0)],
              [10] * 3, 64)
    assert s.per_reward["language"] == [1.0, 0.0, None]
    assert s.total == [1.0, 0.0, 0.0]  # accuracy 0 (answer 46); None counts 0 in the total
    assert s.means()["reward/language"] == 0.5  # None is skipped in the mean


def test_builtin_russian_traces_score_zero():
    style = CorpusStyle(carry_slip=0, slip=0, recheck=0, second_language=1.0, no_tags=0)
    for p in sample_problems(5, "train", seed=3):
        russian = worked_solution(p, random.Random(0), style)
        assert get_reward("language")(russian, p) == 0.0
        assert get_reward("accuracy")(russian, p) == 1.0
        assert not single_language(Candidate(russian, p))[0]
        assert single_language(Candidate(correct_solution(p), p)) == (True, "")


# --- filters ----------------------------------------------------------------------------------


def test_not_truncated_and_correct_and_well_formed():
    good = "<think> 47+8=55, 55-9=46 </think> <answer> 46 </answer>"
    assert not_truncated(Candidate(good, EN)) == (True, "")
    assert not_truncated(Candidate("<think> 47+8", EN, num_tokens=64, truncated=True)) == \
        (False, "truncated at 64 tokens")
    assert correct(Candidate(good, EN)) == (True, "")
    assert correct(Candidate(good.replace("46", "45"), EN))[0] is False
    assert correct(Candidate("<think> 47+8=55 </think>", EN))[0] is False  # no answer
    kept, reason = correct(Candidate(good, Problem("p", "?", "\\frac{1}{")))
    assert not kept and "does not parse" in reason
    assert well_formed(Candidate(good, EN)) == (True, "")
    assert well_formed(Candidate("<think> 47+8 </think> so <answer> 46 </answer>", EN))[0] is False
    assert well_formed(Candidate("<answer> 46 </answer>", EN))[0] is False


def test_filters_use_precomputed_scores():
    wrong = Candidate("<answer> 1 </answer>", EN, scores={"accuracy": 1.0, "format": 1.0})
    assert correct(wrong) == (True, "") and well_formed(wrong) == (True, "")
    timed_out = Candidate("<think> 47+8-9=46 </think> <answer> 46 </answer>", EN,
                          scores={"accuracy": 0.0})  # a failed (timed-out) reward scores 0
    assert correct(timed_out)[0] is False


def test_single_language_with_tolerance():
    # 9 English words, 1 Russian: share 0.9
    c = Candidate("<think> " + "so " * 9 + "итак </think> <answer> 46 </answer>", EN)
    assert single_language(c) == (False, "90% of the reasoning's words are in 'en'")
    assert single_language(c, tolerance=0.1) == (True, "")
    assert single_language(c, tolerance=0.05)[0] is False
    assert single_language(Candidate("<think> 47+8=55 </think>", EN)) == (True, "")  # no words
    # the answer's words do not count, only the reasoning's
    assert single_language(Candidate("<think> so </think> <answer> сорок </answer>", EN))[0]


def test_no_repetition_boundary():
    step = "55-9=46, "
    # 6 tokens: the 4-gram of one repeated token occurs 3 times: allowed; 7 tokens: 4 times
    assert no_repetition(Candidate(step * 6, EN)) == (True, "")
    kept, reason = no_repetition(Candidate(step * 7, EN))
    assert not kept and reason == "'55-9=46 55-9=46 55-9=46 55-9=46' occurs 4 times"
    # case and end punctuation are ignored
    assert not no_repetition(Candidate("Wait. wait, WAIT! wait", EN), n=1, max_repeats=3)[0]
    # a normal worked solution passes
    for p in sample_problems(10, "train", seed=0):
        assert no_repetition(Candidate(correct_solution(p), p)) == (True, "")


def test_short_paragraphs_boundary():
    ok = "<think> " + "a" * 20 + "\n\n" + "b" * 20 + " </think> <answer> 1 </answer>"
    assert short_paragraphs(Candidate(ok, EN), max_chars=20) == (True, "")
    one_long = ok.replace("\n\n", " ")  # 41 characters in one paragraph
    assert short_paragraphs(Candidate(one_long, EN), max_chars=20) == \
        (False, "a paragraph of 41 characters")
    # a single newline does not start a paragraph; a blank line with spaces does
    assert not short_paragraphs(Candidate(ok.replace("\n\n", "\n"), EN), max_chars=40)[0]
    assert short_paragraphs(Candidate(ok.replace("\n\n", "\n  \n"), EN), max_chars=20)[0]
    assert short_paragraphs(Candidate("<think>" + "x" * 1000 + "</think>", EN)) == (True, "")
    assert not short_paragraphs(Candidate("<think>" + "x" * 1001 + "</think>", EN))[0]


def test_no_code_blocks():
    assert no_code_blocks(Candidate("<think> ```python\nprint(1)\n``` </think>", EN))[0] is False
    assert no_code_blocks(Candidate("<think> 1 </think> <answer> ``` </answer>", EN)) == (True, "")


# --- the chain --------------------------------------------------------------------------------


def _mixed_batch() -> list[Candidate]:
    good = "<think> 47+8=55, 55-9=46 </think> <answer> 46 </answer>"
    return [
        Candidate(good, EN),
        Candidate("<think> 47+8", EN, truncated=True),  # truncated (and so also wrong)
        Candidate(good.replace("46", "45"), EN),  # wrong
        Candidate("<think> 47 плюс 8 </think> 46 <answer> 46 </answer>", EN),  # bad format + ru
        Candidate("<think> 47 плюс 8 равно 55 </think> <answer> 46 </answer>", EN),  # Russian
        Candidate("<think> " + "55-9=46, " * 7 + "</think> <answer> 46 </answer>", EN),  # loop
    ]


def test_chain_counts_each_rejection_once_under_the_first_failing_filter():
    names = ["not_truncated", "correct", "well_formed", "single_language", "no_repetition",
             "short_paragraphs"]
    kept, rejected = build_filters(names).apply(_mixed_batch())
    assert [c.text for c in kept] == [_mixed_batch()[0].text]
    assert rejected == {"not_truncated": 1, "correct": 1, "well_formed": 1, "single_language": 1,
                        "no_repetition": 1, "short_paragraphs": 0}
    assert list(rejected) == names  # counts in chain order
    assert len(kept) + sum(rejected.values()) == len(_mixed_batch())

    # another order moves the counts: the truncated one is now wrong first, the badly formatted
    # Russian one is Russian first
    kept, rejected = build_filters(["single_language", "correct", "not_truncated"]).apply(
        _mixed_batch())
    assert rejected == {"single_language": 2, "correct": 2, "not_truncated": 0}
    assert len(kept) == 2  # the good one and the loop

    kept, rejected = build_filters([]).apply(_mixed_batch())
    assert len(kept) == 6 and rejected == {}


def test_chain_settings_and_errors():
    chain = build_filters(["no_repetition", "short_paragraphs", "single_language"],
                          repeat_ngram=1, max_repeats=10, max_paragraph_chars=5000,
                          language_tolerance=1.0)
    kept, _ = chain.apply(_mixed_batch())
    assert len(kept) == 6
    assert chain.first_failure(Candidate("a " * 11, EN)) == ("no_repetition", "'a' occurs 11 times")
    with pytest.raises(UserError, match="unknown filter 'corect'; known filters: not_truncated"):
        build_filters(["corect"])
    with pytest.raises(UserError, match="listed twice"):
        build_filters(["correct", "correct"])


# --- the cold-start rewrite -------------------------------------------------------------------


def test_to_cold_start_is_readable_and_still_scores():
    accuracy, fmt = get_reward("accuracy"), get_reward("format")
    summary, think = get_reward("summary_format"), get_reward("think_format")
    for p in sample_problems(20, "train", seed=2):
        original = correct_solution(p)
        cold = to_cold_start(original, p.answer)
        assert cold.startswith("<think> ")
        assert cold.endswith(f"The answer is <answer> {p.answer} </answer>")
        assert reasoning_part(cold).strip() == reasoning_part(original).strip()
        assert accuracy(cold, p) == 1.0 and summary(cold, p) == 1.0 and think(cold, p) == 1.0
        assert fmt(cold, p) == 0.0  # R1-Zero's format allows no summary
        assert to_cold_start(cold, p.answer) == cold  # a rewrite of a rewrite changes nothing
    # a prefilled <think> (no opening tag in the completion) is restored
    assert to_cold_start("47+8=55 </think> <answer>55</answer>", "55") == \
        "<think> 47+8=55 </think> The answer is <answer> 55 </answer>"
    # also when the prompt itself opened it (a chat template ending in <think>): the rewrite is
    # the model's whole turn; SFT drops the tag where its own template prefills one
    prefilled = Problem("p", "Compute 47+8", "55", {"prefilled_think": True})
    cold = to_cold_start("47+8=55 </think> <answer>55</answer>", "55", "arithmetic")
    assert cold == "<think> 47+8=55, so the total is 55 </think> The answer is <answer> 55 </answer>"
    turn = after_prompt(cold, "<|im_start|>assistant\n<think>\n")
    assert turn == "47+8=55, so the total is 55 </think> The answer is <answer> 55 </answer>"
    assert summary(turn, prefilled) == 1.0 and summary(cold, prefilled) == 0.0
    # reasoning that ends elsewhere than its answer gets no "so the total is" contradicting it
    assert to_cold_start("<think>4+2=6</think> <answer>7</answer>", "7", "arithmetic") == \
        "<think> 4+2=6 </think> The answer is <answer> 7 </answer>"


def test_summary_format_reward():
    summary = get_reward("summary_format")
    assert summary("<think> a </think>\nSo 2.\n<answer> 2 </answer>\n", EN) == 1.0
    assert summary("<think> a </think> <answer> 2 </answer>", EN) == 0.0  # no summary
    assert summary("<think> a </think> So <answer> </answer>", EN) == 0.0  # blank answer
    assert summary("<think> a </think> So <answer> 2 </answer>.", EN) == 0.0  # text after
    assert summary("So <answer> 2 </answer>", EN) == 0.0  # no reasoning tags
    assert summary("<think> a </think> So <answer> 1 </answer> <answer> 2 </answer>", EN) == 0.0
    prefilled = Problem("p", "?", "2", {"prefilled_think": True})
    assert summary(" a </think> So <answer> 2 </answer>", prefilled) == 1.0


def test_mixing_rate_counts_texts_with_foreign_words():
    from r1kit.language import mixing_rate

    texts = ["so 47 plus 8 is 55", "47 plus 8 равно 55", "47+8=55", "сорок семь"]
    assert mixing_rate(texts, ["en", "en", "en", "ru"]) == pytest.approx(1 / 3)
    assert mixing_rate(["47+8=55"], ["en"]) == 0.0


def test_lingua_tells_apart_languages_that_share_a_script():
    pytest.importorskip("lingua")
    from r1kit.language import language_consistency, lingua_labeler, script_labels
    from r1kit.rewards import get_reward

    text = "Donc nous ajoutons les nombres et nous vérifions le résultat. Then we check it again."
    assert language_consistency(text, "en", script_labels) == 1.0  # one script: all "en"
    share = language_consistency(text, "en", lingua_labeler())
    assert 0.2 < share < 0.6  # 5 English words of 15
    labels = lingua_labeler()("Сначала сложим числа, then check the sum once more")
    assert labels[:3] == ["ru", "ru", "ru"]  # other scripts keep their script's label
    p = Problem("p", "Compute the sum of 47 and 8", "55")
    reward = get_reward("language:lingua")
    assert reward(f"<think> {text} </think> 55", p) == pytest.approx(share)
    assert get_reward("language_threshold:lingua")(f"<think> {text} </think>", p) == 0.0
    assert reward("<think> We add them and then we check the sum. </think>", p) == 1.0


def test_unknown_language_detector_is_a_clear_error():
    from r1kit.errors import UserError
    from r1kit.rewards import get_reward

    with pytest.raises(UserError, match="only language detector"):
        get_reward("language:fasttext")


# --- the target is the natural language, never a coding problem's programming language ---------


def test_code_problems_are_scored_in_their_prompts_language_not_python():
    from r1kit.language import problem_language
    from r1kit.tasks import code

    lang = get_reward("language")
    for p in code.sample_problems(5, "train", seed=0):
        assert p.meta["language"] == "python"  # the programming language stays where it was
        assert problem_language(p) == "en"
        solution = code.correct_solution(p)  # `<think> 45-7=38, so f(x)=x*38+7 </think> ...`
        assert lang(solution, p) == 1.0
        assert single_language(Candidate(solution, p)) == (True, "")
    typed = "<think>We need a linear function, so f(x) = 21x + 8.</think> <answer>```python\n" \
            "def f(x):\n    return 21*x + 8\n```</answer>"
    assert lang(typed, code.sample_problems(1, "train", seed=0)[0]) == 1.0
    # a coding problem written in Russian: still the prompt's language
    ru = Problem("c", "Напишите f, где f(0)=7", "", {"tests": ["assert f(0) == 7"],
                                                     "language": "python"})
    assert lang("<think> подставим ноль </think>", ru) == 1.0


def test_an_explicit_target_language_is_used_and_checked():
    lang, threshold = get_reward("language"), get_reward("language_threshold")
    ru = Problem("p", "Compute 47+8", "55", {"target_language": "ru"})
    assert lang("<think> сорок семь плюс восемь </think>", ru) == 1.0
    assert single_language(Candidate("<think> сорок семь </think>", ru)) == (True, "")
    # a target no word can have is an error naming the problem and the key, not a silent 0
    for value, hint in (("fr", "need the lingua detector"), ("English", "en, ru, zh"),
                        (7, "en, ru, zh")):
        p = Problem("q7", "Compute 47+8", "55", {"target_language": value})
        for fn in (lang, threshold, lambda text, p: single_language(Candidate(text, p))):
            with pytest.raises(UserError, match=rf"problem 'q7': meta 'target_language' is "
                                                rf"{value!r}.*{hint}"):
                fn("<think> so </think>", p)


def test_a_user_error_in_a_reward_stops_scoring_instead_of_scoring_zero():
    bad = Problem("q", "Compute 47+8", "55", {"target_language": "English"})
    with pytest.raises(UserError, match="'target_language' is 'English'"):
        score(["<think> so </think> <answer> 55 </answer>"], [bad],
              [RewardSpec("language", 1.0)], [10], 64)


def test_data_files_keep_language_for_code_and_check_target_language(tmp_path):
    import json

    from r1kit.tasks.files import load_jsonl

    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "Write double(n)", "tests": ["assert double(2) == 4"],
             "entry_point": "double", "language": "python"},
            {"prompt": "Сложите 47 и 8", "answer": "55", "target_language": "ru"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code_problem, ru = load_jsonl(path)
    lang = get_reward("language")
    assert lang("<think> double it, so n*2 </think> <answer>```python\n"
                "def double(n): return n*2\n```</answer>", code_problem) == 1.0
    assert lang("<think> сорок семь плюс восемь </think> <answer>55</answer>", ru) == 1.0
    for value in ("English", "th", None):
        if value is None:  # null: not set, the prompt's language
            path.write_text(json.dumps({"prompt": "q", "answer": "1", "target_language": None}))
            assert load_jsonl(path)[0].meta["target_language"] is None
            continue
        path.write_text(json.dumps({"prompt": "q", "answer": "1"}) + "\n" +
                        json.dumps({"prompt": "q", "answer": "1", "target_language": value}))
        with pytest.raises(UserError, match=rf"p.jsonl:2: field 'target_language' is "
                                            rf"'{value}'.*en, ru, zh, ko, ja, fr, de, es, it, pt"):
            load_jsonl(path)


# --- math is not words --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"Проверим: $2 \cdot 2 + 3 = 7$, верно", ["Проверим", "верно"]),
        (r"so $$\frac{a}{b}$$ and \[x^2\] then \(y\) is \sin\alpha", ["so", "and", "then", "is"]),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix} done", ["done"]),
        ("Let θ be the angle: θ = π/4 and 2πr", ["Let", "be", "the", "angle", "and"]),
        ("costs $5 and $10 today", ["costs", "and", "today"]),  # dollars, not math
        ("в итоге я прав", ["в", "итоге", "я", "прав"]),  # one-letter Cyrillic words count
        ("αβ λόγος", ["αβ", "λόγος"]),  # Greek words are words (of "other")
    ],
)
def test_math_and_variables_are_not_words(text, expected):
    assert words(text) == expected


def test_math_does_not_make_reasoning_mixed():
    lang = get_reward("language")
    ru = Problem("p", "Найдите $x$, если $2x+3=7$.", "2")
    ru_cot = (r"<think>Вычтем 3: $2x = 4$, значит $x = 2$. Проверим: $2 \cdot 2 + 3 = 7$, "
              r"верно.</think><answer>2</answer>")
    assert lang(ru_cot, ru) == 1.0 and single_language(Candidate(ru_cot, ru)) == (True, "")
    en = Problem("p", "Find the angle.", "45")
    en_cot = "<think>Let θ be the angle; then θ = π/4, since sin θ = cos θ.</think> 45"
    assert lang(en_cot, en) == 1.0 and single_language(Candidate(en_cot, en)) == (True, "")
    zh = Problem("p", r"设 $\sin\alpha+\cos\alpha=\frac{1}{2}$，求 $\sin 2\alpha$ 的值。", "-3/4")
    assert target_language(zh.prompt) == "zh"
    assert lang("<think>两边平方得到一加二倍正弦余弦等于四分之一，所以结果是负四分之三。</think>", zh) == 1.0
    # a foreign word outside the math still counts
    assert lang(r"<think>Вычтем 3: $2x = 4$, so $x = 2$.</think>", ru) == pytest.approx(1 / 2)


def test_unclosed_math_openers_stay_linear():
    import time

    started = time.perf_counter()
    for opener in ("\\[ ", "\\( ", "$$ ", "$a ", "\\begin{"):
        assert words(opener * 40_000 + "done") == ["done"]
    assert time.perf_counter() - started < 5  # a quadratic scan takes minutes here


def test_escaped_dollars_stay_linear():
    import time

    prices = "The cost is \\$5 and \\$10 per item. " * 6_000  # 210k characters
    backslashes = "$\\\\" * 70_000  # `$\\`: 210k characters
    started = time.perf_counter()
    assert single_language(Candidate(f"<think> {prices} </think>", EN)) == (True, "")
    assert words(prices)[:6] == ["The", "cost", "is", "and", "per", "item"]
    assert words(backslashes) == []
    assert time.perf_counter() - started < 2  # quadratic: 20 s and 237 s at 100k characters


def test_an_escaped_dollar_is_a_literal_dollar():
    assert words(r"it costs \$5, then $x$ is") == ["it", "costs", "then", "is"]
    assert words(r"a \$ sign and more $") == ["sign", "and", "more"]  # opens no math
    assert words(r"$\$ inside$ out") == ["out"]  # nor closes it
    assert words(r"line \\[2pt] next \\ row") == ["line", "pt", "next", "row"]  # `\\`, no `\[`


# --- lingua: short prompts and long texts -------------------------------------------------------


@pytest.fixture(scope="module")
def lingua():
    pytest.importorskip("lingua")
    from r1kit.language import lingua_labeler

    return lingua_labeler()


def test_lingua_keeps_the_script_label_where_it_is_unsure(lingua):
    # lingua alone: "Compute 86+7-4+5" German, "Solve 2x+3=7." and "Is it prime?" Portuguese
    for prompt in ("Compute 86+7-4+5", "Solve 2x+3=7.", "Is it prime?", "Find x.",
                   "so the total is 46"):
        assert target_language(prompt, lingua) == "en", prompt
    for p in sample_problems(20, "train", seed=5):
        assert target_language(p.prompt, lingua) == "en", p.prompt
    reward = get_reward("language:lingua")
    p = sample_problems(1, "train", seed=0)[0]
    assert reward("<think> 47+8=55, 55-9=46, so the total is 46 </think> <answer>46</answer>",
                  p) == 1.0
    # where it is sure, it decides, even in two words
    assert target_language("Résoudre l'équation", lingua) == "fr"
    assert target_language("Berechne die Summe von 4 und 5", lingua) == "de"
    # lingua's languages are targets it can check; others are an error, not a reward of 0
    fr = Problem("p", "Compute 47+8", "55", {"target_language": "fr"})
    assert reward("<think> Donc nous ajoutons les nombres et nous vérifions le résultat. "
                  "</think>", fr) == 1.0
    with pytest.raises(UserError, match="'target_language' is 'th'.*en, ru, zh, ko, ja, fr, de"):
        reward("<think> so </think>", Problem("p", "?", "1", {"target_language": "th"}))


def test_lingua_labels_each_word_by_its_span_in_a_long_text(lingua):
    fr = "Donc nous ajoutons les nombres et nous vérifions le résultat. "
    en = "Then we check it again once more and we are done. "
    text = (fr + en) * 300  # 600 spans, 600 * 19 words
    labels = lingua(text + r"Enfin $x \cdot y$.")
    per_pair = ["fr"] * 10 + ["en"] * 11
    assert labels[: 21 * 300] == per_pair * 300
    assert len(labels) == 21 * 300 + 1  # the math is not words


# --- targets checked when a stage starts ----------------------------------------------------------


def _problem_file(tmp_path, targets, name="p.jsonl"):
    """A JSONL file of arithmetic problems with these target_language values (None: unset)."""
    import json

    path = tmp_path / name
    rows = [{"prompt": f"Compute {i}+1", "answer": str(i + 1), "id": f"q{i}",
             **({"target_language": t} if t else {})} for i, t in enumerate(targets * 10)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_targets_the_configured_labelers_cannot_give_stop_a_stage_before_its_folder(
        tmp_path, monkeypatch):
    from r1kit import runs, trainable
    from r1kit.cli import main as cli
    from r1kit.filters import check_filter_targets
    from r1kit.rewards.language import check_reward_targets
    from r1kit.tasks.files import load_jsonl

    path = _problem_file(tmp_path, [None, "ru", "fr"])
    problems = load_jsonl(path)
    with pytest.raises(UserError, match=r"problem 'q2' \(and 9 more problems\): target_language "
                                        r"'fr', but the 'language' reward labels words only as "
                                        r"en, ru, zh.*use 'language:lingua' instead"):
        check_reward_targets(problems, {"accuracy": 1.0, "language": 0.5})
    with pytest.raises(UserError, match="'language_threshold:lingua' instead"):
        check_reward_targets(problems, ["language_threshold"])
    check_reward_targets(problems, ["accuracy", "format"])  # no language reward: nothing to check
    with pytest.raises(UserError, match="single_language filter.*remove single_language from "
                                        "sample.filters"):
        check_filter_targets(problems, ["correct", "single_language"])
    check_filter_targets(problems, ["correct"])
    check_filter_targets(load_jsonl(_problem_file(tmp_path, [None, "ru", "zh"], "ok.jsonl")),
                         ["single_language"])

    class Lazy(list):  # a generated set (reasoning-gym's) says so rather than be read through
        has_targets = False

        def __iter__(self):
            raise AssertionError("read through")

    check_reward_targets(Lazy(), ["language"])

    # the stages: before any folder or model, not at the first batch holding such a problem
    def no_folder(*args, **kwargs):
        raise AssertionError("a run folder was opened")

    monkeypatch.setattr(runs.RunFolder, "open", no_folder)
    monkeypatch.setattr(trainable, "open_run", no_folder)
    out = tmp_path / "runs"
    common = ["--set", f"run.out_dir={out}", "--set", f"data.source={path}"]
    for args in (["zero", "--set", "rewards.weights={accuracy: 1.0, language: 0.5}"],
                 ["sample"],  # single_language is among the default filters
                 ["pipeline"],  # its 04-dev2 and 07-r1 reward the script `language` by default
                 ["pipeline", "--set", "pipeline.language_form=language:lingua"],  # filters
                 ["distill", "--teacher", str(TINY_BASE), "--students", "tiny-llama"]):
        assert cli(args + common) == 2, args
        assert not out.exists(), args


def test_a_target_the_script_labeler_lacks_leaves_the_sample_statistic_unmeasured():
    from r1kit.stages.sample import language_statistic

    fr = Problem("p", "Calculez 47+8", "55", {"target_language": "fr"})
    assert language_statistic("<think> donc cinquante-cinq </think>", fr) is None
    ru = Problem("p", "Сложите 47 и 8", "55", {"target_language": "ru"})
    assert language_statistic("<think> сорок семь </think>", ru) == 1.0


def test_target_language_is_normalised_on_load(tmp_path):
    import json

    from r1kit.language import checked_problem_language, problem_language
    from r1kit.tasks.files import load_data_file, load_jsonl

    written = ["EN", " ru ", "en-US", "zh-CN", "zh-Hans", "Fr-ca", "", None]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": "Compute 1+1", "answer": "2",
                                          "target_language": t}) for t in written) + "\n")
    problems = load_jsonl(path)
    assert [p.meta["target_language"] for p in problems] == [
        "en", "ru", "en", "zh", "zh", "fr", None, None]
    assert problem_language(problems[6]) == "en"  # "": no target, the prompt's language
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,answer,target_language\nСложите 1 и 1,2,\nCompute 1+1,2, RU-ru\n")
    blank, ru = load_data_file(csv)
    assert (blank.meta["target_language"], ru.meta["target_language"]) == (None, "ru")
    assert checked_problem_language(blank) == "ru"  # a blank cell: the prompt's language
    # made in code, not loaded: the reward and filter read it the same way
    assert get_reward("language")("<think> два </think>", Problem("p", "?", "2",
                                                                  {"target_language": "RU"})) == 1.0
    with pytest.raises(UserError, match="'FR'.*need the lingua detector"):
        checked_problem_language(Problem("p", "?", "2", {"target_language": "FR"}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # English hidden in \text{} inside math counts against a Russian target
        (r"Итак, $x = 2 \text{, so the answer is } 4$ верно",
         ["Итак", "so", "the", "answer", "is", "верно"]),
        (r"\[ y = \mbox{since \quad then} 3 \]", ["since", "then"]),
        # a math environment's body is math; other environments' bodies stay text
        (r"\begin{align} x &= 2 \\ ab &= cd \text{hence} \end{align} done", ["hence", "done"]),
        (r"\begin{align*} sin x \end{align*} ok", ["ok"]),
        (r"\begin{itemize} \item first point \end{itemize}", ["first", "point"]),
        # a postfix price is not a math opener: the prose between two prices stays words
        ("стоит 5$, а потом 10$ итого", ["стоит", "а", "потом", "итого"]),
        ("так $x = 5$, верно", ["так", "верно"]),  # a closer after a digit still closes
        (r"2$\times$3 раза", ["раза"]),
    ],
)
def test_text_in_math_environments_and_postfix_prices(text, expected):
    assert words(text) == expected


def test_text_in_math_counts_against_the_target():
    ru = Problem("p", "Найдите x", "4", {"target_language": "ru"})
    hidden = r"<think> Итак $x = 4 \text{ so the answer is four }$ </think>"
    assert get_reward("language")(hidden, ru) == pytest.approx(1 / 6)
    assert single_language(Candidate(hidden, ru))[0] is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Сложим через `numpy.sum` и проверим", ["Сложим", "через", "и", "проверим"]),
        ("Код:\n```python\nprint(sum(xs))\n```\nготово", ["Код", "готово"]),
        ("```python\nprint('a truncated block runs to the end')", []),  # markdown's rule
        ("см. https://docs.python.org/3/library и www.example.com тоже", ["см", "и", "тоже"]),
        ("a ` lone backtick stays", ["lone", "backtick", "stays"]),
        ("``a`b`` then", ["then"]),  # a run of two closes at the next run of two
    ],
)
def test_code_and_urls_are_not_words(text, expected):
    assert words(text) == expected


def test_code_and_urls_do_not_count_against_a_non_english_target():
    ru = Problem("p", "Сложите числа", "6", {"target_language": "ru"})
    cot = ("<think> Используем `numpy.sum`, см. https://numpy.org/doc/stable/reference:\n"
           "```python\nimport numpy as np\nprint(np.sum([1, 2, 3]))\n```\nполучаем 6 </think>")
    assert get_reward("language")(cot, ru) == 1.0
    assert single_language(Candidate(cot, ru)) == (True, "")


def test_unclosed_backticks_stay_linear():
    import time

    started = time.perf_counter()
    for opener in ("` ", "`` ", "a` b``` "):
        words(opener * 50_000 + "done")
    assert time.perf_counter() - started < 5


def test_the_language_statistic_leaves_out_targets_scripts_cannot_tell():
    from r1kit.language import reasoning_share

    fr = Problem("p", "Compute 1+1", "2", {"target_language": "fr"})
    assert reasoning_share("<think>bonjour le monde</think>", fr) is None  # not 0: not measured
    assert reasoning_share("<think>hello world</think>", Problem("p", "Compute 1+1", "2")) == 1.0
    assert reasoning_share("<think>привет мир</think>", Problem("p", "Compute 1+1", "2")) == 0.0
