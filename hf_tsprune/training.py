"""Driving every supported family with the `Trainer` the same way: a data collator and small helpers.

The window datasets of [`hf_tsprune.data`] yield `past_values`, `future_values` and observed masks. `ForecastCollator`
stacks them into exactly the forward arguments of the model's family (its registered `training_inputs`, in its file
of `hf_tsprune/families/`), so that `Trainer` computes the model's own loss (TimesFM/TimesFM 2.5: MSE + quantile
loss; PatchTST/PatchTSMixer: MSE or NLL; TTM: MSE; Chronos: token cross-entropy on `labels`; Chronos-Bolt: quantile
loss on `target`), with [`training_label_names`] as `TrainingArguments.label_names`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .family import Family, families, get_family
from .masks import unwrap


def stack_features(features: list[dict], key: str) -> torch.Tensor:
    """The `key` entries of a batch of window features as one float tensor."""
    return torch.stack([torch.as_tensor(f[key], dtype=torch.float32) for f in features])


def channels_last(values: torch.Tensor) -> torch.Tensor:
    """`(B, T)` -> `(B, T, 1)`; `(B, T, C)` unchanged."""
    return values if values.ndim == 3 else values[..., None]


def univariate_values(values: torch.Tensor, family: str = "TimesFM") -> torch.Tensor:
    """`(B, T, 1)` or `(B, T)` -> `(B, T)`; more than one channel is refused."""
    if values.ndim == 3:
        if values.shape[-1] != 1:
            raise ValueError(f"{family} models are univariate: load the data with `channel_independent=True`.")
        values = values[..., 0]
    return values


def observed_window(features: list[dict], key: str, univariate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked values and observed mask (ones when the features have none): `(B, T)` univariate, else `(B, T, C)`."""
    values = stack_features(features, key)
    mask_key = key.replace("_values", "_observed_mask")
    observed = stack_features(features, mask_key) if mask_key in features[0] else torch.ones_like(values)
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


def base_model(model: nn.Module) -> nn.Module:
    """The model under DDP/accelerate/compile wrappers and a peft wrapper."""
    model = unwrap(model)
    base = getattr(model, "get_base_model", None)
    return base() if base is not None else model


def _training_family(model: nn.Module) -> Family:
    """The family of an unwrapped model, for training (a clear error for unsupported models)."""
    try:
        return get_family(model)
    except TypeError:
        raise ValueError(
            f"No training inputs for {type(model).__name__} (no registered family); supported: {sorted(families())}. "
            "Register its family "
            "(with its `training_inputs`) with `hf_tsprune.register_family`."
        ) from None


def training_inputs(model: nn.Module, features: list[dict], freq_index: int = 0) -> dict:
    """Window features -> the forward arguments with which `model` computes its family's own training loss."""
    model = base_model(model)
    return _training_family(model).training_inputs(model, features, freq_index)


def training_label_names(model: nn.Module) -> list[str]:
    """`TrainingArguments.label_names` for the family's loss target (`future_values`, Chronos `labels`, Bolt `target`)."""
    return list(_training_family(base_model(model)).label_names)


def training_target_length(model: nn.Module, prediction_length: int) -> int:
    """Length of the `future_values` the family's loss takes when the task's horizon is `prediction_length`.

    TimesFM 1.x compares its whole native horizon with the target, so it trains on `horizon_length` steps (the
    metric still scores the first `prediction_length`); the other families train on `prediction_length` steps.

    Raises:
        `ValueError` when the model cannot produce `prediction_length` steps in one pass.
    """
    model = base_model(model)
    family = _training_family(model)
    native = family.adapter.native_horizon(model)
    if prediction_length > native:
        raise ValueError(
            f"prediction_length={prediction_length} exceeds the native horizon {native} of {type(model).__name__}"
            f", which training needs in one pass. Use --prediction_length <= {native} (evaluation alone can roll out)."
        )
    return native if family.trains_native_horizon else prediction_length


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
        self._build = _training_family(self._model).training_inputs  # resolved once, not per batch

    def __call__(self, features: list[dict]) -> dict:
        return self._build(self._model, features, self.freq_index)


def dropout_probabilities(model: nn.Module) -> list[tuple[nn.Module, str, float]]:
    """Every dropout probability of `model` as `(module, attribute, value)`: each `nn.Dropout`'s `p`, and the float
    `attention_dropout` / `dropout` attributes that attention modules pass to their kernels."""
    found = []
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            found.append((module, "p", module.p))
            continue
        for attr in ("attention_dropout", "dropout"):
            value = getattr(module, attr, None)
            if isinstance(value, float):
                found.append((module, attr, value))
    return found


@contextlib.contextmanager
def dropout_disabled(model: nn.Module):
    """Within the block every dropout probability of `model` is 0 (the prune run scores a deterministic function);
    the original probabilities come back afterwards."""
    saved = dropout_probabilities(model)
    for module, attr, _ in saved:
        setattr(module, attr, 0.0)
    try:
        yield model
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)
