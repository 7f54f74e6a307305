"""The two tokenizers a dataset can use: characters (vocabulary from the text) and GPT-2's BPE.

Both turn a list of segments into one array of ids: a segment is a string, or None for the
end-of-text token that separates documents (GPT-2 only; characters have no such token).
"""

import numpy as np

from tritongpt.prep.errors import DatasetError


class CharTokenizer:
    name = "char"
    eot = None

    def __init__(self, chars):
        self.chars = list(chars)  # the vocabulary: id -> character
        self.vocab_size = len(self.chars)
        codepoints = np.array([ord(ch) for ch in self.chars], dtype=np.int64)
        self._order = np.argsort(codepoints)  # ids sorted by code point, for searchsorted
        self._sorted = codepoints[self._order]

    def encode_array(self, text, dtype=np.int64):
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        pos = np.minimum(np.searchsorted(self._sorted, codepoints), len(self._sorted) - 1)
        unknown = np.flatnonzero(self._sorted[pos] != codepoints)
        if len(unknown):
            raise ValueError(f"character {text[unknown[0]]!r} is not in this dataset's vocabulary")
        return self._order[pos].astype(dtype)

    def encode_segments(self, segments, dtype):
        if any(s is None for s in segments):
            raise ValueError("a character vocabulary has no end-of-text token")
        return np.concatenate([self.encode_array(s, dtype) for s in segments] + [np.empty(0, dtype)])

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)


def gpt2_encoding():
    """tiktoken's `gpt2` encoding; a DatasetError that says what to do when it cannot be had."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # noqa: BLE001 - tiktoken downloads its files on first use: any network error lands here
        raise DatasetError(
            f"could not load the GPT-2 tokenizer ({type(e).__name__}); connect to the network once, "
            "or set TIKTOKEN_CACHE_DIR to a folder that holds tiktoken's gpt2 files"
        ) from None


class GPT2Tokenizer:
    name = "gpt2"

    def __init__(self):
        self._enc = gpt2_encoding()
        self.vocab_size = self._enc.n_vocab  # 50257
        self.eot = self._enc.eot_token  # 50256, <|endoftext|>

    # Worker processes get a pickled copy: send only the name, each loads the encoding itself.
    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def encode_segments(self, segments, dtype):
        ids = []
        for segment in segments:
            if segment is None:
                ids.append(self.eot)
            else:
                ids.extend(self._enc.encode_ordinary(segment))
        return np.array(ids, dtype=dtype)

    def encode(self, text):
        return self._enc.encode(text, allowed_special={"<|endoftext|>"})

    def decode(self, ids):
        return self._enc.decode([int(i) for i in ids])
