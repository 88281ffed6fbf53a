"""RA-Rec (arXiv 2402.04527): the ID encoder's user and item representations as prefixes of every LLM layer.

As the paper's abstract and a public reading note of its method describe it (no code is published):

* ID representations: the frozen encoder's user representation ``u`` (SASRec: the last position's hidden state
  for the history up to the stage) and the item's ID embedding ``i``.
* Reparameterization: per layer l, separate projectors for users and items, ``p_u^l = W_u^l u + b_u^l`` and
  ``p_i^l = W_i^l i + b_i^l`` (``rank`` shares a low-rank factor across layers).
* Contextual instruction: ``m`` learnable vectors per layer and tower, ``d^l = [c^l ; p^l]``.
* ``d^l`` enters layer l as prefix keys and values: the layer's frozen key/value projections of ``d^l`` are
  attended to by the text tokens, queries come from the text only (``bench.prefix_kv``: an attention-level
  function, so it acts inside every layer of encoders and decoders alike). Pooling is over text positions.
* Hard prompt: a task instruction and the history's titles, most recent first, within the token budget; the
  item prompt is the item's title with the item's own prefix.
* Score ``s(u, i) = <h_u, h_i>`` of the pooled last-layer outputs (``similarity: cosine`` divides the cosine
  by ``score_temperature`` instead, for backbones with large hidden norms).
* Loss: the shared BPR loop + ``l2`` x squared prefixes + ``infonce_weight`` x (InfoNCE_user + InfoNCE_item),
  InfoNCE at every layer between the pooled hidden states of the ID-carrying pass and of a text-only pass of
  the same prompt (the latter is fixed, computed once per prompt and kept in bfloat16).
* Training data: optional denoising and diversity sampling, ``train_fraction`` of the samples.

Only the projectors and instruction vectors train; backbone and ID encoder stay frozen. Training runs in
micro-batches of ``micro_batch`` sequences with exact whole-batch gradients (``bench.training``), which bounds
memory. Variants with other defaults: ``ra-rec-noid`` (instruction prefixes only: plain prefix tuning),
``ra-rec-input`` (prefixes as soft tokens at the input layer only), ``ra-rec-noinst``, ``ra-rec-noinfonce`` and
``ra-rec-untrained`` (the initialisation, evaluated without training).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.contract import SplitView, Workload, prompt_budget, rankings
from bench.prefix_kv import attention_input_scales, prefixed
from bench.registry import Context, TokenUsage, register
from bench.soft_prompts import LayerProjectors
from bench.tokens import fit_prompt
from bench.training import count_training_samples, select_samples, training_samples
from paradigms._two_tower import SimilarityHead, TwoTower, padded_rows

#: Activation budget of one backbone pass, in (sequences x tokens x layers x width): 64 prompts of 32 tokens
#: through MiniLM (6 x 384). A training pass keeps about 50 bytes per unit for the backward pass.
MICRO_BATCH_UNITS = 64 * 32 * 6 * 384


def auto_micro_batch(backbone, prompt_tokens: int) -> int:
    """Sequences per backbone pass so that one pass stays within :data:`MICRO_BATCH_UNITS`."""
    return max(1, MICRO_BATCH_UNITS // (prompt_tokens * backbone.n_layers * backbone.width))


class _Prefix(torch.nn.Module):
    """One tower's trainable prefix per injected layer: ``m`` instruction vectors, then the projected ID
    representation (when ``with_ids``). ``forward(reps [b, d_e]) -> [L', b, P, d]`` (None when P = 0)."""

    def __init__(self, n_layers: int, id_dim: int, width: int, m: int, rank: int | None, with_ids: bool):
        super().__init__()
        self.projector = LayerProjectors(n_layers, id_dim, width, rank) if with_ids else None
        self.instruction = torch.nn.Parameter(torch.randn(n_layers, m, width)) if m else None

    @property
    def length(self) -> int:
        return (0 if self.instruction is None else self.instruction.shape[1]) + (self.projector is not None)

    @torch.no_grad()
    def calibrate(self, reps: torch.Tensor, scales: torch.Tensor) -> None:
        """Start every layer's prefix at that layer's measured input scale ``scales`` ([L'])."""
        if self.projector is not None:
            self.projector.calibrate(reps, scales)
        if self.instruction is not None:
            self.instruction.mul_(scales.view(-1, 1, 1))

    def forward(self, reps: torch.Tensor, batch: int) -> torch.Tensor | None:
        parts = []
        if self.instruction is not None:
            parts.append(self.instruction.unsqueeze(1).expand(-1, batch, -1, -1))
        if self.projector is not None:
            parts.append(self.projector(reps).unsqueeze(2))
        return torch.cat(parts, dim=2) if parts else None


class _Towers(torch.nn.Module):
    """The trainable prefixes of both towers and the frozen backbone they drive."""

    def __init__(self, backbone, id_dim: int, options: dict, every_layer: bool, head: SimilarityHead):
        super().__init__()
        self.backbone, self.every_layer, self.head = backbone, every_layer, head
        n = backbone.n_layers if every_layer else 1
        shape = (n, id_dim, backbone.width, options["instruction_len"], options["rank"], options["ids"])
        self.user, self.item = _Prefix(*shape), _Prefix(*shape)
        self.similarity = head.kind
        self.attention_mass: list | None = None  # a list here collects the prefix attention share per layer
        self.to(backbone.device)

    def calibrate(self, texts: list[str], user_reps: torch.Tensor, item_reps: torch.Tensor) -> None:
        """Start prefixes at the scale of the hidden states the frozen attention reads (measured on ``texts``)."""
        backbone = self.backbone
        batch = backbone.tokenizer(texts, padding=True, return_tensors="pt").to(backbone.device)
        if self.every_layer:
            scales = attention_input_scales(backbone.model, backbone.blocks, dict(batch))
        else:
            scales = backbone.model.get_input_embeddings()(batch["input_ids"])[batch["attention_mask"].bool()]
            scales = scales.float().std().view(1)
        scales = scales.to(backbone.device)
        self.user.calibrate(user_reps, scales)
        self.item.calibrate(item_reps, scales)

    def forward(self, side: str, reps: torch.Tensor | None, tokens: list[list[int]], layers: bool = False):
        """Pooled outputs ``[b, d]`` of prompts ``tokens`` with ``side``'s prefix for ID representations
        ``reps`` ([b, d_e]); with ``layers``, also every layer's pooled text states ``[L, b, d]``."""
        backbone = self.backbone
        ids, mask = self._pad(tokens)
        prefix = getattr(self, side)(reps, len(tokens))
        hidden = self._run(prefix, ids, mask, layers)
        pooled = self.head(backbone.pool(hidden[-1], mask).float())
        if not layers:
            return pooled
        return pooled, self._pool_layers(hidden, mask)

    def text_only(self, tokens: list[list[int]]) -> torch.Tensor:
        """Every layer's pooled text states ``[L, b, d]`` of the prompts without any prefix."""
        ids, mask = self._pad(tokens)
        return self._pool_layers(self._run(None, ids, mask, True), mask)

    def _pad(self, tokens: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask ``[b, T]`` of a batch, right-padded by the backbone's tokenizer."""
        batch = self.backbone.tokenizer.pad({"input_ids": tokens}, return_tensors="pt").to(self.backbone.device)
        return batch["input_ids"], batch["attention_mask"]

    def _pool_layers(self, hidden: tuple, mask: torch.Tensor) -> torch.Tensor:
        """Every layer's pooled text states ``[L, b, d]`` (``hidden[0]`` is the embedding output)."""
        return torch.stack([self.backbone.pool(h, mask).float() for h in hidden[1:]])

    def _run(self, prefix: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor, layers: bool):
        """Hidden states of the text positions: a tuple (embeddings, layer 1, ..., layer L) or (last layer,), in
        the backbone's dtype (pooling upcasts)."""
        model = self.backbone.model
        if prefix is None:
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=layers)
        elif self.every_layer:
            with prefixed(model, self.backbone.blocks, list(prefix), self.attention_mass):
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=layers)
        else:  # soft tokens in front of the input embeddings, cut off again before pooling
            embeds = model.get_input_embeddings()(ids)
            width = prefix.shape[2]
            full_mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, width), mask], dim=1)
            out = model(inputs_embeds=torch.cat([prefix[0].to(embeds.dtype), embeds], dim=1),
                        attention_mask=full_mask, output_hidden_states=layers)
            states = out.hidden_states if layers else (out.last_hidden_state,)
            return tuple(h[:, width:] for h in states)
        return out.hidden_states if layers else (out.last_hidden_state,)


