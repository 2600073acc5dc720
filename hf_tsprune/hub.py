"""Sharing pruned models on the Hugging Face Hub: generated model cards, a kept-units heatmap, one-commit pushes.

- [`make_model_card`] renders the packaged Jinja template (`hf_tsprune/model_cards/pruned_model_card.md`) with
  `huggingface_hub.ModelCard.from_template`. Metadata: `base_model`, `datasets`, `library_name`, `pipeline_tag:
  time-series-forecasting`, tags, the base model's licence, `model-index` evaluation results (MSE and MAE per dataset,
  split and horizon) and an `hf_tsprune` block (sparsity, parameters and FLOPs before/after, settings, seed). Body:
  what was done, how to load the model (with hf_tsprune or with `trust_remote_code=True`), results against the base
  model, the per-layer kept units, latency, and the paper's citation.
- [`plot_kept_units`] draws the per-layer kept-units heatmap (matplotlib, no pyplot state).
- [`save_model_card`] writes `README.md` and the heatmap into a folder; [`write_model_card`] does it beside a saved
  checkpoint, from a recipe run's `RunResult` (or its `results.json` dict).
- [`push_pruned_to_hub`] saves the pruned checkpoint, the card and the heatmap to a temporary folder and uploads them
  in one commit with `HfApi.upload_folder`; [`push_folder_to_hub`] uploads an existing folder the same way.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import platform
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id
from torch import nn

from .family import get_family, get_spec
from .modeling import is_pruned_config, save_pruned
from .results import RunResult
from .surgery import PruningPlan

try:  # huggingface_hub >= 2 talks HTTP through httpx2, earlier releases through httpx
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx

logger = logging.getLogger(__name__)

CARD_TEMPLATE = "pruned_model_card.md"
"""File name of the packaged model card template (in `hf_tsprune/model_cards/`)."""

KEPT_UNITS_IMAGE = "kept_units.png"
"""File name of the kept-units heatmap written beside the card."""

PIPELINE_TAG = "time-series-forecasting"

__all__ = [
    "CARD_TEMPLATE",
    "KEPT_UNITS_IMAGE",
    "ForecastResult",
    "HubPushError",
    "HubUnreachableError",
    "check_push_access",
    "card_template",
    "describe_device",
    "make_model_card",
    "measure_latency",
    "plot_kept_units",
    "push_folder_to_hub",
    "push_pruned_to_hub",
    "save_model_card",
    "write_model_card",
]


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub could not be reached (no network, DNS, proxy or TLS failure)."""


class HubPushError(RuntimeError):
    """An upload failed after every local output was written; the message names the saved folder and how to retry
    (`push_folder_to_hub`)."""


@dataclass
class ForecastResult:
    """One evaluation of a forecaster: point-forecast errors on one dataset, split and horizon.

    Args:
        dataset (`str`): Display name of the dataset (e.g. `"ETTh1"`).
        horizon (`int`): Forecast horizon (prediction length) in steps.
        mse (`float`): Mean squared error.
        mae (`float`): Mean absolute error.
        split (`str`, defaults to `"test"`): Split evaluated.
        dataset_id (`str`, *optional*): Hub id of the dataset (goes to the card's `datasets` and `model-index`).
        dataset_config (`str`, *optional*): Configuration (subset) of `dataset_id`.
        context_length (`int`, *optional*): Context length used.
    """

    dataset: str
    horizon: int
    mse: float
    mae: float
    split: str = "test"
    dataset_id: str | None = None
    dataset_config: str | None = None
    context_length: int | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.dataset, self.split, self.horizon)


_SPLITS = ("train", "validation", "val", "test")
_FIELDS = {f.name for f in fields(ForecastResult)}


