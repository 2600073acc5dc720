"""PatchTSMixer (`PatchTSMixerForPrediction`): MLP mixers over patches, features and (optionally) channels.

Prunable groups: the hidden channels of every patch, feature and channel mixer MLP (`fc1` -> `fc2`) and the heads
of the patch mixers' optional self-attention (`self_attn=True`; value channels of kept heads stay as exact zero
columns). The model takes exactly `context_length` steps; `prediction_channel_indices` restricts the outputs.
"""

from torch import nn

from ..adapters import ForecastAdapter, ModelForecast, distribution_forecast
from ..family import Family, register_family
from ..specs import ArchitectureSpec, AttentionGroup, MLPGroup
from . import patchtst


class PatchTSMixerAdapter(ForecastAdapter):
    """PatchTSMixer: as PatchTST; `prediction_channel_indices` restricts the outputs."""

    def output_channels(self, model):
        indices = getattr(model.config, "prediction_channel_indices", None)
        return None if indices is None else [int(i) for i in indices]

    def quantile_levels(self, model):
        return [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] if model.distribution_output is not None else None

    def _forecast(self, model, past_values, past_observed_mask, freq):
        outputs = model(past_values=past_values, observed_mask=past_observed_mask, return_dict=True)
        if model.distribution_output is not None:
            return distribution_forecast(model, outputs)
        return ModelForecast(mean=outputs.prediction_outputs)


def training_inputs(model: nn.Module, features: list[dict], freq_index: int) -> dict:
    """As PatchTST's, with the observed mask as `observed_mask`."""
    inputs = patchtst.training_inputs(model, features, freq_index)
    if "past_observed_mask" in inputs:
        inputs["observed_mask"] = inputs.pop("past_observed_mask")
    return inputs


PATCHTSMIXER = register_family(
    Family(
        name="patchtsmixer",
        spec=ArchitectureSpec(
            name="patchtsmixer",
            model_classes=("PatchTSMixerForPrediction",),
            groups=(
                AttentionGroup(
                    pattern=r".*\.patch_mixer\.self_attn_layer", o="out_proj", num_heads_attrs=("num_heads",)
                ),
                # patch mixer (over patches), feature mixer (over d_model) and channel mixer (over input channels)
                MLPGroup(
                    pattern=r".*\.(patch_mixer|feature_mixer|channel_feature_mixer)\.mlp",
                    producers=("fc1",),
                    consumer="fc2",
                ),
            ),
            example_inputs=patchtst.example_inputs,
            forecast=patchtst.forecast,
        ),
        adapter=PatchTSMixerAdapter(),
        training_inputs=training_inputs,
        base_config_class="transformers:PatchTSMixerConfig",
        base_model_class="transformers:PatchTSMixerForPrediction",
        model_types=("patchtsmixer",),
        description="PatchTSMixer (IBM)",
    )
)
