"""The next token of each row: greedy, or nucleus sampling with the row's own temperature,
top-p and random generator (so that a seed reproduces its text whatever rows share the
pass)."""

import torch

#: Draws a sampled row gets before its nucleus is found by sorting (see :func:`sample`).
NUCLEUS_DRAWS = 8


def sample(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_ps: torch.Tensor,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """Next token per row: greedy where the temperature is 0, else nucleus sampling with
    the row's own temperature, top-p and random generator.

    Nucleus sampling without sorting the vocabulary: a row draws a token from its whole
    distribution (one uniform draw, inverse CDF in vocabulary order) and keeps it if it is
    in the nucleus — the probability of the tokens likelier than it is at most top-p —
    else draws again. What is kept is distributed exactly as the nucleus, renormalized;
    a draw is kept with the nucleus' probability (at least top-p), so most rows need one
    draw, and a row that needs more than ``NUCLEUS_DRAWS`` gets its nucleus by sorting.
    Each pass is a few linear scans of the vocabulary, where sorting it (which a flat
    distribution, with a nucleus of thousands of tokens, needs) costs many times more.
    """
    greedy = temperatures <= 0
    sampled = (~greedy).nonzero().flatten()
    # ``max`` gives argmax's index (the first of equal maxima) in a third of its time.
    if sampled.numel() == 0:
        return logits.max(dim=-1).indices
    tokens = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    if bool(greedy.any()):
        tokens[greedy] = logits[greedy].max(dim=-1).indices
    probs = torch.softmax(logits[sampled] / temperatures[sampled, None], dim=-1)
    cdf = probs.cumsum(dim=-1)
    nucleus = top_ps[sampled]
    rows = sampled.tolist()
    picked = torch.empty_like(sampled)
    left = torch.arange(len(rows), device=logits.device)  # rows not picked yet
    for _ in range(NUCLEUS_DRAWS):
        draws = _draws(generators, [rows[i] for i in left.tolist()], logits.device)
        cdf_left = cdf[left]
        targets = (draws * cdf_left[:, -1])[:, None]
        candidates = torch.searchsorted(cdf_left, targets).clamp(max=cdf.shape[-1] - 1)
        probs_left = probs[left]
        chance = probs_left.gather(-1, candidates)
        likelier = torch.where(probs_left > chance, probs_left, 0.0).sum(dim=-1)
        inside = likelier <= nucleus[left]
        picked[left[inside]] = candidates.squeeze(-1)[inside]
        left = left[~inside]
        if left.numel() == 0:
            break
    else:
        draws = _draws(generators, [rows[i] for i in left.tolist()], logits.device)
        picked[left] = nucleus_by_sorting(probs[left], nucleus[left], draws)
    tokens[sampled] = picked
    return tokens


def _draws(
    generators: list[torch.Generator], rows: list[int], device: torch.device
) -> torch.Tensor:
    """One uniform draw for each of ``rows``, from the row's own generator."""
    return torch.stack([torch.rand((), generator=generators[row], device=device) for row in rows])


def nucleus_by_sorting(
    probs: torch.Tensor, nucleus: torch.Tensor, draws: torch.Tensor
) -> torch.Tensor:
    """Each row's pick within its nucleus, found by sorting its distribution."""
    top, order = probs.sort(dim=-1, descending=True)
    outside = top.cumsum(dim=-1) - top > nucleus[:, None]  # the first token always stays
    cdf = top.masked_fill(outside, 0.0).cumsum(dim=-1)
    choice = torch.searchsorted(cdf, (draws[:, None] * cdf[:, -1:]).contiguous())
    return order.gather(-1, choice.clamp(max=probs.shape[-1] - 1)).squeeze(-1)
