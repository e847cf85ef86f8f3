"""Sampler tests: real math on crafted logits (no model needed)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lite_srt.engine.sampler import (
    SamplerRow,
    SamplingBatch,
    apply_penalties,
    exponential_noise,
    plain_greedy_from,
    process_logits,
    sample,
)
from lite_srt.sampling_params import SamplingParams

CPU = torch.device("cpu")
EOS = 2


def row(
    seed: int = 0,
    step: int = 0,
    prompt: tuple[int, ...] = (),
    output: tuple[int, ...] = (),
    eos: frozenset[int] = frozenset({EOS}),
    **params,
) -> SamplerRow:
    p = SamplingParams(**params)
    p.validate()
    return SamplerRow(
        params=p, seed=seed, step=step, prompt_ids=list(prompt), output_ids=list(output), eos_ids=eos
    )


def run(logits: torch.Tensor, rows: list[SamplerRow]):
    return sample(logits, SamplingBatch.build(rows, logits.shape[1], logits.device))


def draws(logits_row: torch.Tensor, n: int, seed: int = 7, **params) -> torch.Tensor:
    """n seeded draws of one request's distribution: one batch of n rows, one per step."""
    logits = logits_row.unsqueeze(0).expand(n, -1).contiguous()
    return run(logits, [row(seed=seed, step=s, **params) for s in range(n)]).next_token_ids


def chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * tokens.numel()
    support = expected > 0
    assert counts[~support].sum() == 0, "a zero-probability token was drawn"
    return float(((counts[support] - expected[support]) ** 2 / expected[support]).sum())


# 99.9% quantiles of the chi-square distribution, by degrees of freedom.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 7: 24.32, 15: 37.70}


def crafted_logits() -> tuple[torch.Tensor, list[int]]:
    """Logits whose softmax is a known distribution over scattered token ids; returns them best first."""
    probs = [0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02]
    ids = [11, 3, 29, 0, 17, 8, 24]
    logits = torch.full((32,), -1e4)
    logits[ids] = torch.log(torch.tensor(probs))
    return logits, ids


# --- greedy -------------------------------------------------------------------------------------------------


def test_top_k_one_and_temperature_zero_both_take_the_argmax():
    torch.manual_seed(0)
    logits = torch.randn(6, 300)
    expected = logits.argmax(dim=-1)
    top_k_one = run(logits, [row(seed=s, top_k=1, temperature=1.5) for s in range(6)]).next_token_ids
    temp_zero = run(logits, [row(seed=s, temperature=0.0) for s in range(6)]).next_token_ids
    assert torch.equal(top_k_one, expected)
    assert torch.equal(temp_zero, expected)
    assert top_k_one.dtype == torch.int64


def test_greedy_rows_take_the_argmax_inside_a_mixed_batch_and_from_bf16_logits():
    torch.manual_seed(1)
    logits = torch.randn(5, 400).to(torch.bfloat16)
    rows = [
        row(temperature=0.0),
        row(temperature=1.0, seed=3),
        row(top_k=1),
        row(top_p=0.5),
        row(temperature=0),
    ]
    out = run(logits, rows).next_token_ids
    expected = logits.float().argmax(dim=-1)
    for i in (0, 2, 4):
        assert out[i] == expected[i]


def test_all_greedy_fast_path_returns_no_logprobs_and_leaves_logits_untouched():
    torch.manual_seed(2)
    logits = torch.randn(3, 100)
    before = logits.clone()
    out = run(logits, [row(temperature=0.0)] * 3)
    assert torch.equal(out.next_token_ids, logits.argmax(dim=-1))
    assert out.logprobs is None and out.top_logprob_ids is None and out.top_logprob_vals is None
    assert torch.equal(logits, before)


# --- seeded randomness --------------------------------------------------------------------------------------

