"""Tests of hf_tsprune.data: loading, LTSF splits, scaling, lazy windows, bad-data handling. Offline, tiny files."""

import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hf_tsprune.data import (
    BENCHMARKS,
    DATA_DIR_ENV,
    WindowBatches,
    build_window_datasets,
    frame_to_collection,
    get_window_source,
    infer_frequency,
    last_windows_fraction,
    load_forecasting_dataset,
    load_time_series,
    resolve_benchmark_path,
    seasonal_period,
    split_borders,
    timesfm_frequency_index,
    window_index_arrays,
)

DATA_DIR = Path(os.environ.get(DATA_DIR_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "ETT-small" / "ETTh1.csv").is_file(),
    reason=f"LTSF benchmark files not found under {DATA_DIR} (set {DATA_DIR_ENV})",
)


def make_frame(length=200, channels=3, freq="h", seed=0, start="2021-01-01"):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"date": pd.date_range(start, periods=length, freq=freq).astype(str)})
    for c in range(channels):
        frame[f"c{c}"] = rng.normal(loc=10 * c, scale=c + 1, size=length)
    return frame


@pytest.fixture
def csv_path(tmp_path):
    path = tmp_path / "tiny.csv"
    make_frame().to_csv(path, index=False)
    return path


def test_csv_splits_follow_ltsf_70_10_20(csv_path):
    context, horizon = 24, 8
    ds = load_forecasting_dataset(csv_path, context_length=context, prediction_length=horizon)
    assert set(ds) == {"train", "validation", "test"}
    num_train, num_test = int(200 * 0.7), int(200 * 0.2)
    expected = {
        "train": num_train - context - horizon + 1,
        "validation": (200 - num_test) - num_train - horizon + 1,
        "test": num_test - horizon + 1,
    }
    for split, windows in expected.items():
        assert len(ds[split]) == windows * 3, split  # channel-independent: one item per channel
    source = get_window_source(ds["test"])
    assert source.freq == "h" and source.channel_names == ["c0", "c1", "c2"]
    # the first test target is the first test row: windows start `context` rows early
    first = ds["test"].with_format("numpy")[:1]
    assert int(first["start"][0]) + context == 200 - num_test


def test_items_are_float_tensors_and_lazy(csv_path):
    ds = load_forecasting_dataset(csv_path, context_length=24, prediction_length=8)
    item = ds["train"][0]
    assert set(item) == {"past_values", "future_values", "past_observed_mask", "future_observed_mask"}
    assert item["past_values"].shape == (24,) and item["future_values"].shape == (8,)
    assert all(v.dtype == torch.float32 for v in item.values())
    batch = ds["train"][0:5]
    assert batch["past_values"].shape == (5, 24)
    assert ds["train"].column_names == ["series_index", "start", "channel"]  # only the index is stored
    # Trainer-style loading: a DataLoader with the default collate
    loader = torch.utils.data.DataLoader(ds["train"], batch_size=4)
    assert next(iter(loader))["future_values"].shape == (4, 8)
    # selections keep the transform
    assert ds["train"].shuffle(seed=0).select(range(3))[0]["past_values"].shape == (24,)


def test_scaling_fitted_on_train_rows(csv_path):
    frame = pd.read_csv(csv_path)
    ds = load_forecasting_dataset(csv_path, context_length=24, prediction_length=8)
    source = get_window_source(ds["train"])
    train = frame[["c0", "c1", "c2"]].to_numpy()[: int(200 * 0.7)]
    np.testing.assert_allclose(source.mean[0], train.mean(axis=0))
    np.testing.assert_allclose(source.std[0], train.std(axis=0))  # population std, as scikit-learn
    item = ds["train"][1]  # channel 1 of the first window
    expected = (frame["c1"].to_numpy()[:24] - train[:, 1].mean()) / train[:, 1].std()
    np.testing.assert_allclose(item["past_values"].numpy(), expected, rtol=1e-5, atol=1e-5)
    raw = source.unscale(item["past_values"].numpy()[None], np.array([0]), np.array([1]))
    np.testing.assert_allclose(raw[0], frame["c1"].to_numpy()[:24], rtol=1e-5)
    unscaled = load_forecasting_dataset(csv_path, context_length=24, prediction_length=8, scale=False)
    np.testing.assert_allclose(unscaled["train"][1]["past_values"].numpy(), frame["c1"].to_numpy()[:24], rtol=1e-6)


def test_multivariate_mode_matches_channel_independent(csv_path):
    ci = load_forecasting_dataset(csv_path, context_length=24, prediction_length=8)
    mv = load_forecasting_dataset(csv_path, context_length=24, prediction_length=8, channel_independent=False)
    assert len(mv["test"]) * 3 == len(ci["test"])
    item = mv["test"][2]
    assert item["past_values"].shape == (24, 3) and item["future_observed_mask"].shape == (8, 3)
    for channel in range(3):
        torch.testing.assert_close(ci["test"][2 * 3 + channel]["future_values"], item["future_values"][:, channel])
    kept = load_forecasting_dataset(csv_path, context_length=24, prediction_length=8, keep_channel_axis=True)
    assert kept["test"][0]["past_values"].shape == (24, 1)


