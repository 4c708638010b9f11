"""Tests for r1kit.grpo: hand-computed values, properties, loop-vs-vectorised, micro-batch invariance.

Shapes: B prompts, G completions per prompt, T completion tokens; per-token tensors are (B*G, T).
"""

import math
import statistics

import pytest
import torch

from r1kit import grpo
from r1kit.grpo import (
    AGGREGATIONS,
    group_advantages,
    kl_k3,
    loss_denominator,
    policy_loss,
)

LN2 = math.log(2.0)


# ---------------------------------------------------------------- hand-computed policy loss
#
# Two sequences x three tokens, the last token of row 1 is padding:
#   mask   = [[1, 1, 1], [1, 1, 0]]
#   ratios = [[1.0, 1.5, 0.5], [0.7, 1.3, 2.0(pad)]]     (old_logprobs = 0, logprobs = log ratio)
#   A      = [+1, -2],  eps_low = 0.2, eps_high = 0.28  ->  clip range [0.8, 1.28]
# Per-token loss -min(r*A, clip(r)*A):
#   row 0 (A=+1): r=1.0 -> -1;  r=1.5 -> -min(1.5, 1.28) = -1.28 (clipped, high side);
#                 r=0.5 -> -min(0.5, 0.8) = -0.5 (unclipped branch is the min)
#   row 1 (A=-2): r=0.7 -> -min(-1.4, -1.6) = 1.6 (clipped, low side);
#                 r=1.3 -> -min(-2.6, -2.56) = 2.6 (unclipped branch is the min)
# Row sums: -2.78 and 4.2, total 1.42 over 5 valid tokens.
#   token_mean          = 1.42 / 5                  = 0.284
#   seq_mean_token_mean = (-2.78/3 + 4.2/2) / 2     = 3.52 / 6
#   constant (max 4)    = (-2.78/4 + 4.2/4) / 2     = 0.1775
# clip_frac = 2/5, ratio_mean = (1 + 1.5 + 0.5 + 0.7 + 1.3) / 5 = 1.0


def _hand_batch():
    ratios = torch.tensor([[1.0, 1.5, 0.5], [0.7, 1.3, 2.0]], dtype=torch.float64)
    logprobs = ratios.log().requires_grad_(True)  # (2, 3)
    old_logprobs = torch.zeros(2, 3, dtype=torch.float64)  # (2, 3)
    advantages = torch.tensor([1.0, -2.0], dtype=torch.float64)  # (2,)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)  # (2, 3)
    return logprobs, old_logprobs, advantages, mask


@pytest.mark.parametrize(
    "aggregation, expected",
    [("token_mean", 0.284), ("seq_mean_token_mean", 3.52 / 6), ("constant", 0.1775)],
)
def test_policy_loss_by_hand_with_asymmetric_clipping(aggregation, expected):
    logprobs, old, adv, mask = _hand_batch()
    loss, metrics = policy_loss(
        logprobs, old, adv, mask, eps_low=0.2, eps_high=0.28, aggregation=aggregation, max_tokens=4
    )
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["pg_loss"] == pytest.approx(expected, abs=1e-12)
    assert metrics["clip_frac"] == pytest.approx(0.4)
    assert metrics["ratio_mean"] == pytest.approx(1.0)
    assert "kl" not in metrics