def _as_results(value: Any) -> list[ForecastResult]:
    """Normalises results: `ForecastResult`s, dicts with `dataset`, `horizon` (or `prediction_length`), `mse`,
    `mae` (and optionally `split`, `dataset_id`, ...), dicts as written by `hf_tsprune.evaluation` (per split
    sub-dicts holding `mse`/`mae`), or lists of these."""
    if value is None:
        return []
    if isinstance(value, ForecastResult):
        return [value]
    if isinstance(value, Mapping):
        entry = dict(value)
        if "horizon" not in entry and "prediction_length" in entry:
            entry["horizon"] = entry.pop("prediction_length")
        if "mse" in entry:
            unknown = set(entry) - _FIELDS
            for key in unknown:
                entry.pop(key)
            missing = {"dataset", "horizon", "mse", "mae"} - set(entry)
            if missing:
                raise ValueError(f"A result needs `dataset`, `horizon`, `mse` and `mae`; {sorted(missing)} missing.")
            result = ForecastResult(**entry)
            result.horizon, result.mse, result.mae = int(result.horizon), float(result.mse), float(result.mae)
            return [result]
        splits = [s for s in _SPLITS if isinstance(entry.get(s), Mapping) and "mse" in entry[s]]
        if splits and "dataset" in entry:
            out = []
            for split in splits:
                metrics = entry[split]
                horizon = metrics.get("prediction_length", entry.get("horizon"))
                context = metrics.get("context_length", entry.get("context_length"))
                out.append(
                    ForecastResult(
                        dataset=str(entry["dataset"]), horizon=int(horizon), mse=float(metrics["mse"]),
                        mae=float(metrics["mae"]), split=split, dataset_id=entry.get("dataset_id"),
                        dataset_config=entry.get("dataset_config"),
                        context_length=None if context is None else int(context),
                    )
                )  # fmt: skip
            return out
        raise ValueError(
            "Could not read evaluation results from a dict with keys "
            f"{sorted(entry)}: give `dataset`, `horizon`, `mse`, `mae` (optionally `split`, `dataset_id`), or a "
            "result dict written by `hf_tsprune.evaluation` (per-split sub-dicts with `mse` and `mae`)."
        )
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [r for item in value for r in _as_results(item)]
    raise TypeError(f"Evaluation results must be ForecastResult, dict or a list of them; got {type(value).__name__}.")


def card_template() -> str:
    """The packaged model card template (Jinja), read from the installed package."""
    return (importlib.resources.files("hf_tsprune") / "model_cards" / CARD_TEMPLATE).read_text(encoding="utf-8")


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _hub_id(name: str | None) -> str | None:
    """`name` if it looks like a Hub repository id and is not a local folder, else `None`."""
    if not name or os.path.exists(name) or not _REPO_ID.match(name) or ".." in name:
        return None
    return name


def _base_license(base_model: str | None, revision: str | None, token: str | bool | None) -> dict[str, str]:
    """The base model's licence fields (`license`, `license_name`, `license_link`), from its local README.md or its
    Hub card; empty when unknown."""
    if not base_model:
        return {}
    data = None
    readme = os.path.join(base_model, "README.md")
    if os.path.isfile(readme):
        data = ModelCard.load(readme).data
    elif _hub_id(base_model) and not constants.is_offline_mode():
        try:
            data = HfApi(token=token).model_info(base_model, revision=revision).card_data
        except Exception as err:  # the licence is best-effort; the push itself reports connection problems
            logger.warning("Could not read the licence of %s from the Hub (%s).", base_model, type(err).__name__)
    if data is None:
        return {}
    return {k: data.get(k) for k in ("license", "license_name", "license_link") if data.get(k)}


def _pruned_config(model_or_config: Any):
    """The pruned configuration of a pruned model (or the configuration itself)."""
    config = model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config
    if not is_pruned_config(config):
        raise ValueError(
            f"{type(model_or_config).__name__} is not a pruned model: convert it with `hf_tsprune.to_pruned_model("
            "model, base_model=..., pruning_config=..., plan=...)` (or save it with `hf_tsprune.save_pruned`) first."
        )
    return config


def _grid(groups: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str], np.ndarray, list[list[str]]]:
    """Arranges blocks as rows (the name with its first layer index replaced by `*`) and layer-index columns; blocks
    outside the layer stack (input/output residual blocks) share a first column labelled `-`."""
    cells: dict[str, dict[int, Mapping[str, Any]]] = {}
    for name, group in groups.items():
        match = re.search(r"\.(\d+)(?=\.|$)", name)
        row, col = (name[: match.start()] + ".*" + name[match.end() :], int(match.group(1))) if match else (name, -1)
        cells.setdefault(row, {})[col] = group
    rows = list(cells)
    cols = sorted({c for row in cells.values() for c in row})
    values = np.full((len(rows), len(cols)), np.nan)
    labels = [["" for _ in cols] for _ in rows]
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            group = cells[row].get(col)
            if group is not None:
                values[i, j] = group["units_after"] / max(group["units_before"], 1)
                labels[i][j] = f"{group['units_after']}/{group['units_before']}"
    return rows, ["-" if c < 0 else str(c) for c in cols], values, labels