TARGETS = {
    "plain": dict(temperature=0.9),
    "top_k": dict(temperature=1.1, top_k=40),
    "top_p_min_p": dict(temperature=0.8, top_p=0.9, min_p=0.01),
}
COMPANIONS = [
    dict(temperature=0.0),
    dict(temperature=1.3, top_k=5),
    dict(temperature=0.7, top_p=0.5),
    dict(temperature=1.0, min_p=0.2, repetition_penalty=1.5, frequency_penalty=0.4),
    dict(temperature=1.0, min_new_tokens=50, max_new_tokens=100, logprobs=True, top_logprobs=4),
]


@pytest.mark.parametrize("target", list(TARGETS))
def test_seeded_token_does_not_depend_on_the_other_rows_of_the_batch(target):
    vocab = 512
    gen = torch.Generator().manual_seed(3)
    companions = [
        row(seed=100 + i, step=i, prompt=(1, 5, 9), output=(5, 7), **c) for i, c in enumerate(COMPANIONS)
    ]
    for step in range(15):
        mine = row(seed=1234, step=step, prompt=(4, 4, 8), output=(9,) * step, **TARGETS[target])
        target_logits = torch.randn(vocab, generator=gen) * 3
        other_logits = torch.randn(len(companions), vocab, generator=gen) * 3
        alone = run(target_logits.unsqueeze(0), [mine]).next_token_ids[0]
        for before in (0, 1, 3, 5):
            rows = companions[:before] + [mine] + companions[before:]
            logits = torch.cat([other_logits[:before], target_logits.unsqueeze(0), other_logits[before:]])
            assert run(logits, rows).next_token_ids[before] == alone, (step, before)


def test_different_seeds_and_different_steps_give_different_draws():
    logits = torch.zeros(1, 1000)  # uniform: any repetition would be the noise's fault
    by_seed = {int(run(logits, [row(seed=s, step=0)]).next_token_ids[0]) for s in range(60)}
    by_step = {int(run(logits, [row(seed=5, step=t)]).next_token_ids[0]) for t in range(60)}
    # 60 uniform draws over 1000 tokens have ~1.7 collisions on average; 50 distinct values is far below.
    assert len(by_seed) >= 50
    assert len(by_step) >= 50
    same = {int(run(logits, [row(seed=5, step=9)]).next_token_ids[0]) for _ in range(5)}
    assert len(same) == 1


def test_huge_and_negative_seeds_are_accepted_and_distinct():
    logits = torch.zeros(3, 1000)
    rows = [row(seed=-1), row(seed=2**64 - 1), row(seed=2**70 + 12345)]
    tokens = run(logits, rows).next_token_ids
    assert tokens.shape == (3,)
    # -1 and 2**64 - 1 are the same seed modulo 2^64, by design.
    assert tokens[0] == tokens[1]


@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.0])
def test_seeded_draws_follow_softmax_of_logits_over_temperature(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 0.3, 1.5])
    n = 20_000
    for seed in (1, 99):
        tokens = draws(logits, n, seed=seed, temperature=temperature)
        stat = chi_square(tokens, torch.softmax(logits / temperature, dim=-1))
        assert stat < CHI2_999[7], (seed, stat)


def test_noise_is_unit_exponential_and_finite():
    keys = torch.tensor([[0], [2**32 - 1], [123456789]])
    e = exponential_noise(keys, torch.arange(200_000).expand(3, -1))
    assert e.dtype == torch.float32
    assert bool((e > 0).all()) and bool(torch.isfinite(e).all())
    for r in range(3):
        assert abs(float(e[r].mean()) - 1.0) < 0.01
        assert abs(float(e[r].var()) - 1.0) < 0.03
    # Different rows' streams are not shifted copies of each other.
    assert float(torch.corrcoef(e[:2])[0, 1]) < 0.01


