"""The KV-cache keyword on both sides of transformers 5.24's rename (past_key_values -> cache)."""

from __future__ import annotations

import inspect
import types

import transformers

from was_compile.hf_cache import cache_arg_name, cache_kwargs, returned_cache


class _Old:
    def forward(self, input_ids, past_key_values=None, use_cache=None):  # noqa: ANN001, ANN201
        return past_key_values


class _New:
    def forward(self, input_ids, cache=None, use_cache=None):  # noqa: ANN001, ANN201
        return cache


def test_name_follows_the_forward_signature() -> None:
    assert cache_arg_name(_Old) == cache_arg_name(_Old()) == "past_key_values"
    assert cache_arg_name(_New()) == "cache"
    marker = object()
    for model in (_Old(), _New()):  # the keyword built is one the forward accepts
        assert model.forward(None, **cache_kwargs(model, marker)) is marker


def test_installed_transformers_takes_the_name() -> None:
    name = cache_arg_name(transformers.LlamaForCausalLM)
    assert name in inspect.signature(transformers.LlamaForCausalLM.forward).parameters


def test_returned_cache_reads_either_field() -> None:
    a, b = object(), object()
    assert returned_cache(types.SimpleNamespace(cache=a, past_key_values=b)) is a
    assert returned_cache(types.SimpleNamespace(past_key_values=b)) is b
    assert returned_cache(types.SimpleNamespace(cache=None, past_key_values=b)) is b
