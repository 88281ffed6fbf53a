"""RA-Rec, the earlier reading (``ra-rec-items``): one soft vector per history item, no user representation.

Kept beside ``ra-rec`` (``paradigms.ra_rec``, the paper's architecture) so both readings of the paper sit side by
side in every table; it is the architecture of ``ra-rec`` version 1.

* Reparameterization: for every layer l, ``p_l(e) = W_l e + b_l`` maps the frozen ID encoder's item embedding
  to that layer's width (optionally ``W_l = A_l B`` with a shared low-rank ``B``).
* Contextual instruction: ``m`` learnable vectors per layer, placed before the ID soft prompts.
* Hybrid prompt: ``[instruction][one soft vector per history item][hard prompt tokens]``; the soft part
  overwrites the prefix positions of every block's input (forward pre-hooks, see ``bench.soft_prompts``).
* Item side: ``[instruction][the item's soft vector][title tokens]`` through the same frozen LLM.
* Two-tower scoring ``s(u, i) = <g(u), h(i)>`` with g, h the backbone's pooled outputs (or, with
  ``similarity: cosine``, their cosine divided by ``score_temperature``).
* Loss: the shared BPR loop + ``infonce_weight`` x InfoNCE between an item's hybrid representation and its
  text-only representation (the frozen backbone's pooled title features).
* Training data: optional denoising and diversity sampling, and ``train_fraction`` of the samples.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.contract import SplitView, Workload, prompt_budget, rankings
from bench.registry import Context, TokenUsage, register
from bench.soft_prompts import LayerProjectors, block_input_scales, injected
from bench.training import count_training_samples, select_samples, training_samples
from paradigms._two_tower import SimilarityHead, TwoTower, padded_rows


class _Aligner(torch.nn.Module):
    """The trainable part (projectors, instruction) and the frozen pieces it drives."""

    def __init__(self, backbone, id_embeddings: torch.Tensor, options: dict, n_inject: int, head: SimilarityHead):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.projectors = LayerProjectors(n_inject, id_embeddings.shape[1], backbone.width, options["rank"])
        m = options["instruction_len"]
        self.instruction = torch.nn.Parameter(torch.randn(n_inject, m, backbone.width)) if m else None
        self.register_buffer("id_embeddings", id_embeddings.float(), persistent=False)
        self.to(backbone.device)

    def calibrate(self, texts: list[str]) -> None:
        """Start soft prompts at the scale of each layer's real hidden states (measured on ``texts``)."""
        batch = self.backbone.tokenizer(texts, padding=True, return_tensors="pt").to(self.backbone.device)
        scales = block_input_scales(self.backbone.model, self.backbone.blocks, dict(batch))
        scales = scales[:self.projectors.weight.shape[0]].to(self.backbone.device)
        self.projectors.calibrate(self.id_embeddings[1:1025], scales)
        if self.instruction is not None:
            with torch.no_grad():
                self.instruction.mul_(scales.view(-1, 1, 1))

    @property
    def instruction_len(self) -> int:
        return 0 if self.instruction is None else self.instruction.shape[1]

    def trainable(self) -> list[torch.nn.Parameter]:
        """Projectors and instruction vectors (the backbone is a plain attribute, not a submodule)."""
        return [p for p in self.parameters() if p.requires_grad]

    def layout(self, soft_items: list[list[int]], hard: list[list[int]]):
        """Token ids ``[b, H]``, soft item ids ``[b, S]`` and the attention mask ``[b, m + S + H]`` of a batch."""
        b, m = len(soft_items), self.instruction_len
        width_s, width_h = max(len(s) for s in soft_items), max(len(h) for h in hard)
        pad = self.backbone.tokenizer.pad_token_id or 0
        ids = torch.full((b, width_h), pad, dtype=torch.long)
        soft = torch.zeros(b, width_s, dtype=torch.long)
        mask = torch.zeros(b, m + width_s + width_h, dtype=torch.long)
        mask[:, :m] = 1
        for row, (items, tokens) in enumerate(zip(soft_items, hard)):
            soft[row, :len(items)] = torch.as_tensor(items, dtype=torch.long)
            mask[row, m:m + len(items)] = 1
            ids[row, :len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
            mask[row, m + width_s:m + width_s + len(tokens)] = 1
        return ids, soft, mask

    def forward(self, soft_items: list[list[int]], hard: list[list[int]]) -> torch.Tensor:
        """Pooled backbone output [b, width] of hybrid prompts (one list of soft items and of hard ids per row)."""
        device, model = self.backbone.device, self.backbone.model
        ids, soft, mask = (t.to(device) for t in self.layout(soft_items, hard))
        b, prefix_len = len(soft_items), self.instruction_len + soft.shape[1]
        dtype = next(model.parameters()).dtype
        hard_embeds = model.get_input_embeddings()(ids)
        embeds = torch.cat([torch.zeros(b, prefix_len, hard_embeds.shape[-1], dtype=dtype, device=device),
                            hard_embeds], dim=1)
        soft_vectors = self.projectors(self.id_embeddings[soft])            # [L', b, S, d]
        prefixes = []
        for layer in range(soft_vectors.shape[0]):
            parts = [] if self.instruction is None else [self.instruction[layer].expand(b, -1, -1)]
            prefixes.append(torch.cat(parts + [soft_vectors[layer]], dim=1))
        prefixes += [None] * (self.backbone.n_layers - len(prefixes))
        with injected(self.backbone.blocks, prefixes):
            hidden = model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return self.head(self.backbone.pool(hidden, mask).float())


@register("ra-rec-items")
class RARecItems(TwoTower):
    """RA-Rec, earlier reading: one soft vector per history item in every layer (see the module docstring)."""

    version = "3"  # 2: InfoNCE as row losses, training in micro_batch passes; 3: math attention kernel in bfloat16
    #                training passes on a CPU (bench.precision.attention_kernel)
    description = "RA-Rec, earlier reading: one soft vector per history item in every layer, no user representation."
    in_all = False
    needs_encoder = True
    needs_llm = True
    defaults = {
        "instruction_len": 4,       # m: learnable instruction vectors per layer (0 = none)
        "layers": "all",            # where soft prompts enter: all layers, or the input layer only
        "rank": None,               # shared low-rank factor of the projectors (None = full rank)
        "infonce_weight": 0.1,      # lambda of the InfoNCE alignment loss (0 = off)
        "temperature": 0.1,         # InfoNCE temperature
        "similarity": "dot",        # two-tower score: dot (raw pooled outputs), cosine / score_temperature
        "score_temperature": 0.1,   #   (scale-robust for large hidden norms, e.g. SmolLM2) or auto (cosine for
                                    #   decoders, dot for encoders)
        "max_history": 20,          # soft positions at most (most recent items), also capped by the token budget
        "hard_prompt": "Recommend the next item for this user.",
        "denoise": False,           # drop samples whose target title shares no word with the history titles
        "diversity": False,         # sample evenly over history-length x target-popularity buckets
        "train_fraction": 1.0,      # share of the training samples to train on
        "micro_batch": 64,          # sequences per backbone pass, in training steps (exact whole-batch gradients)
                                    #   and when computing evaluation vectors
    }
    search_space = {"train.learning_rate": ("float", 1e-4, 1e-2, "log"),
                    "train.samples_per_user": ("int", 1, 20, "log")}

    @classmethod
    def workload(cls, split: SplitView, config, options) -> Workload:
        """The text-only title features once (cached); per epoch every batch row twice (with and without a
        graph; a backward counts 2); all users and items at every validation and for the test stage. A user
        sequence is the instruction, at most ``max_history`` soft items and the hard prompt (counted at two
        tokens a word, plus two), an item sequence one soft item and its title."""
        users, items = split.n_users - 1, split.n_items - 1
        samples = max(1, round(options["train_fraction"] * count_training_samples(
            split, config["train.samples_per_user"])))
        epochs, batches = config["train.epochs"], -(-samples // config["train.batch_size"])
        user_tokens = min(prompt_budget(config), options["instruction_len"] + options["max_history"]
                          + 2 * len(options["hard_prompt"].split()) + 2)
        item_tokens = options["instruction_len"] + 1 + config["llm.item_max_tokens"]
        user_side = epochs * 4 * samples + (epochs + 2) * users
        item_side = epochs * 4 * (samples + config["train.negatives"] * batches) + (epochs + 2) * items
        return Workload(prompts=items, prompt_tokens=items * config["llm.item_max_tokens"], training_samples=samples,
                        llm_sequences=user_side + item_side, llm_tokens=user_side * user_tokens + item_side * item_tokens,
                        rankings=rankings(split, config, trained=True))

    def fit(self, split: SplitView, context: Context) -> None:
        self._split, self._ctx, opts = split, context, context.options
        llm = context.llm
        self.micro_batch = opts["micro_batch"]
        n_inject = llm.backbone.n_layers if self.option(opts, "layers", ("all", "input")) == "all" else 1
        self._aligner = _Aligner(llm.backbone, context.encoder.item_embeddings.cpu(), opts, n_inject,
                                 self.similarity_head(opts, llm.backbone))
        tokenizer = llm.backbone.tokenizer
        self._hard = tokenizer(opts["hard_prompt"])["input_ids"]
        titles = [split.title(i) for i in range(split.n_items)]
        self._aligner.calibrate([opts["hard_prompt"]] + titles[1:65])
        self._titles = tokenizer(titles, truncation=True, max_length=llm.items.max_tokens)["input_ids"]
        text_only = llm.items.encode(titles[1:], context.progress, f"{self.name} item titles")
        self._text_only = torch.cat([torch.zeros(1, text_only.shape[1]), text_only])
        users, lengths, targets = select_samples(split, opts, context.seed,
                                                 *training_samples(split, context.config["train.samples_per_user"]))
        self._samples = (users, lengths)
        self.info = self.train_towers(targets, split.n_items, context)

    # -- the task the shared training loop drives ------------------------------------------------------------
    def parameters(self):
        return self._aligner.trainable()

    def soft_history(self, history: np.ndarray) -> list[int]:
        """The most recent history items that get a soft position, oldest first."""
        room = self._ctx.llm.token_budget - self._aligner.instruction_len - len(self._hard)
        keep = max(0, min(len(history), self._ctx.options["max_history"], room))
        return [int(i) for i in history[len(history) - keep:]]

    def _soft_prompts(self, histories: list[np.ndarray]) -> torch.Tensor:
        return self._aligner([self.soft_history(h) for h in histories], [self._hard] * len(histories))

    def sample_vectors(self, samples: torch.Tensor) -> torch.Tensor:
        users, lengths = self._samples
        return self._soft_prompts([self._split.train_history(int(users[s]))[:int(lengths[s])] for s in samples])

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self._aligner([[int(i)] for i in items], [self._titles[int(i)] for i in items])

    def training_vectors(self, side: str, ids: torch.Tensor, batch: torch.Tensor):
        """Item rows carry ``infonce_weight`` x InfoNCE between an item's hybrid vector and the text-only title
        features of the batch's distinct items: a mean over distinct items, so a row of an item that occurs c
        times in the batch carries 1/c of its item's term (its c rows have the same vector)."""
        vectors, _ = super().training_vectors(side, ids, batch)
        weight = self._ctx.options["infonce_weight"]
        if side == "user" or weight <= 0:
            return vectors, None
        unique, counts = torch.unique(batch, return_counts=True)
        text = F.normalize(self._text_only[unique].to(vectors.device), dim=-1)
        logits = F.normalize(vectors, dim=-1) @ text.T / self._ctx.options["temperature"]
        own = torch.searchsorted(unique, ids)
        per_item = F.cross_entropy(logits, own.to(logits.device), reduction="none") / counts[own].to(logits.device)
        return vectors, weight * per_item * len(batch) / len(unique)

    # -- scoring -------------------------------------------------------------------------------------------
    def user_vectors(self, stage: str) -> torch.Tensor:
        split = self._split
        users = split.users
        return padded_rows(lambda a, b: self._soft_prompts([split.history(int(u), stage) for u in users[a:b]]),
                           len(users), self.micro_batch, self._ctx.llm.backbone.width)

    def all_item_vectors(self) -> torch.Tensor:
        return padded_rows(lambda a, b: self.item_vectors(torch.arange(a + 1, b + 1)), self._split.n_items - 1,
                           self.micro_batch, self._ctx.llm.backbone.width)

    def token_usage(self, users: np.ndarray, stage: str) -> list[TokenUsage]:
        rows = []
        for user in users:
            history = self._split.history(int(user), stage)
            kept = len(self.soft_history(history))
            rows.append(TokenUsage(user=int(user), hard_tokens=len(self._hard),
                                   soft_tokens=self._aligner.instruction_len + kept, history_len=len(history),
                                   history_kept=kept))
        return rows

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._aligner.trainable())