# --- filters ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, kept",
    [
        (dict(top_k=3), 3),
        (dict(top_p=0.7), 3),  # mass before the 3rd token is 0.65 < 0.7, before the 4th 0.8
        (dict(top_p=0.5), 2),
        (dict(min_p=0.3), 3),  # threshold 0.12
        (dict(min_p=0.2), 4),  # threshold 0.08
        (dict(top_k=3, top_p=0.7), 2),  # top-p acts on the top-3 renormalized: 0.5, 0.3125, 0.1875
        (dict(top_k=5, min_p=0.3), 3),
        (dict(top_k=2, top_p=0.99, min_p=0.01), 2),
    ],
)
def test_filters_keep_exactly_the_allowed_tokens_with_renormalized_probabilities(params, kept):
    logits, best_first = crafted_logits()
    tokens = draws(logits, 5000, **params)
    probs = torch.zeros(logits.numel())
    allowed = best_first[:kept]
    probs[allowed] = torch.softmax(logits, dim=-1)[allowed]
    probs /= probs.sum()
    assert set(tokens.tolist()) == set(allowed)
    assert chi_square(tokens, probs) < CHI2_999[max(kept - 1, 1)]


def test_filters_apply_to_the_temperature_scaled_distribution():
    logits, best_first = crafted_logits()
    # At temperature 2 the probabilities flatten: the top 3 hold less than 0.7 of the mass, so top_p=0.7
    # needs a 4th token that it would not need at temperature 1.
    scaled = torch.softmax(logits / 2, dim=-1)
    assert float(scaled[best_first[:3]].sum()) < 0.7 < float(scaled[best_first[:4]].sum())
    tokens = draws(logits, 4000, temperature=2.0, top_p=0.7)
    assert set(tokens.tolist()) == set(best_first[:4])


def test_rows_with_different_filters_in_one_batch_each_keep_their_own_set():
    logits, best_first = crafted_logits()
    # The unfiltered row forces a full-vocabulary sort, so top_k rows take that path here, not top-k selection.
    configs = [
        dict(top_k=2),
        dict(),
        dict(top_p=0.7),
        dict(min_p=0.2),
        dict(temperature=0.0),
        dict(top_k=3, top_p=0.7),
    ]
    n = 600
    rows = [row(seed=3, step=s, **c) for s in range(n) for c in configs]
    tokens = run(logits.expand(len(rows), -1).contiguous(), rows).next_token_ids.view(n, len(configs))
    assert set(tokens[:, 0].tolist()) == set(best_first[:2])
    assert set(tokens[:, 1].tolist()) == set(best_first)
    assert set(tokens[:, 2].tolist()) == set(best_first[:3])
    assert set(tokens[:, 3].tolist()) == set(best_first[:4])
    assert set(tokens[:, 4].tolist()) == {best_first[0]}
    assert set(tokens[:, 5].tolist()) == set(best_first[:2])


# --- penalties ----------------------------------------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 2.0, -1.0, 0.5, 3.0]])
    # token 0 seen in the prompt, token 1 in the output; 2 and 3 unseen; 5 seen twice.
    r = row(prompt=(0, 5), output=(1, 5), repetition_penalty=2.0)
    batch = SamplingBatch.build([r], 6, CPU)
    got = apply_penalties(logits, batch)
    assert torch.allclose(got, torch.tensor([[1.0, -2.0, 2.0, -1.0, 0.5, 1.5]]))
    # The probabilities after sampling-time processing reflect it: unseen token 2 now beats seen 0 and 5.
    probs = torch.softmax(process_logits(logits, batch), dim=-1)[0]
    assert probs[2] > probs[5] > probs[0]
    assert probs[3] > probs[1]
    assert (
        run(
            logits, [row(prompt=(0, 5), output=(1, 5), repetition_penalty=2.0, temperature=0)]
        ).next_token_ids[0]
        == 2
    )


