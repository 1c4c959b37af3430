"""Per-request sampler: last-position logits -> one token per row (vLLM v1 semantics).

For row b with raw logits x = logits[b] ([V] fp32), in this order:

0. log-probs, from the RAW logits: lp = x - logsumexp(x). The chosen token's lp and the top-k
   (k = the largest ``logprobs`` asked in the batch) are reported; they never steer sampling.
1. bans: while len(output) < min_tokens, x[t] = -inf for t in eos_token_ids + stop_token_ids
   (also with ignore_eos, which only means "do not stop on EOS").
2. repetition penalty r, over t in prompt ∪ output: x[t] = x[t] / r if x[t] > 0 else x[t] * r.
3. frequency f and presence p, over OUTPUT tokens only: x[t] -= f * count[t] + p * (count[t] > 0).
4. greedy rows (temperature 0 or top_k 1): token = argmax x. The other rows go on:
5. temperature T: x = x / T (T clamped to >= 1e-6 so that x stays finite).
6. top-k: keep the tokens whose x >= the k-th largest x (ties at the k-th value are kept).
7. top-p: keep the smallest set of most probable tokens whose probability sum (softmax over what
   top-k kept) is >= top_p; the most probable token is always kept.
8. min-p: drop t with softmax(x)[t] < min_p * max softmax(x), i.e. x[t] < max(x) + log(min_p).
9. sample by exponential race: token = argmax(softmax(x) / q), q[t] ~ Exp(1) iid, an exact draw
   from softmax(x). A row with a torch.Generator draws its q from it, so its token depends only on
   its own logits and generator, never on the other rows of the batch.

Stages no row uses are skipped (the batch holds None for them): no penalties -> no [B, V] count
tensors; all greedy -> no softmax, no sort; top-k without top-p -> topk, no sort. The only loop
over rows draws q for rows that own a generator. Nothing modifies the caller's logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain

import torch

from valora.sampling_params import SamplingParams

_MIN_TEMPERATURE = 1e-6


@dataclass
class SamplingBatch:
    """Per-row sampling tensors for one step (B rows, V vocabulary entries), built by ``build``.

    Invariant: greedy rows carry neutral values (temperature 1, no top-k/p, min-p 0), so they never
    switch a random-sampling stage on; a field is None exactly when no row uses that stage.
    """

    num_rows: int
    vocab_size: int
    greedy: torch.Tensor | None  # [B] bool; None unless the batch mixes greedy and random rows
    num_greedy: int
    temperature: torch.Tensor | None  # [B, 1] fp32, >= 1e-6
    top_k: torch.Tensor | None  # [B] int64 in [1, V]; V = disabled
    max_top_k: int  # max over rows with top-k enabled (host int: no device sync)
    top_p: torch.Tensor | None  # [B, 1] fp32 in (0, 1]
    log_min_p: torch.Tensor | None  # [B, 1] fp32, log(min_p); -inf = disabled
    repetition_penalty: torch.Tensor | None  # [B, 1] fp32
    seen_mask: torch.Tensor | None  # [B, V] bool: token in prompt or output
    frequency_penalty: torch.Tensor | None  # [B, 1] fp32
    presence_penalty: torch.Tensor | None  # [B, 1] fp32
    output_counts: torch.Tensor | None  # [B, V] fp32: occurrences in the output so far
    ban_rows: torch.Tensor | None  # [num_bans] int64
    ban_token_ids: torch.Tensor | None  # [num_bans] int64
    seeded_rows: list[tuple[int, torch.Generator]]  # random rows that own a generator
    max_num_logprobs: int | None  # None: no row asked for logprobs

    @staticmethod
    def build(
        params: list[SamplingParams],
        prompt_token_ids: list[list[int]],
        output_token_ids: list[list[int]],
        generators: list[torch.Generator | None],
        eos_token_ids: tuple[int, ...],
        vocab_size: int,
        device: torch.device | str,
    ) -> SamplingBatch:
        n = len(params)
        if not n == len(prompt_token_ids) == len(output_token_ids) == len(generators):
            raise ValueError("params, prompt/output token ids and generators differ in length")
        greedy = [p.is_greedy for p in params]

        def rows(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        temps = [1.0 if g else max(p.temperature, _MIN_TEMPERATURE) for p, g in zip(params, greedy)]
        disabled_k = [g or p.top_k < 1 for p, g in zip(params, greedy)]
        top_ks = [vocab_size if d else min(p.top_k, vocab_size) for p, d in zip(params, disabled_k)]
        top_ps = [1.0 if g else p.top_p for p, g in zip(params, greedy)]
        min_ps = [0.0 if g else p.min_p for p, g in zip(params, greedy)]
        asked = [p.logprobs for p in params if p.logprobs is not None]
        return SamplingBatch(
            num_rows=n,
            vocab_size=vocab_size,
            greedy=rows(greedy, torch.bool) if 0 < sum(greedy) < n else None,
            num_greedy=sum(greedy),
            temperature=rows(temps)[:, None] if any(t != 1.0 for t in temps) else None,
            top_k=rows(top_ks, torch.int64) if any(k < vocab_size for k in top_ks) else None,
            max_top_k=max([k for k in top_ks if k < vocab_size], default=vocab_size),
            top_p=rows(top_ps)[:, None] if any(p < 1.0 for p in top_ps) else None,
            log_min_p=(
                rows([math.log(m) if m > 0 else -math.inf for m in min_ps])[:, None]
                if any(m > 0 for m in min_ps)
                else None
            ),
            **_penalty_fields(params, prompt_token_ids, output_token_ids, vocab_size, device),
            **_ban_fields(params, output_token_ids, eos_token_ids, vocab_size, device),
            seeded_rows=[
                (i, g) for i, g in enumerate(generators) if g is not None and not greedy[i]
            ],
            max_num_logprobs=max(asked) if asked else None,
        )


def _flat_index(
    row_ids: list[int], token_lists: list[list[int]], vocab_size: int, device: torch.device | str
) -> torch.Tensor:
    """[sum(len)] int64: row * V + token for every token of every listed row."""
    lengths = torch.tensor([len(t) for t in token_lists], dtype=torch.int64)
    rows = torch.repeat_interleave(torch.tensor(row_ids, dtype=torch.int64), lengths)
    tokens = torch.tensor(list(chain.from_iterable(token_lists)), dtype=torch.int64)
    return (rows * vocab_size + tokens).to(device)


def _penalty_fields(
    params: list[SamplingParams],
    prompt_token_ids: list[list[int]],
    output_token_ids: list[list[int]],
    vocab_size: int,
    device: torch.device | str,
) -> dict[str, torch.Tensor | None]:
    n = len(params)
    out: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("repetition_penalty", "seen_mask", "frequency_penalty", "presence_penalty"), None
    )
    out["output_counts"] = None
    rep_rows = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    if rep_rows:
        seen = [prompt_token_ids[i] + output_token_ids[i] for i in rep_rows]
        mask = torch.zeros(n * vocab_size, dtype=torch.bool, device=device)
        mask[_flat_index(rep_rows, seen, vocab_size, device)] = True
        out["seen_mask"] = mask.view(n, vocab_size)
        values = [p.repetition_penalty for p in params]
        out["repetition_penalty"] = torch.tensor(values, device=device)[:, None]
    pen_rows = [
        i for i, p in enumerate(params) if p.frequency_penalty != 0 or p.presence_penalty != 0
    ]
    if pen_rows:
        index = _flat_index(pen_rows, [output_token_ids[i] for i in pen_rows], vocab_size, device)
        counts = torch.zeros(n * vocab_size, dtype=torch.float32, device=device)
        counts.scatter_add_(0, index, torch.ones(index.numel(), device=device))
        out["output_counts"] = counts.view(n, vocab_size)
        for name in ("frequency_penalty", "presence_penalty"):
            values = [getattr(p, name) for p in params]
            out[name] = torch.tensor(values, dtype=torch.float32, device=device)[:, None]
    return out


def _ban_fields(
    params: list[SamplingParams],
    output_token_ids: list[list[int]],
    eos_token_ids: tuple[int, ...],
    vocab_size: int,
    device: torch.device | str,
) -> dict[str, torch.Tensor | None]:
    ban_rows: list[int] = []
    ban_ids: list[int] = []
    for i, (p, out) in enumerate(zip(params, output_token_ids)):
        if len(out) < p.min_tokens:
            ids = {t for t in chain(eos_token_ids, p.stop_token_ids) if t < vocab_size}
            ban_rows += [i] * len(ids)
            ban_ids += sorted(ids)
    if not ban_rows:
        return {"ban_rows": None, "ban_token_ids": None}
    return {
        "ban_rows": torch.tensor(ban_rows, dtype=torch.int64, device=device),
        "ban_token_ids": torch.tensor(ban_ids, dtype=torch.int64, device=device),
    }


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor  # [B] fp32: raw log-prob of the chosen token
    top_logprob_ids: torch.Tensor | None  # [B, k] int64, by decreasing log-prob; None: not asked
    top_logprobs: torch.Tensor | None  # [B, k] fp32; a row asking j < k reads the first j columns


class Sampler:
    """Stateless: logits [B, V] + SamplingBatch -> SamplerOutput (steps 0-9 of the module doc)."""

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        if logits.shape != (batch.num_rows, batch.vocab_size):
            raise ValueError(
                f"logits shape {tuple(logits.shape)} != ({batch.num_rows}, {batch.vocab_size})"
            )
        raw = logits.float()  # [B, V]; never written to
        lse = torch.logsumexp(raw, dim=-1)  # [B]
        top_ids = top_lp = None
        if batch.max_num_logprobs is not None:
            top_vals, top_ids = raw.topk(batch.max_num_logprobs, dim=-1)  # [B, k]
            top_lp = top_vals - lse[:, None]
        x = _apply_penalties(raw, batch)
        if batch.num_greedy == batch.num_rows:
            token_ids = x.argmax(dim=-1)
        else:
            token_ids = _sample(x, batch)
            if batch.num_greedy:
                token_ids = torch.where(batch.greedy, x.argmax(dim=-1), token_ids)
        chosen = raw.gather(1, token_ids[:, None]).squeeze(1) - lse  # [B]
        return SamplerOutput(token_ids, chosen, top_ids, top_lp)


def _apply_penalties(x: torch.Tensor, b: SamplingBatch) -> torch.Tensor:
    """Steps 1-3, out of place. x: [B, V] fp32."""
    if b.ban_rows is not None:
        x = x.index_put((b.ban_rows, b.ban_token_ids), torch.tensor(-math.inf, device=x.device))
    if b.seen_mask is not None:
        penalty = torch.where(b.seen_mask, b.repetition_penalty, 1.0)  # [B, V]
        x = torch.where(x > 0, x / penalty, x * penalty)
    if b.output_counts is not None:
        counts = b.output_counts
        x = x - (b.frequency_penalty * counts + b.presence_penalty * (counts > 0))
    return x


def _sample(x: torch.Tensor, b: SamplingBatch) -> torch.Tensor:
    """Steps 5-9 for every row (the caller keeps only the random rows). Returns [B] int64."""
    if b.temperature is not None:
        x = x / b.temperature
    if b.top_p is not None:
        x = _top_k_top_p(x, b.top_k, b.top_p)
    elif b.top_k is not None:
        x = _top_k_only(x, b.top_k, b.max_top_k)
    if b.log_min_p is not None:
        x = x.masked_fill(x < x.amax(dim=-1, keepdim=True) + b.log_min_p, -math.inf)
    probs = x.softmax(dim=-1)  # [B, V]
    q = torch.empty_like(probs)  # [B, V] ~ Exp(1)
    if len(b.seeded_rows) < b.num_rows:
        q.exponential_()
    for row, generator in b.seeded_rows:
        q[row].exponential_(generator=generator)
    # CPU exponential_ can return exactly 0; 0/0 would make a banned token win the race.
    q.clamp_min_(torch.finfo(q.dtype).tiny)
    return probs.div_(q).argmax(dim=-1)


def _top_k_only(x: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    """Top-k through topk(max k) instead of a full sort. top_k: [B], V = disabled."""
    disabled = top_k >= x.shape[1]  # [B]
    k = top_k.masked_fill(disabled, 1)
    kth = x.topk(max_top_k, dim=-1).values.gather(1, (k - 1)[:, None])  # [B, 1]
    kth = kth.masked_fill(disabled[:, None], -math.inf)
    return x.masked_fill(x < kth, -math.inf)


def _top_k_top_p(x: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor) -> torch.Tensor:
    """Top-k then top-p on one ascending sort. top_k: [B] or None, top_p: [B, 1]."""
    x_sorted, order = x.sort(dim=-1)  # [B, V] ascending
    if top_k is not None:
        kth = x_sorted.gather(1, (x.shape[1] - top_k)[:, None])  # [B, 1]: k-th largest
        x_sorted = x_sorted.masked_fill(x_sorted < kth, -math.inf)
    # Ascending cumulative probability c[i]: the tokens above i carry 1 - c[i]; token i is dropped
    # when they alone already reach top_p, i.e. c[i] <= 1 - top_p. The largest token is kept.
    cum = x_sorted.softmax(dim=-1).cumsum(dim=-1)  # [B, V]
    drop = cum <= 1 - top_p
    drop[:, -1] = False
    x_sorted = x_sorted.masked_fill(drop, -math.inf)
    return torch.empty_like(x).scatter_(1, order, x_sorted)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """The per-request generator a seeded request keeps across steps (None without a seed)."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
