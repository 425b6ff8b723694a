"""The batched sampler: exact shortcuts, the right distributions, rows independent of their batch."""

from __future__ import annotations

import pytest
import torch

from gptoss.engine.runner import SAMPLE_CHUNK_ROWS, SamplerState, _pick_ranked, sample
from gptoss.engine.types import SamplingParams

VOCAB = 201_088


def _states(params: list[SamplingParams], prompt=(1, 2, 3)) -> list[SamplerState]:
    return [SamplerState.create(p, list(prompt), VOCAB) for p in params]


MIXED = [
    SamplingParams(max_tokens=1, temperature=1.0, seed=1),
    SamplingParams(max_tokens=1, temperature=0.7, seed=2),
    SamplingParams(max_tokens=1, temperature=0.8, top_p=0.9, seed=3),
    SamplingParams(max_tokens=1, temperature=1.2, top_k=20, seed=4),
    SamplingParams(max_tokens=1, temperature=1.0, min_p=0.1, seed=5),
    SamplingParams(max_tokens=1, temperature=1.0, top_k=50, top_p=0.8, min_p=0.05, seed=6),
    SamplingParams(max_tokens=1, temperature=0.0),
    SamplingParams(max_tokens=1, temperature=0.9, frequency_penalty=0.5, presence_penalty=0.3, seed=7),
    SamplingParams(max_tokens=1, temperature=0.6, repetition_penalty=1.3, logit_bias={5: 3.0}, seed=8),
    SamplingParams(max_tokens=1, temperature=0.0, frequency_penalty=1.0),
]


def test_rows_sample_the_same_alone_and_batched():
    """Chunk boundaries, neighbours and penalties must not change what a row draws."""
    assert len(MIXED) > SAMPLE_CHUNK_ROWS
    gen = torch.Generator().manual_seed(0)
    steps = [(torch.randn(len(MIXED), VOCAB, generator=gen) * 3).to(torch.bfloat16) for _ in range(12)]
    batched = _states(MIXED)
    together = [[s.token for s in sample(logits, batched)] for logits in steps]
    for i, p in enumerate(MIXED):
        alone = _states([p])
        assert [sample(logits[i : i + 1], alone)[0].token for logits in steps] == [t[i] for t in together]


def _frequencies(logits: torch.Tensor, params: SamplingParams, draws: int = 3000) -> torch.Tensor:
    state = _states([params])
    counts = torch.zeros(VOCAB)
    for _ in range(draws):
        counts[sample(logits, state)[0].token] += 1
    return counts / draws


def _peaked() -> torch.Tensor:
    logits = torch.full((1, VOCAB), -40.0)
    logits[0, [7, 70, 700, 7000, 70000]] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    return logits


@pytest.mark.parametrize(
    "params, support",
    [
        (SamplingParams(max_tokens=1, temperature=1.0, seed=11), [7, 70, 700, 7000, 70000]),
        (SamplingParams(max_tokens=1, temperature=1.0, top_p=0.8, seed=12), [7, 70]),
        (SamplingParams(max_tokens=1, temperature=1.0, top_k=3, seed=13), [7, 70, 700]),
        (SamplingParams(max_tokens=1, temperature=1.0, min_p=0.2, seed=14), [7, 70]),
        (SamplingParams(max_tokens=1, temperature=0.5, top_k=4, top_p=0.95, seed=15), [7, 70]),
    ],
)
def test_sampled_frequencies_follow_the_truncated_distribution(params, support):
    logits = _peaked()
    expected = torch.zeros(VOCAB)
    expected[support] = torch.softmax(logits[0, support] / params.temperature, dim=-1)
    freq = _frequencies(logits, params)
    assert set(torch.nonzero(freq).flatten().tolist()) <= set(support)
    assert (freq - expected).abs().max() < 0.04


