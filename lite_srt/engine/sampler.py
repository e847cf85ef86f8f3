"""The sampler: turns one forward step's final-position logits into the next token of every batch row.

Owns the per-step sampling math: penalties, min_new_tokens masking, temperature, top-k / top-p / min-p
filtering, seeded sampling, greedy argmax and logprobs. It keeps no state between steps.

Threads: `SamplingBatch.build` runs on the event-loop thread (it reads request state and uploads small
tensors); `sample` runs on the GPU thread and touches only the tensors of the batch it is handed.

Design points:
- Rows are independent. A row's token depends only on its own (params, seed, step, prompt/output ids,
  logits), never on which other rows share the batch, so retraction, batch reshuffles and `n > 1` are
  reproducible.
- Seeded randomness without a torch.Generator per row and without host syncs: the exponential race.
  For probabilities p and i.i.d. E_i ~ Exp(1), argmax_i(p_i / E_i) is distributed as Categorical(p)
  (the Gumbel-max trick in disguise). E_i is derived from a counter-based integer hash of
  (seed, step, token index) computed with torch integer ops on the device, so the same inputs always
  give the same token.
- `sample` is vectorized; Python loops over rows happen only in `build`, and every decision that would
  need a data-dependent branch (which filters to run, whether penalties apply) is made there on the host.
- Logprobs describe the RAW model distribution: log_softmax(logits) before penalties, temperature and
  filters. That is OpenAI's meaning of a token's logprob and what a transformers forward pass gives.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lite_srt.engine.forward_batch import list_to_device
from lite_srt.sampling_params import SamplingParams

# Temperatures below this are treated as greedy: dividing logits by them overflows float32 and the result
# would be argmax anyway (up to exact ties).
_MIN_TEMPERATURE = 1e-5

_NEVER = 1 << 62
_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9  # odd, so token_index -> token_index * _GOLDEN32 (mod 2^32) is a bijection


@dataclass
class SamplerRow:
    """One batch row, built by the scheduler for every step."""

    params: SamplingParams  # already validated
    seed: int  # seed of this sample stream: the scheduler passes request_seed + i for sample i of n
    step: int  # index of the output token being sampled (0 for the first)
    prompt_ids: Sequence[int]
    output_ids: Sequence[int]  # tokens generated so far
    eos_ids: frozenset[int]  # the model's EOS ids (masked while min_new_tokens is not reached)


@dataclass
class SampleOutput:
    next_token_ids: torch.Tensor  # [B] int64 on the logits' device
    logprobs: torch.Tensor | None  # [B] float32 raw-model log-prob of the chosen token; None if no row asked
    top_logprob_ids: torch.Tensor | None  # [B, K] int64, best first; K = max top_logprobs in the batch
    top_logprob_vals: torch.Tensor | None  # [B, K] float32


@dataclass
class _Penalties:
    """Penalty inputs of the rows that use any penalty (P of them), as dense [P, V] tensors."""

    rows: torch.Tensor  # [P] int64 batch row of each penalized row
    repetition: torch.Tensor  # [P, 1] float32 (1.0 = off)
    frequency: torch.Tensor  # [P, 1] float32
    presence: torch.Tensor  # [P, 1] float32
    seen: torch.Tensor | None  # [P, V] bool: token is in prompt or output; None if no row uses repetition
    output_counts: torch.Tensor | None  # [P, V] float32 occurrences in output; None if no freq/presence


@dataclass
class _StochasticRows:
    """Parameters of the rows that sample (S of them); greedy rows are left out entirely."""

    rows: torch.Tensor  # [S] int64 batch row of each sampling row
    temperatures: torch.Tensor  # [S, 1] float32, all >= _MIN_TEMPERATURE
    top_ks: torch.Tensor  # [S, 1] int64, vocab_size when disabled
    top_ps: torch.Tensor  # [S, 1] float32, 1.0 when disabled
    min_ps: torch.Tensor  # [S, 1] float32, 0.0 when disabled
    keys: torch.Tensor  # [S, 1] int64 in [0, 2^32): hash of (seed, step), the row's noise stream
    use_top_k: bool
    use_top_p: bool
    use_min_p: bool
    # When every sampling row has top_k enabled, only the best `candidates` tokens can ever be picked,
    # so a top-k selection replaces the full-vocabulary sort.
    candidates: int | None


@dataclass
class SamplingBatch:
    """Everything `sample` needs for one step, built on the host once per batch."""

    batch_size: int
    vocab_size: int
    all_greedy: bool
    stochastic: _StochasticRows | None  # None when every row is greedy
    penalties: _Penalties | None  # None when no row uses a penalty (fast path)
    banned: torch.Tensor | None  # [M] int64 flat indices row * V + token forced to -inf (min_new_tokens)
    return_logprobs: bool
    top_logprobs: int  # K of the batch (0 = none)

    @classmethod
    def build(cls, rows: Sequence[SamplerRow], vocab_size: int, device: torch.device) -> SamplingBatch:
        if not rows:
            raise ValueError("SamplingBatch.build: the batch has no rows")
        greedy = [_is_greedy(r.params) for r in rows]
        banned = _min_token_bans(rows, vocab_size)
        top_logprobs = max(r.params.top_logprobs for r in rows)
        return cls(
            batch_size=len(rows),
            vocab_size=vocab_size,
            all_greedy=all(greedy),
            stochastic=_build_stochastic(rows, greedy, vocab_size, device),
            penalties=_build_penalties(rows, vocab_size, device),
            banned=list_to_device(banned, torch.int64, device) if banned else None,
            return_logprobs=top_logprobs > 0 or any(r.params.logprobs for r in rows),
            top_logprobs=top_logprobs,
        )

    @classmethod
    def plain_greedy(cls, batch_size: int, vocab_size: int) -> SamplingBatch:
        """A batch whose every row is a plain argmax (see `plain_greedy_from`): nothing per row to build."""
        if batch_size < 1:
            raise ValueError(f"SamplingBatch.plain_greedy: batch_size must be >= 1, got {batch_size}")
        return cls(batch_size, vocab_size, True, None, None, None, False, 0)

    @property
    def adjusts_logits(self) -> bool:
        """Whether penalties or min-token bans change the logits before selection."""
        return self.penalties is not None or self.banned is not None


def plain_greedy_from(p: SamplingParams, banned_until_min: frozenset[int]) -> int:
    """The output length from which a row with these params is a plain argmax row (no temperature, filters,
    penalties, logprobs or bans); a huge number if never. `banned_until_min` are the tokens masked while
    min_new_tokens is not reached (stop ids, plus EOS unless ignore_eos)."""
    if not _is_greedy(p) or _has_penalty(p) or p.logprobs or p.top_logprobs > 0:
        return _NEVER
    return p.min_new_tokens if banned_until_min else 0


def _is_greedy(p: SamplingParams) -> bool:
    return p.greedy or p.temperature < _MIN_TEMPERATURE


def _top_k_or_vocab(p: SamplingParams, vocab_size: int) -> int:
    return p.top_k if 0 < p.top_k < vocab_size else vocab_size


def _build_stochastic(
    rows: Sequence[SamplerRow], greedy: list[bool], vocab_size: int, device: torch.device
) -> _StochasticRows | None:
    picked = [i for i, g in enumerate(greedy) if not g]
    if not picked:
        return None
    params = [rows[i].params for i in picked]
    top_ks = [_top_k_or_vocab(p, vocab_size) for p in params]

    def column(values: list, dtype: torch.dtype) -> torch.Tensor:
        return list_to_device(values, dtype, device).unsqueeze(1)

    # Python ints are unbounded; the hash works on two 32-bit halves of the seed taken modulo 2^64.
    seeds = [rows[i].seed % (1 << 64) for i in picked]
    seeds_lo = column([s & _MASK32 for s in seeds], torch.int64)
    seeds_hi = column([s >> 32 for s in seeds], torch.int64)
    steps = column([rows[i].step & _MASK32 for i in picked], torch.int64)
    largest_k = max(top_ks)
    return _StochasticRows(
        rows=list_to_device(picked, torch.int64, device),
        temperatures=column([p.temperature for p in params], torch.float32),
        top_ks=column(top_ks, torch.int64),
        top_ps=column([p.top_p for p in params], torch.float32),
        min_ps=column([p.min_p for p in params], torch.float32),
        keys=_row_keys(seeds_lo, seeds_hi, steps),
        use_top_k=any(k < vocab_size for k in top_ks),
        use_top_p=any(p.top_p < 1.0 for p in params),
        use_min_p=any(p.min_p > 0.0 for p in params),
        candidates=largest_k if largest_k < vocab_size else None,
    )


def _build_penalties(rows: Sequence[SamplerRow], vocab_size: int, device: torch.device) -> _Penalties | None:
    picked = [i for i, r in enumerate(rows) if _has_penalty(r.params)]
    if not picked:
        return None
    params = [rows[i].params for i in picked]
    any_repetition = any(p.repetition_penalty != 1.0 for p in params)
    any_frequency = any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params)
    outputs = [rows[i].output_ids for i in picked]
    output_counts = _count_tokens(outputs, vocab_size, device)
    seen = None
    if any_repetition:
        prompts = [
            rows[i].prompt_ids if p.repetition_penalty != 1.0 else ()
            for i, p in zip(picked, params, strict=True)
        ]
        seen = (_count_tokens(prompts, vocab_size, device) + output_counts) > 0

    def column(values: list[float]) -> torch.Tensor:
        return list_to_device(values, torch.float32, device).unsqueeze(1)

    return _Penalties(
        rows=list_to_device(picked, torch.int64, device),
        repetition=column([p.repetition_penalty for p in params]),
        frequency=column([p.frequency_penalty for p in params]),
        presence=column([p.presence_penalty for p in params]),
        seen=seen,
        output_counts=output_counts if any_frequency else None,
    )


def _has_penalty(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def _count_tokens(id_lists: Sequence[Sequence[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[len(id_lists), V] float32 occurrence counts, built with one scatter_add on the device.

    Out-of-range ids are dropped (weight 0) instead of indexing out of bounds; scatter_add is used rather
    than bincount because bincount on CUDA reads the maximum back to the host.
    """
    n = len(id_lists)
    counts = torch.zeros(n * vocab_size, dtype=torch.float32, device=device)
    lengths = [len(ids) for ids in id_lists]
    if sum(lengths) == 0:
        return counts.view(n, vocab_size)
    tokens = list_to_device(list(itertools.chain.from_iterable(id_lists)), torch.int64, device)
    row_of = torch.repeat_interleave(
        torch.arange(n, device=device),
        list_to_device(lengths, torch.int64, device),
        output_size=len(tokens),
    )
    valid = (tokens >= 0) & (tokens < vocab_size)
    flat = torch.where(valid, row_of * vocab_size + tokens, 0)
    counts.scatter_add_(0, flat, valid.to(torch.float32))
    return counts.view(n, vocab_size)


