"""Per-layer soft prompts for a frozen transformer, injected through forward pre-hooks.

Before block ``l`` runs, the first ``P`` positions of its input hidden states are overwritten with
``prefix[l]`` (``[b, P, d]``). Because it acts on each block's input, the same code serves encoders and
decoders, and injection at depth really changes the output (the block's own computation starts from the
injected vectors). Gradients flow into the prefixes; the backbone's weights stay frozen.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch


def _replace_hidden(hidden: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    width = prefix.shape[1]
    return torch.cat([prefix.to(hidden.dtype), hidden[:, width:]], dim=1)


@contextlib.contextmanager
def injected(blocks: torch.nn.ModuleList, prefixes: Sequence[torch.Tensor | None]) -> Iterator[None]:
    """Within the block, block ``l`` sees ``prefixes[l]`` ([b, P_l, d]) in its first ``P_l`` input positions.

    ``prefixes[l] = None`` leaves block ``l`` alone (e.g. input-layer-only injection sets only ``prefixes[0]``).
    """
    if len(prefixes) != len(blocks):
        raise ValueError(f"{len(prefixes)} prefixes for {len(blocks)} blocks")
    handles = []
    for block, prefix in zip(blocks, prefixes):
        if prefix is None:
            continue

        def hook(module, args, kwargs, prefix=prefix):
            if args:
                return (_replace_hidden(args[0], prefix), *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = _replace_hidden(kwargs["hidden_states"], prefix)
            return args, kwargs

        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def block_input_scales(model: torch.nn.Module, blocks, batch: dict) -> torch.Tensor:
    """Standard deviation of each of ``blocks``' input hidden states (any modules inside ``model``, in order)
    on a real batch: ``[len(blocks)]``.

    Soft prompts initialised at this scale start out as loud as the tokens around them; at a much smaller
    scale the frozen attention all but ignores them and training barely moves.
    """
    scales: list[float] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = batch["attention_mask"].bool()
        scales.append(float(hidden[mask].float().std()))

    handles = [block.register_forward_pre_hook(hook, with_kwargs=True) for block in blocks]
    try:
        model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return torch.tensor(scales)


class LayerProjectors(torch.nn.Module):
    """``p_l(e) = W_l e + b_l`` for every layer l: ID embeddings ``[..., d_e]`` -> ``[L, ..., d]``.

    With ``rank`` set, ``W_l = A_l B`` shares the factor ``B`` ([rank, d_e]) across layers to keep the
    parameter count small.
    """

    def __init__(self, n_layers: int, in_dim: int, out_dim: int, rank: int | None = None, init_std: float = 0.02):
        super().__init__()
        self.rank = rank
        if rank:
            self.shared = torch.nn.Parameter(torch.randn(rank, in_dim) * init_std)
            self.weight = torch.nn.Parameter(torch.randn(n_layers, out_dim, rank) * init_std)
        else:
            self.weight = torch.nn.Parameter(torch.randn(n_layers, out_dim, in_dim) * init_std)
        self.bias = torch.nn.Parameter(torch.zeros(n_layers, out_dim))

    @torch.no_grad()
    def calibrate(self, embeddings: torch.Tensor, target_std: torch.Tensor) -> None:
        """Rescale each layer's weight so projected ``embeddings`` ([n, d_e]) have std ``target_std[l]``."""
        current = self.forward(embeddings).flatten(1).std(dim=1)          # [L]
        factor = (target_std.to(current) / current.clamp(min=1e-8)).view(-1, 1, 1)
        self.weight.mul_(factor)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[..., d_e] -> [L, ..., d]."""
        x = embeddings @ self.shared.T if self.rank else embeddings
        out = torch.einsum("ldk,...k->l...d", self.weight, x)
        return out + self.bias.view(self.bias.shape[0], *([1] * (out.dim() - 2)), -1)
