"""Sampler and SamplingParams against straightforward per-row references (CPU)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from valora.layers.sampler import Sampler, SamplerOutput, SamplingBatch, make_generator
from valora.sampling_params import SamplingParams

EOS = (7,)
SAMPLER = Sampler()


def run(
    logits: torch.Tensor,
    params: list[SamplingParams],
    prompts: list[list[int]] | None = None,
    outputs: list[list[int]] | None = None,
    generators: list[torch.Generator | None] | None = None,
    eos: tuple[int, ...] = EOS,
) -> SamplerOutput:
    n = len(params)
    batch = SamplingBatch.build(
        params,
        prompts if prompts is not None else [[] for _ in range(n)],
        outputs if outputs is not None else [[] for _ in range(n)],
        generators if generators is not None else [None] * n,
        eos,
        logits.shape[1],
        "cpu",
    )
    return SAMPLER(logits, batch)


def ref_penalized(
    x: torch.Tensor, p: SamplingParams, prompt: list[int], output: list[int], eos=EOS
) -> torch.Tensor:
    """Steps 1-3 for one row, token by token."""
    x = x.clone()
    if len(output) < p.min_tokens:
        for t in list(eos) + p.stop_token_ids:
            x[t] = -math.inf
    for t in set(prompt + output):
        r = p.repetition_penalty
        x[t] = x[t] / r if x[t] > 0 else x[t] * r
    for t, c in Counter(output).items():
        x[t] -= p.frequency_penalty * c + p.presence_penalty
    return x


def ref_probs(x: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Steps 5-8 for one row in float64: the renormalised distribution the row samples from."""
    x = x.double() / p.temperature
    if p.top_k >= 1:
        kth = x.sort(descending=True).values[p.top_k - 1]
        x[x < kth] = -math.inf
    probs = x.softmax(-1)
    if p.top_p < 1:
        vals, order = probs.sort(descending=True)
        before = vals.cumsum(0) - vals  # mass of the strictly more probable tokens
        drop = order[before >= p.top_p]
        probs[drop] = 0
        probs /= probs.sum()
    if p.min_p > 0:
        probs[probs < p.min_p * probs.max()] = 0
        probs /= probs.sum()
    return probs


# ---------------------------------------------------------------- SamplingParams


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n": 2}, "n"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": -0.1}, "min_p"),
        ({"min_p": 1.1}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.1}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"stop_token_ids": [3, -1]}, "stop_token_ids"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_params_reject_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        SamplingParams(**kwargs)


def test_params_defaults_and_normalisation() -> None:
    p = SamplingParams(stop="###", min_tokens=50, max_tokens=None, top_k=0, logprobs=0)
    assert p.stop == ["###"] and p.stop_token_ids == [] and p.max_tokens is None
    assert SamplingParams().max_tokens == 16 and not SamplingParams().is_greedy
    assert SamplingParams(temperature=0).is_greedy and SamplingParams(top_k=1).is_greedy
    assert not SamplingParams(top_k=-1).is_greedy


# ---------------------------------------------------------------- greedy and penalties