def test_frequency_and_presence_penalties_follow_the_openai_formula_on_output_tokens_only():
    torch.manual_seed(4)
    logits = torch.randn(3, 20)
    before = logits.clone()
    rows = [
        row(prompt=(1, 1, 2), output=(5, 5, 5, 7), frequency_penalty=0.5, presence_penalty=0.3),
        row(output=(5, 5), temperature=0.0),  # no penalties: untouched
        row(
            prompt=(9,),
            output=(9, 3, 3),
            frequency_penalty=-0.4,
            presence_penalty=1.0,
            repetition_penalty=1.0,
        ),
    ]
    got = apply_penalties(logits, SamplingBatch.build(rows, 20, CPU))
    expected = before.clone()
    expected[0, 5] -= 0.5 * 3 + 0.3
    expected[0, 7] -= 0.5 * 1 + 0.3
    expected[2, 9] -= -0.4 * 1 + 1.0
    expected[2, 3] -= -0.4 * 2 + 1.0
    assert torch.allclose(got, expected)
    assert torch.equal(logits, before)  # the caller's logits are not modified


def test_frequency_penalty_lowers_the_sampled_frequency_of_repeated_tokens():
    logits = torch.zeros(4)
    n = 8000
    penalized = draws(logits, n, output=(0, 0, 1), frequency_penalty=1.0)
    probs = torch.softmax(torch.tensor([-2.0, -1.0, 0.0, 0.0]), dim=-1)
    assert chi_square(penalized, probs) < CHI2_999[3]