def plot_kept_units(
    groups: Mapping[str, Mapping[str, Any]] | nn.Module,
    path: str | os.PathLike,
    title: str | None = None,
) -> str:
    """Draws the per-layer kept-units heatmap: one row per kind of block, one column per layer index, the colour the
    fraction of the block's prunable units kept, each cell annotated `kept/before`.

    Args:
        groups (`dict` or `nn.Module`): `{block: {"units_before", "units_after", ...}}` as in
            `config.pruning["groups"]`, or a pruned model.
        path (`str` or `os.PathLike`): PNG file to write.
        title (`str`, *optional*): Figure title (default: the overall fraction kept).

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    if isinstance(groups, nn.Module):
        groups = _pruned_config(groups).pruning["groups"]
    if not groups:
        raise ValueError("No pruned blocks to plot: `groups` is empty.")
    rows, cols, values, labels = _grid(groups)
    prefix = os.path.commonprefix(rows) if len(rows) > 1 else ""
    prefix = prefix[: prefix.rfind(".") + 1]
    short = [r[len(prefix) :] for r in rows]
    before = sum(g["units_before"] for g in groups.values())
    after = sum(g["units_after"] for g in groups.values())
    annotate = len(rows) * len(cols) <= 600
    width = 2.0 + 0.075 * max(map(len, short)) + (0.62 if annotate else 0.3) * len(cols)
    fig = Figure(figsize=(min(max(width, 5.0), 30.0), 1.8 + 0.42 * len(rows)), dpi=110, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), short, fontsize=8)
    ax.set_xlabel("layer index")
    if prefix:
        ax.set_ylabel(f"{prefix}…", fontsize=8)
    if annotate:
        for i in range(len(rows)):
            for j in range(len(cols)):
                if labels[i][j]:
                    color = "black" if values[i, j] > 0.6 else "white"
                    ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=6.5, color=color)
    fig.colorbar(image, ax=ax, label="fraction kept", shrink=0.9)
    ax.set_title(title or f"Kept units per block: {after:,} of {before:,} ({after / max(before, 1):.1%})", fontsize=10)
    fig.savefig(path, format="png")
    return str(path)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _result_rows(results: list[ForecastResult], baselines: Mapping[str, list[ForecastResult]], label: str):
    tables = {label: {r.key: r for r in results}, **{k: {r.key: r for r in v} for k, v in baselines.items()}}
    keys = list(dict.fromkeys([r.key for table in tables.values() for r in table.values()]))
    rows = []
    for dataset, split, horizon in keys:
        cells = []
        for table in tables.values():
            r = table.get((dataset, split, horizon))
            cells.append({"mse": _fmt(r and r.mse), "mae": _fmt(r and r.mae)})
        rows.append({"dataset": dataset, "split": split, "horizon": horizon, "cells": cells})
    return list(tables), rows


def _latency_rows(latency: Mapping[str, Mapping[str, float]] | None):
    if not latency:
        return [], [], False
    columns = list(dict.fromkeys(label for row in latency.values() for label in row))
    speedup = "base" in columns and "pruned" in columns
    rows = []
    for setting, row in latency.items():
        entry = {"setting": setting, "values": [_fmt(row.get(c)) for c in columns]}
        if speedup and row.get("base") and row.get("pruned"):
            entry["speedup"] = f"{row['base'] / row['pruned']:.2f}x"
        elif speedup:
            entry["speedup"] = "–"
        rows.append(entry)
    return columns, rows, speedup


def _eval_results(results: list[ForecastResult]) -> list[EvalResult]:
    out = []
    for r in results:
        args = {"prediction_length": r.horizon}
        if r.context_length is not None:
            args["context_length"] = r.context_length
        for metric, value in (("mse", r.mse), ("mae", r.mae)):
            out.append(
                EvalResult(
                    task_type=PIPELINE_TAG,
                    task_name="Time Series Forecasting",
                    dataset_type=r.dataset_id or r.dataset,
                    dataset_name=r.dataset,
                    dataset_config=r.dataset_config,
                    dataset_split=r.split,
                    metric_type=metric,
                    metric_value=value,
                    metric_name=f"{metric.upper()} (horizon {r.horizon})",
                    metric_config=f"horizon-{r.horizon}",
                    metric_args=args,
                )
            )
    return out


def make_model_card(
    model: nn.Module | Any,
    *,
    repo_id: str | None = None,
    results: Any = None,
    results_label: str = "pruned",
    baselines: Mapping[str, Any] | None = None,
    latency: Mapping[str, Mapping[str, float]] | None = None,
    latency_device: str | None = None,
    datasets: Sequence[str] | None = None,
    license: str | None = None,
    tags: Sequence[str] | None = None,
    model_name: str | None = None,
    template_path: str | os.PathLike | None = None,
    image_path: str = KEPT_UNITS_IMAGE,
    training_note: str | None = None,
    token: str | bool | None = None,
) -> ModelCard:
    """Renders the model card of a pruned model.

    Args:
        model (`PreTrainedModel` or its config):
            A pruned model (after `to_pruned_model`/`save_pruned`, or loaded from a pruned checkpoint), or its
            configuration (e.g. `AutoConfig.from_pretrained(folder)`).
        repo_id (`str`, *optional*):
            Hub id the card will live at (used in the loading snippets and as the model-index name).
        results (*optional*):
            This model's results: `ForecastResult`s or dicts (`dataset`, `horizon`, `mse`, `mae`, optional `split`
            (default `"test"`), `dataset_id`, `dataset_config`, `context_length`), or the result dicts written by
            `hf_tsprune.evaluation`. They go to the `model-index` metadata and the results table.
        results_label (`str`, defaults to `"pruned"`):
            Column label of `results` in the table (e.g. `"pruned + finetuned"`).
        baselines (`dict`, *optional*):
            Results of other models for the table only, by label, e.g. `{"base zero-shot": [...], "base full
            finetune": [...]}`.
        latency (`dict`, *optional*):
            Milliseconds per forecast, `{setting: {label: ms}}` (e.g. from [`measure_latency`]); a speed-up column
            appears when the labels include `"base"` and `"pruned"`.
        latency_device (`str`, *optional*):
            The hardware the latency was measured on.
        datasets (`list[str]`, *optional*):
            Hub ids of the datasets used (default: the `dataset_id`s of `results` and `baselines`).
        license (`str`, *optional*):
            Licence identifier; by default inherited from the base model (its local README.md, or its Hub card).
        tags (`list[str]`, *optional*):
            Extra tags.
        model_name (`str`, *optional*):
            Title and model-index name (default: the repository name).
        template_path (`str`, *optional*):
            A custom Jinja template (default: the packaged `model_cards/pruned_model_card.md`).
        image_path (`str`, defaults to `"kept_units.png"`):
            Where the card links the heatmap (relative to the card).
        training_note (`str`, *optional*):
            Markdown paragraph on what else was done (e.g. the finetuning recipe), shown under "What was done".
        token (`str`, *optional*):
            Hub token for reading the base model's licence (default: the usual places).

    Returns:
        `huggingface_hub.ModelCard`.
    """
    config = _pruned_config(model)
    pruning = dict(config.pruning or {})
    results_list = _as_results(results)
    baseline_lists = {str(k): _as_results(v) for k, v in (baselines or {}).items()}
    base_model = config.base_model
    base_id = _hub_id(base_model)
    licence = {"license": license} if license else _base_license(base_model, config.base_model_revision, token)
    if not licence:
        logger.warning("The base model's licence is unknown; pass `license=` to set the card's licence.")
    if datasets is None:
        every = results_list + [r for v in baseline_lists.values() for r in v]
        datasets = list(dict.fromkeys(r.dataset_id for r in every if r.dataset_id))
    name = model_name or (repo_id.split("/")[-1] if repo_id else f"{config.base_model_type}-pruned")
    family = get_family(config.base_model_type, require=False)
    tags = list(dict.fromkeys(["hf_tsprune", "pruning", "structured-pruning", "time-series", config.base_model_type,
                               *(tags or [])]))  # fmt: skip
    summary = {
        "base_model_type": config.base_model_type,
        "base_model_revision": config.base_model_revision,
        "sparsity": pruning.get("sparsity"),
        "params_before": pruning.get("params_before"),
        "params_after": pruning.get("params_after"),
        "flops_before": pruning.get("flops_before"),
        "flops_after": pruning.get("flops_after"),
        "settings": pruning.get("settings"),
        "seed": pruning.get("seed"),
        "version": pruning.get("hf_tsprune_version"),
    }
    card_data = ModelCardData(
        base_model=base_id,
        datasets=list(datasets) or None,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=tags,
        model_name=name,
        eval_results=_eval_results(results_list) or None,
        hf_tsprune={k: v for k, v in summary.items() if v is not None},
        **licence,
    )
    result_columns, result_rows = _result_rows(results_list, baseline_lists, results_label)
    latency_columns, latency_rows, latency_speedup = _latency_rows(latency)
    groups = pruning.get("groups") or {}
    group_rows = [
        {"name": k, "kind": g["kind"], "units_after": g["units_after"], "units_before": g["units_before"],
         "heads_after": g.get("heads_after"), "heads_before": g.get("heads_before")}
        for k, g in groups.items()
    ]  # fmt: skip
    latency_note = "Median milliseconds per forecast call"
    latency_note += f", measured on {latency_device}." if latency_device else "."
    kwargs = {
        "title": name,
        "repo_id": repo_id or "path/to/this/model",
        "base_model": base_model,
        "base_model_url": f"https://huggingface.co/{base_id}" if base_id else None,
        "base_model_revision": config.base_model_revision,
        "architecture": family.model_classes[0],
        "model_class": family.model_class_name,
        "base_class": family.model_classes[0],
        "sparsity": pruning.get("sparsity") or 0.0,
        "params_before": pruning.get("params_before"),
        "params_after": pruning.get("params_after"),
        "flops_before": pruning.get("flops_before"),
        "flops_after": pruning.get("flops_after"),
        "max_rel_error": pruning.get("max_rel_error"),
        "seed": pruning.get("seed"),
        "settings": pruning.get("settings") or {},
        "result_columns": result_columns,
        "result_rows": result_rows,
        "results_note": "Mean squared and absolute error of the point forecast (lower is better).",
        "group_rows": group_rows,
        "image_path": image_path,
        "latency_columns": latency_columns,
        "latency_rows": latency_rows,
        "latency_speedup": latency_speedup,
        "latency_note": latency_note,
        "training_note": training_note,
    }
    if template_path is not None:
        return ModelCard.from_template(card_data, template_path=str(template_path), **kwargs)
    return ModelCard.from_template(card_data, template_str=card_template(), **kwargs)


def save_model_card(model: nn.Module | Any, save_directory: str | os.PathLike, **card_kwargs) -> ModelCard:
    """Writes `README.md` (the card of [`make_model_card`]) and the kept-units heatmap into `save_directory`.

    Args:
        model (`PreTrainedModel` or its config): A pruned model, or its configuration.
        save_directory (`str` or `os.PathLike`): Folder to write to (created if needed), e.g. the checkpoint folder.
        card_kwargs: Passed to [`make_model_card`].

    Returns:
        The card.
    """
    os.makedirs(save_directory, exist_ok=True)
    image = card_kwargs.setdefault("image_path", KEPT_UNITS_IMAGE)
    card = make_model_card(model, **card_kwargs)
    plot_kept_units(_pruned_config(model).pruning["groups"], os.path.join(save_directory, image))
    card.save(os.path.join(save_directory, "README.md"))
    return card


@torch.no_grad()
def measure_latency(
    models: Mapping[str, nn.Module],
    batch_sizes: Sequence[int] = (1,),
    repeats: int = 20,
    warmup: int = 3,
) -> dict[str, dict[str, float]]:
    """Median milliseconds per forecast of each model on its architecture's example inputs.

    Args:
        models (`dict`): Models by label, e.g. `{"base": base_model, "pruned": pruned_model}` (a card shows the
            speed-up for these two labels).
        batch_sizes (`list[int]`, defaults to `(1,)`): Batch sizes to time.
        repeats (`int`, defaults to 20): Timed calls per model and batch size.
        warmup (`int`, defaults to 3): Untimed calls first.

    Returns:
        `{"batch <n>": {label: milliseconds}}`, ready for `make_model_card(latency=...)`.
    """
    out: dict[str, dict[str, float]] = {}
    for batch_size in batch_sizes:
        row = out.setdefault(f"batch {batch_size}", {})
        for label, model in models.items():
            spec = get_spec(model)
            device = next(model.parameters()).device
            inputs = spec.example_inputs(model, batch_size, generator=torch.Generator().manual_seed(0))
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            was_training = model.training
            model.eval()
            times = []
            for i in range(warmup + repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                spec.forecast(model, inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
            model.train(was_training)
            row[label] = 1000.0 * float(np.median(times))
    return out


def describe_device(model: nn.Module | None = None) -> str:
    """A short description of the hardware a model runs on (for `latency_device`)."""
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


_PIPELINE_STAGES = {  # RunResult stage -> table label
    "finetuned": "pruned + finetuned",
    "pruned": "pruned",
    "zero_shot": "base zero-shot",
    "full_finetune": "base full finetune",
}


def _pipeline_results(results: RunResult | Mapping[str, Any]) -> dict[str, Any]:
    """`make_model_card` arguments from a run's [`~hf_tsprune.results.RunResult`] (or its `results.json` dict): per
    stage (`zero_shot`, `pruned`, `finetuned`, `full_finetune`) its test figures on `dataset` at `prediction_length`
    and `context_length` (and optionally `dataset_id`, `latency`)."""
    run = results if isinstance(results, RunResult) else RunResult.from_dict(results)
    stage_figures = run.stages()
    stages = {
        label: [
            ForecastResult(
                dataset=str(run.dataset), horizon=int(run.prediction_length), mse=float(stage.test.mse),
                mae=float(stage.test.mae), split="test", dataset_id=run.dataset_id,
                context_length=None if run.context_length is None else int(run.context_length),
            )
        ]
        for key, label in _PIPELINE_STAGES.items()
        if (stage := stage_figures.get(key)) is not None
    }  # fmt: skip
    main = "pruned + finetuned" if "pruned + finetuned" in stages else "pruned"
    kwargs: dict[str, Any] = {"results": stages.pop(main, None), "results_label": main, "baselines": stages}
    if isinstance(run.latency, Mapping):
        kwargs["latency"] = run.latency
    return kwargs


def write_model_card(
    save_directory: str | os.PathLike, results: RunResult | Mapping[str, Any] | None = None, **card_kwargs
) -> ModelCard | None:
    """Writes `README.md` and the kept-units heatmap beside a saved pruned checkpoint (only its `config.json` is read).

    Args:
        save_directory (`str` or `os.PathLike`):
            The checkpoint folder (written by `save_pruned` or a pruned model's `save_pretrained`).
        results ([`~hf_tsprune.results.RunResult`] or `dict`, *optional*):
            A recipe run's outcome, or its `results.json` dict: per stage (`zero_shot`, `pruned`, `finetuned`,
            `full_finetune`) the test figures (`{"test": {"mse": ..., "mae": ..., "n_windows": ...}}`), beside
            `dataset`, `prediction_length` and `context_length`. The finetuned (else pruned) results become the card's
            own results, the others its comparison columns.
        card_kwargs:
            Passed to [`make_model_card`] (they override what `results` gives).

    Returns:
        The card, or `None` (with a warning) when the folder holds an unpruned checkpoint.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(save_directory)
    if not is_pruned_config(config):
        logger.warning("%s holds an unpruned %s checkpoint: no model card written.", save_directory, config.model_type)
        return None
    kwargs = {**_pipeline_results(results), **card_kwargs} if results else card_kwargs
    return save_model_card(config, save_directory, **kwargs)


