"""Chronos (`T5ForConditionalGeneration` checkpoints of `chronos-forecasting`): a T5 encoder-decoder over value tokens.

Prunable groups, per layer:

- encoder and decoder self-attention and decoder cross-attention heads (`q`/`k`/`v` rows <-> `o` columns); value
  channels pruned inside kept heads are cut (`v_head_dim`);
- feed-forward intermediate channels: `wi` -> `wo` (`feed_forward_proj="relu"`, Chronos' setting) or the gated
  `wi_0`, `wi_1` -> `wo`.

T5's relative attention bias is an `nn.Embedding(num_buckets, n_heads)` of the first layer of each stack; the bias it
computes, `(batch, n_heads, q_len, k_len)`, is handed to every later layer of the stack. So that each layer can keep
its own heads, the shrunk attention forward (`t5_attention_forward`) leaves that computation over the original heads
and selects its kept heads from the shared bias through a `hf_tsprune_kept_heads` buffer (original query-head
indices, saved with the weights; also recorded in the layout as `kept_heads`). The embedding itself is never sliced.
T5 does not scale scores by `1/sqrt(head_dim)`, so cutting value channels changes nothing in the scores.

Forecasting and training need the `chronos` package (its tokenizer): the point forecast is the mean of sampled paths,
the loss the token cross-entropy on `labels`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.t5 import modeling_t5

from ..adapters import ForecastAdapter, ModelForecast
from ..checkpoint_code import KEPT_HEADS
from ..family import Family, register_family
from ..specs import ArchitectureSpec, AttentionGroup, MLPGroup
from ..training import observed_window

CHRONOS_INSTALL = 'pip install chronos-forecasting (or pip install "hf_tsprune[families]")'


def t5_attention_forward(
    self,
    hidden_states: torch.Tensor,
    mask: torch.Tensor | None = None,
    key_value_states: torch.Tensor | None = None,
    position_bias: torch.Tensor | None = None,
    cache=None,
    **kwargs,
):
    """`T5Attention.forward` for a shrunk block: `self.n_heads` kept heads, values viewed with `self.v_head_dim`, the
    shared position bias (over the original heads) indexed with `self.hf_tsprune_kept_heads`, and no head at all
    supported (the block then adds nothing; its key/value cache still advances). Returns the bias it was given (or
    computed) unsliced, for the next layers."""
    kwargs.pop("past_key_values", None)
    input_shape = hidden_states.shape[:-1]
    heads = self.n_heads
    past_seen_tokens = cache.get_seq_length(self.layer_idx) if cache is not None else 0
    past_seen_tokens = past_seen_tokens.clone() if isinstance(past_seen_tokens, torch.Tensor) else past_seen_tokens
    is_cross_attention = key_value_states is not None
    query_states = self.q(hidden_states).view(*input_shape, heads, self.key_value_proj_dim).transpose(1, 2)
    is_updated = False
    if isinstance(cache, modeling_t5.EncoderDecoderCache):
        is_updated = cache.is_updated.get(self.layer_idx)
        curr_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
    else:
        curr_cache = cache
    current_states = key_value_states if is_cross_attention else hidden_states
    if is_cross_attention and cache is not None and is_updated:
        key_states = curr_cache.layers[self.layer_idx].keys
        value_states = curr_cache.layers[self.layer_idx].values
    else:
        kv_shape = current_states.shape[:-1]
        key_states = self.k(current_states).view(*kv_shape, heads, self.key_value_proj_dim).transpose(1, 2)
        value_states = self.v(current_states).view(*kv_shape, heads, self.v_head_dim).transpose(1, 2)
        if cache is not None:
            key_states, value_states = curr_cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
            if is_cross_attention and isinstance(cache, modeling_t5.EncoderDecoderCache):
                cache.is_updated[self.layer_idx] = True
    if position_bias is None:
        key_length = key_states.shape[-2]
        if self.has_relative_attention_bias:  # over all original heads: the embedding is never sliced
            position_bias = self.compute_bias(
                input_shape[1], key_length, device=query_states.device, past_seen_tokens=past_seen_tokens
            )
        else:  # zeros broadcast over any head set
            position_bias = torch.zeros(
                (1, 1, input_shape[1], key_length), device=query_states.device, dtype=query_states.dtype
            )
            if self.gradient_checkpointing and self.training:
                position_bias.requires_grad = True
    if heads == 0:
        attn_output = hidden_states.new_zeros(*input_shape, 0)
        return self.o(attn_output), position_bias, None
    kept = getattr(self, KEPT_HEADS, None)
    layer_bias = position_bias
    if kept is not None and position_bias.shape[1] != 1:
        layer_bias = position_bias.index_select(1, kept.to(position_bias.device))
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_t5.eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        self,
        query_states,
        key_states,
        value_states,
        mask,
        dropout=0.0 if not self.training else self.dropout,
        scaling=self.scaling,
        position_bias=layer_bias,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, heads * self.v_head_dim).contiguous()
    return self.o(attn_output), position_bias, attn_weights


T5_ATTENTION = dict(
    q="q",
    k="k",
    v="v",
    o="o",
    head_dim_attr="key_value_proj_dim",
    num_heads_attrs=("n_heads",),
    size_attrs={"inner_dim": "q"},
    v_head_dim_forward=t5_attention_forward,
    kept_heads_attr=KEPT_HEADS,
)
"""Attention settings shared by every T5-based family (Chronos, Chronos-Bolt)."""


def t5_groups(prefix: str = "") -> tuple:
    """The prunable groups of a T5 encoder-decoder whose stacks are `<prefix>encoder` and `<prefix>decoder`."""
    stacks = rf"{prefix}(encoder|decoder)\.block\.\d+\.layer"
    return (
        AttentionGroup(pattern=rf"{stacks}\.0\.SelfAttention", **T5_ATTENTION),
        AttentionGroup(pattern=rf"{prefix}decoder\.block\.\d+\.layer\.1\.EncDecAttention", **T5_ATTENTION),
        MLPGroup(
            pattern=rf"{stacks}\.\d+\.DenseReluDense",
            producers=("wi",),
            consumer="wo",
            module_classes=("T5DenseActDense",),
        ),
        MLPGroup(
            pattern=rf"{stacks}\.\d+\.DenseReluDense",
            producers=("wi_0", "wi_1"),
            consumer="wo",
            module_classes=("T5DenseGatedActDense",),
        ),
    )


def chronos_config(model) -> dict:
    """The `chronos_config` dict of a Chronos checkpoint's config (empty for a plain T5)."""
    return dict(getattr(model.config, "chronos_config", None) or {})


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    """Token ids of a context (`context_length` tokens and EOS) and of a teacher-forced forecast."""
    config, chronos = model.config, chronos_config(model)
    context = int(chronos.get("context_length", 64)) + 1
    horizon = int(chronos.get("prediction_length", 16)) + 1
    low = int(chronos.get("n_special_tokens", 2))
    ids = torch.randint(low, config.vocab_size, (batch_size, context), generator=generator)
    decoder_ids = torch.randint(low, config.vocab_size, (batch_size, horizon), generator=generator)
    decoder_ids[:, 0] = config.decoder_start_token_id or 0
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": decoder_ids}