def _min_token_bans(rows: Sequence[SamplerRow], vocab_size: int) -> list[int]:
    """Flat logit indices (row * V + token) to force to -inf: EOS (unless ignore_eos) and stop_token_ids
    while min_new_tokens is not reached.

    Ids outside the vocabulary can never be sampled, so they need no mask and are skipped.
    """
    banned: list[int] = []
    for i, r in enumerate(rows):
        # Tokens before this one: with overlap scheduling the last sampled ones may not be in output_ids yet,
        # but `step` counts them, so the mask ends at the same token with overlap on or off.
        if max(len(r.output_ids), r.step) >= r.params.min_new_tokens:
            continue
        tokens = set(r.params.stop_token_ids)
        if not r.params.ignore_eos:
            tokens |= r.eos_ids
        for t in sorted(tokens):
            if 0 <= t < vocab_size:
                banned.append(i * vocab_size + t)
    return banned


# ---------------------------------------------------------------------------------------------------------
# Counter-based noise. All values stay in [0, 2^32) inside int64 tensors and every product stays below 2^63,
# so no signed overflow happens on any backend.


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32) and a constant c in [0, 2^32), without int64 overflow."""
    if c < (1 << 31):
        return (x * c) & _MASK32
    # x * 2^31 mod 2^32 only keeps x's lowest bit, so split c = 2^31 + rest.
    return (x * (c - (1 << 31)) + ((x & 1) << 31)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finalizer (xorshift-multiply rounds, 'lowbias32' constants): a bijection on [0, 2^32)
    with strong avalanche, so neighbouring counters give unrelated outputs."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _row_keys(seeds_lo: torch.Tensor, seeds_hi: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per (seed, step): the start of that row's noise stream for this step."""
    key = _hash32(seeds_lo ^ 0x5BD1E995)
    key = _hash32(key ^ seeds_hi)
    return _hash32(key ^ _mul32(steps, _GOLDEN32) ^ 0x27D4EB2F)


