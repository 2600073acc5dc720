"""Driving every supported family with the `Trainer` the same way: a data collator per family and small helpers.

The window datasets of [`hf_tsprune.data`] yield `past_values`, `future_values` and observed masks. `ForecastCollator`
stacks them into exactly the forward arguments of the model's family, so that `Trainer` computes the model's own loss
(TimesFM/TimesFM 2.5: MSE + quantile loss; PatchTST/PatchTSMixer: MSE or NLL; TTM: MSE; Chronos: token
cross-entropy on `labels`; Chronos-Bolt: quantile loss on `target`), with [`training_label_names`] as
`TrainingArguments.label_names`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import _chronos_settings, _with_nans, family_of, get_adapter
from .masks import unwrap


def _stack(features: list[dict], key: str) -> torch.Tensor:
    return torch.stack([torch.as_tensor(f[key], dtype=torch.float32) for f in features])


def _channels_last(values: torch.Tensor) -> torch.Tensor:
    return values if values.ndim == 3 else values[..., None]


def _univariate(values: torch.Tensor) -> torch.Tensor:
    if values.ndim == 3:
        if values.shape[-1] != 1:
            raise ValueError("TimesFM models are univariate: load the data with `channel_independent=True`.")
        values = values[..., 0]
    return values


def _timesfm_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    past = _univariate(_stack(features, "past_values"))
    future = _univariate(_stack(features, "future_values"))
    return {"past_values": past, "future_values": future, "freq": [freq_index] * len(features)}


def _timesfm2_5_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    past = _univariate(_stack(features, "past_values"))
    return {"past_values": past, "future_values": _univariate(_stack(features, "future_values"))}


def _patchtst_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    inputs = {
        "past_values": _channels_last(_stack(features, "past_values")),
        "future_values": _channels_last(_stack(features, "future_values")),
    }
    if "past_observed_mask" in features[0]:
        inputs["past_observed_mask"] = _channels_last(_stack(features, "past_observed_mask"))
    return inputs


def _patchtsmixer_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    inputs = _patchtst_inputs(model, features, freq_index)
    if "past_observed_mask" in inputs:
        inputs["observed_mask"] = inputs.pop("past_observed_mask")
    return inputs


def _window(features: list[dict], key: str, univariate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked values and observed mask (ones when the features have none): `(B, T)` univariate, else `(B, T, C)`."""
    values = _stack(features, key)
    mask_key = key.replace("_values", "_observed_mask")
    observed = _stack(features, mask_key) if mask_key in features[0] else torch.ones_like(values)
    observed = observed * ~torch.isnan(values)
    values = torch.nan_to_num(values)
    if univariate:
        if values.ndim == 3:
            if values.shape[-1] != 1:
                raise ValueError(
                    "Chronos and Chronos-Bolt are univariate: load the data with `channel_independent=True` "
                    f"(got windows with {values.shape[-1]} channels)."
                )
            values, observed = values[..., 0], observed[..., 0]
    elif values.ndim == 2:
        values, observed = values[..., None], observed[..., None]
    return values, observed


def _chronos_training_inputs(model: nn.Module, features: list[dict], freq_index: int = 0) -> dict:
    """Chronos: context and target tokenised with the checkpoint's tokenizer (target with the context's scale, EOS
    appended); padding and missing target tokens are `-100` in `labels`, so the T5 cross-entropy skips them."""
    settings = _chronos_settings(model)
    tokenizer = settings.create_tokenizer()
    past, past_observed = _window(features, "past_values", univariate=True)
    future, future_observed = _window(features, "future_values", univariate=True)
    input_ids, attention_mask, scale = tokenizer.context_input_transform(_with_nans(past, past_observed))
    labels, labels_mask, _ = tokenizer._input_transform(_with_nans(future, future_observed), scale=scale)
    if settings.use_eos_token:
        labels, labels_mask = tokenizer._append_eos_token(labels, labels_mask)
    labels = labels.masked_fill(~labels_mask, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask.long(), "labels": labels}


def _chronos_bolt_training_inputs(model: nn.Module, features: list[dict], freq_index: int = 0) -> dict:
    """Chronos-Bolt: `context`/`mask` and `target`/`target_mask` (targets shorter than the horizon are padded by the
    model and left out of its quantile loss)."""
    past, past_observed = _window(features, "past_values", univariate=True)
    future, future_observed = _window(features, "future_values", univariate=True)
    return {"context": past, "mask": past_observed, "target": future, "target_mask": future_observed > 0}


