"""Moirai-2 (Salesforce `uni2ts`'s `Moirai2Module`): one patch size, a residual-block patch embedding, Moirai's causal
decoder (heads with a variate attention bias, SwiGLU), and a residual-block head predicting `num_predict_token` patches
of quantiles per token.

Forecast through [`Moirai2ForPrediction`] (as Moirai 1.x through `MoiraiForPrediction`), in one pass: the quantiles of
the next `num_predict_token` patches at each variate's last context token, so `prediction_length` is at most
`num_predict_token * patch_size` (64 steps for the released small model; longer horizons roll out in the evaluation
loop). The point forecast is the median quantile; the training loss is the model's own quantile (pinball) loss,
averaged over its quantile levels.

Prunable groups: the attention heads (with their variate bias) and value channels, and the SwiGLU channels, of every
layer, as Moirai 1.x; the hidden channels of the input and output residual blocks (`in_proj`, `out_proj`:
`hidden_layer` -> `output_layer`). Query/key channels are not pruned (as Moirai 1.x). Pruned checkpoints: as Moirai 1.x.
Everything needs `uni2ts`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import ModelForecast
from ..family import register_family
from ..specs import ArchitectureSpec, AttentionGroup, MLPGroup
from .moirai import (
    MOIRAI_ATTENTION,
    MoiraiAdapter,
    MoiraiForPrediction,
    example_inputs,
    forecast,
    moirai_family,
    training_inputs,
)


class Moirai2ForPrediction(MoiraiForPrediction):
    """A `uni2ts` `Moirai2Module` with a task's forecast settings (see [`MoiraiForPrediction`]).

    Args:
        model (`Moirai2Module`): the module (e.g. `Moirai2Module.from_pretrained("Salesforce/moirai-2.0-R-small")`).
        prediction_length (`int`): at most `num_predict_token * patch_size`.
        context_length (`int`): context steps.
        patch_size (`int`, *optional*): the module's own (its only one).
    """

    forecast_class = "uni2ts.model.moirai2:Moirai2Forecast"
    module_class = "uni2ts.model.moirai2:Moirai2Module"
    checkpoint_keys = ("d_model", "num_layers", "d_ff", "patch_size")
    checkpoint_without = ("distr_output", "patch_sizes")

    def __init__(self, model: nn.Module, prediction_length: int, context_length: int, patch_size: int | None = None):
        limit = int(model.num_predict_token) * int(model.patch_size)
        if prediction_length > limit:
            raise ValueError(
                f"Moirai-2 predicts {model.num_predict_token} patches of {model.patch_size} per pass: "
                f"prediction_length must be <= {limit} (the evaluation loop rolls out longer horizons)."
            )
        super().__init__(model, prediction_length, context_length, patch_size)

    @staticmethod
    def default_patch_size(module: nn.Module) -> int:
        return int(module.patch_size)

    def forecaster(self, num_channels: int):
        from uni2ts.model.moirai2 import Moirai2Forecast

        settings, training = self.config, self.model.training
        forecaster = Moirai2Forecast(
            prediction_length=settings.prediction_length,
            target_dim=num_channels,
            feat_dynamic_real_dim=0,
            past_feat_dynamic_real_dim=0,
            context_length=settings.context_length,
            module=self.model,
        )
        self.model.train(training)  # (Moirai2Forecast puts its module in eval mode)
        return forecaster

    def predict_quantiles(self, past_values: torch.Tensor, past_observed_mask: torch.Tensor) -> torch.Tensor:
        """Quantile forecasts `(batch, prediction_length, channels, num_quantiles)`."""
        forecaster, (target, observed, sample_id, time_id, variate_id, prediction_mask) = self._packed(
            past_values, past_observed_mask
        )
        module, channels, patch = self.model, past_values.shape[-1], self.config.patch_size
        preds = module(target, observed, sample_id, time_id, variate_id, prediction_mask, training_mode=False)
        context_step = forecaster.context_token_length(patch)
        last = torch.arange(context_step - 1, channels * context_step, context_step, device=preds.device)
        preds = preds.index_select(1, last)  # (batch, channels, num_predict_token * num_quantiles * patch)
        preds = preds.reshape(preds.shape[0], channels, module.num_predict_token, module.num_quantiles, patch)
        preds = preds.permute(0, 1, 3, 2, 4).reshape(preds.shape[0], channels, module.num_quantiles, -1)
        return preds[..., : self.config.prediction_length].permute(0, 3, 1, 2)

    def median_index(self) -> int:
        levels = [float(q) for q in self.model.quantile_levels]
        return levels.index(0.5) if 0.5 in levels else len(levels) // 2

    def predict_mean(self, past_values: torch.Tensor, past_observed_mask: torch.Tensor) -> torch.Tensor:
        """The median forecast `(batch, prediction_length, channels)`."""
        return self.predict_quantiles(past_values, past_observed_mask)[..., self.median_index()]

    def forward(
        self,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        future_values: torch.Tensor | None = None,
        future_observed_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Median forecast `prediction_outputs` `(batch, prediction_length, channels)` and `quantile_outputs`; with
        `future_values`, `loss`: the quantile loss averaged over the levels and the observed target values.

        Args:
            past_values, past_observed_mask, future_values, future_observed_mask: as `MoiraiForPrediction.forward`.
        """
        if past_observed_mask is None:
            past_observed_mask = torch.ones_like(past_values)
        quantiles = self.predict_quantiles(past_values, past_observed_mask)
        outputs = {"prediction_outputs": quantiles[..., self.median_index()], "quantile_outputs": quantiles}
        if future_values is not None:
            steps = future_values.shape[1]
            levels = torch.tensor([float(q) for q in self.model.quantile_levels], device=quantiles.device)
            error = future_values[..., None] - quantiles[:, :steps]
            pinball = torch.maximum(levels * error, (levels - 1) * error).mean(-1)
            weight = torch.ones_like(future_values) if future_observed_mask is None else future_observed_mask.float()
            outputs["loss"] = (pinball * weight).sum() / weight.sum().clamp(min=1.0)
        return outputs


class Moirai2Adapter(MoiraiAdapter):
    """Moirai-2: as Moirai 1.x, with the quantile forecasts; the point forecast is the median."""

    def quantile_levels(self, model):
        return [float(q) for q in model.model.quantile_levels]

    def _forecast(self, model, past_values, past_observed_mask, freq):
        outputs = model(past_values=past_values, past_observed_mask=past_observed_mask)
        quantiles = outputs["quantile_outputs"]
        return ModelForecast(
            mean=outputs["prediction_outputs"], quantiles=quantiles, quantile_levels=self.quantile_levels(model)
        )


MOIRAI2 = register_family(
    moirai_family(
        name="moirai2",
        spec=ArchitectureSpec(
            name="moirai2",
            model_classes=("Moirai2ForPrediction",),
            groups=(
                AttentionGroup(pattern=r"model\.encoder\.layers\.\d+\.self_attn", **MOIRAI_ATTENTION),
                MLPGroup(
                    pattern=r"model\.encoder\.layers\.\d+\.ffn",
                    producers=("fc1", "fc_gate"),
                    consumer="fc2",
                    width_attrs=("hidden_dim",),
                ),
                MLPGroup(
                    pattern=r"model\.in_proj|model\.out_proj",
                    producers=("hidden_layer",),
                    consumer="output_layer",
                    width_attrs=("hidden_dims",),
                ),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=Moirai2Adapter(),
        training_inputs=training_inputs,
        model_class=Moirai2ForPrediction,
        description="Moirai-2 (Salesforce uni2ts): decoder, multi-token quantile head",
    )
)
