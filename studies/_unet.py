r"""A small U-Net :math:`F(x, \tau)` for one-channel images (the 8×8 digits), with its time conditioning.

The shape is DDPM's (Ho et al. 2020) and score_sde's ``ddpm`` network, cut down to an 8×8 image:

- the time :math:`\tau` (the adapter's network time, in :math:`[0, 1]` for ``"t"``) enters as the sinusoidal
  embedding :math:`[\sin(\omega_k s\tau), \cos(\omega_k s\tau)]` with :math:`s = 1000` and
  :math:`\omega_k = 10^{-4k/K}` (the transformer's frequencies over DDPM's 1000 steps), then a two-layer SiLU
  MLP to a vector :math:`e` of ``4 * channels`` numbers;
- a residual block is :math:`h + \mathrm{conv}(\mathrm{SiLU}(\mathrm{GN}(\mathrm{conv}(\mathrm{SiLU}(\mathrm{GN}(h)))
  + W e)))`, the time added in every block, the last convolution zero-initialised (each block starts as the
  identity), a 1×1 convolution on the skip where the width changes;
- two resolutions, 8×8 with ``channels`` and 4×4 with ``2 * channels`` (a stride-2 convolution down, nearest
  neighbour and a convolution up), ``blocks`` residual blocks each, one single-head self-attention over the
  16 positions of the 4×4 level (the middle), skips concatenated on the way up;
- the output convolution is zero-initialised, so the untrained network predicts 0 (for ``eps``: the score of
  the prior at every time).

GroupNorm uses 8 groups (the greatest common divisor of the width and 8), as DDPM's 32 groups scaled to the width.
"""

import math

import torch
from torch import nn

from sdekit import InvalidParameterError

__all__ = ["ScoreUNet"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, c_emb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(c_emb, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, h, e):
        y = self.conv1(nn.functional.silu(self.norm1(h)))
        y = y + self.emb(e)[:, :, None, None]
        y = self.conv2(self.drop(nn.functional.silu(self.norm2(y))))
        return self.skip(h) + y


class _Attention(nn.Module):
    """Single-head self-attention over the positions of a feature map, pre-normed, residual, zero-initialised."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h):
        n, c, a, b = h.shape
        q, k, v = self.qkv(self.norm(h)).reshape(n, 3, c, a * b).unbind(1)
        w = torch.softmax(torch.einsum("ncp,ncq->npq", q, k) / math.sqrt(c), dim=-1)
        y = torch.einsum("npq,ncq->ncp", w, v).reshape(n, c, a, b)
        return h + self.out(y)


class ScoreUNet(nn.Module):
    r"""A two-resolution U-Net for images ``(channels_in, H, W)`` with even ``H`` and ``W`` (the digits: 1×8×8).

    **Arguments**

    - ``event_shape``: ``(C, H, W)`` of one image (default ``(1, 8, 8)``).
    - ``channels``: the width at full resolution (``2 * channels`` at half resolution; default 32).
    - ``blocks``: residual blocks per resolution on the way down (one more on the way up; default 1).
    - ``attention``: self-attention in the middle, at half resolution (default True).
    - ``features``: frequencies of the time embedding (default 32).
    - ``dropout``: in each residual block, while training (default 0).

    ``forward(x, tau)`` takes ``x`` of shape ``(n, C, H, W)`` and ``tau`` of shape ``(n,)`` and returns a tensor
    shaped like ``x``: whatever its :class:`sdekit.adapters.Adapter` says the network predicts.
    """

    def __init__(self, event_shape=(1, 8, 8), channels: int = 32, blocks: int = 1, attention: bool = True,
                 features: int = 32, dropout: float = 0.0):
        super().__init__()
        self.event_shape = tuple(int(n) for n in event_shape)
        if len(self.event_shape) != 3 or min(self.event_shape) < 1 or self.event_shape[1] % 2 or \
                self.event_shape[2] % 2:
            raise InvalidParameterError(f"ScoreUNet takes images (C, H, W) with even H and W, got event_shape "
                                        f"{self.event_shape}; use ScoreMLP for flat points")
        self.channels, self.blocks, self.features = int(channels), int(blocks), int(features)
        self.attention, self.dropout = bool(attention), float(dropout)
        if min(self.channels, self.blocks, self.features) < 1 or not 0 <= self.dropout < 1:
            raise InvalidParameterError(f"ScoreUNet needs positive channels, blocks, features and 0 <= dropout < 1, "
                                        f"got channels={channels}, blocks={blocks}, features={features}, "
                                        f"dropout={dropout}")
        c, c2, ce = self.channels, 2 * self.channels, 4 * self.channels
        self.register_buffer("freqs", torch.exp(-math.log(1e4) * torch.arange(self.features) / self.features))
        self.embed = nn.Sequential(nn.Linear(2 * self.features, ce), nn.SiLU(), nn.Linear(ce, ce))
        self.inp = nn.Conv2d(self.event_shape[0], c, 3, padding=1)
        self.down1 = nn.ModuleList([_ResBlock(c, c, ce, dropout) for _ in range(self.blocks)])
        self.pool = nn.Conv2d(c, c2, 3, stride=2, padding=1)
        self.down2 = nn.ModuleList([_ResBlock(c2, c2, ce, dropout) for _ in range(self.blocks)])
        self.mid1 = _ResBlock(c2, c2, ce, dropout)
        self.attn = _Attention(c2) if self.attention else None
        self.mid2 = _ResBlock(c2, c2, ce, dropout)
        # on the way up every block takes one skip: the outputs of inp/pool and of each down block
        self.up2 = nn.ModuleList([_ResBlock(2 * c2, c2, ce, dropout) for _ in range(self.blocks + 1)])
        self.unpool = nn.Conv2d(c2, c, 3, padding=1)
        self.up1 = nn.ModuleList([_ResBlock(2 * c, c, ce, dropout) for _ in range(self.blocks + 1)])
        self.out_norm = _norm(c)
        self.out = nn.Conv2d(c, self.event_shape[0], 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def architecture(self) -> dict:
        return dict(event_shape=list(self.event_shape), channels=self.channels, blocks=self.blocks,
                    attention=self.attention, features=self.features, dropout=self.dropout)

    def time_embedding(self, tau: torch.Tensor, dtype) -> torch.Tensor:
        angle = 1000.0 * tau.to(dtype).reshape(-1, 1) * self.freqs.to(dtype)
        return self.embed(torch.cat([torch.sin(angle), torch.cos(angle)], dim=1))

    def forward(self, x, tau):
        n = x.shape[0]
        if tuple(x.shape[1:]) != self.event_shape:
            raise InvalidParameterError(f"ScoreUNet was built for images {self.event_shape}, got a batch of shape "
                                        f"{tuple(x.shape)}")
        tau = torch.as_tensor(tau, device=x.device)
        e = self.time_embedding(tau.expand(n) if tau.dim() == 0 else tau.reshape(n), x.dtype)
        h = self.inp(x)
        skips = [h]
        for block in self.down1:
            h = block(h, e)
            skips.append(h)
        h = self.pool(h)
        skips.append(h)
        for block in self.down2:
            h = block(h, e)
            skips.append(h)
        h = self.mid1(h, e)
        if self.attn is not None:
            h = self.attn(h)
        h = self.mid2(h, e)
        for block in self.up2:
            h = block(torch.cat([h, skips.pop()], dim=1), e)
        h = self.unpool(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
        for block in self.up1:
            h = block(torch.cat([h, skips.pop()], dim=1), e)
        return self.out(nn.functional.silu(self.out_norm(h)))
