"""Tiny and released-layout configs of Chronos, Chronos-Bolt and TTM, built with random weights (nothing downloaded).

Released layouts (config values of the Hub checkpoints, written out here because the Hub is not reachable in tests):

- `chronos-t5-small` (amazon/chronos-t5-small `config.json`): a T5 with d_model 512, d_ff 2048, 6 encoder and 6
  decoder layers, 8 heads of d_kv 64, vocabulary 4096, 32 relative-attention buckets (max distance 128),
  `feed_forward_proj="relu"`, and the `chronos_config` the `chronos` package reads (MeanScaleUniformBins in
  [-15, 15], 4096 tokens of which 2 special: pad 0, EOS 1, context 512, horizon 64, 20 samples, top-k 50).
- `chronos-bolt-small` (amazon/chronos-bolt-small `config.json`, fields read by `chronos.ChronosBoltConfig` and
  `ChronosBoltModelForForecasting`): the same T5 sizes (d_model 512, d_ff 2048, 6+6 layers, 8 heads of 64, relu),
  input patches of 16 with stride 16, context 2048, horizon 64, 9 quantiles 0.1..0.9, a [REG] token.
- TTM r2 512-96 (ibm-granite/granite-timeseries-ttm-r2, revision `main`, `config.json`; the package ships no
  checkpoint configs, `tsfm_public/resources/model_paths_config/ttm.yaml` only maps 512-96-r2 to that revision):
  context 512, horizon 96, patches of 64 (stride 64, 8 patches), d_model 192, expansion factor 2, 2 backbone layers
  at 3 adaptive-patching levels, decoder d_model 128 with 2 layers, common-channel mode, gated attention, std scaling.
  These values were written from the published checkpoint's config, not read from the package: check them against
  the Hub file when it is reachable.
"""

import torch

QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def chronos_config(context_length: int, prediction_length: int, n_tokens: int, num_samples: int = 20) -> dict:
    """The `chronos_config` entry of a Chronos (T5) checkpoint's config."""
    return {
        "tokenizer_class": "MeanScaleUniformBins",
        "tokenizer_kwargs": {"low_limit": -15.0, "high_limit": 15.0},
        "context_length": context_length,
        "prediction_length": prediction_length,
        "n_tokens": n_tokens,
        "n_special_tokens": 2,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "use_eos_token": True,
        "model_type": "seq2seq",
        "num_samples": num_samples,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
    }


T5_TOKENS = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)

CHRONOS_T5_SMALL = dict(
    d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64, vocab_size=4096,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu",
    dropout_rate=0.1, layer_norm_epsilon=1e-6, **T5_TOKENS,
    chronos_config=chronos_config(context_length=512, prediction_length=64, n_tokens=4096),
)  # fmt: skip

CHRONOS_BOLT_SMALL = dict(
    d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu",
    dropout_rate=0.1, layer_norm_epsilon=1e-6, **T5_TOKENS,
    chronos_config={"context_length": 2048, "prediction_length": 64, "input_patch_size": 16, "input_patch_stride": 16,
                    "quantiles": QUANTILES, "use_reg_token": True},
    chronos_pipeline_class="ChronosBoltPipeline",
)  # fmt: skip

TTM_R2_512_96 = dict(
    context_length=512, prediction_length=96, patch_length=64, patch_stride=64, num_input_channels=1, d_model=192,
    expansion_factor=2, num_layers=2, adaptive_patching_levels=3, decoder_d_model=128, decoder_num_layers=2,
    decoder_adaptive_patching_levels=0, mode="common_channel", decoder_mode="common_channel", gated_attn=True,
    self_attn=False, scaling="std", norm_mlp="LayerNorm", dropout=0.2, head_dropout=0.2, loss="mse",
)  # fmt: skip

TINY_T5 = dict(
    d_model=16, d_ff=24, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=4, relative_attention_num_buckets=8,
    relative_attention_max_distance=16, dropout_rate=0.0, **T5_TOKENS,
)  # fmt: skip


def _t5(**kwargs):
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(**kwargs))


def _bolt(**kwargs):
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

    return ChronosBoltModelForForecasting(T5Config(**kwargs))


def _ttm(**kwargs):
    from tsfm_public import TinyTimeMixerConfig, TinyTimeMixerForPrediction

    return TinyTimeMixerForPrediction(TinyTimeMixerConfig(**kwargs))


TINY = {
    "chronos": lambda: _t5(**TINY_T5, vocab_size=64, feed_forward_proj="relu",
                           chronos_config=chronos_config(32, 8, n_tokens=64, num_samples=4)),
    "chronos_gated": lambda: _t5(**TINY_T5, vocab_size=64, feed_forward_proj="gated-gelu",
                                 chronos_config=chronos_config(32, 8, n_tokens=64, num_samples=4)),
    "chronos_bolt": lambda: _bolt(**TINY_T5, feed_forward_proj="relu", chronos_pipeline_class="ChronosBoltPipeline",
                                  chronos_config={"context_length": 64, "prediction_length": 8, "input_patch_size": 8,
                                                  "input_patch_stride": 8, "quantiles": QUANTILES,
                                                  "use_reg_token": True}),
    "ttm": lambda: _ttm(context_length=32, prediction_length=8, patch_length=4, patch_stride=4, num_input_channels=2,
                        d_model=16, expansion_factor=2, num_layers=2, adaptive_patching_levels=2, decoder_d_model=8,
                        decoder_num_layers=2, mode="mix_channel", decoder_mode="mix_channel", self_attn=True,
                        self_attn_heads=2, dropout=0.0, head_dropout=0.0, loss="mse"),
}  # fmt: skip

DEFAULT = {
    "chronos": lambda: _t5(**CHRONOS_T5_SMALL),
    "chronos_bolt": lambda: _bolt(**CHRONOS_BOLT_SMALL),
    "ttm": lambda: _ttm(**TTM_R2_512_96),
}

PACKAGES = {"chronos": None, "chronos_gated": None, "chronos_bolt": "chronos", "ttm": "tsfm_public"}
"""The optional package each family's model needs (`None`: transformers alone)."""

FORECAST_PACKAGES = {**PACKAGES, "chronos": "chronos", "chronos_gated": "chronos"}
"""The optional package each family's forecasting and training adapters need (Chronos: its tokenizer)."""


def require(name: str, adapters: bool = False) -> None:
    """Skips the calling test when the family's optional package (with `adapters`: the one its forecasting and
    training adapters need) is not installed."""
    import pytest  # (lazily: benchmarks/speed.py imports this file for the released layouts)

    package = (FORECAST_PACKAGES if adapters else PACKAGES)[name]
    if package is not None:
        pytest.importorskip(package)


def build(name: str, default: bool = False, seed: int = 0):
    require(name)
    torch.manual_seed(seed)
    model = (DEFAULT if default else TINY)[name]()
    return model.eval()