def test_policy_loss_gradient_by_hand_token_mean():
    # d/d lp of -A*r/5 is -A*r/5 on unclipped tokens (dr/dlp = r), 0 on clipped and padded ones:
    #   row 0: [-1/5, 0, -0.5/5];  row 1: [0, 2*1.3/5, 0]
    logprobs, old, adv, mask = _hand_batch()
    loss, _ = policy_loss(logprobs, old, adv, mask, eps_low=0.2, eps_high=0.28)
    loss.backward()
    expected = torch.tensor([[-0.2, 0.0, -0.1], [0.0, 0.52, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logprobs.grad, expected)


# Same mask; ratio 1 everywhere (old = lp); A = [+1, -1], so the surrogate is -1 per token on row
# 0 and +1 on row 1. ref - lp = d = [[ln2, 0, -ln2], [ln2, ln2, pad]]; k3 = e^d - d - 1 gives
#   k3(ln2) = 2 - ln2 - 1 = 1 - ln2,  k3(0) = 0,  k3(-ln2) = 1/2 + ln2 - 1 = ln2 - 1/2
#   row sums: 1/2 and 2 - 2 ln2; total 5/2 - 2 ln2 over 5 tokens.
# beta = 0.1:
#   token_mean          = (-3 + 2)/5 + 0.1 * (5/2 - 2 ln2)/5
#   seq_mean_token_mean = ((-1 + 0.1 * (1/2)/3) + (1 + 0.1 * (1 - ln2))) / 2 = 0.05 * (7/6 - ln2)
#   constant (max 4)    = ((-3 + 0.1/2)/4 + (2 + 0.1 * (2 - 2 ln2))/4) / 2
@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("token_mean", -0.2 + 0.1 * (2.5 - 2 * LN2) / 5),
        ("seq_mean_token_mean", 0.05 * (7 / 6 - LN2)),
        ("constant", ((-3 + 0.05) / 4 + (2 + 0.1 * (2 - 2 * LN2)) / 4) / 2),
    ],
)
def test_policy_loss_by_hand_with_k3_kl(aggregation, expected):
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]], dtype=torch.float64)
    d = torch.tensor([[LN2, 0.0, -LN2], [LN2, LN2, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, metrics = policy_loss(
        logprobs, logprobs, adv, mask, ref_logprobs=logprobs + d, beta=0.1,
        aggregation=aggregation, max_tokens=4,
    )
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["kl"] == pytest.approx((2.5 - 2 * LN2) / 5, abs=1e-12)
    assert metrics["clip_frac"] == 0.0


def test_kl_k3_by_hand_and_non_negative():
    lp = torch.zeros(3, dtype=torch.float64)
    ref = torch.tensor([LN2, 0.0, -LN2], dtype=torch.float64)
    expected = torch.tensor([1 - LN2, 0.0, LN2 - 0.5], dtype=torch.float64)
    torch.testing.assert_close(kl_k3(lp, ref), expected)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
    assert (kl_k3(a, b) >= 0).all()
    assert (kl_k3(a, a + 1e-7 * b) >= 0).all()
    assert torch.equal(kl_k3(a, a), torch.zeros_like(a))


def test_beta_zero_ignores_ref_in_loss_but_reports_kl():
    logprobs, old, adv, mask = _hand_batch()
    ref = logprobs.detach() + 0.3
    plain, _ = policy_loss(logprobs, old, adv, mask)
    with_ref, metrics = policy_loss(logprobs, old, adv, mask, ref_logprobs=ref, beta=0.0)
    assert with_ref.item() == plain.item()
    assert metrics["kl"] == pytest.approx(math.exp(0.3) - 0.3 - 1)


# ---------------------------------------------------------------- GSPO (sequence-level ratio)
#
# mask = [[1, 1, 1], [1, 1, 0]], A = [+1, -1], eps = 0.2 -> clip range [0.8, 1.2]
# log-ratios row 0 [0.5, 0.1, 0.3] -> mean 0.3 -> s0 = e^0.3 = 1.34986 > 1.2 with A > 0: clipped,
#   every token's loss is -1.2;
# log-ratios row 1 [0.0, 0.2, 5.0(pad)] -> mean 0.1 -> s1 = e^0.1; A < 0: -min(-s1, -s1) = s1.
#   seq_mean_token_mean = (-1.2 + e^0.1) / 2,   token_mean = (3 * -1.2 + 2 * e^0.1) / 5
# Gradient (seq_mean_token_mean): row 0 clipped -> 0; row 1 loss = (1/2) * (1/2) sum_t s1 *
#   exp(lp_t - sg lp_t) -> d/d lp_t = s1 / 4 on its two valid tokens.


def _gspo_batch():
    log_ratio = torch.tensor([[0.5, 0.1, 0.3], [0.0, 0.2, 5.0]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, -9.0]], dtype=torch.float64)
    logprobs = (old + log_ratio).requires_grad_(True)  # (2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # (2, 3)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)  # (2,)
    return logprobs, old, adv, mask


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        ("seq_mean_token_mean", (-1.2 + math.exp(0.1)) / 2),
        ("token_mean", (-3.6 + 2 * math.exp(0.1)) / 5),
    ],
)
def test_gspo_sequence_ratio_by_hand(aggregation, expected):
    logprobs, old, adv, mask = _gspo_batch()
    loss, metrics = policy_loss(logprobs, old, adv, mask, ratio_level="sequence",
                                aggregation=aggregation)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["clip_frac"] == pytest.approx(3 / 5)
    assert metrics["ratio_mean"] == pytest.approx((3 * math.exp(0.3) + 2 * math.exp(0.1)) / 5)


