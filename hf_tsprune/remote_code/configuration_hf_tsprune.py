# Configuration of hf_tsprune pruned checkpoints, for `trust_remote_code=True` loading with transformers alone.
#
# This file is written beside the weights by hf_tsprune and imports nothing but transformers (and, where installed,
# granite-tsfm for TTM's configuration): a pruned checkpoint loads without hf_tsprune installed. Inside hf_tsprune the
# same classes are registered with `AutoConfig`, so `import hf_tsprune` is enough to load it without remote code.
"""Configurations of pruned time-series models: the base architecture's configuration plus every per-layer size.

A pruned model is its base architecture with some layers narrower than the configuration says. Each class here
subclasses the base configuration (all its fields, defaults and validation stay) and adds:

- `hf_tsprune_layout`: per pruned block (module name), its sizes: `{"kind": "mlp", "width": int}` for a feed-forward
  block, `{"kind": "attention", "num_kv_heads": int, "v_head_dim": int}` for an attention block (query heads follow as
  `num_kv_heads` times the query heads per key/value head; 0 heads: the block was replaced by its constant output);
- `base_model` / `base_model_revision`: the checkpoint the model was pruned from (Hub id or path, and its revision);
- `pruning`: the pruning settings and figures (sparsity, parameters and FLOPs before/after, seed, ...).

Each class has its own `model_type` (`hf_tsprune_<base model_type>`), so transformers neither mistakes a pruned
checkpoint for a dense one nor applies the base model's checkpoint weight renamings to it.
"""

from dataclasses import dataclass

from transformers import PatchTSMixerConfig, PatchTSTConfig, T5Config, TimesFm2_5Config, TimesFmConfig

try:  # TTM's configuration lives in granite-tsfm (optional)
    from tsfm_public import TinyTimeMixerConfig
except ImportError:  # pragma: no cover
    TinyTimeMixerConfig = None

MODEL_TYPE_PREFIX = "hf_tsprune_"


@dataclass(repr=False, kw_only=True)
class _PrunedConfigMixin:
    r"""Fields and behaviour shared by the pruned configurations (listed first in each class' bases).

    A dataclass, so that transformers' configuration dataclasses inherit its fields (`to_dict`, `save_pretrained` and
    `from_pretrained` handle them like the base configuration's own).

    Args:
        hf_tsprune_layout (`dict`, *optional*):
            Per pruned block, its sizes (see the module docstring); blocks not listed keep the base sizes.
        base_model (`str`, *optional*):
            Hub id or path of the checkpoint the model was pruned from.
        base_model_revision (`str`, *optional*):
            Revision (commit) of `base_model`.
        pruning (`dict`, *optional*):
            Pruning settings and figures.
    """

    hf_tsprune_layout: dict | None = None
    base_model: str | None = None
    base_model_revision: str | None = None
    pruning: dict | None = None

    base_model_type = ""  # the base architecture's `model_type` (class attribute, not serialised)
    base_config_model_type = None  # the base config's `model_type` where it differs (Chronos, Chronos-Bolt: "t5")
    model_class_name = ""  # the pruned model class, for `auto_map`
    extra_auto_classes = ()  # further transformers Auto classes that load the pruned model (Chronos: Seq2SeqLM)

    def __post_init__(self, **kwargs):
        # A config dict of the base model carries its `model_type` (e.g. "timesfm2_5"). Kept as an instance attribute
        # it would shadow this class' own, and transformers would apply the base model's checkpoint weight renamings
        # (timesfm2_5: fc1 <-> ff0, fc2 <-> ff1) when saving but not when loading: the weights would silently
        # re-initialise. The model type of a pruned config is always its class'.
        model_type = kwargs.pop("model_type", None)
        if model_type not in (None, self.model_type, self.base_model_type, self.base_config_model_type):
            raise ValueError(
                f"{type(self).__name__} prunes {self.base_model_type!r} models; got a config of model type "
                f"{model_type!r}. Use the pruned config class of that architecture."
            )
        super().__post_init__(**kwargs)
        self.__dict__.pop("model_type", None)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = self.default_auto_map()

    @classmethod
    def default_auto_map(cls) -> dict:
        """The `auto_map` of a saved pruned checkpoint: the remote-code classes for `trust_remote_code=True`."""
        model = f"modeling_hf_tsprune.{cls.model_class_name}"
        auto_map = {"AutoConfig": f"configuration_hf_tsprune.{cls.__name__}", "AutoModel": model}
        for auto_class in ("AutoModelForTimeSeriesPrediction", *cls.extra_auto_classes):
            auto_map[auto_class] = model
        return auto_map


class PrunedTimesFmConfig(_PrunedConfigMixin, TimesFmConfig):
    r"""[`TimesFmConfig`] of a pruned TimesFM (1.x / 2.0) model, with its per-layer sizes.

    Args:
        kwargs: The fields of [`TimesFmConfig`] and of the pruned configurations (`hf_tsprune_layout`, `base_model`,
            `base_model_revision`, `pruning`).
    """

    model_type = MODEL_TYPE_PREFIX + "timesfm"
    base_model_type = "timesfm"
    model_class_name = "PrunedTimesFmModelForPrediction"