def test_stride_and_eval_stride(csv_path):
    full = load_forecasting_dataset(csv_path, context_length=24, prediction_length=8, channel_independent=False)
    strided = load_forecasting_dataset(
        csv_path, context_length=24, prediction_length=8, channel_independent=False, stride=4, eval_stride=2
    )
    assert len(strided["train"]) == (len(full["train"]) + 3) // 4
    assert len(strided["test"]) == (len(full["test"]) + 1) // 2
    with pytest.raises(ValueError, match="stride"):
        load_forecasting_dataset(csv_path, context_length=24, prediction_length=8, stride=0)


def test_train_fraction_keeps_the_last_time_windows_of_every_channel(csv_path):
    """Few-shot (TTM's protocol): the last 10% of the training time windows, with all their channels."""
    train = load_forecasting_dataset(csv_path, context_length=24, prediction_length=8)["train"]
    index = window_index_arrays(train)
    starts = np.unique(index["start"])
    few = last_windows_fraction(train, 0.1)
    few_index = window_index_arrays(few)
    kept = np.unique(few_index["start"])
    assert len(kept) == int(np.ceil(0.1 * len(starts))) and (kept == starts[-len(kept) :]).all()
    assert len(few) == len(kept) * 3  # every channel of each kept window
    assert torch.equal(few[0]["past_values"], train[int(np.flatnonzero(index["start"] == kept[0])[0])]["past_values"])
    assert last_windows_fraction(train, 1.0) is train
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        last_windows_fraction(train, 0.0)


def test_one_read_gives_windows_of_two_target_lengths(csv_path):
    collection = load_time_series(csv_path)  # read once: training windows at one target length, test at another
    training = build_window_datasets(
        collection, context_length=24, prediction_length=16, splits=("train", "validation")
    )
    test = build_window_datasets(collection, context_length=24, prediction_length=8, splits=("test",))
    assert set(training) == {"train", "validation"} and set(test) == {"test"}
    long_targets = load_forecasting_dataset(csv_path, context_length=24, prediction_length=16)
    short_targets = load_forecasting_dataset(csv_path, context_length=24, prediction_length=8)
    for built, reference, split in ((training, long_targets, "train"), (training, long_targets, "validation"),
                                    (test, short_targets, "test")):  # fmt: skip
        assert built[split].num_rows == reference[split].num_rows
        for key in ("past_values", "future_values", "future_observed_mask"):
            assert torch.equal(built[split][:][key], reference[split][:][key])
    assert test["test"][0]["future_values"].shape == (8,)
    with pytest.raises(ValueError, match="splits"):
        build_window_datasets(collection, context_length=24, prediction_length=8, splits=("tests",))


def test_fixed_borders_like_ett(csv_path):
    ds = load_forecasting_dataset(
        csv_path, context_length=16, prediction_length=4, borders=(100, 140, 180), channel_independent=False
    )
    assert len(ds["train"]) == 100 - 16 - 4 + 1
    assert len(ds["validation"]) == 40 - 4 + 1
    assert len(ds["test"]) == 40 - 4 + 1
    assert split_borders(17420, borders=(8640, 11520, 14400))["test"] == (11520, 14400)
    with pytest.raises(ValueError, match="exceed"):
        split_borders(100, borders=(50, 80, 120))


def test_parquet_file_and_crlf_csv_with_odd_column_names(tmp_path):
    frame = make_frame(length=120, channels=2)
    frame.columns = ["date", "p (mbar)", "rho (g/m**3)"]
    parquet = tmp_path / "tiny.parquet"
    frame.assign(date=pd.to_datetime(frame["date"])).to_parquet(parquet)
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(frame.to_csv(index=False, lineterminator="\r\n").encode())
    assert b"\r\n" in crlf.read_bytes()
    for path in (parquet, crlf):
        collection = load_time_series(path)
        assert collection.channel_names == ["p (mbar)", "rho (g/m**3)"]
        assert collection.values[0].shape == (120, 2) and collection.freq == "h"
    ds = load_forecasting_dataset(crlf, context_length=16, prediction_length=4, target="rho (g/m**3)")
    assert get_window_source(ds["test"]).channel_names == ["rho (g/m**3)"]


