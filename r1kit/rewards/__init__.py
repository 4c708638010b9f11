"""Rule-based rewards, registered by name (R1-SPEC.md §2.2).

The contract: a reward is a pure, deterministic function `(completion, problem) -> float | None`.
`completion` is the generated text only (not the prompt); `problem` is the `Problem` it answers.
`None` means "cannot be scored" (e.g. the reference answer does not parse): it is skipped in means,
and counts as 0 in the weighted total. A reward never runs or `eval`s model output and never prints.

Length-aware rewards set the attribute `fn.needs_length = True`; they are then called as
`fn(completion, problem, num_tokens=int, max_tokens=int)` (see `length.overlong`). A reward with a
`score_batch(completions, problems)` method is called once per batch instead (a neural reward
model, `reward_model:PATH`, see `preference`).

Rewards are combined with weights by `scoring.score`, which also bounds each call in time and
counts failures. R1-Zero sums accuracy and format with equal weight [R1-SPEC.md §2.2].

>>> {"accuracy", "format", "think_format", "overlong", "language"} <= set(available_rewards())
True
>>> from r1kit.tasks.base import Problem
>>> get_reward("accuracy")("<think>6*7</think> <answer>42</answer>", Problem("p", "6*7?", "42"))
1.0
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from r1kit.errors import UserError

RewardFn = Callable[..., "float | None"]

_REGISTRY: dict[str, RewardFn] = {}
_BUILT: dict[str, RewardFn] = {}  # parametrised rewards (`reward_model:PATH`), built on first use


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` available as `get_reward(name)`. Names are unique, non-empty strings
    without `:` (which marks a parametrised reward, `reward_model:PATH`), `=` or `/`, and not
    `total` or `*_failures`, the names of the metrics beside each reward's (`reward/total`,
    `reward/NAME_failures`)."""
    if not isinstance(name, str) or not name.strip() or any(c in name for c in ":={}[], /"):
        raise ValueError(f"reward name {name!r}: a non-empty string without spaces or any of "
                         ":={}[],/")
    if name == "total" or name.endswith("_failures"):
        raise ValueError(f"reward name {name!r} is taken by the metrics (reward/total, "
                         "reward/NAME_failures); choose another")

    def decorator(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise TypeError(f"reward {name!r}: {fn!r} is not a function")
        old = _REGISTRY.get(name)
        redefined = (  # the same definition run again (a notebook cell, a module reloaded)
            old is not None and "<" not in fn.__qualname__  # not a lambda or a closure
            and (old.__module__, old.__qualname__) == (fn.__module__, fn.__qualname__))
        if old is not None and old is not fn and not redefined:
            raise ValueError(f"a reward named {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def get_reward(name: str) -> RewardFn:
    """The reward registered as `name`, or built once from a parametrised name (`reward_model:PATH`,
    `language:lingua`); a `UserError` listing the known names otherwise."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    factory = _FACTORIES.get(name.partition(":")[0]) if ":" in name else None
    if factory is not None:
        if name not in _BUILT:
            _BUILT[name] = factory(name)
        return _BUILT[name]
    known = ", ".join(sorted(_REGISTRY) + ["reward_model:PATH", "language:lingua",
                                            "language_threshold:lingua"])
    raise UserError(f"unknown reward {name!r}; known rewards: {known}")


def import_reward_modules(modules: list[str]) -> None:
    """Import the user's reward modules (`rewards.modules`), so that their `@register` calls run;
    the current directory is searched first, as `python -m` would."""
    for name in modules:
        if not str(name).strip():
            raise UserError("rewards.modules: an empty module name")
        if str(Path.cwd()) not in sys.path and "" not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            importlib.import_module(str(name))
        except ImportError as e:
            raise UserError(f"rewards.modules: cannot import {name!r} ({e})") from None
        except Exception as e:  # noqa: BLE001 -- the user's module failed while importing
            raise UserError(f"rewards.modules: importing {name!r} failed: "
                            f"{type(e).__name__}: {e}") from None


def available_rewards() -> list[str]:
    """The registered reward names, sorted."""
    return sorted(_REGISTRY)


# Importing the reward modules registers them; they import `register` from above.
from r1kit.rewards import accuracy, code, format, language, length, preference  # noqa: F401

_FACTORIES = {  # parametrised reward names: "PREFIX:ARGUMENT" -> factory(name)
    "reward_model": preference.make_preference_reward,
    "language": language.make_language_reward,
    "language_threshold": language.make_language_reward,
}
