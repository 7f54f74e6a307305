"""Where the text comes from: local files read piece by piece, tiny Shakespeare (downloaded, or the
copy that ships with the package), web corpora."""

import glob
import gzip
import hashlib
import http.client
import os
import re
import shlex
import urllib.error
import urllib.request

from tritongpt.prep.errors import DatasetError, TextError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DOWNLOAD_TIMEOUT = 10  # seconds; offline machines fail at once or after this
# The same text, gzipped, inside the package (it is in the public domain): used when the download fails.
SHIPPED_SHAKESPEARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora", "tinyshakespeare.txt.gz")

# The web corpora on the Hugging Face hub: (repository, configuration).
WEB_CORPORA = {
    "openwebtext": ("Skylion007/openwebtext", None),
    "fineweb_edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT"),
}
SHUFFLE_BUFFER = 10_000  # documents held at once while the web stream is shuffled

# A piece of text may end only before an ASCII whitespace byte that follows a character that is not
# whitespace ("word| next", "слово|\n", "。|\n", "word|\r\n"). GPT-2's pre-tokenizer never joins a
# non-space character to the whitespace after it (its pre-tokens are letters, digits or punctuation
# with at most one space in front, or runs of whitespace), and how it splits a run of whitespace
# depends only on what follows the run. So encoding the pieces one by one gives exactly the ids of
# the whole text; and a cut at an ASCII byte never splits a UTF-8 character. The character before
# the cut is printable ASCII or the last byte (0x80-0xbf) of a longer one, but not one of the
# Unicode whitespace characters longer than a byte (U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028,
# U+2029, U+202F, U+205F, U+3000), which would split a run of whitespace.
SAFE_CUT = re.compile(
    rb"(?<=[\x21-\x7e\x80-\xbf])"
    rb"(?<!\xc2\x85)(?<!\xc2\xa0)(?<!\xe1\x9a\x80)(?<!\xe2\x80[\x80-\x8a\xa8\xa9\xaf])(?<!\xe2\x81\x9f)(?<!\xe3\x80\x80)"
    rb"\s"
)


# ----------------------------------------------------------------------------- local files


def find_files(pattern):
    """[(path, size)] of the non-empty files that `pattern` (a path or a glob) names, sorted."""
    if glob.has_magic(pattern):
        paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not paths:
            raise DatasetError(f"no files match {pattern!r}; check the pattern (and quote it for the shell)")
    elif not os.path.exists(pattern):
        raise DatasetError(f"input {pattern} does not exist; give the path of a UTF-8 text file")
    elif os.path.isdir(pattern):
        raise DatasetError(f"input {pattern} is a folder; give a file, or a glob such as '{pattern}/*.txt'")
    else:
        paths = [pattern]
    files = [(p, os.path.getsize(p)) for p in paths]
    files = [(p, size) for p, size in files if size > 0]
    if not files:
        raise TextError(f"input {pattern} is empty; give a file that holds text")
    return files


def first_cut(path, pos):
    """The first safe cut at or after byte `pos` of the file, or None when there is none."""
    with open(path, "rb") as f:
        start = max(pos - 1, 0)  # one byte before: the cut looks back at it
        f.seek(start)
        buf = b""
        while True:
            block = f.read(1 << 16)
            searched = max(pos - start, len(buf) - 2)
            buf += block
            m = SAFE_CUT.search(buf, searched)
            if m:
                return start + m.start()
            if not block:
                return None


def char_boundary(path, pos):
    """The first byte at or after `pos` that starts a UTF-8 character (or the file's end)."""
    with open(path, "rb") as f:
        f.seek(pos)
        head = f.read(4)
    return pos + next((i for i, b in enumerate(head) if not 0x80 <= b <= 0xBF), len(head))


def split_files(files, val_fraction):
    """Cut the files, taken in order as one stream, into ranges [(path, begin, end, split)]: the
    first (1 - val_fraction) of the bytes, up to the next safe cut, is "train", the rest "val".
    Where the rest of the file has no safe cut (text without whitespace), the next character
    boundary does: the two splits are encoded apart anyway."""
    target = int(sum(size for _, size in files) * (1 - val_fraction))
    ranges, offset = [], 0
    for path, size in files:
        if offset + size <= target:
            ranges.append((path, 0, size, "train"))
        elif offset >= target:
            ranges.append((path, 0, size, "val"))
        else:
            cut = first_cut(path, target - offset)
            if cut is None:
                cut = char_boundary(path, target - offset)
            ranges += [(path, 0, cut, "train"), (path, cut, size, "val")]
        offset += size
    return [r for r in ranges if r[2] > r[1]]


def _last_cut(buf):
    """The position of the last safe cut in buf, or 0 when there is none."""
    for window in (1 << 12, 1 << 16, len(buf)):
        last = None
        for match in SAFE_CUT.finditer(buf, max(len(buf) - window, 0)):
            last = match
        if last:
            return last.start()
        if window >= len(buf):
            return 0


def _decode(data, path, offset):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {offset + e.start}); "
            "convert it to UTF-8 (e.g. with iconv) or leave it out"
        ) from None


