"""The measured decode/prefill switch: derivation from timings, the on-disk table, lookups."""

import pytest
import torch

from was_compile.kernels import switch_points as sp


def _row(m, kernel_us, masked_us, k=64, ends=(32, 48), bucket=3):
    return {"K": k, "segment_ends": list(ends), "sparsity_bucket": bucket, "M": m,
            "time_us": kernel_us, "prefill_us": masked_us}  # fmt: skip


def test_switch_is_the_last_m_of_an_unbroken_run_of_wins():
    rows = [_row(1, 5, 9), _row(2, 6, 9), _row(4, 10, 9), _row(8, 8, 9)]  # a win after a loss
    rows += [_row(1, 12, 9, bucket=1), _row(2, 5, 9, bucket=1)]  # loses at M = 1
    rows += [_row(m, 1, 2, k=128, ends=(128,)) for m in (1, 2, 4, 8, 16)]
    assert sp.switch_rows(rows) == {(64, (32, 48), 3): 2, (64, (32, 48), 1): 0,
                                    (128, (128,), 3): 16}  # fmt: skip


@pytest.fixture
def table(tmp_path, monkeypatch):
    monkeypatch.setenv("WAS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sp, "_device_name", lambda index: "Test GPU")
    sp._cached_table.cache_clear()
    yield tmp_path / "switch_points.json"
    sp._cached_table.cache_clear()


def test_record_then_lookup_per_device_dtype_shape_and_bucket(table):
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert sp.decode_rows_limit(x, 64, (32, 48), 3) is None  # nothing measured yet
    sp.record([_row(1, 5, 9), _row(2, 6, 9), _row(4, 10, 9)], "Test GPU", torch.bfloat16)
    assert table.exists()
    assert sp.decode_rows_limit(x, 64, (32, 48), 3) == 2
    assert sp.decode_rows_limit(x, 64, (32, 48), 2) is None  # another bucket
    assert sp.decode_rows_limit(x.half(), 64, (32, 48), 3) is None  # another dtype
    sp.record([_row(1, 5, 9, bucket=2)], "Other GPU", torch.bfloat16)  # merged, not replaced
    assert sp.decode_rows_limit(x, 64, (32, 48), 3) == 2
    assert sp.decode_rows_limit(x, 64, (32, 48), 2) is None  # measured on another GPU only


def test_an_unmeasured_bucket_takes_the_nearest_measured_one_below(table):
    """Sparser calls read fewer rows: a lower bucket's switch point is the safe one to use.
    Never a higher bucket's, and the unknown bucket (0) only its own."""
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    sp.record([_row(1, 5, 9, bucket=3), _row(2, 6, 9, bucket=3), _row(4, 10, 9, bucket=3)],
              "Test GPU", torch.bfloat16)  # fmt: skip
    assert sp.decode_rows_limit(x, 64, (32, 48), 4) == 2  # >= 75%: the 50-75% point
    assert sp.decode_rows_limit(x, 64, (32, 48), 2) is None  # nothing measured below 25-50%
    assert sp.decode_rows_limit(x, 64, (32, 48), 0) is None
    sp.record([_row(1, 12, 9, bucket=1)], "Test GPU", torch.bfloat16)  # loses at M = 1
    assert sp.decode_rows_limit(x, 64, (32, 48), 2) == 0  # 25-50%: the < 25% point
    assert sp.decode_rows_limit(x, 64, (32, 48), 3) == 2  # its own, not the lower one
    assert sp.decode_rows_limit(x, 64, (32, 64), 4) is None  # another shape


def test_unreadable_table_says_what_to_do(table):
    table.write_text("{not json")
    with pytest.raises(RuntimeError, match="delete it and run `was tune MODEL` again"):
        sp.decode_rows_limit(torch.randn(1, 64), 64, (64,), 1)
