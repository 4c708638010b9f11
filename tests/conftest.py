"""Shared fixtures: a tiny base model built in the test session (no hub, no network)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from r1kit.config import BaseConfig

TINY_BASE = BaseConfig(
    hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=700,
    corpus_docs=600, steps=30, batch_size=16, warmup_steps=5,
)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> str:
    """A few-second build of the built-in base model recipe, at toy size."""
    from r1kit.stages.base import main as build

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiny-base") / "model"
    build(TINY_BASE, out=out, log=lambda *_: None)
    return str(out)


@pytest.fixture
def tiny_base_config() -> BaseConfig:
    return dataclasses.replace(TINY_BASE)


@pytest.fixture
def no_bwrap(monkeypatch):
    """Bubblewrap made unavailable (its probe says it is not installed), as on a machine without
    it; the code reward's sandbox state is put back afterwards."""
    from r1kit import sandbox as sb
    from r1kit.rewards import code as code_reward

    monkeypatch.setitem(sb._PROBES, sb.find_python(), "bwrap is not installed")
    monkeypatch.setitem(code_reward._state, "options", None)
    monkeypatch.setitem(code_reward._state, "sandbox", None)
