"""Candidate scoring by a frozen decoder's likelihood (the ``-lm`` paradigms; issue 22).

A candidate's score is the length-normalised log-likelihood of its text after the user's prompt:
``(1 / T) * sum_t log p(c_t | prompt, c_<t)`` over the candidate's ``T`` tokens, in nats per token. The prompt runs
through the model once per user; its keys and values (a transformers ``DynamicCache``) are copied for each batch
of candidates, which then run only their own tokens. Logits come from the decoder's output embedding (tied to
its input embedding in the supported backbones); softmax, sums and scores are float32 whatever the backbone's
dtype.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Sequence

import torch

from bench.errors import ParadigmUnavailable
from bench.llm import Backbone


def output_embedding(backbone: Backbone) -> torch.Tensor:
    """The decoder's output embedding ``[vocab, width]`` in the backbone's dtype.

    Only decoders whose output embedding is their input embedding (``tie_word_embeddings``) are supported: the
    harness loads the base model without a separate language-model head. Anything else raises
    :class:`ParadigmUnavailable` (a run skips the paradigm and says why)."""
    cached = getattr(backbone, "_output_embedding", None)
    if cached is not None:
        return cached
    if not backbone.is_decoder:
        raise ParadigmUnavailable(f"backbone '{backbone.name}' is an encoder; likelihood scoring needs a decoder: use "
                         "--llm smollm2-135m (or another decoder with tied embeddings)")
    if not getattr(backbone.model.config, "tie_word_embeddings", False):
        raise ParadigmUnavailable(f"backbone '{backbone.name}' has a language-model head of its own (tie_word_embeddings "
                         "is false), which bench does not load; use a decoder with tied embeddings such as "
                         "smollm2-135m")
    weight = backbone.model.get_input_embeddings().weight.detach()
    backbone._output_embedding = weight
    return weight


def _pad(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids ``[n, T]`` and their mask."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids.to(device), mask.to(device)


def _token_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """log p(targets) ``[..., T]`` (float32) from the hidden states ``[..., T, d]`` that predict them.

    The product with the output embedding runs in the hidden states' dtype (in bfloat16 it rounds the logits no
    more than the bfloat16 hidden states already do, and it is most of a candidate's cost); the softmax runs in
    float32."""
    logits = hidden @ head.T.to(hidden.dtype)
    return logits.float().log_softmax(dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _normalised(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(logprobs.dtype)
    return (logprobs * mask).sum(dim=1) / mask.sum(dim=1)


def continuation_scores(backbone: Backbone, prompt: Sequence[int], continuations: Sequence[Sequence[int]],
                        batch_size: int = 32, reuse_prompt: bool = True,
                        context: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """Length-normalised log-likelihood (nats per token, float32 ``[len(continuations)]``) of each continuation
    (token ids, at least one each) after ``prompt`` (token ids, at least one).

    ``reuse_prompt`` runs the prompt once and reuses its keys and values for every batch of ``batch_size``
    continuations; ``False`` runs prompt + continuation whole for each (the reference the cache must equal).
    ``context`` wraps every model call (e.g. :func:`bench.prefix_kv.prefixed` with batch-1 prefixes expanded)."""
    if not prompt or any(not c for c in continuations):
        raise ValueError("the prompt and every continuation need at least one token")
    head, model = output_embedding(backbone), backbone.model
    pad = backbone.tokenizer.pad_token_id or 0
    device, context = backbone.device, context or contextlib.nullcontext()
    out = torch.empty(len(continuations), dtype=torch.float32)
    cache_keyword = _cache_keyword(model)
    # Batches of similar length: padding to each batch's longest continuation is what a batch wastes.
    order = sorted(range(len(continuations)), key=lambda i: len(continuations[i]))
    with torch.no_grad(), context:
        if reuse_prompt:
            first = model(input_ids=torch.tensor([list(prompt)], device=device), use_cache=True)
            cache, last = _returned_cache(first), first.last_hidden_state[:, -1:]
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            chunk = [continuations[i] for i in rows]
            if reuse_prompt:
                out[rows] = _cached_batch(model, cache_keyword, cache, last, len(prompt), chunk, pad, head, device)
            else:
                out[rows] = _whole_batch(model, prompt, chunk, pad, head, device)
    return out


def _cached_batch(model, keyword: str, cache, last: torch.Tensor, prompt_len: int, chunk, pad: int, head,
                  device) -> torch.Tensor:
    """Scores of one batch of continuations after the prompt whose cache is ``cache`` (passed as ``keyword``)."""
    ids, mask = _pad(chunk, pad, device)
    n, length = ids.shape
    batch_cache = copy.deepcopy(cache)
    batch_cache.batch_repeat_interleave(n)
    attention = torch.cat([torch.ones(n, prompt_len, dtype=mask.dtype, device=device), mask], dim=1)
    positions = torch.arange(prompt_len, prompt_len + length, device=device).expand(n, length)
    hidden = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True,
                   **{keyword: batch_cache}).last_hidden_state
    predictors = torch.cat([last.expand(n, 1, -1), hidden[:, :-1]], dim=1)  # the state before each token
    return _normalised(_token_logprobs(predictors, ids, head), mask).cpu()


def _cache_keyword(model) -> str:
    """The keyword a model's ``forward`` takes the cache by: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output):
    cache = getattr(output, "cache", None)
    return output.past_key_values if cache is None else cache


def _whole_batch(model, prompt, chunk, pad: int, head, device) -> torch.Tensor:
    sequences = [list(prompt) + list(c) for c in chunk]
    return _sequence_scores(model, sequences, [len(prompt)] * len(chunk), pad, head, device).cpu()


def sequence_scores(backbone: Backbone, sequences: Sequence[Sequence[int]],
                    prompt_lengths: Sequence[int]) -> torch.Tensor:
    """Length-normalised log-likelihood ``[b]`` (float32, on the backbone's device, with a graph when gradients
    are on) of the tokens of each sequence after its first ``prompt_lengths[i]`` tokens, each sequence run whole
    (the language-model loss of training is its negative mean)."""
    return _sequence_scores(backbone.model, sequences, prompt_lengths, backbone.tokenizer.pad_token_id or 0,
                            output_embedding(backbone), backbone.device)


def _sequence_scores(model, sequences, prompt_lengths, pad: int, head, device) -> torch.Tensor:
    ids, mask = _pad(sequences, pad, device)
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    rows, positions, targets = [], [], []
    for row, (seq, start) in enumerate(zip(sequences, prompt_lengths)):
        if not 0 < start < len(seq):
            raise ValueError(f"sequence {row}: a prompt of {start} tokens leaves nothing to score in {len(seq)}")
        rows += [row] * (len(seq) - start)
        positions += range(start - 1, len(seq) - 1)
        targets += seq[start:]
    rows_t = torch.tensor(rows, device=device)
    logprobs = _token_logprobs(hidden[rows_t, torch.tensor(positions, device=device)],
                               torch.tensor(targets, device=device), head)
    sums = torch.zeros(len(sequences), device=device).index_add(0, rows_t, logprobs)
    return sums / torch.bincount(rows_t, minlength=len(sequences)).to(sums.dtype)
