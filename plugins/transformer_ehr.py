"""A transformer encoder of the EHR series: the encoder DrFuse (Yao et al., AAAI 2024) uses.

Each hourly bin (76 features) is embedded by a Linear layer, a learnable positional table is
added (uniform in [-0.1, 0.1] at initialisation, no dropout), and a trunk of
``nn.TransformerEncoder`` layers (post-norm, ReLU, feed-forward 2048, as torch's defaults)
runs over the stay's valid bins; padded bins are masked out of attention. Named branches of
further transformer layers then run on the trunk's output, each pooled into one vector per stay
by the mean over the stay's valid bins. DrFuse has two branches, ``shared`` and ``distinct``.

The positional table has ``max_len`` rows (350 in DrFuse's code, whose series never exceed
49 bins because it keeps only each stay's first 48 hours). A longer stay (phenotyping uses the
whole stay) is cut to its first ``max_len`` bins: attention costs grow with the square of the
length, and a table row exists only for positions seen in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["TransformerEHREncoder", "masked_mean", "padding_mask"]


def padding_mask(lengths: torch.Tensor, steps: int, device: torch.device) -> torch.Tensor:
    """(B, steps) bool, True at the padded bins after each stay's length."""
    positions = torch.arange(steps, device=device)
    return positions[None, :] >= lengths.to(device)[:, None]


def masked_mean(sequence: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
    """Mean over the valid (not ``padded``) steps of a (B, T, D) sequence."""
    valid = (~padded).to(sequence.dtype)[:, :, None]
    return (sequence * valid).sum(dim=1) / valid.sum(dim=1)


class TransformerEHREncoder(nn.Module):
    """Linear embedding, learnable positions, a transformer trunk and pooled branches.

    Args:
        input_dim: features per hourly bin.
        d_model: width of the embedding and of every transformer layer.
        heads: attention heads of every layer.
        branches: names of the branches run on the trunk's output; ``forward`` returns one
            pooled feature per name.
        trunk_layers: transformer layers of the trunk.
        branch_layers: transformer layers of each branch.
        dropout: dropout inside the transformer layers.
        max_len: rows of the positional table; longer stays are cut to their first ``max_len``
            bins.
        feedforward: width of each layer's feed-forward block.
    """

    def __init__(self, input_dim: int, d_model: int, heads: int, branches: Sequence[str],
                 trunk_layers: int = 1, branch_layers: int = 1, dropout: float = 0.3,
                 max_len: int = 350, feedforward: int = 2048) -> None:
        super().__init__()
        if not branches:
            raise ValueError("TransformerEHREncoder needs at least one branch")
        self.max_len = max_len
        self.embedding = nn.Linear(input_dim, d_model)
        self.positions = nn.Parameter(torch.empty(1, max_len, d_model).uniform_(-0.1, 0.1))

        def stack(layers: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=feedforward,
                                               dropout=dropout, batch_first=True)
            return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)

        self.trunk = stack(trunk_layers)
        self.branches = nn.ModuleDict({name: stack(branch_layers) for name in branches})
        self.feature_dim = d_model

    def forward(self, ehr: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled feature (B, d_model) of every branch, keyed by branch name.

        Args:
            ehr: (B, T, input_dim) series, zero-padded after each stay's length.
            lengths: (B,) valid bins per stay (>= 1).
        """
        lengths = lengths.clamp(max=self.max_len)
        steps = min(ehr.shape[1], self.max_len, int(lengths.max()))
        padded = padding_mask(lengths, steps, ehr.device)
        hidden = self.embedding(ehr[:, :steps]) + self.positions[:, :steps]
        trunk = self.trunk(hidden, src_key_padding_mask=padded)
        return {name: masked_mean(branch(trunk, src_key_padding_mask=padded), padded)
                for name, branch in self.branches.items()}