def test_long_table_with_id_column(tmp_path):
    a, b = make_frame(length=100, channels=1, seed=1), make_frame(length=80, channels=1, seed=2)
    long = pd.concat([a.assign(item="a"), b.assign(item="b")])
    path = tmp_path / "long.csv"
    long.to_csv(path, index=False)
    ds = load_forecasting_dataset(path, id_column="item", context_length=16, prediction_length=4)
    source = get_window_source(ds["test"])
    assert source.item_ids == ["a", "b"]
    assert len(ds["test"]) == (int(100 * 0.2) - 4 + 1) + (int(80 * 0.2) - 4 + 1)
    # each series is scaled on its own training rows
    assert not np.allclose(source.mean[0], source.mean[1])


def write_hub_like_repo(root: Path, lengths=(120, 150, 30)):
    """A folder laid out like a Hub dataset repo of one-row-per-series parquet (chronos_datasets style)."""
    rng = np.random.default_rng(0)
    rows = []
    for i, n in enumerate(lengths):
        stamps = pd.date_range("2020-01-01", periods=n, freq="D").to_numpy().astype("datetime64[ms]")
        rows.append({"id": f"s{i}", "timestamp": stamps, "target": rng.normal(size=n).astype("float32")})
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "train-00000-of-00001.parquet")
    return root


def test_hub_like_folder_one_row_per_series(tmp_path):
    repo = write_hub_like_repo(tmp_path / "repo")
    collection = load_time_series(repo, cache_dir=tmp_path / "cache")
    assert collection.item_ids == ["s0", "s1", "s2"] and collection.freq == "D"
    assert [v.shape for v in collection.values] == [(120, 1), (150, 1), (30, 1)]
    ds = load_forecasting_dataset(repo, context_length=20, prediction_length=7, cache_dir=tmp_path / "cache")
    source = get_window_source(ds["test"])
    assert source.channel_names == ["target"]
    # the third series' test part (6 rows) is shorter than the horizon: no test window from it
    series = ds["test"].with_format("numpy")["series_index"]
    assert set(np.unique(series).tolist()) == {0, 1}
    assert len(ds["test"]) == (24 - 7 + 1) + (30 - 7 + 1)


def test_hub_id_goes_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    repo = write_hub_like_repo(tmp_path / "repo")
    calls = []
    real_load_dataset = datasets.load_dataset

    def fake_load_dataset(path, name=None, **kwargs):  # the Hub is unreachable here: serve the local copy
        calls.append((path, name))
        return real_load_dataset(str(repo), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    collection = load_time_series("autogluon/chronos_datasets", dataset_config="m4_hourly", cache_dir=tmp_path / "c")
    assert calls == [("autogluon/chronos_datasets", "m4_hourly")]
    assert collection.name == "autogluon/chronos_datasets/m4_hourly" and collection.num_series == 3


def test_unreachable_hub_id_and_missing_file_errors(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="Could not load 'someone/data' as a Hub dataset.*Known benchmarks"):
        load_time_series("someone/data")
    with pytest.raises(ValueError, match="File .*missing.csv' not found"):
        load_time_series(str(tmp_path / "missing.csv"))


def test_one_row_per_series_frame_and_long_series_drop(caplog):
    frame = pd.DataFrame(
        {
            "item_id": ["x", "y"],
            "timestamp": [pd.date_range("2020", periods=50, freq="h"), pd.date_range("2020", periods=10, freq="h")],
            "target": [np.arange(50.0), np.arange(10.0)],
        }
    )
    collection = frame_to_collection(frame)
    assert collection.item_ids == ["x", "y"]
    with caplog.at_level(logging.WARNING):
        ds = load_forecasting_dataset(collection, context_length=12, prediction_length=4)
    assert "shorter than context_length + prediction_length" in caplog.text
    assert get_window_source(ds["train"]).item_ids == ["x"]


def test_nan_values_are_masked_with_a_warning(tmp_path, caplog):
    frame = make_frame(length=100, channels=2)
    frame.loc[[5, 90], "c1"] = np.nan
    path = tmp_path / "nan.csv"
    frame.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING):
        ds = load_forecasting_dataset(path, context_length=10, prediction_length=4, channel_independent=False)
    assert "missing (NaN)" in caplog.text
    item = ds["train"][0]
    assert item["past_observed_mask"][5, 1] == 0 and item["past_observed_mask"][5, 0] == 1
    assert item["past_values"][5, 1] == 0  # the training mean after scaling
    assert torch.isfinite(item["past_values"]).all()
    filled = load_forecasting_dataset(
        path, context_length=10, prediction_length=4, channel_independent=False, missing_values="ffill"
    )
    assert filled["train"][0]["past_values"][5, 1] == filled["train"][0]["past_values"][4, 1]
    with pytest.raises(ValueError, match="missing \\(NaN\\)"):
        load_forecasting_dataset(path, context_length=10, prediction_length=4, missing_values="raise")


