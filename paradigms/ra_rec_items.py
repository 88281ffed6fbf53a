"""RA-Rec, the earlier reading (``ra-rec-items``): one soft vector per history item, no user representation.

Kept beside ``ra-rec`` (``paradigms.ra_rec``, the paper's architecture) so both readings of the paper sit side by
side in every table; its results are those of ``ra-rec`` version 1.

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

from bench.contract import SplitView
from bench.errors import BenchError
from bench.registry import Context, Paradigm, TokenUsage, register
from bench.soft_prompts import LayerProjectors, block_input_scales, injected
from bench.training import train_bpr, training_samples
from paradigms.ra_rec import select_samples

class _Aligner(torch.nn.Module):
    """The trainable part (projectors, instruction) and the frozen pieces it drives."""

    def __init__(self, backbone, id_embeddings: torch.Tensor, options: dict):
        super().__init__()
        self.backbone = backbone
        n_inject = backbone.n_layers if options["layers"] == "all" else 1
        if options["layers"] not in ("all", "input"):
            raise BenchError(f"paradigms.ra-rec.layers must be 'all' or 'input', got {options['layers']!r}")
        self.projectors = LayerProjectors(n_inject, id_embeddings.shape[1], backbone.width, options["rank"])
        m = options["instruction_len"]
        self.instruction = torch.nn.Parameter(torch.randn(n_inject, m, backbone.width)) if m else None
        if options["similarity"] not in ("dot", "cosine"):
            raise BenchError(f"paradigms.ra-rec.similarity must be 'dot' or 'cosine', got {options['similarity']!r}")
        self.cosine_scale = options["score_temperature"] ** -0.5 if options["similarity"] == "cosine" else None
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
        pooled = self.backbone.pool(hidden, mask).float()
        if self.cosine_scale is None:
            return pooled
        return F.normalize(pooled, dim=-1) * self.cosine_scale  # dot products become cosine / temperature


@register("ra-rec-items")
class RARecItems(Paradigm):
    """RA-Rec, earlier reading: one soft vector per history item in every layer (see the module docstring)."""

    version = "1"
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
        "similarity": "dot",        # two-tower score: dot (raw pooled outputs) or cosine / score_temperature
        "score_temperature": 0.1,   # (scale-robust for backbones with large hidden norms, e.g. SmolLM2)
        "max_history": 20,          # soft positions at most (most recent items), also capped by the token budget
        "hard_prompt": "Recommend the next item for this user.",
        "denoise": False,           # drop samples whose target title shares no word with the history titles
        "diversity": False,         # sample evenly over history-length x target-popularity buckets
        "train_fraction": 1.0,      # share of the training samples to train on
        "micro_batch": 64,          # sequences per backbone pass when computing evaluation vectors
    }
    search_space = {"train.learning_rate": ("float", 1e-4, 1e-2, "log"),
                    "train.samples_per_user": ("int", 1, 20, "log")}

    def fit(self, split: SplitView, context: Context) -> None:
        self._split, self._ctx, opts = split, context, context.options
        llm = context.llm
        self._aligner = _Aligner(llm.backbone, context.encoder.item_embeddings.cpu(), opts)
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
        extra = self._infonce if opts["infonce_weight"] > 0 else None
        info = train_bpr(self, targets, split.n_items, context.config, context.generator, self._validate,
                         context.progress, extra_loss=extra, desc=f"{self.name} fit")
        self.info = info
        self._vectors, self._items = {}, self._item_vectors()

    # -- the task the shared training loop drives ------------------------------------------------------------
    def parameters(self):
        return self._aligner.trainable()

    def soft_history(self, history: np.ndarray) -> list[int]:
        """The most recent history items that get a soft position, oldest first."""
        room = self._ctx.llm.token_budget - self._aligner.instruction_len - len(self._hard)
        keep = max(0, min(len(history), self._ctx.options["max_history"], room))
        return [int(i) for i in history[len(history) - keep:]]

    def sample_vectors(self, samples: torch.Tensor) -> torch.Tensor:
        users, lengths = self._samples
        histories = [self._split.train_history(int(users[s]))[:int(lengths[s])] for s in samples]
        return self._aligner([self.soft_history(h) for h in histories], [self._hard] * len(histories))

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self._aligner([[int(i)] for i in items], [self._titles[int(i)] for i in items])

    def _infonce(self, items: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        unique, inverse = torch.unique(items, return_inverse=True)
        first = torch.full((len(unique),), len(items), dtype=torch.long)
        first = first.scatter_reduce(0, inverse, torch.arange(len(items)), "amin")
        hybrid = F.normalize(vectors[first], dim=-1)
        text = F.normalize(self._text_only[unique].to(hybrid.device), dim=-1)
        logits = hybrid @ text.T / self._ctx.options["temperature"]
        labels = torch.arange(len(unique), device=logits.device)
        return self._ctx.options["infonce_weight"] * F.cross_entropy(logits, labels)

    # -- evaluation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _user_vectors(self, stage: str) -> torch.Tensor:
        split, step = self._split, self._ctx.options["micro_batch"]
        rows = [torch.zeros(1, self._ctx.llm.backbone.width)]
        users = split.users
        for start in range(0, len(users), step):
            chunk = users[start:start + step]
            soft = [self.soft_history(split.history(int(u), stage)) for u in chunk]
            rows.append(self._aligner(soft, [self._hard] * len(chunk)).cpu())
        return torch.cat(rows)

    @torch.no_grad()
    def _item_vectors(self) -> torch.Tensor:
        step = self._ctx.options["micro_batch"]
        rows = [torch.zeros(1, self._ctx.llm.backbone.width)]
        for start in range(1, self._split.n_items, step):
            items = torch.arange(start, min(start + step, self._split.n_items))
            rows.append(self.item_vectors(items).cpu())
        return torch.cat(rows)

    def _validate(self) -> float:
        self._vectors, self._items = {"valid": self._user_vectors("valid")}, self._item_vectors()
        return self._ctx.validate(self.score)

    @torch.no_grad()
    def score(self, users: np.ndarray, stage: str) -> torch.Tensor:
        if stage not in self._vectors:
            self._vectors[stage] = self._user_vectors(stage)
        return self._vectors[stage][torch.as_tensor(users)] @ self._items.T

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