def test_repetition_and_frequency_penalties_combine_in_order():
    logits = torch.tensor([[4.0, -2.0, 1.0]])
    r = row(prompt=(0,), output=(1, 1), repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    got = apply_penalties(logits, SamplingBatch.build([r], 3, CPU))
    # token 0: 4 / 2 (prompt only, no output count); token 1: -2 * 2 - 0.5 * 2 - 0.25.
    assert torch.allclose(got, torch.tensor([[2.0, -5.25, 1.0]]))


def test_penalty_ids_outside_the_vocabulary_are_ignored():
    logits = torch.zeros(1, 4)
    r = row(prompt=(3, 10), output=(2, 99), repetition_penalty=2.0, frequency_penalty=1.0)
    got = apply_penalties(logits, SamplingBatch.build([r], 4, CPU))
    assert torch.allclose(got, torch.tensor([[0.0, 0.0, -1.0, 0.0]]))


# --- min_new_tokens -----------------------------------------------------------------------------------------


def test_min_new_tokens_masks_eos_and_stop_ids_until_reached():
    logits = torch.tensor([[0.0, 1.0, 9.0, 8.0, 7.0, 2.0]])  # EOS=2 best, then stop id 3, then 4
    common = dict(temperature=0.0, min_new_tokens=3, stop_token_ids=[3])
    assert run(logits, [row(output=(1, 1), **common)]).next_token_ids[0] == 4
    assert run(logits, [row(output=(1, 1, 1), **common)]).next_token_ids[0] == EOS
    # With overlap scheduling the previous token may still be in flight: `step` counts it.
    assert run(logits, [row(output=(1, 1), step=3, **common)]).next_token_ids[0] == EOS
    assert run(logits, [row(output=(1,), step=2, **common)]).next_token_ids[0] == 4
    # ignore_eos lifts the mask for EOS only; stop ids stay masked.
    assert run(logits, [row(output=(1,), ignore_eos=True, **common)]).next_token_ids[0] == EOS
    logits_stop_first = torch.tensor([[0.0, 1.0, 2.0, 9.0, 7.0, 2.0]])
    assert run(logits_stop_first, [row(output=(1,), ignore_eos=True, **common)]).next_token_ids[0] == 4


def test_min_new_tokens_never_samples_any_eos_id_and_leaves_other_rows_alone():
    logits = torch.tensor([5.0, 0.0, 5.0, 0.0, 5.0, 1.0])
    n = 500
    eos = frozenset({0, 2})
    # Different seeds give independent draws of the first token (step 0), which is the one min tokens masks.
    rows = [row(seed=s, eos=eos, min_new_tokens=1, stop_token_ids=[4, 1000]) for s in range(n)]
    rows += [row(seed=s, eos=eos) for s in range(n)]
    tokens = run(logits.expand(2 * n, -1).contiguous(), rows).next_token_ids
    assert set(tokens[:n].tolist()) <= {1, 3, 5}
    assert {0, 2, 4} <= set(tokens[n:].tolist())


# --- logprobs -----------------------------------------------------------------------------------------------


def test_logprobs_are_log_softmax_of_raw_logits_and_top_logprobs_are_the_true_top_k():
    torch.manual_seed(5)
    logits = torch.randn(4, 300) * 2
    rows = [
        row(
            seed=1,
            temperature=0.5,
            top_k=10,
            logprobs=True,
            top_logprobs=5,
            repetition_penalty=1.7,
            output=(3,),
        ),
        row(temperature=0.0, logprobs=True),
        row(seed=2, top_p=0.3, top_logprobs=2),
        row(seed=3),  # asked nothing: still gets values (the batch computes them), ignored by the scheduler
    ]
    out = run(logits, rows)
    raw = torch.log_softmax(logits, dim=-1)
    assert torch.allclose(out.logprobs, raw.gather(1, out.next_token_ids.unsqueeze(1)).squeeze(1))
    assert out.top_logprob_ids.shape == (4, 5) and out.top_logprob_ids.dtype == torch.int64
    assert out.top_logprob_vals.dtype == torch.float32
    order = raw.argsort(dim=-1, descending=True)[:, :5]
    assert torch.equal(out.top_logprob_ids, order)
    assert torch.allclose(out.top_logprob_vals, raw.gather(1, order))
    assert bool((out.top_logprob_vals[:, :-1] >= out.top_logprob_vals[:, 1:]).all())


def test_logprobs_without_top_logprobs_and_from_bf16_logits():
    torch.manual_seed(6)
    logits = torch.randn(2, 64).to(torch.bfloat16)
    out = run(logits, [row(temperature=0.0, logprobs=True), row(seed=4, logprobs=True)])
    assert out.top_logprob_ids is None and out.top_logprob_vals is None
    raw = torch.log_softmax(logits.float(), dim=-1)
    assert out.logprobs.dtype == torch.float32
    assert torch.allclose(out.logprobs, raw.gather(1, out.next_token_ids.unsqueeze(1)).squeeze(1))
    assert math.isclose(float(out.logprobs[0]), float(raw[0].max()), rel_tol=1e-6)


# --- API misuse ---------------------------------------------------------------------------------------------


def test_logits_that_do_not_match_the_batch_are_rejected():
    batch = SamplingBatch.build([row(), row()], 10, CPU)
    with pytest.raises(ValueError, match="does not match"):
        sample(torch.zeros(3, 10), batch)
    with pytest.raises(ValueError, match="vocab 10"):
        sample(torch.zeros(2, 11), batch)


@settings(max_examples=200, deadline=None)
@given(
    temperature=st.sampled_from([0.0, 0.5, 1.0]),
    top_k=st.sampled_from([-1, 1, 5]),
    repetition_penalty=st.sampled_from([1.0, 1.2]),
    min_new_tokens=st.integers(0, 3),
    stop_token_ids=st.sampled_from([[], [3]]),
    ignore_eos=st.booleans(),
    logprobs=st.booleans(),
    n_out=st.integers(0, 4),
)
def test_plain_greedy_from_agrees_with_full_batch_build(n_out: int, **params) -> None:
    """Where the scheduler's fast path applies, the full build would also have nothing per row, and where it
    does not, the full build has something (or the request is not greedy)."""
    r = row(output=tuple(range(10, 10 + n_out)), **params)
    banned = frozenset(r.params.stop_token_ids) | (frozenset() if r.params.ignore_eos else r.eos_ids)
    full = SamplingBatch.build([r], 10, CPU)
    plain = n_out >= plain_greedy_from(r.params, banned)
    nothing_per_row = full.all_greedy and not full.adjusts_logits and not full.return_logprobs
    assert plain == nothing_per_row
    if plain:
        fast = SamplingBatch.plain_greedy(1, 10)
        logits = torch.randn(1, 10)
        assert torch.equal(sample(logits, fast).next_token_ids, sample(logits, full).next_token_ids)


def test_plain_greedy_batch_rejects_empty_batch() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        SamplingBatch.plain_greedy(0, 10)