def exponential_noise(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """E ~ Exp(1) for each (row key, token id), as float32 strictly between 0 and +inf.

    keys [R, 1] and token_ids [R, N] int64. A 32-bit hash h gives U = (h + 0.5) / 2^32 in (0, 1). To keep
    float32 precision at both ends, the side of U closer to 0 or 1 is computed as w = min(U, 1 - U) from
    integers exactly, and E = -log(U) is evaluated as -log(w) or -log1p(-w).
    """
    h = _hash32(keys ^ _mul32(token_ids, _GOLDEN32))
    upper = h >= (1 << 31)
    w = (torch.where(upper, _MASK32 - h, h).to(torch.float32) + 0.5) * (2.0**-32)
    return torch.where(upper, -torch.log1p(-w), -torch.log(w))


# ---------------------------------------------------------------------------------------------------------
# Logit processing and selection (GPU thread).


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """float32 logits [B, V] with repetition, frequency and presence penalties applied; the input is not
    modified. Repetition (HF): a token seen in prompt or output has its logit divided by the penalty when
    positive, multiplied when not. Frequency/presence (OpenAI), over output tokens only:
    logit -= frequency * count + presence * (count > 0)."""
    out = logits.to(torch.float32, copy=True)
    pen = batch.penalties
    if pen is None:
        return out
    sub = out.index_select(0, pen.rows)
    if pen.seen is not None:
        scaled = torch.where(sub > 0, sub / pen.repetition, sub * pen.repetition)
        sub = torch.where(pen.seen, scaled, sub)
    if pen.output_counts is not None:
        counts = pen.output_counts
        sub = sub - pen.frequency * counts - pen.presence * (counts > 0).to(torch.float32)
    return out.index_copy_(0, pen.rows, sub)


def process_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """float32 logits after penalties and min_new_tokens bans: what greedy takes the argmax of and what
    temperature and filters then act on. Always a new tensor."""
    out = apply_penalties(logits, batch)
    if batch.banned is not None:
        # index_fill_ passes the value as a kernel argument; index_put_ would copy it to the device and sync.
        out.view(-1).index_fill_(0, batch.banned, float("-inf"))
    return out


def _filtered_race(probs: torch.Tensor, st: _StochasticRows) -> torch.Tensor:
    """Token per row: argmax over the tokens surviving top-k/top-p/min-p of p / E.

    Renormalizing the kept probabilities would scale a row by a constant, which does not move the argmax,
    so it is skipped. Filters act in sequence like transformers' warpers: top-p is measured on the
    distribution left after top-k.
    """
    if not (st.use_top_k or st.use_top_p):
        if st.use_min_p:
            probs = torch.where(probs >= st.min_ps * probs.amax(dim=-1, keepdim=True), probs, 0.0)
        ids = torch.arange(probs.shape[1], device=probs.device).expand_as(probs)
        return (probs / exponential_noise(st.keys, ids)).argmax(dim=-1)

    if st.candidates is not None:
        vals, ids = probs.topk(st.candidates, dim=-1, sorted=True)
    else:
        vals, ids = probs.sort(dim=-1, descending=True)
    rank = torch.arange(vals.shape[1], device=vals.device)
    keep = rank < st.top_ks
    if st.use_top_p:
        vals_k = torch.where(keep, vals, 0.0)
        before = vals_k.cumsum(dim=-1) - vals_k  # mass of strictly better tokens
        mass_k = vals_k.sum(dim=-1, keepdim=True)
        keep &= (before < st.top_ps * mass_k) | (st.top_ps >= 1.0)
    if st.use_min_p:
        keep &= vals >= st.min_ps * vals[:, :1]
    scores = torch.where(keep, vals, 0.0) / exponential_noise(st.keys, ids)
    return ids.gather(1, scores.argmax(dim=-1, keepdim=True)).squeeze(1)


def _sample_stochastic(logits: torch.Tensor, st: _StochasticRows) -> torch.Tensor:
    probs = torch.softmax(logits.index_select(0, st.rows) / st.temperatures, dim=-1)
    return _filtered_race(probs, st)


def _logprob_outputs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    logprobs = torch.log_softmax(logits.to(torch.float32), dim=-1)
    chosen = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
    if k == 0:
        return chosen, None, None
    top_vals, top_ids = logprobs.topk(k, dim=-1, sorted=True)
    return chosen, top_ids, top_vals


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SampleOutput:
    """Pick the next token of every row. logits: [B, V] of any float dtype (not modified)."""
    if logits.dim() != 2 or logits.shape[0] != batch.batch_size or logits.shape[1] != batch.vocab_size:
        raise ValueError(
            f"sample: logits shape {tuple(logits.shape)} does not match the batch "
            f"({batch.batch_size} rows, vocab {batch.vocab_size})"
        )
    if batch.all_greedy and not batch.adjusts_logits and not batch.return_logprobs:
        return SampleOutput(logits.argmax(dim=-1), None, None, None)

    adjusted = process_logits(logits, batch)
    st = batch.stochastic
    if st is None:
        tokens = adjusted.argmax(dim=-1)
    elif st.rows.numel() == batch.batch_size:
        tokens = _sample_stochastic(adjusted, st)
    else:
        tokens = adjusted.argmax(dim=-1).index_copy_(0, st.rows, _sample_stochastic(adjusted, st))
    if not batch.return_logprobs:
        return SampleOutput(tokens, None, None, None)
    return SampleOutput(tokens, *_logprob_outputs(logits, tokens, batch.top_logprobs))
