"""The randomness DP-SGD's guarantee rests on: Poisson sampling and Gaussian noise.

DP-SGD protects an example against whoever sees the update only if that observer
cannot know the noise, nor which examples each Poisson batch held. The server sees
every update, so neither may come from anything the server sends, chooses or
stores (the run seed, the round, the client id). `DPRandomness.secret_source()` keys a
ChaCha20 stream with 256 bits from the client's own OS entropy (`os.urandom`,
the kernel's CSPRNG); the key lives in this process only, for one training pass,
and is never logged, stored or sent.

Why not simpler sources:

- `torch.Generator().manual_seed(secrets.randbits(64))` is not enough. Its CPU
  generator is MT19937 and its CUDA generator Philox4x32-10, neither a CSPRNG:
  MT19937's state follows from 624 consecutive outputs, and a 64-bit seed is open
  to a search. The released update *does* expose noise samples outright wherever
  the clipped gradient is zero (the embedding rows of tokens a client never uses,
  dead units), so an observer could rebuild the generator's state and subtract
  the noise everywhere else.
- Opacus' own `secure_mode` needs `torchcsprng`, which does not build against
  current torch (its last release targets torch 1.x), so Opacus cannot give us a
  CSPRNG (`PrivacyEngine(secure_mode=True)` raises ImportError without it).

ChaCha20 (RFC 8439, through `cryptography`/OpenSSL, ~1 GB/s) gives uniform 64-bit
words; Poisson sampling compares 53-bit uniforms with the sample rate, and the
noise is Box-Muller over 53-bit uniforms in float64. The noise is added to the
clipped gradient sum in float64 and rounded once to the parameter dtype. The
floating-point attacks on Gaussian samplers (Jin et al., IEEE S&P 2022) look for
values a sampler can never output; Opacus' secure mode answers them by summing
four float samples (Holohan and Braghin, 2021). Here the float64 sampler's outputs
are far denser than the float32 grid the update is released on, so every float32
value near the noisy sum is reachable from either neighbouring dataset; that costs
one float64 sample per parameter and step instead of four.

`DPRandomness.reproducible(seed, round, client)` keys the same stream from those
public integers: a research run repeats exactly, and the server can recompute all
of the noise. It is behind `--insecure-reproducible-noise` only, which every
output marks as "no DP against the server".

Every draw uses its own nonce (a draw counter), so a stream never reuses
keystream and never nears ChaCha20's 256 GiB-per-nonce limit.
"""

from __future__ import annotations

import hashlib
import math
import os

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_BYTES = 32
_MANTISSA = (1 << 53) - 1
_UNIT = 2.0**-53
_REPRODUCIBLE_DOMAIN = b"fedsim --insecure-reproducible-noise v1\0"


class DPRandomness:
    """Poisson masks and standard normal noise from one ChaCha20 key."""

    def __init__(self, key: bytes, *, secret: bool) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a ChaCha20 key has {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self.secret = secret
        """True when the key came from this process's OS entropy."""
        self._draws = 0

    @classmethod
    def secret_source(cls) -> DPRandomness:
        """A fresh key from the OS CSPRNG: nobody else can know this noise."""
        return cls(os.urandom(KEY_BYTES), secret=True)

    @classmethod
    def reproducible(cls, *seed_parts: int) -> DPRandomness:
        """INSECURE: a key anyone knowing `seed_parts` recomputes (no DP vs the server)."""
        text = ",".join(str(int(p)) for p in seed_parts).encode()
        return cls(hashlib.sha256(_REPRODUCIBLE_DOMAIN + text).digest(), secret=False)

    def restarted(self) -> DPRandomness:
        """A source for redoing a pass of which nothing was released.

        Reproducible: the same stream from its start, so a seed still repeats.
        Secret: a fresh key (reusing noise for a second pass would be the danger).
        """
        return DPRandomness.secret_source() if self.secret else DPRandomness(
            self._key, secret=False)

    def _words(self, count: int) -> torch.Tensor:
        """`count` uniform 64-bit words (int64, on the CPU)."""
        nonce = bytes(4) + self._draws.to_bytes(12, "little")  # block counter 0
        self._draws += 1
        encryptor = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()
        stream = bytearray(8 * count)
        encryptor.update_into(bytes(8 * count), stream)
        return torch.frombuffer(stream, dtype=torch.int64)

    def uniform(self, count: int, device: torch.device | None = None) -> torch.Tensor:
        """`count` float64 uniforms in the open interval (0, 1)."""
        if count == 0:
            return torch.empty(0, dtype=torch.float64, device=device)
        words = self._words(count).to(device)
        return (words & _MANTISSA).to(torch.float64).add_(0.5).mul_(_UNIT)

    def poisson_mask(self, n: int, sample_rate: float) -> torch.Tensor:
        """Which of `n` examples one Poisson batch holds (each with prob `sample_rate`)."""
        return self.uniform(n) < sample_rate

    def normal(self, count: int, device: torch.device | None = None) -> torch.Tensor:
        """`count` float64 standard normals (Box-Muller), on `device`."""
        half = math.ceil(count / 2)
        u = self.uniform(2 * half, device)
        radius = torch.log(u[:half]).mul_(-2.0).sqrt_()
        angle = u[half:].mul_(2.0 * math.pi)
        return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:count]
