"""Calibration and evaluation text, obtainable without a model hub.

Three sources, in order of preference:

* the user's own plain-text file (``load_text("/path/to/book.txt")``);
* Jane Austen's six novels from Debian's ``r-cran-janeaustenr`` package
  (``load_text("austen:Pride & Prejudice")`` or ``load_text("austen")``), fetched once with
  ``apt-get download`` (no root needed), unpacked with ``dpkg -x``, decoded with the PyPI
  ``rdata`` package and cached as plain ``.txt`` files;
* the English reference prose every CPython ships in ``pydoc_data.topics``
  (``load_text("pydoc")``), a fallback where apt is not at hand.

:func:`token_windows` cuts a text into fixed-length token windows for calibration or
perplexity evaluation.
"""

from __future__ import annotations

import bz2
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "AUSTEN_TITLES",
    "austen_novels",
    "cache_root",
    "fallback_text",
    "load_text",
    "token_windows",
    "tokenizer_adds_bos",
]

#: The Debian package that carries the novels.
AUSTEN_DEB = "r-cran-janeaustenr"

#: R object name in the package's lazy-load database -> title, in publication order
#: (the titles are those of janeaustenr's ``austen_books()``).
AUSTEN_TITLES: dict[str, str] = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}

# Where an R installation may already hold the package (``apt-get install r-cran-janeaustenr``
# or ``install.packages("janeaustenr")``): no download needed then.
_SYSTEM_R_LIBS = (
    "/usr/lib/R/site-library",
    "/usr/local/lib/R/site-library",
    "/usr/lib/R/library",
    "/usr/local/lib/R/library",
)
_RDB_RELPATH = Path("janeaustenr") / "data"