def _unreachable(err: BaseException) -> HubUnreachableError:
    return HubUnreachableError(
        f"Could not reach the Hugging Face Hub at {constants.ENDPOINT} ({type(err).__name__}: {err}). Check the "
        "network connection (and HF_ENDPOINT / proxy settings) and retry; nothing was uploaded. To keep the files "
        "locally instead, use `save_pruned(model, folder, ...)` and `save_model_card(model, folder, ...)`."
    )


def _check_online(repo_id: str) -> None:
    if constants.is_offline_mode():
        raise OfflineModeIsEnabled(
            f"Cannot push {repo_id!r} to the Hub: offline mode is enabled (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE to "
            "upload, or save locally with `save_pruned(model, folder, ...)` and `save_model_card(model, folder, ...)`."
            " Nothing was written."
        )


def check_push_access(
    repo_id: str | None, token: str | bool | None = None, *, probe: bool = True, argument: str = "repo_id"
) -> None:
    """Checks what a push needs before any work is done for it: online mode, a valid repository id, a token, and
    (with `probe`) that the Hub answers and accepts the token (one `whoami` request).

    Args:
        repo_id (`str`): The repository to push to (`"user/name"` or `"org/name"`).
        token (`str`, *optional*): The token the push will use; by default the usual places (`HF_TOKEN`,
            `hf auth login`).
        probe (`bool`, defaults to `True`): Also ask the Hub who the token belongs to.
        argument (`str`, defaults to `"repo_id"`): How the caller names the repository id, for messages (the
            recipes: `--hub_model_id`).

    Raises:
        `OfflineModeIsEnabled` (`HF_HUB_OFFLINE=1`), `ValueError` (no or an invalid repository id),
        `LocalTokenNotFoundError` (no token), `HubUnreachableError` (the Hub cannot be reached), `PermissionError`
        (the Hub rejects the token).
    """
    _check_online(repo_id)
    if not repo_id:
        raise ValueError(f"A push needs a repository id: pass {argument} (e.g. your-name/timesfm-pruned-etth1).")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"{repo_id!r} ({argument}) is not a valid Hub repository id ({err}). Use 'your-name/model-name' (letters, "
            "digits, '-', '_' and '.')."
        ) from None
    if token is False or (token is None and get_token() is None):
        raise LocalTokenNotFoundError(
            f"Cannot push {repo_id!r} to the Hub: no Hugging Face token found. Set the HF_TOKEN environment variable "
            "or run `hf auth login` (a token with write access), then retry. Nothing was written."
        )
    if not probe:
        return
    try:
        HfApi(token=token).whoami()
    except _httpx.TransportError as err:
        raise _unreachable(err) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise PermissionError(
                f"Cannot push {repo_id!r} to the Hub: it rejects the token ({status}). Set a valid token with write "
                "access in HF_TOKEN or with `hf auth login`, then retry. Nothing was written."
            ) from None
        raise


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
):
    """Uploads a saved folder (e.g. a pruned checkpoint with its card) to the Hub in one commit.

    Offline mode fails before any request. The card's metadata (`README.md`, if any) is validated by the Hub before
    the repository is created; `HfApi.upload_folder` then uploads the folder as one commit. If that commit fails in a
    repository this call created, the repository is deleted again, so no partial upload is left behind.

    Args:
        folder (`str` or `os.PathLike`): The folder to upload (every file in it).
        repo_id (`str`): `"user/name"` or `"org/name"`.
        private (`bool`, defaults to `False`): Create the repository private (an existing one keeps its visibility).
        token (`str`, *optional*): Hub token; by default the usual places (`HF_TOKEN`, `hf auth login`). Never
            printed or written.
        revision (`str`, *optional*): Branch to commit to.
        commit_message (`str`, *optional*): Defaults to "Upload pruned model with hf_tsprune".
        create_pr (`bool`, defaults to `False`): Open a pull request instead of committing to the branch.

    Returns:
        `huggingface_hub.CommitInfo` of the commit.

    Raises:
        `OfflineModeIsEnabled` when `HF_HUB_OFFLINE=1`, `ValueError` for an invalid `repo_id` and
        `LocalTokenNotFoundError` without a token, all before any request; `HubUnreachableError` (a
        `ConnectionError`) when the Hub cannot be reached; `huggingface_hub` HTTP errors (authentication,
        permissions) as they are.
    """
    check_push_access(repo_id, token, probe=False)
    if not os.path.isdir(folder) or not os.listdir(folder):
        raise ValueError(f"Nothing to upload: {folder} is not a folder with files in it.")
    api = HfApi(token=token)
    readme = os.path.join(folder, "README.md")
    try:
        if os.path.isfile(readme):
            ModelCard.load(readme).validate(repo_type="model")
        try:
            api.create_repo(repo_id, private=private, repo_type="model")
            created = True
        except HfHubHTTPError as err:
            if err.response is None or err.response.status_code != 409:
                raise
            created = False  # it exists already
        try:
            return api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message or "Upload pruned model with "
                "hf_tsprune", revision=revision, create_pr=create_pr, repo_type="model",
            )  # fmt: skip
        except BaseException:
            if created:
                try:
                    api.delete_repo(repo_id, repo_type="model", missing_ok=True)
                except Exception as err:  # report the upload error, not this one
                    logger.warning("Could not delete the empty repository %s (%s).", repo_id, type(err).__name__)
            raise
    except _httpx.TransportError as err:
        raise _unreachable(err) from None