def test_greedy_is_argmax_and_logits_untouched() -> None:
    logits = torch.randn(16, 300, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    params = [
        SamplingParams(temperature=0) if i % 2 else SamplingParams(top_k=1) for i in range(16)
    ]
    out = run(logits, params)
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.top_logprobs is None and out.top_logprob_ids is None
    assert torch.equal(logits, before)


def _penalty_case(seed: int) -> tuple[torch.Tensor, list, list, list]:
    g = torch.Generator().manual_seed(seed)
    num_rows, vocab = 24, 20
    logits = torch.randn(num_rows, vocab, generator=g)
    params, prompts, outputs = [], [], []
    for i in range(num_rows):
        params.append(
            SamplingParams(
                temperature=0,
                repetition_penalty=[1.0, 1.3, 0.7, 2.0][i % 4],
                frequency_penalty=[0.0, 0.5, -0.3, 1.5][(i // 4) % 4],
                presence_penalty=[0.0, 1.0, -1.0][i % 3],
            )
        )
        prompts.append(
            torch.randint(
                0, vocab, (int(torch.randint(0, 16, (1,), generator=g)),), generator=g
            ).tolist()
        )
        outputs.append(
            torch.randint(
                0, vocab, (int(torch.randint(0, 16, (1,), generator=g)),), generator=g
            ).tolist()
        )
    return logits, params, prompts, outputs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_with_penalties_matches_reference(seed: int) -> None:
    logits, params, prompts, outputs = _penalty_case(seed)
    out = run(logits, params, prompts, outputs)
    expected = torch.stack(
        [ref_penalized(logits[i], params[i], prompts[i], outputs[i]) for i in range(len(params))]
    ).argmax(-1)
    assert torch.equal(out.token_ids, expected)
    assert (expected != logits.argmax(-1)).sum() >= 3  # the penalties did change choices


def test_penalised_logits_match_reference_exactly() -> None:
    from valora.layers.sampler import _apply_penalties

    logits, params, prompts, outputs = _penalty_case(3)
    params[0] = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[5])
    outputs[0] = [1]
    batch = SamplingBatch.build(params, prompts, outputs, [None] * 24, EOS, 20, "cpu")
    got = _apply_penalties(logits, batch)
    for i in range(len(params)):
        torch.testing.assert_close(
            got[i], ref_penalized(logits[i], params[i], prompts[i], outputs[i])
        )


def test_unused_stages_are_skipped() -> None:
    batch = SamplingBatch.build(
        [SamplingParams(temperature=0, top_p=0.5, top_k=3, min_p=0.1), SamplingParams()],
        [[1, 2], [3]],
        [[4], []],
        [None, None],
        EOS,
        50,
        "cpu",
    )
    assert batch.seen_mask is None and batch.output_counts is None and batch.ban_rows is None
    assert batch.top_k is None and batch.top_p is None and batch.log_min_p is None
    assert batch.temperature is None and batch.max_num_logprobs is None


# ---------------------------------------------------------------- truncation and sampling

TRUNCATIONS = [
    SamplingParams(top_k=3),
    SamplingParams(top_p=0.7),
    SamplingParams(min_p=0.2),
    SamplingParams(temperature=0.7, top_k=6, top_p=0.8, min_p=0.05),
    SamplingParams(temperature=1.5, top_p=0.9),
    SamplingParams(temperature=1.3),
]


@pytest.mark.parametrize("params", TRUNCATIONS, ids=lambda p: repr(p)[15:80])
def test_empirical_distribution_matches_reference(params: SamplingParams) -> None:
    torch.manual_seed(0)
    draws = 40_000
    row = torch.tensor([2.0, 1.5, 1.2, 0.9, 0.5, 0.1, -0.3, -1.0, 0.0, 1.0])
    out = run(row.expand(draws, -1), [params] * draws, eos=())
    expected = ref_probs(row, params)
    freq = torch.bincount(out.token_ids, minlength=row.numel()).double() / draws
    assert set(out.token_ids.unique().tolist()) == set(expected.nonzero().flatten().tolist())
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


def test_sampled_tokens_stay_in_allowed_set_large_vocab() -> None:
    torch.manual_seed(1)
    vocab, reps = 2000, 64
    logits = torch.randn(len(TRUNCATIONS) * reps, vocab) * 4
    params = [p for p in TRUNCATIONS for _ in range(reps)]
    for _ in range(5):
        out = run(logits, params, eos=())
        for i, p in enumerate(params):
            assert ref_probs(logits[i], p)[out.token_ids[i]] > 0, (i, p)


def test_low_temperature_equals_argmax() -> None:
    torch.manual_seed(2)
    logits = torch.stack([torch.randperm(500).float() * 0.1 for _ in range(64)])
    out = run(logits, [SamplingParams(temperature=1e-3)] * 64)
    assert torch.equal(out.token_ids, logits.argmax(-1))
    hot = run(logits, [SamplingParams(temperature=1.0)] * 64)
    assert not torch.equal(hot.token_ids, logits.argmax(-1))


def test_tiny_top_p_keeps_the_most_probable_token() -> None:
    torch.manual_seed(6)
    logits = torch.randn(32, 50_000) * 0.01
    out = run(logits, [SamplingParams(top_p=1e-9)] * 32)
    assert torch.equal(out.token_ids, logits.argmax(-1))


# ---------------------------------------------------------------- seeds


def _seeded_steps(seed: int, companions: int, steps: int = 6) -> list[int]:
    """Tokens of one seeded top-p row over several steps, batched at row 1 with others."""
    data = torch.Generator().manual_seed(99)
    rows = [torch.randn(steps, 1000, generator=data) for _ in range(1 + companions)]
    p = SamplingParams(top_p=0.95, temperature=1.2, seed=seed)
    generator = make_generator(seed, "cpu")
    others = [
        SamplingParams(seed=5),
        SamplingParams(),
        SamplingParams(temperature=0),
        SamplingParams(top_k=50, min_p=0.1),
    ]
    tokens = []
    for s in range(steps):
        params = [p] if companions == 0 else [others[0], p] + others[1:companions]
        gens = [generator] if companions == 0 else [make_generator(5, "cpu"), generator]
        gens += [None] * (len(params) - len(gens))
        logits = torch.stack([rows[0][s]] + [r[s] for r in rows[1 : len(params)]])
        if companions:
            logits[[0, 1]] = logits[[1, 0]]
        out = run(logits, params, generators=gens)
        tokens.append(int(out.token_ids[0 if companions == 0 else 1]))
    return tokens


def test_seeded_row_independent_of_batch() -> None:
    alone = _seeded_steps(1234, companions=0)
    assert _seeded_steps(1234, companions=4) == alone
    assert _seeded_steps(1234, companions=2) == alone
    assert _seeded_steps(4321, companions=0) != alone


def test_different_seeds_differ_on_flat_logits() -> None:
    logits = torch.zeros(1, 10_000)

    def steps(seed: int) -> list[int]:
        gen = make_generator(seed, "cpu")
        return [
            int(run(logits, [SamplingParams(seed=seed)], generators=[gen]).token_ids[0])
            for _ in range(4)
        ]

    a, b, c = steps(1), steps(1), steps(2)
    assert a == b and a != c and len(set(a)) > 1  # the generator advances step to step


# ---------------------------------------------------------------- min_tokens


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_min_tokens_bans_eos_and_stop_ids(ignore_eos: bool) -> None:
    vocab, eos = 12, (7, 9)
    logits = torch.zeros(2, vocab)
    logits[:, [3, 7, 9]] = 10.0  # stop id 3 and both eos are by far the most likely
    greedy = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[3], ignore_eos=ignore_eos)
    rand = SamplingParams(min_tokens=3, stop_token_ids=[3], ignore_eos=ignore_eos)
    torch.manual_seed(3)
    for n_out in range(3):
        out = run(logits.repeat(200, 1), [greedy, rand] * 200, outputs=[[1] * n_out] * 400, eos=eos)
        assert not set(out.token_ids.tolist()) & {3, 7, 9}
    out = run(logits.repeat(200, 1), [greedy, rand] * 200, outputs=[[1] * 3] * 400, eos=eos)
    assert out.token_ids[0] in (3, 7, 9)
    assert set(out.token_ids[1::2].tolist()) == {3, 7, 9}


# ---------------------------------------------------------------- logprobs


def test_logprobs_are_raw_log_softmax() -> None:
    torch.manual_seed(4)
    logits = torch.randn(4, 500) * 3
    params = [
        SamplingParams(logprobs=5, repetition_penalty=1.5, temperature=0.5),
        SamplingParams(logprobs=0, temperature=0, presence_penalty=1.0, repetition_penalty=1.2),
        SamplingParams(),
        SamplingParams(logprobs=2, frequency_penalty=1.0, top_k=10),
    ]
    logits[[0, 1, 3], [1, 2, 4]] = 20.0  # chosen, though penalised: raw != processed logit
    out = run(logits, params, prompts=[[1, 2, 3]] * 4, outputs=[[4, 4]] * 4)
    assert out.token_ids[1] == 2
    lsm = logits.double().log_softmax(-1)
    assert out.top_logprobs.shape == out.top_logprob_ids.shape == (4, 5)
    ref_vals, ref_ids = lsm.sort(-1, descending=True)
    assert torch.equal(out.top_logprob_ids, ref_ids[:, :5])
    torch.testing.assert_close(out.top_logprobs.double(), ref_vals[:, :5], atol=1e-5, rtol=0)
    chosen = lsm.gather(1, out.token_ids[:, None]).squeeze(1)
    torch.testing.assert_close(out.logprobs.double(), chosen, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- mixed batch


def test_mixed_batch_equals_rows_alone() -> None:
    torch.manual_seed(5)
    vocab = 3000
    logits = torch.randn(4, vocab) * 2
    params = [
        SamplingParams(temperature=0),
        SamplingParams(top_p=0.8, seed=11),
        SamplingParams(
            repetition_penalty=1.4, presence_penalty=0.5, frequency_penalty=0.3, top_k=40, seed=12
        ),
        SamplingParams(logprobs=3, temperature=0.8, min_p=0.05, seed=13),
    ]
    prompts = [[1, 2], [3, 4, 5], [6, 7, 7, 8], [9]]
    outputs = [[10], [], [11, 11, 12], [13, 14]]
    gens = [make_generator(p.seed, "cpu") for p in params]
    mixed = run(logits, params, prompts, outputs, gens)
    for i, p in enumerate(params):
        alone = run(
            logits[i : i + 1], [p], [prompts[i]], [outputs[i]], [make_generator(p.seed, "cpu")]
        )
        assert mixed.token_ids[i] == alone.token_ids[0]
        assert mixed.logprobs[i] == alone.logprobs[0]
        if p.logprobs is not None:
            assert torch.equal(mixed.top_logprob_ids[i], alone.top_logprob_ids[0])
            assert torch.equal(mixed.top_logprobs[i], alone.top_logprobs[0])
