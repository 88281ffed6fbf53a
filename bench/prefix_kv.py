"""Prefix keys and values in every attention layer of a frozen transformers model (prefix tuning).

Within :func:`prefixed`, attention layer ``l`` attends, besides its text tokens, to ``P`` extra positions whose
keys and values are the layer's own frozen key/value projections of ``prefixes[l]`` (``[b, P, d]``, vectors in
the layer's hidden space; ``b = 1`` serves every row of a batch). Queries come from the text tokens only, so the output keeps the text's length and
pooling stays over text positions; the prefix carries no position (no position embedding, no rotary phase).

Mechanism: an attention function registered with transformers' attention interface (``bench_prefix``) that
appends the prefix keys/values and widens the attention mask, then calls PyTorch's scaled-dot-product
attention (:func:`bench.precision.sdpa_attention`). The model is switched to it only inside the ``with``
block. This acts at the attention level of every layer, works unchanged for encoders (BERT/MiniLM:
bidirectional) and decoders (LLaMA/SmolLM2: causal, grouped key/value heads), and gradients reach the prefixes
while the backbone's weights stay frozen. A per-layer ``past_key_values`` cache would need model-specific cache
plumbing (BERT only reads a cache as a decoder), and overwriting hidden states (``bench.soft_prompts``) makes the prefix positions part of the sequence.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from bench.precision import sdpa_attention
from bench.soft_prompts import block_input_scales

IMPLEMENTATION = "bench_prefix"
_ACTIVE: list[dict] = []  # stack of {id(attention module): (prefix [b, P, d], mass record or None)}


def _projections(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    for key, value in (("k_proj", "v_proj"), ("key", "value")):
        k, v = getattr(module, key, None), getattr(module, value, None)
        if isinstance(k, torch.nn.Linear) and isinstance(v, torch.nn.Linear):
            return k, v
    return None


def attention_modules(blocks: torch.nn.ModuleList) -> list[torch.nn.Module]:
    """The self-attention module of each block (the one owning key and value projections), in layer order."""
    found = []
    for index, block in enumerate(blocks):
        match = next((m for m in block.modules() if _projections(m) is not None), None)
        if match is None:
            raise ValueError(f"block {index} ({type(block).__name__}) has no attention with key/value projections")
        found.append(match)
    return found


def _widen_mask(mask: torch.Tensor | None, module, query: torch.Tensor, prefix_len: int, dtype) -> torch.Tensor | None:
    """The text mask [b, 1, T, T] (bool, additive float or None) with ``prefix_len`` visible columns in front."""
    b, t = query.shape[0], query.shape[2]
    if mask is None:
        if not getattr(module, "is_causal", False) or t == 1:
            return None
        mask = torch.ones(t, t, dtype=torch.bool, device=query.device).tril().view(1, 1, t, t)
    visible = (torch.ones if mask.dtype == torch.bool else torch.zeros)(
        mask.shape[0], mask.shape[1], mask.shape[2], prefix_len, dtype=mask.dtype, device=mask.device)
    return torch.cat([visible, mask], dim=-1).expand(b, -1, -1, -1) if mask.shape[0] == 1 else \
        torch.cat([visible, mask], dim=-1)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    entry = _ACTIVE[-1].get(id(module)) if _ACTIVE else None
    if entry is None:
        return sdpa_attention(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                              is_causal=is_causal, **kwargs)
    prefix, record = entry
    k_proj, v_proj = _projections(module)
    b, n_kv, _, head_dim = key.shape
    prefix = prefix.to(key.dtype)
    if prefix.shape[0] == 1 and b > 1:  # one prefix shared by every row (a user's candidates)
        prefix = prefix.expand(b, -1, -1)
    p_len = prefix.shape[1]
    p_key = k_proj(prefix).view(b, p_len, n_kv, head_dim).transpose(1, 2)
    p_value = v_proj(prefix).view(b, p_len, n_kv, head_dim).transpose(1, 2)
    key, value = torch.cat([p_key, key], dim=2), torch.cat([p_value, value], dim=2)
    mask = _widen_mask(attention_mask, module, query, p_len, key.dtype)
    if record is not None:
        record.append(_prefix_mass(module, query, key, mask, scaling, p_len))
    return sdpa_attention(module, query, key, value, mask, dropout=dropout, scaling=scaling, is_causal=False,
                          **kwargs)


@torch.no_grad()
def _prefix_mass(module, query, key, mask, scaling, p_len) -> float:
    """Mean share of attention probability that text queries put on the prefix positions."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    logits = query @ key.transpose(2, 3) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return float(logits.softmax(-1)[..., :p_len].sum(-1).mean())


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(IMPLEMENTATION, _attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def prefixed(model: torch.nn.Module, blocks: torch.nn.ModuleList, prefixes: Sequence[torch.Tensor | None],
             mass: list | None = None) -> Iterator[None]:
    """Within the block, attention layer ``l`` of ``model`` also attends to ``prefixes[l]`` ([b, P_l, d]).

    ``prefixes[l] = None`` leaves layer ``l`` as it is. If ``mass`` is a list, the mean attention share on the
    prefix of every injected layer is appended to it (a diagnostic; it costs one more attention product).
    """
    if len(prefixes) != len(blocks):
        raise ValueError(f"{len(prefixes)} prefixes for {len(blocks)} blocks")
    _register()
    modules = attention_modules(blocks)
    _ACTIVE.append({id(m): (p, mass) for m, p in zip(modules, prefixes) if p is not None})
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = previous
        _ACTIVE.pop()


def attention_input_scales(model: torch.nn.Module, blocks: torch.nn.ModuleList, batch: dict) -> torch.Tensor:
    """Standard deviation of what each layer's key/value projections read, on a real batch: ``[L]``.

    Prefix vectors started at this scale are as loud to the frozen attention as the text tokens around them.
    """
    return block_input_scales(model, [_projections(m)[0] for m in attention_modules(blocks)], batch)