def test_gspo_gradient_by_hand():
    logprobs, old, adv, mask = _gspo_batch()
    loss, _ = policy_loss(logprobs, old, adv, mask, ratio_level="sequence",
                          aggregation="seq_mean_token_mean")
    loss.backward()
    s1 = math.exp(0.1)
    expected = torch.tensor([[0.0, 0.0, 0.0], [s1 / 4, s1 / 4, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logprobs.grad, expected)


def test_gspo_token_form_matches_sequence_objective():
    # GSPO eq. 5 written directly with a differentiable s_i, against the GSPO-token form.
    logprobs, old, adv, mask = _random_batch(seed=3, rows=6, tokens=5, scale=0.3)
    mask[:, 0] = True  # GSPO eq. 5 has no empty sequences
    eps_low, eps_high = 0.1, 0.15
    loss, _ = policy_loss(logprobs, old, adv, mask, ratio_level="sequence",
                          aggregation="seq_mean_token_mean", eps_low=eps_low, eps_high=eps_high)
    (grad,) = torch.autograd.grad(loss, logprobs)
    m = mask.double()
    s = torch.exp(((logprobs - old) * m).sum(1) / m.sum(1))  # (B*G,)
    direct = -torch.minimum(s * adv, s.clamp(1 - eps_low, 1 + eps_high) * adv).mean()
    (direct_grad,) = torch.autograd.grad(direct, logprobs)
    torch.testing.assert_close(loss, direct)
    torch.testing.assert_close(grad, direct_grad)


def test_gspo_equals_token_level_grpo_at_ratio_one():
    # With old == current, every ratio is 1: the GSPO gradient (1/G) sum_i A_i (1/|y_i|)
    # sum_t grad lp_t is the token-level seq_mean_token_mean gradient.
    logprobs, _, adv, mask = _random_batch(seed=4, rows=6, tokens=5)
    old = logprobs.detach()
    grads = {}
    for level in ("token", "sequence"):
        loss, _ = policy_loss(logprobs, old, adv, mask, ratio_level=level,
                              aggregation="seq_mean_token_mean")
        (grads[level],) = torch.autograd.grad(loss, logprobs)
    torch.testing.assert_close(grads["sequence"], grads["token"])


# ---------------------------------------------------------------- advantages


def test_group_advantages_by_hand():
    # Group [1, 0, 0, 1]: mean 1/2, unbiased std sqrt(4 * 1/4 / 3) = sqrt(1/3);
    # advantages +-(1/2) / sqrt(1/3) = +-sqrt(3)/2.  Group [3, 3, 3, 3]: exactly zero.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    a = math.sqrt(3) / 2
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(rewards, 4, eps=0.0), expected)


def test_group_advantages_properties():
    rewards = torch.randn(5 * 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    adv = group_advantages(rewards, group_size=6).view(5, 6)  # (B, G)
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(adv.std(dim=1), torch.ones(5, dtype=torch.float64), rtol=1e-5,
                               atol=0)
    centered = group_advantages(rewards, group_size=6, scale_by_std=False).view(5, 6)
    grouped = rewards.view(5, 6)
    torch.testing.assert_close(centered, grouped - grouped.mean(dim=1, keepdim=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_all_equal_rewards_give_exactly_zero(dtype, scale_by_std):
    # 0.1 * 3 / 3 != 0.1 in floating point; the function must still return exact zeros.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0, 0.7, 0.7, 0.7], dtype=dtype)
    adv = group_advantages(rewards, 3, scale_by_std=scale_by_std)
    assert torch.equal(adv[:3], torch.zeros(3, dtype=dtype))
    assert torch.equal(adv[6:], torch.zeros(3, dtype=dtype))
    assert (adv[3:6] != 0).all()


def test_group_advantages_integer_rewards_and_single_completion():
    adv = group_advantages(torch.tensor([1, 0, 1, 1]), 2, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0]))
    assert torch.equal(group_advantages(torch.tensor([2.0, 5.0]), 1), torch.zeros(2))


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_loop_equivalence(scale_by_std):
    gen = torch.Generator().manual_seed(1)
    rewards = torch.randint(0, 3, (4 * 5,), generator=gen).double()
    rewards[5:10] = 2.0  # one all-equal group
    eps = 1e-6
    expected = []
    for start in range(0, len(rewards), 5):
        group = rewards[start:start + 5].tolist()
        mean, std = statistics.mean(group), statistics.stdev(group)
        for r in group:
            expected.append((r - mean) / (std + eps) if scale_by_std else r - mean)
    adv = group_advantages(rewards, 5, scale_by_std=scale_by_std, eps=eps)
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64))


