"""Driving every supported family with the `Trainer` the same way: a data collator per family and small helpers.

The window datasets of [`hf_tsprune.data`] yield `past_values`, `future_values` and observed masks. `ForecastCollator`
stacks them into exactly the forward arguments of the model's family, so that `Trainer` computes the model's own loss
(TimesFM/TimesFM 2.5: MSE + quantile loss; PatchTST/PatchTSMixer: MSE or NLL) with `label_names=["future_values"]`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import FAMILY_TRAINING_INPUTS, TRAINING_LABEL_NAMES, family_of, get_adapter
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


TRAINING_INPUTS: dict[str, Callable[[nn.Module, list[dict], int], dict]] = {
    "timesfm": _timesfm_inputs,
    "timesfm2_5": _timesfm2_5_inputs,
    "patchtst": _patchtst_inputs,
    "patchtsmixer": _patchtsmixer_inputs,
}
TRAINING_INPUTS.update(FAMILY_TRAINING_INPUTS)  # chronos (token labels), chronos_bolt (quantile target), ttm (MSE)
"""Per family (`hf_tsprune.adapters.family_of`): window features -> the model's forward arguments, loss target
included."""


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
