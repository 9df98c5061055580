"""benchmarks/config_sweep.py: the grid of explicit configs it times (the timing itself needs a
GPU; the grid decides which configs a sweep can find, so its rules are checked here)."""

import pytest
from bench_modules import load_benchmark


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("config_sweep")


def test_dot_grid_rules(sweep):
    """M >= 5: dot configs over the given tiles, chunks, stages and COMPACT values; chunks
    shorter than a step or longer than twice K are skipped, and COMPACT only where the M x
    CHUNK entries of x fit the CTA's registers (32 x threads)."""
    tiles = [(64, 64, 2), (128, 32, 4)]
    cfgs = sweep.grid(2048, 8, tiles, (32, 64, 512, 8192), (3, 4), (0, 1))
    assert all(c["USE_DOT"] == 1 and "WIDE" not in c for c in cfgs)
    chunks = {c["BLOCK_K"] * c["K_ITERS"] for c in cfgs}
    assert 32 in chunks and 8192 not in chunks  # 32 only for the BLOCK_K = 32 tile
    for c in cfgs:
        if c["COMPACT"]:
            assert 8 * c["BLOCK_K"] * c["K_ITERS"] <= 32 * 32 * c["num_warps"]
    # 64x64, 2 warps: chunks 64 and 512, masked; compacting only at 64 (8 x 512 > 2048)
    small = [c for c in cfgs if c["BLOCK_N"] == 64]
    assert sorted((c["K_ITERS"], c["COMPACT"], c["num_stages"]) for c in small) == [
        (1, 0, 3), (1, 0, 4), (1, 1, 3), (1, 1, 4), (8, 0, 3), (8, 0, 4),
    ]  # fmt: skip


def test_wide_grid_steps_and_caps(sweep):
    """M <= 4 (or --path wide): wide FMA tiles; --k-iters gives the steps per CTA directly,
    and every config is repeated under each register cap (0: none)."""
    tiles = [(256, 8, 1), (512, 16, 2)]
    cfgs = sweep.grid(4096, 1, tiles, k_iters=[12, 17], caps=(0, 96))
    assert len(cfgs) == 2 * 2 * 2
    assert all(c["WIDE"] == 1 and c["USE_DOT"] == 0 and c["num_stages"] == 1 for c in cfgs)
    assert sorted({c["K_ITERS"] for c in cfgs}) == [12, 17]
    assert sum("maxnreg" not in c for c in cfgs) == 4
    assert {c.get("maxnreg") for c in cfgs} == {None, 96}
    default = sweep.grid(4096, 2)  # chunks 32..512 over WIDE_TILES
    assert {(c["BLOCK_N"], c["BLOCK_K"], c["num_warps"]) for c in default} == set(sweep.WIDE_TILES)
    assert {c["BLOCK_K"] * c["K_ITERS"] for c in default} == {32, 64, 128, 256, 512}
    assert {c["COMPACT"] for c in default} == {0}  # masked only, unless COMPACT values given
    both = sweep.grid(4096, 1, tiles, k_iters=[8], compacts=(0, 1))
    assert sorted((c["BLOCK_N"], c["COMPACT"]) for c in both) == [
        (256, 0), (256, 1), (512, 0), (512, 1),
    ]  # fmt: skip


def test_path_overrides_the_bucket_default(sweep):
    assert all(c["USE_DOT"] for c in sweep.grid(4096, 4, [(128, 32, 4)], path="dot"))
    assert all(c["WIDE"] for c in sweep.grid(4096, 8, [(256, 8, 1)], path="wide"))
    assert all(c["USE_DOT"] for c in sweep.grid(4096, 8))  # M >= 5 default: dot