def _reference_pick(e: torch.Tensor, p: SamplingParams, u: float) -> int:
    """The definition: sort the whole row, then top-k, top-p, min-p, inverse CDF."""
    vals, idx = torch.sort(e, descending=True)
    total = float(e.sum())
    if p.top_k:
        vals, idx = vals[: p.top_k], idx[: p.top_k]
    vals = vals / (vals.sum() if p.top_k else total)
    if p.top_p < 1.0:
        cum = vals.cumsum(-1)
        vals = vals.masked_fill((cum - vals) >= p.top_p, 0.0)
    if p.min_p > 0.0:
        vals = vals.masked_fill(vals < p.min_p * vals[0], 0.0)
    cdf = vals.cumsum(-1)
    return int(idx[int(torch.searchsorted(cdf, cdf[-1:] * u).clamp(max=len(cdf) - 1))])


@pytest.mark.parametrize("scale", [8.0, 3.0, 0.05])  # peaked (few candidates) to flat (full sort)
def test_candidate_shortcut_equals_a_full_sort(scale):
    gen = torch.Generator().manual_seed(int(scale * 100))
    for params in (
        SamplingParams(max_tokens=1, top_p=0.9),
        SamplingParams(max_tokens=1, top_p=0.5, min_p=0.01),
        SamplingParams(max_tokens=1, top_k=40),
        SamplingParams(max_tokens=1, top_k=1000, top_p=0.7),
    ):
        for _ in range(5):
            x = torch.randn(VOCAB, generator=gen) * scale  # float32: no ties
            e = torch.exp(x - x.max())
            u = float(torch.rand(1, generator=gen))
            assert _pick_ranked(e, params, u) == _reference_pick(e, params, u)


def test_candidates_are_widened_when_they_hold_too_little_mass():
    """A few likely tokens over a long tail that holds most of the mass: the first cut is not enough."""
    gen = torch.Generator().manual_seed(5)
    e = 5e-5 * (1 + 0.1 * torch.rand(VOCAB, generator=gen))  # the tail: ~10 in total, all under 1e-4
    e[[3, 30, 300]] = torch.tensor([1.0, 0.9, 0.8])
    for params in (SamplingParams(max_tokens=1, top_p=0.9), SamplingParams(max_tokens=1, top_k=100_000)):
        for _ in range(5):
            u = float(torch.rand(1, generator=gen))
            assert _pick_ranked(e, params, u) == _reference_pick(e, params, u)


def test_flat_rows_keep_their_nucleus():
    """A random-weight model's near-uniform rows take the full-sort path and still truncate."""
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(1, VOCAB, generator=gen) * 0.05).to(torch.bfloat16)
    probs = torch.softmax(logits[0].float(), -1)
    ranked = torch.sort(probs, descending=True).values
    floor = float(ranked[int(torch.searchsorted(ranked.cumsum(-1), torch.tensor([0.5])))])
    state = _states([SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5, seed=9)])
    for _ in range(50):
        assert float(probs[sample(logits, state)[0].token]) >= floor


def test_sparse_penalties_equal_the_dense_definition():
    """Penalties kept per seen token give the same bits as the whole-vocabulary formulas."""
    from gptoss.engine.runner import _processed_row

    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, VOCAB, (300,), generator=gen).tolist()
    generated = torch.randint(0, 50, (40,), generator=gen).tolist()  # repeats: counts above 1
    p = SamplingParams(
        max_tokens=1, temperature=1.0, frequency_penalty=0.7, presence_penalty=0.4, repetition_penalty=1.3,
        logit_bias={11: 2.5, 99: -4.0},
    )
    state = _states([p], prompt)[0]
    for t in generated:
        state.observe(t)
    row = torch.randn(VOCAB, generator=gen)
    counts = torch.zeros(VOCAB)
    for t in generated:
        counts[t] += 1
    seen = torch.zeros(VOCAB, dtype=torch.bool)
    seen[prompt + generated] = True
    ref = row.clone()
    ref[[11, 99]] += torch.tensor([2.5, -4.0])
    ref = torch.where(seen, torch.where(ref > 0, ref / 1.3, ref * 1.3), ref)
    ref = ref - counts * 0.7 - (counts > 0).float() * 0.4
    assert torch.equal(_processed_row(row.clone(), state), ref)
