"""Moirai 1.x (Salesforce `uni2ts`'s `MoiraiModule`): patches of every variate of a series, flattened into one sequence,
through a pre-norm Transformer encoder with rotary time positions and a binary variate attention bias; a mixture
distribution head.

`uni2ts` modules are `huggingface_hub` mixin modules, not transformers models, and take packed token sequences. Here a
`MoiraiModule` is forecast through [`MoiraiForPrediction`], a thin `nn.Module` that holds it (`.model`) with the
task's `prediction_length`, `context_length` and `patch_size` (`.config`) and does what `uni2ts`'s `MoiraiForecast`
does to pack a window (its own `_convert`). Its forward returns the predictive distribution's mean as the point forecast
and, given `future_values`, the MSE of that mean on the observed targets: the paper's finetuning loss for Moirai.

Prunable groups, per encoder layer (`model.encoder.layers.N`):

- self-attention heads (`self_attn`: `q_proj`/`k_proj`/`v_proj` rows <-> `out_proj` columns) with the value channels
  inside kept heads (the value head dimension is free: the scores are scaled by the query/key head dimension, which is
  a constant of the block, and the rotary projection acts on queries and keys only). Each layer's variate attention
  bias has one pair of values per head (`var_attn_bias.emb.weight`, `(2, num_heads)`): it loses the columns of the
  removed heads. The shared rotary projection and the query/key RMS norms act on the head dimension, not per head, so
  they are unchanged. A layer left with no head stays in place with zero-width projections (it adds nothing);
- SwiGLU channels (`ffn`: `fc1` and `fc_gate` rows <-> `fc2` columns).

Query/key channels are not pruned: the query/key RMS norm normalises over each head's whole query/key vector and the
rotary projection rotates pairs of its channels, so removing one changes every other channel's value; the paper leaves
them too. Residual (`d_model`) channels are never pruned (see `hf_tsprune.specs`).

Pruned checkpoints are `huggingface_hub` mixin folders (`model.safetensors`, `config.json`: the module's own
arguments plus the forecast settings, `hf_tsprune_layout`, `hf_tsprune_blocks` and the pruning record):
`hf_tsprune.modeling.load_pruned(folder)` (or [`load_pruned_moirai`]) rebuilds the module, gives it the layout and
loads the weights strictly (any missing, unexpected or mismatched tensor raises). Plain
`MoiraiModule.from_pretrained(folder)` fails on the pruned sizes (a size-mismatch error, never a silent
re-initialisation). Everything needs `uni2ts`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from ..adapters import ForecastAdapter, ModelForecast
from ..checkpoint_code import BLOCKS_ATTR, LAYOUT_ATTR
from ..family import Family, get_family, import_object, register_family
from ..specs import ArchitectureSpec, AttentionGroup, MLPGroup
from ..training import observed_window

MOIRAI_INSTALL = 'pip install -e ".[moirai]" && pip install --no-deps uni2ts==2.0.0 gluonts==0.17.0'
"""`uni2ts` pins torch<2.5 and numpy~=1.26 and `gluonts` pandas<3, yet both run on current versions: `--no-deps`."""


class MoiraiForecastConfig(PretrainedConfig):
    r"""The forecast settings of a [`MoiraiForPrediction`] (the module's own arguments stay the module's).

    Args:
        prediction_length (`int`, defaults to 96): steps forecast by one call.
        context_length (`int`, defaults to 512): context steps (shorter contexts are front-padded as missing).
        patch_size (`int`, defaults to 32): the patch size the module is run with (one of its `patch_sizes`; Moirai-2:
            its only one).
        module_class (`str`, *optional*): `"module:Name"` of the wrapped `uni2ts` module class.
    """

    model_type = "hf_tsprune_moirai_forecast"

    def __init__(
        self,
        prediction_length: int = 96,
        context_length: int = 512,
        patch_size: int = 32,
        module_class: str | None = None,
        **kwargs,
    ):
        self.prediction_length = int(prediction_length)
        self.context_length = int(context_length)
        self.patch_size = int(patch_size)
        self.module_class = module_class
        super().__init__(**kwargs)


def _forecast_settings(config: MoiraiForecastConfig) -> dict:
    return {k: getattr(config, k) for k in ("prediction_length", "context_length", "patch_size", "module_class")}


class MoiraiForPrediction(nn.Module):
    """A `uni2ts` `MoiraiModule` with a task's forecast settings: point forecasts (the predictive mean) and the MSE
    training loss on them.

    Args:
        model (`MoiraiModule`): the module (e.g. `MoiraiModule.from_pretrained("Salesforce/moirai-1.0-R-small")`).
        prediction_length (`int`): steps forecast by one call.
        context_length (`int`): context steps.
        patch_size (`int`, *optional*): one of `module.patch_sizes`; defaults to 32 where available, else the largest.
    """

    forecast_class = "uni2ts.model.moirai:MoiraiForecast"
    module_class = "uni2ts.model.moirai:MoiraiModule"
    checkpoint_keys: tuple[str, ...] = ("d_model", "num_layers", "distr_output", "patch_sizes")
    """Keys every dense checkpoint's `config.json` of this class' module has ([`matches_checkpoint`])."""
    checkpoint_without: tuple[str, ...] = ("d_ff",)
    """Keys it never has (Moirai-MoE's and Moirai-2's `d_ff`)."""

    def __init__(self, model: nn.Module, prediction_length: int, context_length: int, patch_size: int | None = None):
        super().__init__()
        self.model = model
        self.config = MoiraiForecastConfig(
            prediction_length=prediction_length,
            context_length=context_length,
            patch_size=self.default_patch_size(model) if patch_size is None else patch_size,
            module_class=self.module_class,
        )

    @staticmethod
    def default_patch_size(module: nn.Module) -> int:
        sizes = [int(p) for p in module.patch_sizes]
        return 32 if 32 in sizes else max(sizes)

    @classmethod
    def from_pretrained(cls, name_or_path: str, prediction_length: int, context_length: int, **kwargs):
        """Loads the `uni2ts` module (Hub id or folder; `kwargs` go to its `from_pretrained`, except `patch_size`)."""
        patch_size = kwargs.pop("patch_size", None)
        module = import_object(cls.module_class).from_pretrained(name_or_path, **kwargs)
        return cls(module, prediction_length, context_length, patch_size)

    @classmethod
    def matches_checkpoint(cls, config: dict) -> bool:
        """Whether a `config.json` (dict, no transformers `model_type`) is a dense checkpoint of this class' module, as
        its `save_pretrained` writes it (the module's constructor arguments)."""
        return all(k in config for k in cls.checkpoint_keys) and not any(k in config for k in cls.checkpoint_without)

    @staticmethod
    def checkpoint_patch_sizes(config: dict) -> list[int]:
        """The patch sizes a module's `config.json` allows (`patch_sizes`, or Moirai-2's single `patch_size`)."""
        sizes = config.get("patch_sizes", config.get("patch_size"))
        return [int(p) for p in (sizes if isinstance(sizes, (list, tuple)) else [sizes])]

    @classmethod
    def task_patch_size(cls, config: dict, patch_size: int | None, name: str) -> int:
        """The `--patch_size` of a task for a module: required where the module has several, one of them.

        Raises:
            `ValueError` naming `--patch_size` and the module's patch sizes.
        """
        sizes = cls.checkpoint_patch_sizes(config)
        if patch_size is None:
            if len(sizes) == 1:
                return sizes[0]
            raise ValueError(
                f"{name} is a Moirai model with the patch sizes {sizes}: pass --patch_size (`patch_size`), one of "
                "them (a task setting only Moirai uses; choose it on validation)."
            )
        if int(patch_size) not in sizes:
            raise ValueError(f"--patch_size {patch_size} is not a patch size of {name}: choose one of {sizes}.")
        return int(patch_size)

    @classmethod
    def load_dense(
        cls,
        name_or_path: str,
        config: dict,
        *,
        strict: bool = True,
        prediction_length: int | None = None,
        context_length: int | None = None,
        patch_size: int | None = None,
        **hub_kwargs,
    ):
        """Loads a dense `uni2ts` module checkpoint (folder or Hub id, as its `save_pretrained` writes it) with a task's
        forecast settings, checked before any weight is read (the `Family.load_dense` of the Moirai families).

        Args:
            name_or_path (`str`): folder or Hub id.
            config (`dict`): its `config.json`.
            strict (`bool`, defaults to `True`): fail on a missing or unexpected tensor (the mixin's default is not).
            prediction_length (`int`), context_length (`int`): the task's (`--prediction_length`, `--context_length`).
            patch_size (`int`, *optional*): `--patch_size`; required where the module has several patch sizes.
            hub_kwargs: `revision`, `token`.

        Raises:
            `ValueError`: a missing or invalid task setting (naming its flag).
        """
        missing = [f"--{k}" for k, v in (("prediction_length", prediction_length), ("context_length", context_length))
                   if v is None]  # fmt: skip
        if missing:
            raise ValueError(f"{name_or_path} is a Moirai model: loading it needs the task's {' and '.join(missing)}.")
        patch_size = cls.task_patch_size(config, patch_size, name_or_path)
        return cls.from_pretrained(name_or_path, prediction_length, context_length, patch_size=patch_size,
                                   strict=strict, **hub_kwargs)  # fmt: skip

    def save_pretrained(self, save_directory: str | os.PathLike) -> list[str]:
        """Saves the model: a dense one as the module's own `save_pretrained` folder (what `from_pretrained` and
        `hf_tsprune.evaluation.load_forecaster` with the task's settings load), a pruned one (with a layout, e.g. a
        pruned checkpoint finetuned further) as a pruned checkpoint with its recorded base model and pruning record
        ([`save_pruned_moirai`]).

        Returns:
            The sorted names of the files in `save_directory`.
        """
        if getattr(self.config, LAYOUT_ATTR, None):
            return save_pruned_moirai(
                self, save_directory, base_model=getattr(self.config, "base_model", None),
                extra=getattr(self.config, "pruning", None),
            )  # fmt: skip
        self.model.save_pretrained(save_directory)
        return sorted(os.listdir(save_directory))

    def forecaster(self, num_channels: int):
        """`uni2ts`'s forecast module around `self.model`, for its input packing (`_convert`)."""
        settings = self.config
        return import_object(self.forecast_class)(
            prediction_length=settings.prediction_length,
            target_dim=num_channels,
            feat_dynamic_real_dim=0,
            past_feat_dynamic_real_dim=0,
            context_length=settings.context_length,
            module=self.model,
            patch_size=settings.patch_size,
            num_samples=1,
        )

    def _packed(self, past_values: torch.Tensor, past_observed_mask: torch.Tensor):
        forecaster = self.forecaster(past_values.shape[-1])
        packed = forecaster._convert(
            self.config.patch_size,
            past_values,
            past_observed_mask.bool(),
            torch.zeros(past_values.shape[:2], dtype=torch.bool, device=past_values.device),
        )
        return forecaster, packed

    def _future(self, forecaster, values: torch.Tensor, num_channels: int) -> torch.Tensor:
        """`(batch, tokens, patch)` values of the packed sequence -> `(batch, prediction_length, channels)`."""
        patch = self.config.patch_size
        start = num_channels * forecaster.context_token_length(patch)
        steps = forecaster.prediction_token_length(patch)
        future = values[:, start : start + num_channels * steps, :patch]
        future = future.reshape(values.shape[0], num_channels, steps * patch)[:, :, : self.config.prediction_length]
        return future.transpose(1, 2)

    def predict_mean(self, past_values: torch.Tensor, past_observed_mask: torch.Tensor) -> torch.Tensor:
        """The predictive distribution's mean `(batch, prediction_length, channels)`."""
        forecaster, (target, observed, sample_id, time_id, variate_id, prediction_mask) = self._packed(
            past_values, past_observed_mask
        )
        patch_size = torch.full_like(time_id, self.config.patch_size)
        distribution = self.model(target, observed, sample_id, time_id, variate_id, prediction_mask, patch_size)
        return self._future(forecaster, distribution.mean, past_values.shape[-1])

    def forward(
        self,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        future_values: torch.Tensor | None = None,
        future_observed_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Point forecast `prediction_outputs` `(batch, prediction_length, channels)`; with `future_values`
        (`(batch, steps, channels)`, `steps <= prediction_length`) also `loss`: the MSE of the forecast on the
        observed future values.

        Args:
            past_values (`torch.Tensor`): `(batch, context_length, channels)` contexts.
            past_observed_mask (`torch.Tensor`, *optional*): 1 where observed (default: all).
            future_values (`torch.Tensor`, *optional*): training targets.
            future_observed_mask (`torch.Tensor`, *optional*): 1 where the target is observed (default: all).
        """
        if past_observed_mask is None:
            past_observed_mask = torch.ones_like(past_values)
        prediction = self.predict_mean(past_values, past_observed_mask)
        outputs = {"prediction_outputs": prediction}
        if future_values is not None:
            steps = future_values.shape[1]
            weight = torch.ones_like(future_values) if future_observed_mask is None else future_observed_mask.float()
            error = (prediction[:, :steps] - future_values) ** 2 * weight
            outputs["loss"] = error.sum() / weight.sum().clamp(min=1.0)
        return outputs


def moirai_attention_forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs):
    """`uni2ts`'s `GroupedQueryAttention.forward` for a shrunk block: the value head dimension is read from `v_proj`
    (its own forward infers it), and a block with no head left outputs its output projection of nothing (zeros)."""
    from uni2ts.module.attention import GroupedQueryAttention

    if self.num_heads == 0:
        return self.out_proj(query.new_zeros(*query.shape[:-1], 0))
    return GroupedQueryAttention.forward(self, query, key, value, *args, **kwargs)


def example_inputs(model, batch_size: int = 1, generator: torch.Generator | None = None) -> dict:
    """Contexts of `context_length` steps, one channel."""
    past = torch.randn(batch_size, model.config.context_length, 1, generator=generator)
    return {"past_values": past, "past_observed_mask": torch.ones_like(past)}


def forecast(model, inputs: dict) -> torch.Tensor:
    """The point forecast `(batch, prediction_length, channels)`."""
    return model(**inputs)["prediction_outputs"]


class MoiraiAdapter(ForecastAdapter):
    """Moirai: `prediction_length` steps per call, contexts of `context_length` steps (shorter ones front-padded as
    missing), channels forecast one at a time (folded into the batch, the LTSF protocol); the point forecast is the
    predictive distribution's mean."""

    univariate = True

    def native_horizon(self, model):
        return int(model.config.prediction_length)

    def max_context(self, model):
        return int(model.config.context_length)

    def _forecast(self, model, past_values, past_observed_mask, freq):
        return ModelForecast(
            mean=model(past_values=past_values, past_observed_mask=past_observed_mask)["prediction_outputs"]
        )


def training_inputs(model: nn.Module, features: list[dict], freq_index: int = 0) -> dict:
    """`past_values`/`past_observed_mask` and `future_values`/`future_observed_mask` `(B, T, C)`: the MSE of the
    predictive mean (the channels of a window are forecast jointly)."""
    past, past_observed = observed_window(features, "past_values", univariate=False)
    future, future_observed = observed_window(features, "future_values", univariate=False)
    context = int(model.config.context_length)
    if past.shape[1] != context:
        raise ValueError(
            f"Moirai forecasts from contexts of config.context_length={context} steps; the windows have "
            f"{past.shape[1]}: load the data with context_length={context}."
        )
    return {
        "past_values": past,
        "past_observed_mask": past_observed,
        "future_values": future,
        "future_observed_mask": future_observed,
    }


# -- pruned checkpoints ----------------------------------------------------------------------------------------------


def _module_arguments(module_class: type, settings: dict) -> dict:
    """The module's constructor arguments from a mixin `config.json` (custom types decoded as its mixin does)."""
    kwargs = {}
    for name, parameter in module_class._hub_mixin_init_parameters.items():
        if name in settings:
            value = settings[name]
            if parameter.annotation is not parameter.empty:
                value = module_class._decode_arg(parameter.annotation, copy.deepcopy(value))
            kwargs[name] = value
    return kwargs


def save_pruned_moirai(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    base_model: str | None = None,
    base_model_revision: str | None = None,
    pruning_config: Any = None,
    plan=None,
    seed: int | None = None,
    extra: dict | None = None,
) -> list[str]:
    """Writes a pruned Moirai checkpoint: the module's `save_pretrained` folder (`model.safetensors`, `config.json`),
    with the forecast settings, the layout, the family's block kinds and the pruning record added to `config.json`.

    Args:
        model (`MoiraiForPrediction`): shrunk (masks removed).
        save_directory (`str` or `os.PathLike`): folder to write (created if needed).
        base_model, base_model_revision, pruning_config, plan, seed, extra: as in `hf_tsprune.save_pruned`.

    Returns:
        The sorted names of the files in `save_directory`.
    """
    from ..masks import _STATE_ATTR
    from ..modeling import PAPER, _plain

    if getattr(model, _STATE_ATTR, None):
        raise ValueError("Pruning masks are still installed: call `hf_tsprune.shrink(model)` before saving.")
    layout = getattr(model.config, LAYOUT_ATTR, None)
    if layout is None:
        raise ValueError("The model has no pruned layout: call `hf_tsprune.shrink(model)` first.")
    family = get_family(model)
    folder = Path(save_directory)
    model.model.save_pretrained(folder)
    settings = json.loads((folder / "config.json").read_text())
    module_class = import_object(model.config.module_class)
    with torch.device("meta"):
        dense = module_class(**_module_arguments(module_class, settings))
    pruning = dict(method="hf_tsprune structured pruning (Taylor/EMA channel scores)", paper=PAPER)
    pruning["params_before"] = sum(p.numel() for p in dense.parameters())
    pruning["params_after"] = sum(p.numel() for p in model.model.parameters())
    if plan is not None:
        pruning.update(
            sparsity=plan.sparsity, flops_before=plan.flops_before, flops_after=plan.flops_after,
            max_rel_error=plan.max_rel_error, groups={g.name: g.to_dict() for g in plan.groups},
        )  # fmt: skip
    if pruning_config is not None:
        pruning["settings"] = _plain(pruning_config)
    if seed is not None:
        pruning["seed"] = int(seed)
    if extra:
        pruning.update(_plain(extra))
    settings.update(
        base_model_type=family.name,
        forecast=_forecast_settings(model.config),
        base_model=base_model,
        base_model_revision=base_model_revision,
        pruning=pruning,
    )
    settings[LAYOUT_ATTR] = layout
    settings[BLOCKS_ATTR] = json.loads(json.dumps(family.spec.blocks()))
    (folder / "config.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
    return sorted(os.listdir(folder))


def load_pruned_moirai(
    path: str | os.PathLike,
    prediction_length: int | None = None,
    context_length: int | None = None,
    patch_size: int | None = None,
) -> nn.Module:
    """Loads a pruned Moirai checkpoint folder (written by `hf_tsprune.save_pruned`) into its wrapper class.

    Args:
        path (`str` or `os.PathLike`): the folder.
        prediction_length (`int`, *optional*), context_length (`int`, *optional*), patch_size (`int`, *optional*):
            a task's forecast settings, in place of the checkpoint's (`None`: the checkpoint's own).

    Raises:
        `RuntimeError`: a tensor of the checkpoint is missing, unexpected or of another shape than the layout says.
        `ValueError`: `patch_size` is not one of the module's.
    """
    from safetensors.torch import load_model

    from ..surgery import apply_layout

    folder = Path(path)
    settings = json.loads((folder / "config.json").read_text())
    family = get_family(settings["base_model_type"])
    forecast_settings = dict(settings["forecast"])
    wrapper_class = import_object(family.base_model_class)
    overrides = dict(prediction_length=prediction_length, context_length=context_length)
    if patch_size is not None:
        overrides["patch_size"] = wrapper_class.task_patch_size(settings, patch_size, str(path))
    forecast_settings.update({k: v for k, v in overrides.items() if v is not None})
    module_class = import_object(forecast_settings.pop("module_class"))
    module = module_class(**_module_arguments(module_class, settings))
    model = wrapper_class(module, **forecast_settings)
    apply_layout(model, settings[LAYOUT_ATTR])
    load_model(model.model, str(folder / "model.safetensors"), strict=True)
    model.config.base_model = settings.get("base_model")
    model.config.pruning = settings.get("pruning")
    return model.eval()


MOIRAI_TASK_SETTINGS = ("prediction_length", "context_length", "patch_size")
"""The task settings a Moirai wrapper holds (`Family.task_settings` of the Moirai families)."""

MOIRAI_ATTENTION = dict(
    q="q_proj",
    k="k_proj",
    v="v_proj",
    o="out_proj",
    head_dim_attr="head_dim",
    num_heads_attrs=("num_heads", "var_attn_bias.num_heads"),
    num_kv_heads_attrs=("num_groups", "var_attn_bias.num_groups"),
    kv_groups_attr="heads_per_group",
    v_head_dim_forward=moirai_attention_forward,
    keep_empty_blocks=True,
    head_params=("var_attn_bias.emb.weight",),
)
"""The attention group of every `uni2ts` Moirai encoder (1.x, MoE, 2.0)."""


def moirai_family(*, model_class: type, **fields) -> Family:
    """The `Family` record of a uni2ts Moirai model (1.x, MoE, 2): the fields they share (the forecast configuration,
    the uni2ts package, the pruned checkpoint format, the task settings, dense loading through `model_class`) and
    `fields`, the family's own (`name`, `spec`, `adapter`, `training_inputs`, `description`, ...)."""
    return Family(
        base_config_class="hf_tsprune.families.moirai:MoiraiForecastConfig",
        base_model_class=f"{model_class.__module__}:{model_class.__name__}",
        requires="uni2ts",
        install_hint=MOIRAI_INSTALL,
        save_pruned=save_pruned_moirai,
        load_pruned=load_pruned_moirai,
        task_settings=MOIRAI_TASK_SETTINGS,
        matches_checkpoint=model_class.matches_checkpoint,
        load_dense=model_class.load_dense,
        **fields,
    )


MOIRAI = register_family(
    moirai_family(
        name="moirai",
        spec=ArchitectureSpec(
            name="moirai",
            model_classes=("MoiraiForPrediction",),
            groups=(
                AttentionGroup(pattern=r"model\.encoder\.layers\.\d+\.self_attn", **MOIRAI_ATTENTION),
                MLPGroup(
                    pattern=r"model\.encoder\.layers\.\d+\.ffn",
                    producers=("fc1", "fc_gate"),
                    consumer="fc2",
                    width_attrs=("hidden_dim",),
                ),
            ),
            example_inputs=example_inputs,
            forecast=forecast,
        ),
        adapter=MoiraiAdapter(),
        training_inputs=training_inputs,
        model_class=MoiraiForPrediction,
        description="Moirai 1.x (Salesforce uni2ts): any-variate masked encoder, mixture distribution head",
    )
)
