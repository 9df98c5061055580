"""Site detection from the graph, for every family, both attention implementations."""

import pytest
import torch
from tiny_models import EXPECTED_KINDS, FAMILIES, N_LAYERS, tiny_model

import was_compile
from was_compile.passes.detect_sites import weight_source_name


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_in_every_block(family):
    model = tiny_model(family)
    sites = was_compile.find_sites(model)
    for block in range(N_LAYERS):
        kinds = {s.kind for s in sites if s.block == block}
        assert kinds == EXPECTED_KINDS[family], (block, kinds)
    names = [s.name for s in sites]
    assert len(set(names)) == len(names)
    for s in sites:  # names are real module paths with the right shapes
        w = s.weight(model)
        assert tuple(w.shape) == (s.out_features, s.in_features)
    lm_head = {n for n, m in model.named_modules() if m is model.get_output_embeddings()}
    assert not lm_head & set(names), "the output head is not a site"


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_eager_attention_is_found_too(family):
    sdpa = was_compile.find_sites(tiny_model(family, attn="sdpa"))
    eager = was_compile.find_sites(tiny_model(family, attn="eager"))
    assert [(s.name, s.kind, s.block) for s in eager] == [(s.name, s.kind, s.block) for s in sdpa]


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_groups_are_siblings_reading_one_input(family):
    sites = was_compile.find_sites(tiny_model(family))
    groups = {}
    for s in sites:
        groups.setdefault(s.group, []).append(s.kind)
    expected = {"llama": [["q", "k", "v"], ["o"], ["gate", "up"], ["down"]],
                "phi3": [["qkv"], ["o"], ["gate_up"], ["down"]]}[family]  # fmt: skip
    assert sorted(groups.values()) == sorted(expected * N_LAYERS)


def test_dynamo_source_names_are_module_paths():
    """Pins the Dynamo metadata the backend names sites by (internal to torch)."""
    model = tiny_model("llama")
    seen = []

    def backend(gm, example_inputs, **kw):
        for node in gm.graph.nodes:
            if node.op == "placeholder" and "q_proj" in node.name:
                seen.append(weight_source_name(node))
        return gm.forward

    with torch.no_grad():
        torch.compile(model, backend=backend)(torch.ones(1, 4, dtype=torch.long))
    assert seen[0] == "model.layers.0.self_attn.q_proj"


def test_model_without_sites_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no activation->linear sites"):
        was_compile.find_sites(model, example_inputs={"input": torch.ones(2, 4)})


def test_every_attention_input_kind_has_a_place_in_the_tables():
    """detect_sites names a fused attention input by the roles it feeds, in q, k, v order
    (any non-empty subset); ``was show`` and the schedule plot index KIND_ORDER by kind."""
    from itertools import combinations

    from was_compile.sites import KIND_ORDER

    for n in (1, 2, 3):
        for roles in combinations("qkv", n):
            assert "".join(roles) in KIND_ORDER
    assert len(set(KIND_ORDER)) == len(KIND_ORDER)