class PrunedTimesFm2_5Config(_PrunedConfigMixin, TimesFm2_5Config):
    r"""[`TimesFm2_5Config`] of a pruned TimesFM 2.5 model, with its per-layer sizes.

    Args:
        kwargs: The fields of [`TimesFm2_5Config`] and of the pruned configurations (`hf_tsprune_layout`, `base_model`,
            `base_model_revision`, `pruning`).
    """

    model_type = MODEL_TYPE_PREFIX + "timesfm2_5"
    base_model_type = "timesfm2_5"
    model_class_name = "PrunedTimesFm2_5ModelForPrediction"


class PrunedPatchTSTConfig(_PrunedConfigMixin, PatchTSTConfig):
    r"""[`PatchTSTConfig`] of a pruned PatchTST model, with its per-layer sizes.

    Args:
        kwargs: The fields of [`PatchTSTConfig`] and of the pruned configurations (`hf_tsprune_layout`, `base_model`,
            `base_model_revision`, `pruning`).
    """

    model_type = MODEL_TYPE_PREFIX + "patchtst"
    base_model_type = "patchtst"
    model_class_name = "PrunedPatchTSTForPrediction"


class PrunedPatchTSMixerConfig(_PrunedConfigMixin, PatchTSMixerConfig):
    r"""[`PatchTSMixerConfig`] of a pruned PatchTSMixer model, with its per-layer sizes.

    Args:
        kwargs: The fields of [`PatchTSMixerConfig`] and of the pruned configurations (`hf_tsprune_layout`, `base_model`,
            `base_model_revision`, `pruning`).
    """

    model_type = MODEL_TYPE_PREFIX + "patchtsmixer"
    base_model_type = "patchtsmixer"
    model_class_name = "PrunedPatchTSMixerForPrediction"


class PrunedChronosConfig(_PrunedConfigMixin, T5Config):
    r"""[`T5Config`] of a pruned Chronos model (with its `chronos_config`), with its per-layer sizes.

    Args:
        kwargs: The fields of [`T5Config`] and of the pruned configurations (`hf_tsprune_layout`, `base_model`,
            `base_model_revision`, `pruning`).
    """

    model_type = MODEL_TYPE_PREFIX + "chronos"
    base_model_type = "chronos"
    model_class_name = "PrunedChronosForConditionalGeneration"
    base_config_model_type = "t5"  # Chronos checkpoints have model_type "t5"
    extra_auto_classes = ("AutoModelForSeq2SeqLM",)  # what `chronos.ChronosPipeline.from_pretrained` uses


class PrunedChronosBoltConfig(_PrunedConfigMixin, T5Config):
    r"""[`T5Config`] of a pruned Chronos-Bolt model (with its `chronos_config`), with its per-layer sizes.

    Args:
        kwargs: The fields of [`T5Config`] and of the pruned configurations (`hf_tsprune_layout`, `base_model`,
            `base_model_revision`, `pruning`).
    """

    model_type = MODEL_TYPE_PREFIX + "chronos_bolt"
    base_model_type = "chronos_bolt"
    model_class_name = "PrunedChronosBoltModelForForecasting"
    base_config_model_type = "t5"


_CONFIGS = [PrunedTimesFmConfig, PrunedTimesFm2_5Config, PrunedPatchTSTConfig, PrunedPatchTSMixerConfig]
_CONFIGS += [PrunedChronosConfig, PrunedChronosBoltConfig]

if TinyTimeMixerConfig is not None:

    class PrunedTinyTimeMixerConfig(_PrunedConfigMixin, TinyTimeMixerConfig):
        r"""[`TinyTimeMixerConfig`] (granite-tsfm) of a pruned TTM model, with its per-layer sizes."""

        model_type = MODEL_TYPE_PREFIX + "tinytimemixer"
        base_model_type = "tinytimemixer"
        model_class_name = "PrunedTinyTimeMixerForPrediction"

        def __init__(self, hf_tsprune_layout=None, base_model=None, base_model_revision=None, pruning=None, **kwargs):
            # TinyTimeMixerConfig is a classic (non-dataclass) configuration with its own __init__
            model_type = kwargs.pop("model_type", None)
            if model_type not in (None, self.model_type, self.base_model_type):
                raise ValueError(f"{type(self).__name__} prunes 'tinytimemixer' models; got {model_type!r}.")
            self.hf_tsprune_layout = hf_tsprune_layout
            self.base_model = base_model
            self.base_model_revision = base_model_revision
            self.pruning = pruning
            TinyTimeMixerConfig.__init__(self, **kwargs)
            self.__dict__.pop("model_type", None)
            if getattr(self, "auto_map", None) is None:
                self.auto_map = self.default_auto_map()

    _CONFIGS.append(PrunedTinyTimeMixerConfig)

PRUNED_CONFIG_CLASSES = {cls.base_model_type: cls for cls in _CONFIGS}
