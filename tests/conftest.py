import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    """The test models are small: with two intra-op threads every op waits on the other (often busy) core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny hourly CSV (two channels, 1200 rows) and a tiny random TimesFM 2.5 saved beside it."""
    from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

    folder = tmp_path_factory.mktemp("task")
    t = np.arange(1200)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2020-01-01", periods=len(t), freq="h"),
            "a": np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(len(t)),
            "b": np.cos(2 * np.pi * t / 24) + 0.002 * t + 0.1 * rng.standard_normal(len(t)),
        }
    )
    frame.to_csv(folder / "tiny.csv", index=False)
    torch.manual_seed(0)
    config = TimesFm2_5Config(
        patch_length=8, context_length=64, horizon_length=16, num_hidden_layers=2, hidden_size=32,
        intermediate_size=64, head_dim=8, num_attention_heads=4, num_key_value_heads=4, output_quantile_len=16,
        max_position_embeddings=64,
    )  # fmt: skip
    TimesFm2_5ModelForPrediction(config).save_pretrained(folder / "model")
    return folder
