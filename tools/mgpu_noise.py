"""mgpu's seeded noise (src/sample/noise.rs: Philox4x32-10 + Box–Muller, as documented there),
re-implemented for the reference scripts: tools/parity_samplers.py checks it bit for bit
against mgpu (tests/sampler_parity.rs), tools/parity_draw.py starts diffusers from it."""

import math
import struct

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        if r > 0:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & MASK, p1 & MASK, ((p0 >> 32) ^ c3 ^ k1) & MASK, p0 & MASK
    return c0, c1, c2, c3


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def normal_f32(seed, stream, count):
    """Standard normal values as float32-rounded Python floats."""
    out = []
    block = 0
    while len(out) < count:
        ctr = (block & MASK, block >> 32, stream & MASK, (stream >> 32) & MASK)
        w = philox4x32_10(ctr, (seed & MASK, (seed >> 32) & MASK))
        a = (w[1] << 32) | w[0]
        b = (w[3] << 32) | w[2]
        u1 = ((a >> 12) + 0.5) * 2.0**-52
        u2 = (b >> 12) * 2.0**-52
        r = math.sqrt(-2.0 * math.log(u1))
        theta = 2.0 * math.pi * u2
        out += [f32(r * math.cos(theta)), f32(r * math.sin(theta))]
        block += 1
    return out[:count]


assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
