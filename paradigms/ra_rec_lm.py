"""RA-Rec's user prefixes trained with the language-model loss (the objective of LLaRA and A-LLMRec).

As in ``ra-rec``, the frozen encoder's user representation is projected into every layer of the frozen decoder
as prefix keys/values, after ``instruction_len`` learnable instruction vectors per layer
(:mod:`bench.prefix_kv`); the hard prompt is RA-Rec's (instruction, then the history's titles, most recent first)
followed by the cue ``. Next:``. Training minimises the length-normalised negative log-likelihood of the target's
title after the prompt (``train.epochs`` epochs of ``train.batch_size`` samples, in micro-batches with exact
whole-batch gradients; nothing else trains). A candidate's score is the same likelihood of its title
(:mod:`bench.likelihood`), so it scores the sampled protocols' candidate lists.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from bench.contract import SplitView, Workload
from bench.likelihood import sequence_scores
from bench.prefix_kv import attention_input_scales, prefixed
from bench.progress import progress_bar
from bench.registry import Context, TokenUsage, register
from bench.tokens import FittedPrompt, fit_prompt
from bench.training import count_training_samples, select_samples, training_samples
from paradigms.id_translation import IDTranslation
from paradigms.likelihood import _Likelihood
from paradigms.ra_rec import _Prefix, auto_micro_batch


@register("ra-rec-lm")
class RARecLM(_Likelihood):
    """RA-Rec's user prefixes in every layer, trained on the target title's likelihood; scored by likelihood."""

    version = "1"
    description = ("RA-Rec with the LM loss: encoder user representation + instruction prefixes in every layer, "
                   "trained on the target title's likelihood; candidates scored by likelihood.")
    writer = IDTranslation
    needs_encoder = True
    defaults = {
        "instruction_len": 4,       # m: learnable instruction vectors per layer (0 = none)
        "ids": True,                # project the encoder's user representation into the prefixes
        "rank": None,               # int|null: shared low-rank factor of the projectors (null = full rank)
        "learning_rate": 0.01,      # of the prefixes (Adam)
        "prompt_tokens": 32,        # int|null: cap on the hard prompt's tokens, cue included (null = llm.token_budget)
        "hard_prompt": "Recommend the next item for this user.",
        "denoise": False,           # as in ra-rec
        "diversity": False,         # as in ra-rec
        "train_fraction": 1.0,      # share of the training samples to train on
        "micro_batch": None,        # int|null: sequences per backbone pass (null = as in ra-rec)
        "trained": True,            # False: score with the initial prefixes
    }
    search_space = {"learning_rate": ("float", 1e-3, 1e-1, "log"), "train.samples_per_user": ("int", 1, 20, "log")}

    @classmethod
    def workload(cls, split: SplitView, config, options) -> Workload:
        """Scoring as the zero-shot paradigms (but per seed: the prefixes are trained), plus per epoch one pass
        with a graph per sample (backward: 2)."""
        sequences, tokens = cls.scoring_work(split, config)
        scoring = Workload(llm_sequences=sequences, llm_tokens=tokens)
        samples = max(1, round(options["train_fraction"] * count_training_samples(
            split, config["train.samples_per_user"])))
        tokens = (options["prompt_tokens"] or config["llm.token_budget"] or 512) + config["llm.item_max_tokens"]
        epochs = config["train.epochs"] if options["trained"] else 0
        return scoring + Workload(training_samples=samples, llm_sequences=3 * epochs * samples,
                                  llm_tokens=3 * epochs * samples * tokens)

    def prompt_budget(self) -> int:
        return min(self._ctx.llm.token_budget, self._ctx.options["prompt_tokens"] or self._ctx.llm.token_budget)

    def write_prompt(self, user: int, history: np.ndarray, budget: int) -> FittedPrompt:
        """RA-Rec's hard prompt: the instruction, then titles most recent first."""
        titles = [self._split.title(int(i)) for i in history[::-1]]
        instruction = self._ctx.options["hard_prompt"]
        return fit_prompt(lambda kept: f"{instruction} The user bought: {'; '.join(kept)}", titles,
                          self._ctx.llm.backbone.count_tokens, budget)

    def fit(self, split: SplitView, context: Context) -> None:
        self.prepare(split, context)
        opts, backbone = context.options, context.llm.backbone
        self.micro_batch = opts["micro_batch"] or auto_micro_batch(backbone, self.prompt_budget())
        users, lengths, targets = select_samples(split, opts, context.seed,
                                                 *training_samples(split, context.config["train.samples_per_user"]))
        histories = [split.train_history(int(u))[:int(n)] for u, n in zip(users, lengths)]
        self.train_prompts = [self.cued_prompt(int(u), h) for u, h in zip(users, histories)]
        prompts = [self._tokenize(p.text) for p in self.train_prompts]
        self._samples = [(p, p + self._item_tokens[int(t)]) for p, t in zip(prompts, targets)]
        self._sample_reps = context.encoder.user_representations(histories).float()
        self._prefix = _Prefix(backbone.n_layers, self._sample_reps.shape[1], backbone.width,
                               opts["instruction_len"], opts["rank"], opts["ids"]).to(backbone.device)
        batch = backbone.tokenizer([p.text for p in self.train_prompts[:64]], padding=True, return_tensors="pt")
        self._prefix.calibrate(self._sample_reps[:1024],
                               attention_input_scales(backbone.model, backbone.blocks, dict(batch.to(backbone.device))))
        self._stage_reps: dict[str, torch.Tensor] = {}
        self.info = {"trained": False, "micro_batch": self.micro_batch, "epoch_loss": []}
        if opts["trained"]:
            self._train(context)

    def _tokenize(self, text: str) -> list[int]:
        return list(self._ctx.llm.backbone.tokenizer(text)["input_ids"])

    def _prefixes(self, reps: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer prefixes ``[b, P, d]`` for user representations ``reps`` ``[b, d_e]``."""
        return list(self._prefix(reps.to(self._ctx.llm.backbone.device), len(reps)))

    def _loss(self, index: np.ndarray) -> torch.Tensor:
        """Summed length-normalised NLL of the samples ``index`` (one backbone pass with a graph)."""
        backbone = self._ctx.llm.backbone
        with prefixed(backbone.model, backbone.blocks, self._prefixes(self._sample_reps[index])):
            scores = sequence_scores(backbone, [self._samples[i][1] for i in index],
                                     [len(self._samples[i][0]) for i in index])
        return -scores.sum()

    def _train(self, context: Context) -> None:
        """``train.epochs`` epochs of Adam over the prefixes; each batch's gradient is the exact mean over its
        samples, accumulated over micro-batches."""
        cfg, n = context.config, len(self._samples)
        optimiser = torch.optim.Adam(self.parameters(), lr=context.options["learning_rate"])
        size, epochs = cfg["train.batch_size"], cfg["train.epochs"]
        steps = -(-n // size)
        with progress_bar(context.progress, total=epochs * steps, desc=f"{self.name} fit", unit="batch") as bar:
            for _ in range(epochs):
                order, total = torch.randperm(n, generator=context.generator).numpy(), 0.0
                for start in range(0, n, size):
                    batch = order[start:start + size]
                    optimiser.zero_grad()
                    for micro in range(0, len(batch), self.micro_batch):
                        loss = self._loss(batch[micro:micro + self.micro_batch]) / len(batch)
                        loss.backward()
                        total += float(loss.detach()) * len(batch)
                    optimiser.step()
                    bar.update(1)
                self.info["epoch_loss"].append(round(total / n, 4))
                bar.set_postfix(loss=f"{total / n:.4f}")
        self.info["trained"] = True

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self._prefix.parameters() if p.requires_grad]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters()) if self._ctx.options["trained"] else 0

    def scoring_context(self, user: int, stage: str) -> contextlib.AbstractContextManager:
        """The user's prefixes (from the encoder's representation of the stage's history) in every layer."""
        if stage not in self._stage_reps:
            self._stage_reps[stage] = self._ctx.encoder.stage_representations(self._split, stage).float()
        backbone = self._ctx.llm.backbone
        with torch.no_grad():
            prefixes = self._prefixes(self._stage_reps[stage][user:user + 1])
        return prefixed(backbone.model, backbone.blocks, prefixes)

    def token_usage(self, users: np.ndarray, stage: str) -> list[TokenUsage]:
        rows = super().token_usage(users, stage)
        return [TokenUsage(r.user, r.hard_tokens, self._prefix.length, r.history_len, r.history_kept) for r in rows]
