r"""Sine positional encoding of a 2-D map (DETR; mmdet's ``SinePositionalEncoding``).

For a map of ``height x width`` with no padding, the row and column coordinates
are :math:`y = 1..H` and :math:`x = 1..W`; with ``normalize`` they become
:math:`y \leftarrow y / (H + \epsilon) \cdot scale` (same for :math:`x`). With
:math:`F` = ``num_feats`` and :math:`\tau` = ``temperature``, for :math:`k = 0..F/2-1`:

.. math::

    P_y[2k]   &= \sin(y / \tau^{2k/F}) \qquad P_y[2k+1] = \cos(y / \tau^{2k/F}) \\
    P         &= \operatorname{cat}(P_y, P_x) \in \mathbb{R}^{2F \times H \times W}

(sine and cosine interleaved per frequency; y features first).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

__all__ = ["SinePositionalEncoding"]


class SinePositionalEncoding(nn.Module):
    """Parameter-free 2-D sine positional encoding; ``forward(h, w) -> [2 * num_feats, h, w]``."""

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi, eps: float = 1e-6):
        super().__init__()
        if num_feats % 2:
            raise ValueError(f"num_feats must be even (sine/cosine pairs), got {num_feats}")
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps

    def extra_repr(self) -> str:
        return (f"num_feats={self.num_feats}, temperature={self.temperature}, "
                f"normalize={self.normalize}, scale={self.scale}, eps={self.eps}")

    def _encode_axis(self, length: int, device) -> torch.Tensor:
        """[length, num_feats] encoding of the coordinates 1..length of one axis."""
        coords = torch.arange(1, length + 1, dtype=torch.float32, device=device)
        if self.normalize:
            coords = coords / (length + self.eps) * self.scale
        freq_index = torch.arange(self.num_feats, dtype=torch.float32, device=device)
        inv_freq = self.temperature ** (2 * torch.div(freq_index, 2, rounding_mode="floor") / self.num_feats)
        angles = coords[:, None] / inv_freq
        # interleave: sin on even features, cos on odd ones, frequency shared by each pair
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    def forward(self, height: int, width: int, device: Optional[torch.device] = None,
                dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        pos_y = self._encode_axis(height, device)[:, None, :].expand(height, width, self.num_feats)
        pos_x = self._encode_axis(width, device)[None, :, :].expand(height, width, self.num_feats)
        pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).contiguous()
        return pos if dtype is None else pos.to(dtype)
