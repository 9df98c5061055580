"""Tiny random-initialised decoders of every family the tests cover.

Shapes are small and odd on purpose (hidden 40, intermediate 56) so no kernel or pass can
rely on powers of two.
"""

from __future__ import annotations

import torch
import transformers as T

VOCAB = 97
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt_neox", "opt",
            "gpt2")  # fmt: skip
# Site kinds each family must show in every block.
EXPECTED_KINDS = {
    "llama": {"q", "k", "v", "o", "gate", "up", "down"},
    "mistral": {"q", "k", "v", "o", "gate", "up", "down"},
    "qwen2": {"q", "k", "v", "o", "gate", "up", "down"},
    "qwen3": {"q", "k", "v", "o", "gate", "up", "down"},
    "gemma": {"q", "k", "v", "o", "gate", "up", "down"},
    "gemma2": {"q", "k", "v", "o", "gate", "up", "down"},
    "phi3": {"qkv", "o", "gate_up", "down"},
    "gpt_neox": {"qkv", "o", "up", "down"},
    "opt": {"q", "k", "v", "o", "up", "down"},
    "gpt2": {"qkv", "o", "up", "down"},
}
N_LAYERS = 2


def tiny_model(family: str, attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A float32 eval-mode model of ``family`` with ``N_LAYERS`` blocks."""
    torch.manual_seed(seed)
    gqa = dict(vocab_size=VOCAB, hidden_size=40, intermediate_size=56, num_hidden_layers=N_LAYERS,
               num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    if family == "llama":
        cfg = T.LlamaConfig(**gqa)
        cls = T.LlamaForCausalLM
    elif family == "mistral":
        cfg, cls = T.MistralConfig(**gqa), T.MistralForCausalLM
    elif family == "qwen2":
        cfg, cls = T.Qwen2Config(**gqa), T.Qwen2ForCausalLM
    elif family == "qwen3":
        cfg, cls = T.Qwen3Config(head_dim=10, **gqa), T.Qwen3ForCausalLM
    elif family == "gemma":
        cfg, cls = T.GemmaConfig(head_dim=10, **gqa), T.GemmaForCausalLM
    elif family == "gemma2":
        cfg, cls = T.Gemma2Config(head_dim=10, **gqa), T.Gemma2ForCausalLM
    elif family == "phi3":
        cfg, cls = T.Phi3Config(pad_token_id=0, **gqa), T.Phi3ForCausalLM
    elif family == "gpt_neox":
        cfg = T.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=40, intermediate_size=56,
                              num_hidden_layers=N_LAYERS, num_attention_heads=4)  # fmt: skip
        cls = T.GPTNeoXForCausalLM
    elif family == "opt":
        cfg = T.OPTConfig(vocab_size=VOCAB, hidden_size=40, ffn_dim=56, num_hidden_layers=N_LAYERS,
                          num_attention_heads=4, word_embed_proj_dim=40, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2)  # fmt: skip
        cls = T.OPTForCausalLM
    elif family == "gpt2":
        cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=40, n_layer=N_LAYERS, n_head=4,
                           bos_token_id=1, eos_token_id=2)  # fmt: skip
        cls = T.GPT2LMHeadModel
    else:
        raise ValueError(family)
    if attn == "eager" or family != "gemma2":  # Gemma2 has no SDPA path in transformers
        cfg._attn_implementation = attn
    model = cls(cfg).eval()
    with torch.no_grad():  # random init has tiny norms in some families: widen the spread
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(1.0 + torch.rand(p.shape[1]) * 2.0)
    return model


def batches(
    n: int, seq: int = 24, seed: int = 1, batch: int = 2, vocab: int = VOCAB
) -> list[torch.Tensor]:
    """``n`` seeded batches of random token ids [batch, seq] (ids 0-2 left for specials)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (batch, seq), generator=g) for _ in range(n)]
