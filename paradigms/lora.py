"""Fine-tuned text baselines: ID-Direct and ID-Translation with LoRA adapters on the backbone (``peft``).

The same prompts and item texts as the frozen-feature paradigms, but the backbone is adapted: LoRA matrices on
its attention projections (peft's default targets for the architecture, or ``targets``) train end to end with
the two linear towers in the shared BPR loop, like P5- or TALLRec-style fine-tuning at a small parameter cost.
They answer the efficiency question of the RA-Rec paper: accuracy per trainable parameter and per training
sample, alignment against fine-tuning.

The run's backbone is shared by every paradigm, so these adapt their own copy of it and leave it untouched.
Every training step runs the backbone on the batch's prompts and item texts (in micro-batches of
``micro_batch`` sequences with exact whole-batch gradients, :mod:`bench.training`); every validation recomputes
all users' and items' vectors. That is RA-Rec's cost class, not the frozen paradigms': use a GPU beyond the
smoke preset. Like RA-Rec they can train on a ``train_fraction`` of the samples (diversity-sampled with
``diversity``); the default preset gives both the same 20%, so they see the same samples.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch

from bench.contract import SplitView, Workload, prompt_budget, rankings
from bench.registry import Context, register
from bench.tokens import FittedPrompt
from bench.training import count_training_samples, select_samples, training_samples
from paradigms._text import Heads
from paradigms._two_tower import padded_rows
from paradigms.id_direct import IDDirect
from paradigms.id_translation import IDTranslation


def adapted_copy(model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets) -> torch.nn.Module:
    """A copy of the frozen ``model`` with LoRA adapters (only the adapters train; ``model`` is unchanged)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=list(targets) if targets else None)
    with warnings.catch_warnings():  # peft reads an attribute transformers deprecated: noise on every fit
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(copy.deepcopy(model), config)


class LoRAText:
    """Mixin over a :class:`paradigms._text.TextTwoTower` paradigm: its prompts through a LoRA-adapted backbone."""

    needs_llm = True
    lora_defaults = {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": None, "micro_batch": 16,
                     # which training samples, exactly as RA-Rec draws them (paradigms.ra_rec.select_samples)
                     "train_fraction": 1.0, "diversity": False, "denoise": False}
    search_space = {"rank": ("choice", [4, 8, 16]), "train.learning_rate": ("float", 1e-4, 1e-2, "log"),
                    "train.samples_per_user": ("int", 1, 20, "log")}

    @classmethod
    def workload(cls, split: SplitView, config, options) -> Workload:
        """Per epoch every batch row twice (with and without a graph; a backward counts 2), then all users and
        items at every validation and for the test stage."""
        users, items = split.n_users - 1, split.n_items - 1
        available = count_training_samples(split, config["train.samples_per_user"])
        samples = max(1, round(options["train_fraction"] * available))
        epochs, batches = config["train.epochs"], -(-samples // config["train.batch_size"])
        user_side = epochs * 4 * samples + (epochs + 2) * users
        item_side = epochs * 4 * (samples + config["train.negatives"] * batches) + (epochs + 2) * items
        return Workload(training_samples=samples, llm_sequences=user_side + item_side,
                        llm_tokens=user_side * prompt_budget(config) + item_side * config["llm.item_max_tokens"],
                        rankings=rankings(split, config, trained=True))

    def fit(self, split: SplitView, context: Context) -> None:
        self.check(split)
        self._split, self._ctx, opts = split, context, context.options
        llm, cfg = context.llm, context.config
        self.micro_batch = opts["micro_batch"]
        self._model = adapted_copy(llm.backbone.model, opts["rank"], opts["alpha"], opts["dropout"], opts["targets"])
        self._model.eval()  # no dropout in the backbone: the micro-batched step recomputes the same passes
        self._towers = Heads(llm.backbone.width, opts["dim"]).to(llm.backbone.device)
        users, lengths, targets = select_samples(split, opts, context.seed,
                                                 *training_samples(split, cfg["train.samples_per_user"]))
        self.train_prompts = [self.prompt(split, u, split.train_history(u)[:n], llm.token_budget,
                                          llm.backbone.count_tokens) for u, n in zip(users, lengths)]
        self._sample_ids = self._tokenize([p.text for p in self.train_prompts], llm.token_budget)
        self._item_ids = self._tokenize(["" if i == 0 else self.item_text(split, i) for i in range(split.n_items)],
                                        llm.items.max_tokens)
        self._prompts: dict[str, list[FittedPrompt]] = {}
        self.info = self.train_towers(targets, split.n_items, context)

    def _tokenize(self, texts: list[str], max_tokens: int) -> list[list[int]]:
        return self._ctx.llm.backbone.tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]

    def _pooled(self, ids: list[list[int]]) -> torch.Tensor:
        """[len(ids), width] float32 pooled outputs of the adapted backbone."""
        backbone = self._ctx.llm.backbone
        batch = backbone.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(backbone.device)
        hidden = self._model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return backbone.pool(hidden, batch["attention_mask"])

    # -- the task the shared training loop drives ------------------------------------------------------------
    def parameters(self):
        return [p for p in [*self._model.parameters(), *self._towers.parameters()] if p.requires_grad]

    def sample_vectors(self, samples: torch.Tensor) -> torch.Tensor:
        return self._towers.user(self._pooled([self._sample_ids[int(s)] for s in samples]))

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self._towers.item(self._pooled([self._item_ids[int(i)] for i in items]))

    # -- scoring: the adapted backbone's outputs change with training, so nothing is kept beyond the vectors ----
    @torch.no_grad()
    def _all_pooled(self, ids: list[list[int]]) -> torch.Tensor:
        """[1 + len(ids), width] pooled outputs (row 0: padding), on the backbone's device."""
        backbone = self._ctx.llm.backbone
        rows = padded_rows(lambda a, b: self._pooled(ids[a:b]), len(ids), self.micro_batch, backbone.width)
        return rows.to(backbone.device)

    def stage_features(self, stage: str) -> torch.Tensor:
        """``[n_users, width]`` pooled adapted-backbone outputs of every user's ``stage`` prompt (row 0: zeros)."""
        texts = [p.text for p in self.stage_prompts(stage)]
        return self._all_pooled(self._tokenize(texts, self._ctx.llm.token_budget))

    @torch.no_grad()
    def all_item_vectors(self) -> torch.Tensor:
        return self._towers.item(self._all_pooled(self._item_ids[1:]))

    def score(self, users: np.ndarray, stage: str) -> torch.Tensor:
        return super().score(users, stage).cpu()

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@register("id-direct-lora")
class IDDirectLoRA(LoRAText, IDDirect):
    """ID-Direct's prompts and item texts, LoRA-adapted backbone trained with the towers."""

    version = "2"  # 2: math attention kernel in bfloat16 training passes on a CPU (bench.precision)
    description = "ID-Direct fine-tuned: LoRA adapters on the backbone (peft), trained end to end with the towers."
    defaults = {**IDDirect.defaults, **LoRAText.lora_defaults}
    in_all = False


@register("id-translation-lora")
class IDTranslationLoRA(LoRAText, IDTranslation):
    """ID-Translation's prompts and titles, LoRA-adapted backbone trained with the towers."""

    version = "2"  # 2: math attention kernel in bfloat16 training passes on a CPU (bench.precision)
    description = ("ID-Translation fine-tuned: LoRA adapters on the backbone (peft), trained end to end with the "
                   "towers.")
    defaults = {**IDTranslation.defaults, **LoRAText.lora_defaults}
    in_all = False
