r"""Philox4x32-10, the counter-based generator of Salmon et al. (2011), vectorised in torch on any device.

Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3" (SC'11): a keyed bijection of
128-bit counters, ten rounds of

.. math::
    (x_0, x_1, x_2, x_3) \mapsto (\mathrm{hi}(M_1 x_2) \oplus x_1 \oplus k_0,\ \mathrm{lo}(M_1 x_2),\
    \mathrm{hi}(M_0 x_0) \oplus x_3 \oplus k_1,\ \mathrm{lo}(M_0 x_0)),

with the 64-bit key :math:`(k_0, k_1)` bumped by the Weyl constants after each round.  It is cuRAND's and
torch's CUDA generator, and passes TestU01's BigCrush.  Here the 32-bit words live in int64 tensors (the
products :math:`M x` need 64 bits); every operation is a plain elementwise torch operation, so the
words are the same on every device, bit for bit, and equal the reference's known-answer vectors.
"""

import torch

__all__ = ["philox4x32", "MASK32"]

MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10


def philox4x32(c0, c1, c2, c3, key: int, rounds: int = ROUNDS):
    r"""The four output words of Philox4x32-``rounds`` for counters ``(c0, c1, c2, c3)`` and a 64-bit ``key``.

    **Arguments**

    - ``c0`` … ``c3``: int64 tensors holding unsigned 32-bit words, broadcastable to one shape (``c1`` and
      ``c3`` are read once, so a broadcast row or column costs nothing).
    - ``key``: an integer in :math:`[0, 2^{64})`: :math:`k_0` its low word, :math:`k_1` its high word.

    Returns four int64 tensors of the broadcast shape; the low 32 bits of each hold an output word.  The
    first and third are exact words (high bits zero); the second and fourth carry other bits above bit 31,
    which a caller masks (``& MASK32``) or drops by shifting.
    """
    k0, k1 = key & MASK32, (key >> 32) & MASK32
    shape = torch.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape)
    x0 = (c0 & MASK32).expand(shape).contiguous()
    x2 = (c2 & MASK32).expand(shape).contiguous()
    y1, y3 = c1, c3                       # only ever xored into the low words: high bits may be anything
    p0, p2 = torch.empty_like(x0), torch.empty_like(x0)
    for _ in range(rounds):
        torch.mul(x0, _M0, out=p0)
        torch.mul(x2, _M1, out=p2)
        torch.bitwise_right_shift(p2, 32, out=x0).bitwise_xor_(y1).bitwise_xor_(k0).bitwise_and_(MASK32)
        torch.bitwise_right_shift(p0, 32, out=x2).bitwise_xor_(y3).bitwise_xor_(k1).bitwise_and_(MASK32)
        if y1 is c1:                      # the first round read the caller's words: take fresh buffers
            y1, y3 = p2, p0
            p0, p2 = torch.empty_like(x0), torch.empty_like(x0)
        else:
            y1, p2 = p2, y1
            y3, p0 = p0, y3
        k0, k1 = (k0 + _W0) & MASK32, (k1 + _W1) & MASK32
    return x0, y1, x2, y3