# ---------------------------------------------------------------- loop vs vectorised loss


def _random_batch(seed, rows=8, tokens=6, scale=0.4):
    """Random (rows, tokens) float64 batch with ragged masks, one empty row, clipping on."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, tokens, generator=gen, dtype=torch.float64) * 3  # (N, T)
    noise = torch.randn(rows, tokens, generator=gen, dtype=torch.float64) * scale
    logprobs = (old + noise).requires_grad_(True)  # (N, T)
    lengths = torch.randint(1, tokens + 1, (rows,), generator=gen)
    lengths[1] = 0  # an all-masked row, e.g. an overlong-filtered completion
    mask = torch.arange(tokens)[None, :] < lengths[:, None]  # (N, T)
    adv = torch.randn(rows, generator=gen, dtype=torch.float64)  # (N,)
    return logprobs, old, adv, mask


def _loop_policy_loss(lp, old, adv, mask, ref, beta, eps_low, eps_high, aggregation, max_tokens):
    """One token at a time, in Python floats, straight from the formulas."""
    row_losses, row_counts = [], []
    for i in range(len(lp)):
        total, count = 0.0, 0
        for t in range(len(lp[i])):
            if not mask[i][t]:
                continue
            r = math.exp(lp[i][t] - old[i][t])
            clipped = min(max(r, 1 - eps_low), 1 + eps_high)
            d = ref[i][t] - lp[i][t]
            total += -min(r * adv[i], clipped * adv[i]) + beta * (math.exp(d) - d - 1)
            count += 1
        row_losses.append(total)
        row_counts.append(count)
    nonempty = [i for i, c in enumerate(row_counts) if c > 0]
    if aggregation == "token_mean":
        return sum(row_losses) / sum(row_counts)
    if aggregation == "seq_mean_token_mean":
        return sum(row_losses[i] / row_counts[i] for i in nonempty) / len(nonempty)
    return sum(row_losses[i] / max_tokens for i in nonempty) / len(nonempty)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_policy_loss_loop_equivalence(aggregation):
    logprobs, old, adv, mask = _random_batch(seed=2)
    ref = old + 0.1 * torch.randn(old.shape, generator=torch.Generator().manual_seed(9),
                                  dtype=torch.float64)
    kwargs = {"beta": 0.05, "eps_low": 0.1, "eps_high": 0.25, "aggregation": aggregation,
              "max_tokens": 8}
    loss, metrics = policy_loss(logprobs, old, adv, mask, ref_logprobs=ref, **kwargs)
    expected = _loop_policy_loss(logprobs.tolist(), old.tolist(), adv.tolist(), mask.tolist(),
                                 ref.tolist(), **kwargs)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert 0.0 < metrics["clip_frac"] < 1.0  # both branches exercised


# ---------------------------------------------------------------- micro-batch invariance


def _tiny_policy(seed=0, vocab=7, hidden=4):
    torch.manual_seed(seed)
    return torch.nn.Linear(hidden, vocab).double()


def _logprobs(model, features, tokens):
    logits = model(features)  # (N, T, V)
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)  # (N, T)


def _invariance_batch(rows=8, tokens=5, vocab=7, hidden=4):
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(rows, tokens, hidden, generator=gen, dtype=torch.float64)  # (N, T, H)
    ids = torch.randint(0, vocab, (rows, tokens), generator=gen)  # (N, T)
    lengths = torch.tensor([5, 0, 2, 4, 1, 5, 3, 2])
    mask = torch.arange(tokens)[None, :] < lengths[:, None]  # (N, T)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 1.0, 0.0, 0.0], dtype=torch.float64)
    adv = group_advantages(rewards, group_size=4)  # (N,)
    with torch.no_grad():
        base = _logprobs(_tiny_policy(), features, ids)
    old = base + 0.3 * torch.randn(rows, tokens, generator=gen, dtype=torch.float64)  # (N, T)
    ref = base + 0.2 * torch.randn(rows, tokens, generator=gen, dtype=torch.float64)  # (N, T)
    return features, ids, mask, adv, old, ref


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batches_sum_to_full_batch(aggregation, ratio_level):
    features, ids, mask, adv, old, ref = _invariance_batch()
    kwargs = {"ref_logprobs": ref, "beta": 0.04, "aggregation": aggregation, "max_tokens": 5,
              "ratio_level": ratio_level, "eps_high": 0.28}

    full_model = _tiny_policy()
    full_loss, _ = policy_loss(_logprobs(full_model, features, ids), old, adv, mask, **kwargs)
    full_loss.backward()

    micro_model = _tiny_policy()
    denominator = loss_denominator(mask, aggregation)
    summed = 0.0
    for start in range(0, 8, 2):
        rows = slice(start, start + 2)
        micro_kwargs = {**kwargs, "ref_logprobs": ref[rows]}
        loss, _ = policy_loss(_logprobs(micro_model, features[rows], ids[rows]), old[rows],
                              adv[rows], mask[rows], loss_denominator=denominator, **micro_kwargs)
        loss.backward()
        summed += loss.item()

    assert summed == pytest.approx(full_loss.item(), rel=1e-12, abs=1e-12)
    for full_p, micro_p in zip(full_model.parameters(), micro_model.parameters()):
        assert full_p.grad.abs().sum() > 0
        torch.testing.assert_close(micro_p.grad, full_p.grad)


def test_micro_batches_without_full_denominator_disagree():
    # The bug class this API exists for: each micro-batch normalised by its own token count.
    features, ids, mask, adv, old, _ = _invariance_batch()
    model = _tiny_policy()
    with torch.no_grad():
        lp = _logprobs(model, features, ids)
    full, _ = policy_loss(lp, old, adv, mask)
    naive = sum(policy_loss(lp[s:s + 2], old[s:s + 2], adv[s:s + 2], mask[s:s + 2])[0].item() / 4
                for s in range(0, 8, 2))
    assert abs(naive - full.item()) > 1e-3


def test_loss_denominator_values():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert loss_denominator(mask, "token_mean") == 3.0
    assert loss_denominator(mask, "seq_mean_token_mean") == 2.0
    assert loss_denominator(mask, "constant") == 2.0
    assert loss_denominator(torch.zeros(2, 3), "token_mean") == 1.0


# ---------------------------------------------------------------- empty rows and errors


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_all_masked_rows_give_no_nan(aggregation, ratio_level):
    logprobs, old, adv, mask = _random_batch(seed=6)
    for m in (mask, torch.zeros_like(mask)):
        loss, metrics = policy_loss(logprobs, old, adv, m, ref_logprobs=old, beta=0.1,
                                    aggregation=aggregation, max_tokens=6, ratio_level=ratio_level)
        (grad,) = torch.autograd.grad(loss, logprobs)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert all(math.isfinite(v) for v in metrics.values())
        assert (grad[~m] == 0).all()
    assert loss.item() == 0.0


def test_errors():
    logprobs, old, adv, mask = _hand_batch()
    with pytest.raises(ValueError, match="aggregation"):
        policy_loss(logprobs, old, adv, mask, aggregation="seq_sum")
    with pytest.raises(ValueError, match="aggregation"):
        loss_denominator(mask, "mean")
    with pytest.raises(ValueError, match="max_tokens"):
        policy_loss(logprobs, old, adv, mask, aggregation="constant")
    with pytest.raises(ValueError, match="ratio_level"):
        policy_loss(logprobs, old, adv, mask, ratio_level="group")
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logprobs, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logprobs, old, adv[:1], mask)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(10), group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), group_size=0)
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([1.0, float("nan"), 0.0, 1.0]), group_size=2)
    assert group_advantages([1.0, 0.0], group_size=2).tolist() == pytest.approx([0.7071, -0.7071],
                                                                                abs=1e-4)
    for bad in ({"beta": -1.0}, {"eps_low": -0.5}, {"eps_high": -0.1}, {"eps_low": 1.5}):
        with pytest.raises(ValueError, match="need beta >= 0, 0 <= eps_low <= 1"):
            policy_loss(logprobs, old, adv, mask, **bad)
    with pytest.raises(ValueError, match=r"a \(B\*G, T\) float tensor"):  # (T,) would broadcast
        policy_loss(torch.zeros(5), torch.zeros(5), torch.ones(5), torch.ones(5))
    with pytest.raises(ValueError, match="float tensor"):
        policy_loss(logprobs.long(), old.long(), adv, mask)
    with pytest.raises(ValueError, match="0 and 1 only"):
        policy_loss(logprobs, old, adv, mask.float() * 2)


def test_old_and_reference_logprobs_are_constants_even_with_gradients():
    """mu = 1 written the obvious way, the policy's own log-probs as pi_old: the ratio is 1 but
    its gradient is the policy gradient, not 0 (TRL passes them detached; a caller may not)."""
    lp = (-torch.rand(4, 5)).requires_grad_()
    adv, mask = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, 5)
    ref = lp * 0.9  # a reference computed in the graph too
    loss, _ = policy_loss(lp, lp, adv, mask, ref_logprobs=ref, beta=0.1)
    (grad,) = torch.autograd.grad(loss, lp)
    plain = lp.detach().clone().requires_grad_()
    expected, _ = policy_loss(plain, lp.detach(), adv, mask, ref_logprobs=ref.detach(), beta=0.1)
    (want,) = torch.autograd.grad(expected, plain)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, want)


def test_reference_logprobs_of_another_shape_are_refused():
    lp = -torch.rand(4, 5)
    for shape in ((5,), (1, 5), (4, 1)):  # each would broadcast silently
        with pytest.raises(ValueError, match="ref_logprobs"):
            policy_loss(lp, lp, torch.ones(4), torch.ones(4, 5), ref_logprobs=-torch.rand(shape),
                        beta=0.1)


# ----------------------------------------------------------------------------- rollout correction


def test_rollout_weights_by_hand_in_every_mode():
    old = torch.tensor([[-1.0, -2.0, -1.0], [-1.0, -1.0, 0.0]])
    sampler = torch.tensor([[-2.0, -1.0, -1.0], [-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    e = math.e
    tok = torch.tensor([[e, 1 / e, 1.0], [e**0.5, 1.0, 1.0]])  # padding: 1
    got = grpo.rollout_weights(old, sampler, mask, "token_truncate", c_max=2.0, c_min=0.5)
    torch.testing.assert_close(got, tok.clamp(0.5, 2.0).masked_fill(mask == 0, 1.0))
    got = grpo.rollout_weights(old, sampler, mask, "token_mask", c_max=2.0, c_min=0.5)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.0, 1.0], [e**0.5, 1.0, 1.0]]))
    # sequence: the row's ratio is the product over its valid tokens (e * 1/e * 1, and e^0.5)
    got = grpo.rollout_weights(old, sampler, mask, "sequence_truncate", c_max=1.5)
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0, 1.0], [1.5, 1.5, 1.0]]))
    got = grpo.rollout_weights(old, sampler, mask, "sequence_mask", c_max=1.5)
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))


def test_rollout_weights_leave_unknown_tokens_alone_and_survive_overflow():
    old = torch.tensor([[0.0, 0.0, -1.0]])
    sampler = torch.tensor([[float("nan"), -1000.0, -1.0]])  # exp(1000) overflows to inf
    mask = torch.ones(1, 3)
    got = grpo.rollout_weights(old, sampler, mask, "token_truncate", c_max=3.0)
    torch.testing.assert_close(got, torch.tensor([[1.0, 3.0, 1.0]]))
    got = grpo.rollout_weights(old, sampler, mask, "sequence_mask", c_max=3.0)
    torch.testing.assert_close(got, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="c_min < c_max"):
        grpo.rollout_weights(old, old, mask, "token_mask", c_max=1.0, c_min=1.0)
    with pytest.raises(ValueError, match="unknown rollout correction 'off'"):
        grpo.rollout_weights(old, old, mask, "off", c_max=2.0)
    with pytest.raises(ValueError, match="one \\(B\\*G, T\\) shape"):
        grpo.rollout_weights(old, old[:, :2], mask, "token_mask", c_max=2.0)


def test_policy_loss_weighs_the_surrogate_not_the_kl():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv, mask, ref = torch.tensor([1.0]), torch.ones(1, 2), torch.tensor([[-1.5, -1.5]])
    kw = {"ref_logprobs": ref, "beta": 0.1}
    plain, _ = grpo.policy_loss(lp, lp.detach(), adv, mask, **kw)
    ones, _ = grpo.policy_loss(lp, lp.detach(), adv, mask, is_weights=torch.ones(1, 2), **kw)
    torch.testing.assert_close(ones, plain)
    w = torch.tensor([[0.0, 2.0]])
    loss, m = grpo.policy_loss(lp, lp.detach(), adv, mask, is_weights=w, **kw)
    # surrogate at ratio 1: -A per token, weighted (0 and 2), token mean; the KL term unchanged
    kl = float(grpo.kl_k3(lp.detach(), ref).mean())
    assert m["pg_loss"] == pytest.approx(-1.0)
    assert loss.item() == pytest.approx(-1.0 + 0.1 * kl)
    (g,) = torch.autograd.grad(loss - 0.1 * grpo.kl_k3(lp, ref).mean(), lp)
    torch.testing.assert_close(g, torch.tensor([[0.0, -1.0]]))  # the dropped token: no gradient
    with pytest.raises(ValueError, match="is_weights"):
        grpo.policy_loss(lp, lp.detach(), adv, mask, is_weights=torch.ones(2))