def cache_root() -> Path:
    """Root of was_compile's on-disk cache: ``$WAS_CACHE_DIR`` or ``~/.cache/was_compile``."""
    env = os.environ.get("WAS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "was_compile"


# --------------------------------------------------------------------------------------------
# Jane Austen
# --------------------------------------------------------------------------------------------


def austen_novels(cache_dir: str | Path | None = None) -> dict[str, str]:
    """Jane Austen's six novels, title -> full text (lines joined with ``"\\n"``).

    The first call fetches Debian's ``r-cran-janeaustenr`` (≈1.6 MB) into ``cache_dir``
    (default ``$WAS_CACHE_DIR/janeaustenr`` or ``~/.cache/was_compile/janeaustenr``) with
    ``apt-get download``, unpacks it with ``dpkg -x`` and decodes its R lazy-load database
    with the PyPI package ``rdata``; the texts are then cached as UTF-8 ``.txt`` files, so later
    calls need neither apt nor rdata. An R library that already holds janeaustenr (e.g. after
    ``apt-get install r-cran-janeaustenr``) is used without downloading, and so is a
    ``r-cran-janeaustenr_*.deb`` placed in ``cache_dir`` by hand.

    Returns:
        Dict in publication order, keys as in :data:`AUSTEN_TITLES` values
        (e.g. ``"Pride & Prejudice"``), about 4 MB of text in all.

    Raises:
        RuntimeError: apt-get/dpkg missing or failing, or rdata not installed; the message says
            what to run by hand and that ``load_text`` also accepts a path to any .txt file.
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else _austen_cache_dir()
    cached = _read_cached_novels(directory)
    if cached is not None:
        return cached

    data_dir = _find_installed_rdb() or _fetch_and_unpack(directory)
    novels = _read_rdb_novels(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for key, title in AUSTEN_TITLES.items():
        _atomic_write_text(directory / f"{key}.txt", novels[title])
    # The texts are all we need: drop the package and its unpacked tree.
    shutil.rmtree(directory / "deb", ignore_errors=True)
    for deb in directory.glob(f"{AUSTEN_DEB}_*.deb"):
        deb.unlink(missing_ok=True)
    return novels


def _austen_cache_dir() -> Path:
    return cache_root() / "janeaustenr"


def _read_cached_novels(directory: Path) -> dict[str, str] | None:
    paths = {title: directory / f"{key}.txt" for key, title in AUSTEN_TITLES.items()}
    if not all(p.is_file() for p in paths.values()):
        return None
    return {title: p.read_text(encoding="utf-8") for title, p in paths.items()}


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _find_installed_rdb() -> Path | None:
    for lib in _SYSTEM_R_LIBS:
        data_dir = Path(lib) / _RDB_RELPATH
        if (data_dir / "Rdata.rdb").is_file() and (data_dir / "Rdata.rdx").is_file():
            return data_dir
    return None


def _manual_steps(directory: Path) -> str:
    return (
        f"To fetch it by hand: `cd {directory} && apt-get download {AUSTEN_DEB}` "
        f"(run `sudo apt-get update` first if apt cannot locate the package), then call "
        f"again; or skip Austen and pass your own text: load_text('/path/to/book.txt') "
        f"(or load_text('pydoc') for the prose shipped with Python)."
    )


def _run(cmd: list[str], cwd: Path, directory: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {exc}. {_manual_steps(directory)}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            f"`{' '.join(cmd)}` exited with status {proc.returncode}: {' | '.join(detail)}. "
            + _manual_steps(directory)
        )


def _fetch_and_unpack(directory: Path) -> Path:
    """Download (unless a .deb is already there) and unpack the package; return its data dir."""
    directory.mkdir(parents=True, exist_ok=True)
    debs = sorted(directory.glob(f"{AUSTEN_DEB}_*.deb"))
    if not debs:
        if shutil.which("apt-get") is None:
            raise RuntimeError(
                f"apt-get is not available on this machine. {_manual_steps(directory)}"
            )
        _run(["apt-get", "download", AUSTEN_DEB], cwd=directory, directory=directory)
        debs = sorted(directory.glob(f"{AUSTEN_DEB}_*.deb"))
        if not debs:
            raise RuntimeError(
                f"apt-get download left no {AUSTEN_DEB}_*.deb in {directory}. "
                + _manual_steps(directory)
            )
    if shutil.which("dpkg") is None:
        raise RuntimeError(
            f"dpkg is not available to unpack {debs[-1]}. {_manual_steps(directory)}"
        )
    unpack_dir = directory / "deb"
    shutil.rmtree(unpack_dir, ignore_errors=True)
    _run(["dpkg", "-x", str(debs[-1]), str(unpack_dir)], cwd=directory, directory=directory)
    found = sorted(unpack_dir.rglob("janeaustenr/data/Rdata.rdb"))
    if not found:
        raise RuntimeError(
            f"{debs[-1]} holds no janeaustenr/data/Rdata.rdb; is it the right package?"
        )
    return found[0].parent


def _inflate(blob: bytes, compressed: int) -> bytes:
    """Undo R's lazy-load compression of one object: a 4-byte length, then the payload.

    ``compressed`` is the database's flag: 1 (``TRUE``) for plain zlib; 2 or 3 for a type byte
    after the length (``'0'`` none, ``'1'`` zlib, ``'2'`` bzip2, ``'Z'`` xz).
    """
    if compressed == 1:
        return zlib.decompress(blob[4:])
    kind, payload = blob[4:5], blob[5:]
    if kind == b"0":
        return payload
    if kind == b"1":
        return zlib.decompress(payload)
    if kind == b"2":
        return bz2.decompress(payload)
    if kind == b"Z":
        return lzma.decompress(payload)
    raise ValueError(f"unknown R lazy-load compression type {kind!r}")


def _read_rdb_novels(data_dir: Path) -> dict[str, str]:
    """Decode janeaustenr's ``Rdata.rdb``/``.rdx`` pair into title -> text."""
    try:
        import rdata
    except ImportError as exc:
        raise RuntimeError(
            "reading the janeaustenr package needs the PyPI package rdata: `pip install rdata`; "
            "or pass your own text: load_text('/path/to/book.txt')"
        ) from exc

    # The index is a gzip'd R serialisation of list(variables=, references=, compressed=).
    index = rdata.conversion.convert(
        rdata.parser.parse_data((data_dir / "Rdata.rdx").read_bytes(), extension=".rds")
    )
    variables = index["variables"]
    compressed = int(index["compressed"][0])
    database = (data_dir / "Rdata.rdb").read_bytes()

    novels: dict[str, str] = {}
    for key, title in AUSTEN_TITLES.items():
        if key not in variables:
            raise RuntimeError(f"{data_dir}/Rdata.rdx has no object {key!r} ({title})")
        offset, length = (int(v) for v in variables[key])
        payload = _inflate(database[offset : offset + length], compressed)
        lines = rdata.conversion.convert(rdata.parser.parse_data(payload, extension=".rds"))
        novels[title] = "\n".join("" if line is None else str(line) for line in lines)
    return novels


def _title_key(title: str) -> str:
    """Loose form of a title: lower case, alphanumerics only, '&'/'and' dropped."""
    words = re.split(r"[^0-9a-z]+", title.lower().replace("&", " "))
    return "".join(w for w in words if w and w != "and")


def _match_title(query: str, titles: list[str]) -> str:
    """Resolve a loosely written title ("pride and prejudice", "PRIDE", "emma") to one title."""
    key = _title_key(query)
    exact = [t for t in titles if _title_key(t) == key]
    if len(exact) == 1:
        return exact[0]
    partial = [t for t in titles if key and key in _title_key(t)]
    if len(partial) == 1:
        return partial[0]
    why = "matches several novels" if len(partial) > 1 else "matches no novel"
    raise ValueError(
        f"austen:{query!r} {why}; available titles: {', '.join(titles)} "
        "(case, punctuation and 'and'/'&' are ignored; a unique part of a title is enough)"
    )


# --------------------------------------------------------------------------------------------
# Fallback text and the source dispatcher
# --------------------------------------------------------------------------------------------


def fallback_text() -> str:
    """English reference prose shipped with every CPython (``pydoc_data.topics``), ≈465 KB.

    Mixed with code samples; a calibration text for when apt is not available, not a substitute
    for novels in a quality benchmark. Topics are joined in sorted order, separated by blank lines.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(str(topics[name]).strip() for name in sorted(topics))


def load_text(source: str) -> tuple[str, str]:
    """Load a text by source name; return ``(text, description)``.

    ``source`` is one of:

    * ``"austen:<Title>"``: one novel, title matched loosely (``austen:Pride & Prejudice``,
      ``austen:pride and prejudice``, ``austen:emma``);
    * ``"austen"``: all six novels in publication order, separated by blank lines;
    * ``"pydoc"``: :func:`fallback_text`;
    * otherwise a path to a UTF-8 text file (to reach a file named ``austen`` or ``pydoc``,
      write ``./austen``).

    Raises:
        FileNotFoundError: ``source`` is neither a keyword nor an existing file.
        ValueError: an Austen title matching no novel or several (the message lists them).
        RuntimeError: the Austen texts cannot be fetched (see :func:`austen_novels`).
    """
    lowered = source.strip().lower()
    if lowered == "pydoc":
        text = fallback_text()
        return text, f"CPython pydoc_data.topics reference prose ({len(text):,} characters)"
    if lowered == "austen":
        novels = austen_novels()
        text = "\n\n".join(novels.values())
        return text, (
            f"Jane Austen, all six novels (Debian {AUSTEN_DEB}; {len(text):,} characters)"
        )
    if lowered.startswith("austen:"):
        novels = austen_novels()
        title = _match_title(source.strip()[len("austen:") :], list(novels))
        text = novels[title]
        return text, f"Jane Austen, {title} (Debian {AUSTEN_DEB}; {len(text):,} characters)"

    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"text source {source!r} is not a file; use a path to a .txt file, "
            "'austen:<Title>', 'austen' or 'pydoc'"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    return text, f"{path.name} ({len(text):,} characters)"


# --------------------------------------------------------------------------------------------
# Token windows
# --------------------------------------------------------------------------------------------


def _encode(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)[
        "input_ids"
    ]
    return list(ids)


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's own encoding starts a sequence with its BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tokenizer("a", return_attention_mask=False)["input_ids"]
    return len(with_special) > 0 and with_special[0] == bos


def token_windows(
    tokenizer: Any,
    text: str,
    seq_len: int,
    n_windows: int,
    stride: int | None = None,
    *,
    add_bos: bool | None = None,
) -> torch.Tensor:
    """Cut ``text`` into ``n_windows`` token windows of ``seq_len`` tokens, from its start.

    Args:
        tokenizer: a Hugging Face tokenizer, called as
            ``tokenizer(text, add_special_tokens=False)``.
        text: the text; only as much of it as needed is tokenised.
        seq_len: tokens per window, including the BOS token when one is added.
        n_windows: number of windows.
        stride: text tokens between the starts of consecutive windows; default: the number of
            text tokens per window, i.e. consecutive non-overlapping windows.
        add_bos: start every window with the tokenizer's BOS token followed by
            ``seq_len - 1`` text tokens. ``None`` (default) does so exactly when the tokenizer
            adds BOS by itself (Gemma does, SmolLM2/GPT-2 style tokenizers do not): models
            trained that way lose much quality without it.

    Returns:
        int64 tensor of shape ``[n_windows, seq_len]``.

    Raises:
        ValueError: bad sizes, or the text has fewer tokens than the windows need (the message
            gives both counts).
    """
    if seq_len < 1 or n_windows < 1:
        raise ValueError(f"seq_len and n_windows must be >= 1, got {seq_len} and {n_windows}")
    if add_bos is None:
        add_bos = tokenizer_adds_bos(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
    body = seq_len - 1 if add_bos else seq_len
    if body < 1:
        raise ValueError("seq_len must be >= 2 when a BOS token starts each window")
    stride = body if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    needed = (n_windows - 1) * stride + body

    # Tokenise a growing prefix: a whole novel takes seconds, a few windows milliseconds.
    # Only the last word of a cut prefix may tokenise differently, so keep a margin.
    margin = 16
    n_chars = min(len(text), 8 * (needed + margin) + 1024)
    while True:
        ids = _encode(tokenizer, text[:n_chars])
        if n_chars >= len(text):
            break
        if len(ids) >= needed + margin:
            break
        n_chars = min(len(text), 2 * n_chars)
    if len(ids) < needed:
        raise ValueError(
            f"text too short: it has {len(ids):,} tokens, but {n_windows} windows of {body} "
            f"text tokens with stride {stride} need {needed:,}"
        )

    flat = torch.tensor(ids[:needed], dtype=torch.int64)
    windows = flat.unfold(0, body, stride)[:n_windows].contiguous()
    if add_bos:
        first = torch.full((n_windows, 1), int(bos), dtype=torch.int64)
        windows = torch.cat([first, windows], dim=1)
    return windows
