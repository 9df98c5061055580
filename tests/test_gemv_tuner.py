"""The sparse GEMV's tuner (was_compile/kernels/gemv_tuner.py): choice, disk cache, failures.

Timers are fakes here (the real one times CUDA graphs on the GPU: tests/test_gpu_kernels.py);
what is checked is the bookkeeping around them."""

import json
import warnings

import pytest
import torch

from was_compile.kernels import gemv_tuner as gt

CANDS = [
    {"BLOCK_N": 256, "BLOCK_K": 16, "K_ITERS": 4, "USE_DOT": 0, "WIDE": 1, "num_warps": 1},
    {"BLOCK_N": 512, "BLOCK_K": 16, "K_ITERS": 8, "USE_DOT": 0, "WIDE": 1, "num_warps": 2},
    {"BLOCK_N": 128, "BLOCK_K": 64, "K_ITERS": 2, "USE_DOT": 1, "num_warps": 4},
]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache directory and no entries remembered by this process."""
    monkeypatch.setenv("WAS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gt, "_MEMO", {})
    monkeypatch.setattr(gt, "_LOADED", set())
    return tmp_path


def _key(**kw):
    args = {"device_name": "GPU X", "dtype": torch.bfloat16, "k": 4096, "ends": (4096, 5120),
            "mb": 1, "sb": 3, "atomic": True}  # fmt: skip
    args.update(kw)
    return gt.tuning_key(**args)


def test_key_names_everything_that_changes_the_choice():
    base = _key()
    others = [_key(device_name="GPU Y"), _key(dtype=torch.float16), _key(k=4095),
              _key(ends=(4096, 5121)), _key(mb=2), _key(sb=2), _key(atomic=False)]  # fmt: skip
    assert len({base, *others}) == 1 + len(others)
    assert gt._source_hash() in base  # code changes invalidate old entries


def test_fastest_is_chosen_stored_and_reused_by_a_new_process(fresh_cache, monkeypatch):
    times = {256: 0.020, 512: 0.011, 128: 0.015}  # ms, by BLOCK_N
    seen = []

    def timer(cfg):
        seen.append(cfg["BLOCK_N"])
        return times[cfg["BLOCK_N"]]

    key = _key()
    assert gt.choose_config(key, CANDS, timer) == CANDS[1]
    assert seen == [256, 512, 128]  # every candidate timed once
    entry = json.loads(gt.cache_path().read_text())[key]
    assert entry["config"] == CANDS[1] and entry["us"] == pytest.approx(11.0)
    assert [t["us"] for t in entry["timed"]] == pytest.approx([20.0, 11.0, 15.0])
    # a new process: nothing in memory, the file answers, nothing is timed
    monkeypatch.setattr(gt, "_MEMO", {})
    monkeypatch.setattr(gt, "_LOADED", set())
    assert gt.choose_config(key, CANDS, lambda cfg: pytest.fail("timed again")) == CANDS[1]
    # another key is tuned on its own and lands in the same file
    gt.choose_config(_key(mb=2), CANDS, lambda cfg: times[cfg["BLOCK_N"]] * cfg["num_warps"])
    assert set(json.loads(gt.cache_path().read_text())) == {key, _key(mb=2)}


def test_failing_candidates_are_skipped_and_recorded(fresh_cache):
    def timer(cfg):
        if cfg["USE_DOT"]:
            raise RuntimeError("out of resources: shared memory")
        return 1.0 / cfg["num_warps"]

    key = _key()
    assert gt.choose_config(key, CANDS, timer) == CANDS[1]
    timed = json.loads(gt.cache_path().read_text())[key]["timed"]
    assert timed[2]["us"] is None and "shared memory" in timed[2]["error"]

    def broken(cfg):
        raise ValueError(f"no {cfg['BLOCK_N']}")

    with pytest.raises(RuntimeError, match="every sparse GEMV candidate failed") as e:
        gt.choose_config(_key(sb=1), CANDS, broken)
    assert "no 256" in str(e.value.__cause__)
    assert _key(sb=1) not in json.loads(gt.cache_path().read_text())


def test_single_candidate_and_empty_list(fresh_cache):
    assert gt.choose_config(_key(), CANDS[:1], lambda c: pytest.fail("timed")) == CANDS[0]
    assert not gt.cache_path().exists()  # nothing was measured, nothing is stored
    with pytest.raises(ValueError, match="no sparse GEMV candidate"):
        gt.choose_config(_key(), [], lambda c: 1.0)


def test_unreadable_cache_is_ignored_with_a_warning(fresh_cache):
    gt.cache_path().parent.mkdir(parents=True, exist_ok=True)
    gt.cache_path().write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable GEMV tuning cache"):
        assert gt.lookup(_key()) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gt.choose_config(_key(), CANDS, lambda c: c["BLOCK_K"] * 1e-3)  # rewrites the file
    assert json.loads(gt.cache_path().read_text())[_key()]["config"] == CANDS[0]


def test_weight_copies_cover_three_times_l2(monkeypatch):
    monkeypatch.setattr(gt, "l2_bytes", lambda device: 3000)
    w = torch.randn(10, 15).to(torch.bfloat16)  # 300 bytes
    copies = gt.weight_copies(w)
    assert len(copies) == 30 and copies[0] is w  # 3 x 3000 bytes / 300
    assert all(c.shape == w.shape and c.dtype == w.dtype for c in copies)
    assert len({c.data_ptr() for c in copies}) == 30
    assert all(torch.isfinite(c.float()).all() and c.float().std() > 0 for c in copies[1:])
    big = torch.zeros(100, 100)  # 40 kB > 3 x L2: the weight and one more copy
    assert len(gt.weight_copies(big)) == 2
    tiny = torch.zeros(2)  # 8 bytes: capped at 64 weights
    assert len(gt.weight_copies(tiny)) == 64


def test_config_dict_of_a_triton_config():
    triton = pytest.importorskip("triton")
    cfg = triton.Config({"BLOCK_N": 256, "BLOCK_K": 16}, num_warps=2, num_stages=1)
    assert gt.config_dict(cfg) == {"BLOCK_N": 256, "BLOCK_K": 16, "num_warps": 2,
                                   "num_stages": 1}  # fmt: skip


def test_register_caps_are_timed_after_the_pick_and_kept_only_when_faster(fresh_cache):
    from was_compile.kernels.autotune_configs import REGISTER_CAPS, register_cap_variants

    assert register_cap_variants(CANDS[2]) == []  # dot path: no caps
    assert register_cap_variants({**CANDS[0], "maxnreg": 64}) == []  # already capped
    caps = register_cap_variants(CANDS[0])
    assert [c["maxnreg"] for c in caps] == list(REGISTER_CAPS)
    assert all({k: v for k, v in c.items() if k != "maxnreg"} == CANDS[0] for c in caps)

    seen_ranked = []

    def first_capped(ranked):  # the tuner hands over its timed configs, fastest first
        seen_ranked.append(ranked)
        return register_cap_variants(ranked[0])

    def timer(cfg):  # CANDS[0] is the fastest candidate; a cap of 96 is faster still
        return {None: 0.010, 96: 0.009, 128: 0.012}[cfg.get("maxnreg")] * (
            1 + cfg["BLOCK_N"] // 512
        )

    key = _key()
    assert gt.choose_config(key, CANDS, timer, first_capped) == caps[0]
    entry = json.loads(gt.cache_path().read_text())[key]
    assert [t["config"].get("maxnreg") for t in entry["timed"]] == [None, None, None, 96, 128]
    assert entry["us"] == pytest.approx(9.0)
    assert seen_ranked[0] == [CANDS[0], CANDS[2], CANDS[1]]  # 10, 20, 20 us: stable order

    def slower_caps(cfg):  # the caps lose (and one fails to compile): the pick stays uncapped
        if cfg.get("maxnreg") == 128:
            raise RuntimeError("ptxas: too many resources")
        return 0.010 + (0.001 if cfg.get("maxnreg") else 0.0) + cfg["BLOCK_K"] * 1e-4

    assert gt.choose_config(_key(mb=2), CANDS, slower_caps, first_capped) == CANDS[0]
    timed = json.loads(gt.cache_path().read_text())[_key(mb=2)]["timed"]
    assert timed[-1]["us"] is None and "too many resources" in timed[-1]["error"]


def test_occupancy_step_cap():
    from was_compile.kernels.autotune_configs import occupancy_step_cap, register_cap_variants

    # 78 registers (80 granted) x 4 warps: 6 CTAs per SM; 72 lets a 7th in (72 x 128 x 7 <= 64K)
    assert occupancy_step_cap(78, 4) == 72
    assert occupancy_step_cap(72, 4) == 64  # 7 CTAs -> 8
    assert occupancy_step_cap(96, 1) == 88  # 21 one-warp CTAs -> 22
    assert occupancy_step_cap(64, 1) is None  # 32 CTAs: the CTA limit binds, not registers
    assert occupancy_step_cap(None, 4) is None
    assert occupancy_step_cap(48, 8) == 40  # 5 CTAs of 8 warps -> 6
    assert occupancy_step_cap(40, 8) is None  # 7 CTAs would need 32 registers: below 40

    def ctas_per_sm(regs, warps):
        return 65536 // (-(-regs // 8) * 8 * 32 * warps)

    for regs, warps in ((78, 4), (120, 8), (200, 2), (96, 1)):
        cap = occupancy_step_cap(regs, warps)
        more = ctas_per_sm(cap, warps) > ctas_per_sm(regs, warps)
        assert cap % 8 == 0 and more and ctas_per_sm(cap + 8, warps) == ctas_per_sm(regs, warps)
    dot = CANDS[2]  # a dot config gets only the occupancy step; a wide one the fixed caps too
    assert [c["maxnreg"] for c in register_cap_variants(dot, 78)] == [72]
    assert register_cap_variants(dot, None) == []
    assert [c["maxnreg"] for c in register_cap_variants(CANDS[0], 96)] == [96, 128, 88]
    assert [c["maxnreg"] for c in register_cap_variants(CANDS[0], 64)] == [96, 128]


def test_fixed_caps_go_to_the_fastest_wide_config():
    """The tuner's refinement: each of the CAPPED_CONFIGS fastest gets its occupancy-step cap,
    and REGISTER_CAPS go to the fastest wide config among them even when a dot config won (on
    the H100 a dot pick had cost a wide config its 128-register variant, 24% faster)."""
    from was_compile.kernels.autotune_configs import (
        CAPPED_CONFIGS,
        REGISTER_CAPS,
        refinement_variants,
    )

    wide = {"BLOCK_N": 256, "BLOCK_K": 8, "K_ITERS": 32, "WIDE": 1, "num_warps": 1}
    wide2 = {**wide, "K_ITERS": 16}
    dot = {**CANDS[2]}  # 4 warps
    regs = {id(dot): 78, id(wide): 96, id(wide2): 64}

    def caps_of(variants, base):
        same = [v for v in variants if {**v, "maxnreg": 0} == {**base, "maxnreg": 0}]
        return [v["maxnreg"] for v in same]

    out = refinement_variants([dot, wide, wide2], lambda c: regs[id(c)])
    assert caps_of(out, dot) == [72]  # occupancy step only: 6 -> 7 CTAs per SM
    assert caps_of(out, wide) == [*REGISTER_CAPS, 88]  # the first wide one: fixed caps too
    assert caps_of(out, wide2) == []  # 64 registers: the CTA limit binds, not the first wide
    out = refinement_variants([wide2, wide, dot], lambda c: regs[id(c)])
    assert caps_of(out, wide2) == list(REGISTER_CAPS) and caps_of(out, wide) == [88]
    many = [dict(dot, K_ITERS=i) for i in range(1, 6)]
    assert len(refinement_variants(many, lambda c: 78)) == CAPPED_CONFIGS  # only the first 3
