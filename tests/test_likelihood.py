"""Likelihood scoring of candidates (bench.likelihood) on a tiny randomly initialised LLaMA decoder with tied
embeddings: the score is transformers' own log-likelihood of the continuation, with or without the prompt's
cached keys and values."""
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.errors import BenchError
from bench.likelihood import continuation_scores
from bench.llm import Backbone

PROMPT = [5, 17, 9, 33, 2, 41]
CANDIDATES = [[7], [12, 3, 99], [64, 8], [1, 2, 3, 4, 5], [77, 76]]


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=120,
                                      tie_word_embeddings=True)).eval()
    backbone = Backbone("tiny-llama", lm.model, SimpleNamespace(pad_token_id=0), is_decoder=True,
                        fingerprint="tiny-llama")
    return lm, backbone


def _direct(lm, prompt, continuation) -> float:
    """transformers' own computation: the causal LM's log-softmax over prompt + continuation, mean over the
    continuation's tokens."""
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logprobs = lm(input_ids=ids).logits.float().log_softmax(-1)[0]
    p = len(prompt)
    return float(sum(logprobs[p - 1 + t, tok] for t, tok in enumerate(continuation)) / len(continuation))


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_the_score_is_the_decoders_length_normalised_log_likelihood(decoder, reuse, batch_size):
    lm, backbone = decoder
    scores = continuation_scores(backbone, PROMPT, CANDIDATES, batch_size=batch_size, reuse_prompt=reuse)
    assert scores.dtype == torch.float32
    expected = torch.tensor([_direct(lm, PROMPT, c) for c in CANDIDATES])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_caching_the_prompts_keys_and_values_changes_no_score(decoder):
    _, backbone = decoder
    cached = continuation_scores(backbone, PROMPT, CANDIDATES, batch_size=3, reuse_prompt=True)
    whole = continuation_scores(backbone, PROMPT, CANDIDATES, batch_size=3, reuse_prompt=False)
    torch.testing.assert_close(cached, whole, atol=1e-5, rtol=1e-5)
    assert len(set(cached.tolist())) == len(CANDIDATES)  # the candidates are told apart


def test_encoders_and_untied_heads_are_refused(decoder):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                                vocab_size=120))
    encoder = Backbone("tiny-bert", bert, SimpleNamespace(pad_token_id=0), is_decoder=False, fingerprint="b")
    with pytest.raises(BenchError, match="needs a decoder"):
        continuation_scores(encoder, PROMPT, CANDIDATES)
    untied = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=120,
                                          tie_word_embeddings=False))
    backbone = Backbone("untied", untied.model, SimpleNamespace(pad_token_id=0), is_decoder=True, fingerprint="u")
    with pytest.raises(BenchError, match="tie_word_embeddings"):
        continuation_scores(backbone, PROMPT, CANDIDATES)