def _ttm_training_inputs(model: nn.Module, features: list[dict], freq_index: int = 0) -> dict:
    """TTM: `past_values`/`future_values` `(B, T, C)` with their observed masks; a target shorter than the model's
    horizon is zero-padded and masked out of the MSE."""
    past, past_observed = _window(features, "past_values", univariate=False)
    future, future_observed = _window(features, "future_values", univariate=False)
    horizon = int(model.config.prediction_filter_length or model.config.prediction_length)
    if future.shape[1] > horizon:
        raise ValueError(
            f"The target windows have {future.shape[1]} steps but {type(model).__name__} forecasts {horizon}: use a "
            f"prediction_length <= {horizon}."
        )
    if future.shape[1] < horizon:
        pad = future.new_zeros(future.shape[0], horizon - future.shape[1], future.shape[2])
        future, future_observed = torch.cat([future, pad], dim=1), torch.cat([future_observed, pad], dim=1)
    return {
        "past_values": past,
        "past_observed_mask": past_observed,
        "future_values": future,
        "future_observed_mask": future_observed,
    }


TRAINING_INPUTS: dict[str, Callable[[nn.Module, list[dict], int], dict]] = {
    "timesfm": _timesfm_inputs,
    "timesfm2_5": _timesfm2_5_inputs,
    "patchtst": _patchtst_inputs,
    "patchtsmixer": _patchtsmixer_inputs,
    "chronos": _chronos_training_inputs,  # token labels
    "chronos_bolt": _chronos_bolt_training_inputs,  # quantile target
    "ttm": _ttm_training_inputs,  # MSE on future_values
}
"""Per family (`hf_tsprune.adapters.family_of`): window features -> the model's forward arguments, loss target
included."""

TRAINING_LABEL_NAMES = {"chronos": ["labels"], "chronos_bolt": ["target"]}
"""Per family, where it is not `["future_values"]`: the `TrainingArguments.label_names` that go with
`training_inputs` (the key holding the target)."""


def base_model(model: nn.Module) -> nn.Module:
    """The model under DDP/accelerate/compile wrappers and a peft wrapper."""
    model = unwrap(model)
    base = getattr(model, "get_base_model", None)
    return base() if base is not None else model


def _inputs_builder(model: nn.Module) -> Callable[[nn.Module, list[dict], int], dict]:
    """The `TRAINING_INPUTS` entry of an unwrapped model's family (a clear error for unsupported families)."""
    family = family_of(model)
    if family not in TRAINING_INPUTS:
        raise ValueError(
            f"No training inputs for {type(model).__name__} (family {family!r}); supported: {sorted(TRAINING_INPUTS)}. "
            "Register one in `hf_tsprune.training.TRAINING_INPUTS`."
        )
    return TRAINING_INPUTS[family]


def training_inputs(model: nn.Module, features: list[dict], freq_index: int = 0) -> dict:
    """Window features -> the forward arguments with which `model` computes its family's own training loss."""
    model = base_model(model)
    return _inputs_builder(model)(model, features, freq_index)


def training_label_names(model: nn.Module) -> list[str]:
    """`TrainingArguments.label_names` for the family's loss target (`future_values`, Chronos `labels`, Bolt `target`)."""
    return list(TRAINING_LABEL_NAMES.get(family_of(base_model(model)), ["future_values"]))


def training_horizon(model: nn.Module, prediction_length: int) -> int:
    """Length of the `future_values` the family's loss takes when the task's horizon is `prediction_length`.

    TimesFM 1.x compares its whole native horizon with the target, so it trains on `horizon_length` steps (the
    metric still scores the first `prediction_length`); the other families train on `prediction_length` steps.

    Raises:
        `ValueError` when the model cannot produce `prediction_length` steps in one pass.
    """
    model = base_model(model)
    native = get_adapter(model).native_horizon(model)
    if prediction_length > native:
        raise ValueError(
            f"prediction_length={prediction_length} exceeds the native horizon {native} of {type(model).__name__}"
            f", which training needs in one pass. Use --prediction_length <= {native} (evaluation alone can roll out)."
        )
    return native if family_of(model) == "timesfm" else prediction_length


@dataclass
class ForecastCollator:
    """A `Trainer` data collator: stacks window features into the forward arguments of `model`'s family.

    Args:
        model (`nn.Module`): the model (or a wrapped/PEFT version of it) the Trainer drives.
        freq_index (`int`, defaults to 0): TimesFM frequency category (0 = high frequency: hourly and finer).
    """

    model: nn.Module
    freq_index: int = 0

    def __post_init__(self):
        self._model = base_model(self.model)
        self._build = _inputs_builder(self._model)  # resolved once, not per batch

    def __call__(self, features: list[dict]) -> dict:
        return self._build(self._model, features, self.freq_index)


@contextlib.contextmanager
def dropout_disabled(model: nn.Module):
    """Within the block every dropout probability of `model` is 0 (the prune run scores a deterministic function);
    the original probabilities come back afterwards."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            saved.append((module, "p", module.p))
            module.p = 0.0
        for attr in ("attention_dropout", "dropout"):
            value = getattr(module, attr, None)
            if isinstance(value, float) and not isinstance(module, nn.Dropout):
                saved.append((module, attr, value))
                setattr(module, attr, 0.0)
    try:
        yield model
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)