def read_pieces(path, begin, end, piece_bytes):
    """Yield (text, nbytes) for bytes [begin, end) of a UTF-8 file in pieces of about piece_bytes,
    each ending at a safe cut, so that memory holds a piece or two, never the whole file."""
    with open(path, "rb") as f:
        f.seek(begin)
        pos, buf, buf_at = begin, b"", begin
        while pos < end:
            block = f.read(min(piece_bytes, end - pos))
            if not block:
                raise DatasetError(f"{path} became shorter while it was read; run again once it is complete")
            buf += block
            pos += len(block)
            cut = _last_cut(buf) if pos < end and len(buf) >= piece_bytes else 0
            if cut:
                yield _decode(buf[:cut], path, buf_at), cut
                buf, buf_at = buf[cut:], buf_at + cut
        if buf:
            yield _decode(buf, path, buf_at), len(buf)


# ----------------------------------------------------------------------------- tiny Shakespeare


def _download(url, path):
    """Fetch url into path (written under a temporary name, then renamed); the reason on failure."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as r:
            data = r.read()
    except urllib.error.URLError as e:
        return str(e.reason)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return str(e) or type(e).__name__
    if hashlib.sha256(data).hexdigest() != SHAKESPEARE_SHA256:
        return "the download is not the expected file"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    return None


def _unpack_shipped(path, reason, out_dir):
    """Write the copy of tiny Shakespeare that ships with this package to path."""
    try:
        with gzip.open(SHIPPED_SHAKESPEARE, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        data, problem = None, e.strerror or str(e) or type(e).__name__
    if data is not None and hashlib.sha256(data).hexdigest() != SHAKESPEARE_SHA256:
        data, problem = None, "its contents are not tiny Shakespeare's"
    if data is None:
        raise DatasetError(
            f"could not download tiny Shakespeare ({reason}), and the copy that ships with the package "
            f"({SHIPPED_SHAKESPEARE}) is unusable ({problem}); reinstall tritongpt, or prepare a local copy: "
            "python -m tritongpt.prep shakespeare_char" + ("" if os.path.normpath(out_dir) == "data" else f" --out_dir {shlex.quote(str(out_dir))}")
            + " --input PATH"
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def shakespeare(out_dir, say):
    """(path, source) of tiny Shakespeare: cached under out_dir/downloads, else downloaded, else
    (no network) unpacked from the copy that ships with this package, said in one line."""
    path = os.path.join(out_dir, "downloads", "tinyshakespeare.txt")
    if os.path.isfile(path):
        return path, f"tiny Shakespeare ({SHAKESPEARE_URL})"
    reason = _download(SHAKESPEARE_URL, path)
    if reason is None:
        return path, f"tiny Shakespeare ({SHAKESPEARE_URL})"
    _unpack_shipped(path, reason, out_dir)
    say(f"prep: could not download tiny Shakespeare ({reason}); using the copy that ships with tritongpt")
    return path, "tiny Shakespeare (the copy that ships with tritongpt; the same text as the download)"


# ----------------------------------------------------------------------------- web corpora

_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".txt": "text"}


def web_documents(corpus, input, seed, limit):
    """(documents, source): an iterator over the texts of a web corpus, streamed from the hub or
    from local copies of its files (parquet, json lines, or text files of one document each), in
    an order shuffled with `seed` (a buffer of SHUFFLE_BUFFER documents), at most `limit` of them."""
    import datasets

    if input:
        paths = [p for p, _ in find_files(input)]
        extension = os.path.splitext(paths[0].removesuffix(".gz"))[1]
        if extension not in _BUILDERS:
            raise DatasetError(f"cannot read {paths[0]}: give .parquet, .json/.jsonl or .txt files")
        options = {"sample_by": "document"} if _BUILDERS[extension] == "text" else {}
        source = f"{corpus}: local files {input} ({len(paths)})"
        load = lambda: datasets.load_dataset(  # noqa: E731
            _BUILDERS[extension], data_files=paths, split="train", streaming=True, **options
        )
    else:
        repo, config = WEB_CORPORA[corpus]
        source = f"{corpus}: Hugging Face {repo}" + (f" ({config})" if config else "")
        load = lambda: datasets.load_dataset(repo, config, split="train", streaming=True)  # noqa: E731
    try:
        stream = load().shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER)
    except Exception as e:  # noqa: BLE001 - the hub and the file readers raise many kinds; all mean the same here
        raise DatasetError(f"could not open {source} ({_first_line(e)}); {_HINT}") from None
    if limit:
        stream = stream.take(limit)
    return _texts(stream, source), source


_HINT = "check the network, or pass --input with local copies of its parquet or json lines files"


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _texts(stream, source):
    rows = iter(stream)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - as above, for each row
            raise DatasetError(f"reading {source} failed ({_first_line(e)}); {_HINT}") from None
        text = row.get("text")
        if not isinstance(text, str):
            raise DatasetError(f"{source} has no 'text' column of strings; give files with a 'text' field")
        yield text
