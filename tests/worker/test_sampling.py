"""The decode loop's sampler: nucleus sampling draws exactly from the nucleus."""

import math

import torch

from worker.sampler import NUCLEUS_DRAWS, nucleus_by_sorting, sample

PROBS = [0.5, 0.25, 0.15, 0.06, 0.04]  # top-p 0.8: the nucleus is the first three


def rows(count: int, probs: list[float], temperature: float = 1.0, top_p: float = 0.8):
    logits = torch.tensor(probs).log().repeat(count, 1)
    temperatures = torch.full((count,), temperature)
    top_ps = torch.full((count,), top_p)
    generators = [torch.Generator().manual_seed(seed) for seed in range(count)]
    return logits, temperatures, top_ps, generators


def test_sampled_tokens_follow_the_renormalized_nucleus():
    logits, temperatures, top_ps, generators = rows(4000, PROBS)
    counts = torch.zeros(len(PROBS))
    for _ in range(5):
        tokens = sample(logits, temperatures, top_ps, generators)
        counts += torch.bincount(tokens, minlength=len(PROBS))
    total = counts.sum().item()
    assert counts[3] == counts[4] == 0, "tokens outside the nucleus never come"
    mass = sum(PROBS[:3])
    for token in range(3):
        expected = PROBS[token] / mass
        spread = 4 * math.sqrt(expected * (1 - expected) / total)
        assert abs(counts[token].item() / total - expected) < spread, (token, counts)


def test_the_sampler_agrees_with_sorting_the_distribution():
    # A long-tailed distribution over a real vocabulary's size.
    torch.manual_seed(0)
    logits = torch.randn(64, 50_000) * 3
    probs = torch.softmax(logits, dim=-1)
    for top_p in (0.05, 0.5, 0.95):
        top_ps = torch.full((64,), top_p)
        tokens = sample(logits, torch.ones(64), top_ps, [torch.Generator() for _ in range(64)])
        # In the nucleus: the mass of the likelier tokens is at most top-p.
        chance = probs.gather(-1, tokens[:, None])
        likelier = torch.where(probs > chance, probs, 0.0).sum(dim=-1)
        assert bool((likelier <= top_p).all())
        sorted_picks = nucleus_by_sorting(probs, top_ps, torch.rand(64))
        chance = probs.gather(-1, sorted_picks[:, None])
        assert bool((torch.where(probs > chance, probs, 0.0).sum(dim=-1) <= top_p).all())


def test_a_seed_gives_the_same_tokens_and_greedy_rows_take_the_likeliest():
    logits, temperatures, top_ps, _ = rows(6, PROBS)
    temperatures[::2] = 0.0  # rows 0, 2, 4 greedy

    def draws() -> list[int]:
        generators = [torch.Generator().manual_seed(seed) for seed in range(6)]
        return [sample(logits, temperatures, top_ps, generators).tolist() for _ in range(20)]

    first = draws()
    assert first == draws()
    assert {tuple(tokens[::2]) for tokens in first} == {(0, 0, 0)}
    assert len({tuple(tokens[1::2]) for tokens in first}) > 1  # the others are sampled


def test_a_nucleus_too_small_for_its_draws_is_found_by_sorting():
    # 1000 tokens, the likeliest at about 0.2 %: a draw lands in a nucleus of one token
    # so rarely that nearly every row exhausts its draws, and sorting decides.
    probs = torch.softmax(torch.linspace(2, 0, 1000), dim=-1)
    assert probs[0] < 0.01 and NUCLEUS_DRAWS < 50
    logits, temperatures, top_ps, generators = rows(200, probs.tolist(), top_p=1e-6)
    tokens = sample(logits, temperatures, top_ps, generators)
    assert tokens.tolist() == [0] * 200  # only the likeliest is in so small a nucleus