def info_nce(hybrid: torch.Tensor, text: torch.Tensor, keys: torch.Tensor, batch_keys: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """Per-row InfoNCE ``[b]``, averaged over layers.

    Row r's hybrid state ``hybrid[l, r]`` ([L, b, d]) must pick its own prompt's text-only state among the whole
    batch's ``text`` ([L, B, d], one per ``batch_keys``); ``keys`` ([b]) names each row's prompt. Repeats of the
    same prompt in the batch are not negatives. The text states are constants, so a batch processed in parts
    gets exactly the whole batch's loss.
    """
    logits = torch.einsum("lbd,lcd->lbc", F.normalize(hybrid, dim=-1), F.normalize(text.to(hybrid), dim=-1))
    same = keys.view(-1, 1) == batch_keys.view(1, -1).to(keys.device)                    # [b, B]
    own = same.int().argmax(dim=1)                                                       # first match
    repeat = same & (torch.arange(same.shape[1], device=same.device).view(1, -1) != own.view(-1, 1))
    logits = (logits / temperature).masked_fill(repeat.to(logits.device), float("-inf"))
    rows = torch.arange(len(keys), device=logits.device)
    return -logits.log_softmax(-1)[:, rows, own.to(logits.device)].mean(0)


class _TextOnly:
    """Text-only per-layer pooled states ``[L, d]`` of fixed prompts, computed on first use ``step`` prompts at a
    time and kept in bfloat16: half of float32's memory with float32's range (float16 overflowed to inf on
    decoders' outlier dimensions, which made InfoNCE NaN); InfoNCE normalises them, so 3 digits suffice."""

    def __init__(self, count: int, compute, step: int):
        self._compute, self._count, self._step = compute, count, step
        self._store: torch.Tensor | None = None
        self._done = torch.zeros(count, dtype=torch.bool)

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        missing = index[~self._done[index]].unique()
        for start in range(0, len(missing), self._step):
            part = missing[start:start + self._step]
            with torch.no_grad():
                fresh = self._compute(part).cpu()                         # [L, m, d]
            if self._store is None:
                self._store = torch.zeros(fresh.shape[0], self._count, fresh.shape[2], dtype=torch.bfloat16)
            self._store[:, part] = fresh.to(torch.bfloat16)
            self._done[part] = True
        return self._store[:, index].float()


@register("ra-rec")
class RARec(TwoTower):
    """RA-Rec: the encoder's user and item representations as prefix keys/values of every layer (see the module
    docstring)."""

    version = "4"  # 3: text-only InfoNCE states in bfloat16 (float16 overflowed); 4: bfloat16 training passes on
    #                a CPU use the math attention kernel (bench.precision.attention_kernel)
    description = ("RA-Rec: the ID encoder's user and item representations projected into every LLM layer as "
                   "prefix keys/values after instruction prefixes; titles as the hard prompt.")
    needs_encoder = True
    needs_llm = True
    defaults = {
        "instruction_len": 4,       # m: learnable contextual-instruction vectors per layer and tower (0 = none)
        "ids": True,                # project the ID representations into the prefixes (False = instruction only)
        "layers": "all",            # all: prefix keys/values in every layer; input: soft tokens at the input only
        "rank": None,               # int|null: shared low-rank factor of the projectors (null = full rank)
        "infonce_weight": 0.1,      # lambda of InfoNCE_user + InfoNCE_item (0 = off)
        "temperature": 0.1,         # InfoNCE temperature
        "l2": 0.0,                  # weight of the squared norm of the projected ID prefixes
        "learning_rate": 0.01,      # float|null: learning rate of the prefixes (null = train.learning_rate)
        "warmup_steps": 0,          # optimiser steps of linear learning-rate warm-up
        "similarity": "auto",       # two-tower score: dot (raw pooled outputs), cosine / score_temperature, or
        "score_temperature": 0.1,   #   auto: dot for encoders, cosine for decoders (last-token states have large
                                    #   norms: dot-product BPR losses start near 100 on SmolLM2)
        "prompt_tokens": 32,        # int|null: cap on the hard prompt's tokens (null = llm.token_budget)
        "hard_prompt": "Recommend the next item for this user.",
        "denoise": False,           # drop samples whose target title shares no word with the history titles
        "diversity": False,         # sample evenly over history-length x target-popularity buckets
        "train_fraction": 1.0,      # share of the training samples to train on
        "micro_batch": None,        # int|null: sequences per backbone pass (training and evaluation); null = as
                                    #   many as fit MiniLM's 64 x 32 tokens x 6 layers x 384 wide (SmolLM2: 8)
        "trained": True,            # False: evaluate the initialisation without training
    }
    search_space = {"learning_rate": ("float", 1e-3, 1e-1, "log"), "warmup_steps": ("choice", [0, 20, 100]),
                    "infonce_weight": ("choice", [0.0, 0.01, 0.1, 0.5]),
                    "train.samples_per_user": ("int", 1, 20, "log")}

    @classmethod
    def workload(cls, split: SplitView, config, options) -> Workload:
        """LLM passes: per epoch, every batch row twice (a pass without and one with a graph, whose backward
        counts 2: :func:`bench.training._chunked_step`), text-only states once per sample and item, user and
        item vectors at every validation and for the test stage."""
        users, items = split.n_users - 1, split.n_items - 1
        prompt = min(prompt_budget(config), options["prompt_tokens"] or prompt_budget(config))
        item = config["llm.item_max_tokens"]
        available = count_training_samples(split, config["train.samples_per_user"])
        samples = max(1, round(options["train_fraction"] * available))
        if not options["trained"]:
            return Workload(llm_sequences=2 * users + items, llm_tokens=2 * users * prompt + items * item,
                            rankings=rankings(split, config, trained=False))
        epochs, batches = config["train.epochs"], -(-samples // config["train.batch_size"])
        item_rows = samples + config["train.negatives"] * batches
        text_only = (samples, items) if options["infonce_weight"] > 0 else (0, 0)
        evaluations = (epochs + 2, epochs + 2)  # users and items at every validation, plus the test stage
        user_side = epochs * 4 * samples + text_only[0] + evaluations[0] * users
        item_side = epochs * 4 * item_rows + text_only[1] + evaluations[1] * items
        return Workload(training_samples=samples, llm_sequences=user_side + item_side,
                        llm_tokens=user_side * prompt + item_side * item, rankings=rankings(split, config, True))

    def fit(self, split: SplitView, context: Context) -> None:
        self._split, self._ctx, opts = split, context, context.options
        backbone, encoder = context.llm.backbone, context.encoder
        self.micro_batch = opts["micro_batch"] or auto_micro_batch(backbone, self._prompt_budget())
        self._item_reps = encoder.item_embeddings.float()
        every_layer = self.option(opts, "layers", ("all", "input")) == "all"
        self._towers = _Towers(backbone, self._item_reps.shape[1], opts, every_layer,
                               self.similarity_head(opts, backbone))
        self._item_tokens = self._tokenize([split.title(i) for i in range(split.n_items)],
                                           context.llm.items.max_tokens)
        users, lengths, targets = select_samples(split, opts, context.seed,
                                                 *training_samples(split, context.config["train.samples_per_user"]))
        histories = [split.train_history(int(u))[:int(n)] for u, n in zip(users, lengths)]
        self._sample_prompts = [self._prompt(h) for h in histories]
        self._sample_reps = encoder.user_representations(histories).float()
        self._stage_prompts: dict[str, list] = {}
        titles = [split.title(i) for i in range(1, min(65, split.n_items))]
        self._towers.calibrate([opts["hard_prompt"], *titles],
                               self._sample_reps[:1024], self._item_reps[1:1025])
        towers = self._towers
        self._text = {"sample": _TextOnly(len(targets), lambda s: towers.text_only(self._tokens("sample", s)),
                                          self.micro_batch),
                      "item": _TextOnly(split.n_items, lambda i: towers.text_only(self._tokens("item", i)),
                                        self.micro_batch)}
        self.info = {"trained": False, "micro_batch": self.micro_batch,
                     "similarity": self._towers.similarity}
        if opts["trained"]:
            info = self.train_towers(targets, split.n_items, context, learning_rate=opts["learning_rate"],
                                     warmup_steps=opts["warmup_steps"])
            self.info = {**info, **self.info, "trained": True}

    def _tokenize(self, texts: list[str], max_tokens: int) -> list[list[int]]:
        return self._ctx.llm.backbone.tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]

    def _prompt(self, history: np.ndarray):
        """The hard prompt of a history: instruction, then titles most recent first, within the token budget."""
        split, opts, llm = self._split, self._ctx.options, self._ctx.llm
        budget = self._prompt_budget()
        titles = [split.title(int(i)) for i in history[::-1]]
        render = lambda kept: f"{opts['hard_prompt']} The user bought: {'; '.join(kept)}"  # noqa: E731
        fitted = fit_prompt(render, titles, llm.backbone.count_tokens, budget)
        return fitted, self._tokenize([fitted.text], budget)[0]

    def _prompt_budget(self) -> int:
        llm = self._ctx.llm
        return min(llm.token_budget, self._ctx.options["prompt_tokens"] or llm.token_budget)

    def _tokens(self, kind: str, index: torch.Tensor) -> list[list[int]]:
        if kind == "sample":
            return [self._sample_prompts[int(s)][1] for s in index]
        return [self._item_tokens[int(i)] for i in index]

    # -- the task the shared training loop drives ------------------------------------------------------------
    def parameters(self):
        return [p for p in self._towers.parameters() if p.requires_grad]

    def sample_vectors(self, samples: torch.Tensor) -> torch.Tensor:
        return self._towers("user", self._sample_reps[samples], self._tokens("sample", samples))

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self._towers("item", self._item_reps[items.to(self._item_reps.device)], self._tokens("item", items))

    def training_vectors(self, side: str, ids: torch.Tensor, batch: torch.Tensor):
        """Vectors of one tower and each row's auxiliary loss: InfoNCE over layers against the batch's text-only
        states, and L2 of the projected ID prefixes."""
        opts = self._ctx.options
        if side == "user":
            reps, tokens, text = self._sample_reps[ids], self._tokens("sample", ids), self._text["sample"]
        else:
            reps, tokens, text = self._item_reps[ids.to(self._item_reps.device)], self._tokens("item", ids), \
                self._text["item"]
        vectors, layers = self._towers(side, reps, tokens, layers=True)
        rows = torch.zeros(len(tokens), device=vectors.device)
        if opts["infonce_weight"] > 0:
            rows = rows + opts["infonce_weight"] * info_nce(layers, text(batch), ids, batch, opts["temperature"])
        prefix = getattr(self._towers, side).projector
        if opts["l2"] > 0 and prefix is not None:
            rows = rows + opts["l2"] * prefix(reps).pow(2).sum(dim=(0, 2))
        return vectors, rows

    # -- evaluation ----------------------------------------------------------------------------------------
    def _prompts(self, stage: str) -> list:
        """Every user's ``stage`` prompt (fitted text, token ids), built on first use."""
        if stage not in self._stage_prompts:
            self._stage_prompts[stage] = [self._prompt(self._split.history(int(u), stage)) for u in self._split.users]
        return self._stage_prompts[stage]

    def _all_vectors(self, side: str, reps: torch.Tensor, tokens: list[list[int]]) -> torch.Tensor:
        """``[1 + len(tokens), d]`` vectors of one tower (row 0: padding), ``micro_batch`` prompts per pass."""
        return padded_rows(lambda a, b: self._towers(side, reps[a:b], tokens[a:b]), len(tokens), self.micro_batch,
                           self._ctx.llm.backbone.width)

    def user_vectors(self, stage: str) -> torch.Tensor:
        reps = self._ctx.encoder.stage_representations(self._split, stage)[1:].float()
        return self._all_vectors("user", reps, [p[1] for p in self._prompts(stage)])

    def all_item_vectors(self) -> torch.Tensor:
        return self._all_vectors("item", self._item_reps[1:], self._item_tokens[1:])

    def token_usage(self, users: np.ndarray, stage: str) -> list[TokenUsage]:
        read = self._ctx.encoder.max_seq_len if self._ctx.options["ids"] else 0
        rows = []
        for user in users:
            fitted = self._prompts(stage)[int(user) - 1][0]
            history_len = len(self._split.history(int(user), stage))
            rows.append(TokenUsage(user=int(user), hard_tokens=fitted.tokens, soft_tokens=self._towers.user.length,
                                   history_len=history_len, history_kept=max(fitted.kept, min(read, history_len))))
        return rows

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters()) if self._ctx.options["trained"] else 0