def forecast(model, inputs: dict) -> torch.Tensor:
    """The token logits of the forecast (the distribution Chronos samples from)."""
    return model(**inputs).logits


def chronos_settings(model: torch.nn.Module):
    """`chronos.ChronosConfig` of a Chronos (T5) checkpoint."""
    settings = getattr(model.config, "chronos_config", None)
    if not settings:
        raise ValueError(
            f"{type(model).__name__} has no `config.chronos_config`: it is not a Chronos checkpoint. Load one of the "
            "amazon/chronos-t5-* models, or set `config.chronos_config` (tokenizer, context and prediction length)."
        )
    from chronos import ChronosConfig

    return ChronosConfig(**settings)


def with_nans(values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Missing values as NaN, the way the `chronos` package marks them."""
    return torch.where(observed > 0, values, torch.full_like(values, float("nan")))


class ChronosAdapter(ForecastAdapter):
    """Chronos (`T5ForConditionalGeneration` with a `chronos_config`): univariate, contexts up to `context_length`.

    The context is tokenised as `chronos.ChronosPipeline` does (mean scaling, uniform bins, EOS), `num_samples`
    forecast paths are sampled from the token distribution with `generate`, and decoded back to values; the point
    forecast is their mean, the quantiles their deciles.
    """

    univariate = True

    def native_horizon(self, model):
        return int(chronos_settings(model).prediction_length)

    def max_context(self, model):
        return int(chronos_settings(model).context_length)

    def fixed_context(self, model):
        return False

    def quantile_levels(self, model):
        return [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]

    def _forecast(self, model, past_values, past_observed_mask, freq):
        import chronos

        settings = chronos_settings(model)
        tokenizer = settings.create_tokenizer()
        series = with_nans(past_values[..., 0], past_observed_mask[..., 0]).float().cpu()
        token_ids, attention_mask, scale = tokenizer.context_input_transform(series)
        device = past_values.device
        samples = chronos.ChronosModel(settings, model)(token_ids.to(device), attention_mask.to(device))
        paths = tokenizer.output_transform(samples.cpu(), scale)  # (batch, num_samples, horizon)
        levels = self.quantile_levels(model)
        quantiles = torch.quantile(paths, torch.tensor(levels), dim=1).permute(1, 2, 0)[:, :, None]
        return ModelForecast(mean=paths.mean(dim=1)[:, :, None], quantiles=quantiles, quantile_levels=levels)


def chronos_pipeline(model: nn.Module):
    """`chronos.ChronosPipeline` around a (dense or pruned) Chronos model."""
    from chronos import ChronosModel, ChronosPipeline

    settings = chronos_settings(model)
    return ChronosPipeline(tokenizer=settings.create_tokenizer(), model=ChronosModel(settings, model))


def training_inputs(model: nn.Module, features: list[dict], freq_index: int = 0) -> dict:
    """Chronos: context and target tokenised with the checkpoint's tokenizer (target with the context's scale, EOS
    appended); padding and missing target tokens are `-100` in `labels`, so the T5 cross-entropy skips them."""
    settings = chronos_settings(model)
    tokenizer = settings.create_tokenizer()
    past, past_observed = observed_window(features, "past_values", univariate=True)
    future, future_observed = observed_window(features, "future_values", univariate=True)
    input_ids, attention_mask, scale = tokenizer.context_input_transform(with_nans(past, past_observed))
    labels, labels_mask, _ = tokenizer._input_transform(with_nans(future, future_observed), scale=scale)
    if settings.use_eos_token:
        labels, labels_mask = tokenizer._append_eos_token(labels, labels_mask)
    labels = labels.masked_fill(~labels_mask, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask.long(), "labels": labels}


CHRONOS = register_family(
    Family(
        name="chronos",
        spec=ArchitectureSpec(
            name="chronos",
            model_classes=("T5ForConditionalGeneration",),
            groups=t5_groups(),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=ChronosAdapter(),
        training_inputs=training_inputs,
        label_names=("labels",),
        base_config_class="transformers:T5Config",
        base_model_class="transformers:T5ForConditionalGeneration",
        model_types=("t5",),
        pruned_config_class_name="PrunedChronosConfig",
        pruned_model_class_name="PrunedChronosForConditionalGeneration",
        extra_auto_classes=("AutoModelForSeq2SeqLM",),  # what `chronos.ChronosPipeline.from_pretrained` uses
        requires="chronos",
        install_hint=CHRONOS_INSTALL,
        native_pipeline=chronos_pipeline,
        description="Chronos (Amazon): T5 over value tokens",
    )
)
