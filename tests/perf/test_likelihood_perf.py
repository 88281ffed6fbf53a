"""Likelihood scoring of candidates (``make perf``): SmolLM2 scoring 64 candidate titles after one user's prompt,
with the prompt's keys and values computed once (the harness's path) against running prompt + candidate whole
for every candidate, in one run. Prints candidates per second of both; asserts only the ratio."""
import json

import pytest
import torch

from bench.likelihood import continuation_scores
from bench.llm import load_backbone
from conftest import best_of


@pytest.mark.parametrize("prompt_tokens", [64, 256])
def test_reusing_the_prompts_keys_and_values_pays(prompt_tokens):
    backbone = load_backbone("smollm2-135m", torch.device("cpu"))
    tok = backbone.tokenizer
    history = "; ".join(f"Movie number {i} (19{i % 100:02d})" for i in range(80))
    prompt = tok(f"The user bought: {history}")["input_ids"][:prompt_tokens]
    candidates = [tok(f" Some Title {i} (19{i % 100:02d})", add_special_tokens=False)["input_ids"]
                  for i in range(64)]
    fns = {"cached": lambda: continuation_scores(backbone, prompt, candidates),
           "whole": lambda: continuation_scores(backbone, prompt, candidates, reuse_prompt=False)}
    best = best_of(fns, repeats=2)
    report = {"prompt_tokens": prompt_tokens, "candidates": len(candidates), "dtype": str(backbone.dtype),
              "candidates_per_s": {k: round(len(candidates) / v, 1) for k, v in best.items()},
              "speedup": round(best["whole"] / best["cached"], 2)}
    print("\nlikelihood scoring, SmolLM2:", json.dumps(report))
    assert best["whole"] / best["cached"] >= 2.0