@register("ra-rec-noid")
class RARecNoID(RARec):
    description = "RA-Rec ablation: instruction prefixes only, no ID representations (plain prefix tuning)."
    defaults = {**RARec.defaults, "ids": False}
    in_all = False


@register("ra-rec-input")
class RARecInputOnly(RARec):
    description = "RA-Rec ablation: ID and instruction prefixes as soft tokens at the input layer only."
    defaults = {**RARec.defaults, "layers": "input"}
    in_all = False


@register("ra-rec-noinst")
class RARecNoInstruction(RARec):
    description = "RA-Rec ablation: no contextual-instruction prefixes."
    defaults = {**RARec.defaults, "instruction_len": 0}
    in_all = False


@register("ra-rec-noinfonce")
class RARecNoInfoNCE(RARec):
    description = "RA-Rec ablation: no InfoNCE alignment loss (lambda = 0)."
    defaults = {**RARec.defaults, "infonce_weight": 0.0}
    search_space = {k: v for k, v in RARec.search_space.items() if k != "infonce_weight"}  # keep the ablation
    in_all = False


@register("ra-rec-untrained")
class RARecUntrained(RARec):
    description = "RA-Rec at its initialisation, evaluated without training (shows what training adds)."
    defaults = {**RARec.defaults, "trained": False}
    search_space = {}  # nothing trains
    in_all = False
