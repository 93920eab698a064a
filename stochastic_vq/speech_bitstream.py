"""The speech codec's bitstream: ``constriction``'s range coder and the file that holds it.

The coder is constriction 0.5's ``RangeEncoder``/``RangeDecoder`` (32-bit words, a 64-bit
state, probabilities in 24-bit fixed point), fed the codec's own discretised model as
explicit probability tables. This module knows nothing of the codec: it codes integer
symbols under uniform or tabulated distributions, counts the bits written so far, and
frames the words as a file:

    MAGIC (4 bytes) | samples (uint32, little-endian) | the coder's words (uint32, little-endian)

constriction is an optional package (the ``experiments`` extra); without it coding fails
with a one-line error naming the install command.
"""

from __future__ import annotations

import struct

import numpy as np

INSTALL_HINT = 'pip install ".[experiments]"'
MAGIC = b"SVQ1"
HEADER = struct.Struct("<4sI")  # MAGIC, samples
WORD_BITS = 32
STATE_BITS = 64
SEAL_BITS = 32  # the most that sealing the stream adds to ``RangeWriter.bits``


def _constriction():
    try:
        import constriction
    except ImportError:
        raise ModuleNotFoundError(f"the speech codec's range coder needs constriction: "
                                  f"{INSTALL_HINT}") from None
    return constriction


class RangeWriter:
    """Appends symbols to one range-coded stream."""

    def __init__(self, encoder=None):
        stream = _constriction().stream
        self._stream = stream
        self._encoder = encoder if encoder is not None else stream.queue.RangeEncoder()

    def uniform(self, symbols: np.ndarray, sizes: np.ndarray) -> None:
        """Code each ``symbols[i]`` uniformly over ``0 ... sizes[i] - 1`` (exactly
        log2 sizes[i] bits for a power of two)."""
        if len(symbols):
            self._encoder.encode(np.asarray(symbols, np.int32), self._stream.model.Uniform(),
                                 np.asarray(sizes, np.int32))

    def categorical(self, symbols: np.ndarray, probabilities: np.ndarray) -> None:
        """Code each ``symbols[i]`` under the distribution ``probabilities[i]`` (n, k)."""
        if len(symbols):
            self._encoder.encode(np.asarray(symbols, np.int32),
                                 self._stream.model.Categorical(perfect=False),
                                 np.asarray(probabilities, np.float64))

    def bits(self) -> int:
        """The bits written so far, counted from the coder's state as a range coder counts
        them (Opus's ``ec_tell``): the words emitted plus the bits the interval's width has
        used up in the 64-bit state, rounded up. Sealing the stream (``words``) adds 0 to
        SEAL_BITS to it."""
        words, (_, width) = self._encoder.pos()
        return WORD_BITS * words + STATE_BITS - (width.bit_length() - 1)

    def clone(self) -> RangeWriter:
        """An independent copy: what it codes does not reach this writer."""
        return RangeWriter(self._encoder.clone())

    def words(self) -> np.ndarray:
        """The sealed stream: (W,) uint32 words."""
        return self._encoder.get_compressed()


class RangeReader:
    """Reads back, symbol by symbol, what a ``RangeWriter`` wrote."""

    def __init__(self, words: np.ndarray):
        stream = _constriction().stream
        self._stream = stream
        self._decoder = stream.queue.RangeDecoder(np.asarray(words, np.uint32))

    def uniform(self, sizes: np.ndarray) -> np.ndarray:
        """(n,) int symbols that ``RangeWriter.uniform`` coded with these ``sizes``."""
        if not len(sizes):
            return np.zeros(0, np.int32)
        return self._decode(self._stream.model.Uniform(), np.asarray(sizes, np.int32))

    def categorical(self, probabilities: np.ndarray) -> np.ndarray:
        """(n,) int symbols that ``RangeWriter.categorical`` coded under ``probabilities``."""
        if not len(probabilities):
            return np.zeros(0, np.int32)
        return self._decode(self._stream.model.Categorical(perfect=False),
                            np.asarray(probabilities, np.float64))

    def _decode(self, model, parameters: np.ndarray) -> np.ndarray:
        try:
            return self._decoder.decode(model, parameters)
        except AssertionError as error:  # constriction's word for data no model produced
            raise ValueError(f"stream is corrupt: {error}") from None


def write_file(samples: int, words: np.ndarray) -> bytes:
    """The file: the header (MAGIC, ``samples``) and the coder's ``words``."""
    return HEADER.pack(MAGIC, samples) + np.asarray(words, "<u4").tobytes()


def read_file(data: bytes) -> tuple[int, np.ndarray]:
    """(samples, words) of a file ``write_file`` wrote; a one-line error for anything else."""
    if len(data) < HEADER.size or data[:len(MAGIC)] != MAGIC or (len(data) - HEADER.size) % 4:
        raise ValueError(f"stream must be a speech codec file (starting with {MAGIC!r}, "
                         f"{HEADER.size} header bytes and whole 32-bit words), got "
                         f"{len(data)} bytes starting with {data[:len(MAGIC)]!r}")
    _, samples = HEADER.unpack_from(data)
    return samples, np.frombuffer(data, "<u4", offset=HEADER.size).astype(np.uint32)