def test_unsorted_and_duplicated_timestamps(tmp_path, caplog):
    frame = make_frame(length=60, channels=1)
    shuffled = frame.sample(frac=1.0, random_state=0)
    path = tmp_path / "unsorted.csv"
    shuffled.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING):
        collection = load_time_series(path)
    assert "not sorted" in caplog.text
    np.testing.assert_allclose(collection.values[0][:, 0], frame["c0"].to_numpy())

    duplicated = pd.concat([frame.iloc[:30], frame.iloc[[29]].assign(c0=99.0), frame.iloc[30:]])
    path = tmp_path / "dup.csv"
    duplicated.to_csv(path, index=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        collection = load_time_series(path)
    assert "duplicated timestamps" in caplog.text
    assert len(collection.values[0]) == 60 and collection.values[0][29, 0] == 99.0  # the last row wins
    assert len(load_time_series(path, duplicate_timestamps="keep").values[0]) == 61
    with pytest.raises(ValueError, match="duplicated timestamps.*id_column"):
        load_time_series(path, duplicate_timestamps="raise")


def test_clear_errors(csv_path, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="shorter than context_length \\+ prediction_length"):
        load_forecasting_dataset(csv_path, context_length=190, prediction_length=20)
    with pytest.raises(ValueError, match="Target column.*'nope'.*available columns.*c0"):
        load_forecasting_dataset(csv_path, target="nope")
    with pytest.raises(ValueError, match="Known benchmarks: ETTh1, ETTh2, ETTm1, ETTm2, weather"):
        load_forecasting_dataset("ETTh3")
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match="data_dir"):
        load_forecasting_dataset("ETTm1")
    assert resolve_benchmark_path("ETTh1").parent.parent.name == "bundled_data"  # ETTh1 ships with the package
    with pytest.raises(ValueError, match="not found under"):
        resolve_benchmark_path("weather", tmp_path)
    no_time = tmp_path / "no_time.csv"
    pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}).to_csv(no_time, index=False)
    with pytest.raises(ValueError, match="No time column"):
        load_time_series(no_time)
    with pytest.raises(ValueError, match="Time column 'when' not found"):
        load_time_series(csv_path, timestamp_column="when")


def test_benchmark_lookup_from_env(tmp_path, monkeypatch):
    (tmp_path / "ETT-small").mkdir()
    make_frame(length=300, channels=7).rename(columns={"c6": "OT"}).to_csv(
        tmp_path / "ETT-small" / "ETTh1.csv", index=False
    )
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_benchmark_path("etth1") == tmp_path / "ETT-small" / "ETTh1.csv"
    collection = load_time_series("ETTh1", target="OT")
    assert collection.borders == BENCHMARKS["ETTh1"].borders and collection.channel_names == ["OT"]


def test_frequency_helpers():
    assert seasonal_period("h") == 24
    assert seasonal_period("15min") == 96
    assert seasonal_period("10min") == 144
    assert seasonal_period("D") == 7
    assert seasonal_period("W-SUN") == 52
    assert seasonal_period("MS") == 12
    assert seasonal_period("QE-DEC") == 4
    assert seasonal_period("2h") == 12
    assert seasonal_period(None) == 1
    assert [timesfm_frequency_index(f) for f in ("h", "D", "W", "MS", "QS", "YE", None)] == [0, 0, 1, 1, 2, 2, 0]
    assert infer_frequency(pd.date_range("2020", periods=10, freq="15min")) == "15min"
    irregular = pd.date_range("2020", periods=10, freq="h").delete(4)
    assert infer_frequency(irregular) == "h"
    with pytest.raises(ValueError, match="Unknown frequency"):
        seasonal_period("fortnightly")


def test_window_batches_match_getitem(csv_path):
    ds = load_forecasting_dataset(csv_path, context_length=24, prediction_length=8)["validation"]
    batches = list(WindowBatches(ds, batch_size=7))
    values = np.concatenate([b["values"] for b in batches])
    reference = ds[:]
    np.testing.assert_array_equal(values[:, :24], reference["past_values"].numpy())
    np.testing.assert_array_equal(values[:, 24:], reference["future_values"].numpy())


@needs_data
def test_etth1_protocol():
    ds = load_forecasting_dataset("ETTh1", data_dir=DATA_DIR, context_length=512, prediction_length=96)
    assert len(ds["test"]) == 2785 * 7
    assert len(ds["train"]) == (8640 - 512 - 96 + 1) * 7
    first = ds["test"].with_format("numpy")[:1]
    assert int(first["start"][0]) + 512 == 11520
    source = get_window_source(ds["test"])
    assert source.freq == "h" and source.channel_names[-1] == "OT"


@needs_data
def test_weather_loads_all_rows():
    collection = load_time_series("weather", data_dir=DATA_DIR)
    assert collection.values[0].shape == (52696, 21)
    assert collection.channel_names[:2] == ["p (mbar)", "T (degC)"] and collection.freq == "10min"