def push_pruned_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    base_model: str | None = None,
    base_model_revision: str | None = None,
    pruning_config: Any = None,
    plan: PruningPlan | None = None,
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
    **card_kwargs,
):
    """Saves a pruned model with its model card and heatmap, and uploads everything to the Hub in one commit.

    The checkpoint (safetensors, config, remote-code files), `README.md` and `kept_units.png` are written to a
    temporary folder (removed afterwards) and uploaded with [`push_folder_to_hub`]: the card's metadata is validated
    by the Hub, the repository is created if needed, and `HfApi.upload_folder` uploads the folder as one commit. If
    that commit fails in a repository this call created, the repository is deleted again.

    Args:
        model (`PreTrainedModel`):
            A shrunk model (converted in place with [`to_pruned_model`]) or an already pruned one.
        repo_id (`str`):
            `"user/name"` or `"org/name"`.
        private (`bool`, defaults to `False`):
            Create the repository private (an existing repository keeps its visibility).
        token (`str`, *optional*):
            Hub token; by default the usual places (`HF_TOKEN`, `hf auth login`). It is never printed or written.
        revision (`str`, *optional*):
            Branch to commit to.
        commit_message (`str`, *optional*):
            Defaults to "Upload pruned <architecture> (<sparsity> of channels pruned)".
        create_pr (`bool`, defaults to `False`):
            Open a pull request instead of committing to the branch.
        base_model, base_model_revision, pruning_config, plan, seed, extra:
            As in [`to_pruned_model`].
        card_kwargs:
            Passed to [`make_model_card`] (`results`, `baselines`, `latency`, `latency_device`, `datasets`,
            `license`, `tags`, `model_name`, `template_path`, `training_note`).

    Returns:
        `huggingface_hub.CommitInfo` of the commit.

    Raises:
        Before anything is saved or rendered ([`check_push_access`]): `OfflineModeIsEnabled` when `HF_HUB_OFFLINE=1`,
        `ValueError` for an invalid `repo_id`, `LocalTokenNotFoundError` without a token, `HubUnreachableError` (a
        `ConnectionError`) when the Hub cannot be reached and `PermissionError` when it rejects the token.
    """
    check_push_access(repo_id, token)
    with tempfile.TemporaryDirectory(prefix="hf_tsprune-push-") as folder:
        save_pruned(
            model, folder, base_model=base_model, base_model_revision=base_model_revision,
            pruning_config=pruning_config, plan=plan, seed=seed, extra=extra,
        )  # fmt: skip
        save_model_card(model, folder, repo_id=repo_id, token=token, **card_kwargs)
        sparsity = (model.config.pruning or {}).get("sparsity", 0.0)
        message = commit_message or f"Upload pruned {model.config.base_model_type} ({sparsity:.0%} of channels pruned)"
        return push_folder_to_hub(
            folder, repo_id, private=private, token=token, revision=revision, commit_message=message,
            create_pr=create_pr,
        )  # fmt: skip
