"""Independent reference implementation of the BLAKE3 hash (default 32-byte
output, unkeyed hash mode), used to check tandem's state digest from Python.

Written from the BLAKE3 specification; pure Python plus numpy. All 1024-byte
chunks are compressed in parallel as uint32 arrays (numpy uint32 arithmetic
wraps mod 2**32), then parent nodes are merged layer by layer in parallel.
"""

import numpy as np

IV = np.array([0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
               0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19], dtype=np.uint32)
MSG_PERMUTATION = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8]

CHUNK_START, CHUNK_END, PARENT, ROOT = 1, 2, 4, 8
BLOCK_LEN, CHUNK_LEN = 64, 1024


def _rotr(x, n):
    return (x >> np.uint32(n)) | (x << np.uint32(32 - n))


def _g(v, a, b, c, d, mx, my):
    v[a] = v[a] + v[b] + mx
    v[d] = _rotr(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 12)
    v[a] = v[a] + v[b] + my
    v[d] = _rotr(v[d] ^ v[a], 8)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 7)


def _compress(cv, m, counter, block_len, flags):
    """Compress N blocks at once.

    cv: 8 uint32 arrays of shape (N,); m: 16 uint32 arrays of shape (N,);
    counter: uint64 array (N,); block_len, flags: ints or uint32 arrays.
    Returns the 8 output chaining-value words (arrays of shape (N,)).
    """
    n = len(cv[0])
    ones = np.ones(n, dtype=np.uint32)
    v = list(cv) + [ones * IV[0], ones * IV[1], ones * IV[2], ones * IV[3],
                    (counter & np.uint64(0xFFFFFFFF)).astype(np.uint32),
                    (counter >> np.uint64(32)).astype(np.uint32),
                    ones * np.uint32(block_len), ones * np.uint32(flags)]
    m = list(m)
    for r in range(7):
        # columns
        _g(v, 0, 4, 8, 12, m[0], m[1])
        _g(v, 1, 5, 9, 13, m[2], m[3])
        _g(v, 2, 6, 10, 14, m[4], m[5])
        _g(v, 3, 7, 11, 15, m[6], m[7])
        # diagonals
        _g(v, 0, 5, 10, 15, m[8], m[9])
        _g(v, 1, 6, 11, 12, m[10], m[11])
        _g(v, 2, 7, 8, 13, m[12], m[13])
        _g(v, 3, 4, 9, 14, m[14], m[15])
        if r < 6:
            m = [m[i] for i in MSG_PERMUTATION]
    return [v[i] ^ v[i + 8] for i in range(8)]


def _chunk_cvs(data, first_index, is_root):
    """Chaining values of equal-shaped chunks compressed in parallel.

    `data` holds k chunks of len(data) // k bytes each (all full, or a single
    final chunk of 0..1024 bytes); chunk i has counter first_index + i.
    Returns a (8, k) uint32 array.
    """
    k = max(1, len(data) // CHUNK_LEN)
    chunk_len = len(data) // k
    n_blocks = max(1, -(-chunk_len // BLOCK_LEN))
    last_block_len = chunk_len - (n_blocks - 1) * BLOCK_LEN
    buf = np.zeros((k, n_blocks * BLOCK_LEN), dtype=np.uint8)
    buf[:, :chunk_len] = np.frombuffer(data, dtype=np.uint8).reshape(k, chunk_len)
    # words[block, word, chunk], little-endian message words
    words = buf.view("<u4").astype(np.uint32).reshape(k, n_blocks, 16)
    words = np.ascontiguousarray(words.transpose(1, 2, 0))
    counter = np.arange(first_index, first_index + k, dtype=np.uint64)
    cv = [np.full(k, w, dtype=np.uint32) for w in IV]
    for j in range(n_blocks):
        flags, block_len = 0, BLOCK_LEN
        if j == 0:
            flags |= CHUNK_START
        if j == n_blocks - 1:
            flags |= CHUNK_END | (ROOT if is_root else 0)
            block_len = last_block_len
        cv = _compress(cv, words[j], counter, block_len, flags)
    return np.array(cv, dtype=np.uint32)


def blake3(data: bytes) -> bytes:
    """Default 32-byte BLAKE3 hash of `data`."""
    data = bytes(data)
    if len(data) <= CHUNK_LEN:
        cv = _chunk_cvs(data, 0, is_root=True)
        return cv[:, 0].astype("<u4").tobytes()
    # All chunks but the last are full; the last has 1..1024 bytes.
    n_full = (len(data) - 1) // CHUNK_LEN
    split = n_full * CHUNK_LEN
    nodes = np.concatenate([_chunk_cvs(data[:split], 0, False),
                            _chunk_cvs(data[split:], n_full, False)], axis=1)
    while nodes.shape[1] > 1:
        n = nodes.shape[1]
        pairs = n // 2
        left, right = nodes[:, 0:2 * pairs:2], nodes[:, 1:2 * pairs:2]
        m = np.concatenate([left, right])           # (16, pairs)
        cv = [np.full(pairs, w, dtype=np.uint32) for w in IV]
        flags = PARENT | (ROOT if n == 2 else 0)
        counter = np.zeros(pairs, dtype=np.uint64)
        merged = np.array(_compress(cv, m, counter, BLOCK_LEN, flags),
                          dtype=np.uint32)
        if n % 2:  # odd trailing node is carried up unmerged
            merged = np.concatenate([merged, nodes[:, -1:]], axis=1)
        nodes = merged
    return nodes[:, 0].astype("<u4").tobytes()
