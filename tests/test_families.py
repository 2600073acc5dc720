"""Chronos, Chronos-Bolt and TTM: exact shrink (tiny and released layouts), T5's shared position bias, save/load,
forecasting adapters and the prune -> shrink -> finetune path with each family's own loss.

Chronos-Bolt needs `chronos-forecasting`, TTM `granite-tsfm`; their tests are skipped when the package is missing.
"""

import json

import pytest
import torch
from families import DEFAULT, TINY, build, require
from test_surgery import check_exact_random_shrink, masked_vs_shrunk, params, random_masks
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from hf_tsprune import PruningCallback, PruningConfig, get_spec, install_masks, masked_groups, set_masks, shrink
from hf_tsprune.adapters import family_of, get_adapter
from hf_tsprune.checkpoint_code import KEPT_HEADS
from hf_tsprune.masks import get_masks
from hf_tsprune.surgery import EmptyAttention, apply_layout
from hf_tsprune.training import ForecastCollator, training_inputs, training_label_names

FAMILY = {"chronos": "chronos", "chronos_gated": "chronos", "chronos_bolt": "chronos_bolt", "ttm": "ttm"}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: with two, every op of these small models waits on the other core, which on a busy 2-core
    machine made this file 5-100x slower (measured: released Chronos layout 34 s -> 4 s, tiny TTM step 1.7 s ->
    12 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def forecast(model, inputs):
    with torch.no_grad():
        return get_spec(model).forecast(model, inputs)


def round_trip(model, name: str, default: bool = False):
    """A fresh model given the shrunk one's layout (`apply_layout`) loads its state dict and forecasts the same."""
    layout = json.loads(json.dumps(model.config.hf_tsprune_layout))  # as stored in config.json
    fresh = apply_layout(build(name, default=default, seed=5), layout)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    fresh.load_state_dict(model.state_dict())
    inputs = get_spec(model).example_inputs(model, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(forecast(model, inputs), forecast(fresh.eval(), inputs))
    return fresh


# -- exactness ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("name", sorted(TINY))
def test_exact_shrink_tiny(name, fraction):
    model = build(name)
    check_exact_random_shrink(model, fraction)
    if fraction == 0.5:
        round_trip(model, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DEFAULT))
def test_exact_shrink_and_round_trip_released_layout(name):
    model = build(name, default=True)
    install_masks(model)
    plan, rel, shrunk = masked_vs_shrunk(model, random_masks(model, 0.5), batch_size=1, count_model_flops=False)
    assert rel < 1e-5
    assert params(model) == plan.params_after < 0.8 * plan.params_before
    assert torch.isfinite(shrunk).all()
    round_trip(model, name, default=True)


def test_released_layout_sizes():
    """The default layouts have the released parameter counts (random weights)."""
    sizes = {name: params(build(name, default=True)) for name in ("chronos", "chronos_bolt", "ttm")}
    assert sizes == {"chronos": 46_154_240, "chronos_bolt": 47_718_016, "ttm": 805_280}


# -- T5: per-layer heads under the shared relative position bias ------------------------------------------------


def t5_head_masks(model) -> dict:
    """Different heads per layer: the first encoder layer (which owns the relative bias) loses heads 1 and 3, the
    second head 0 and one value channel of head 2; the first decoder self-attention loses every head; the second
    cross-attention loses head 2; and one feed-forward block goes entirely."""
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    heads = {name: mask.view(4, 4) for name, mask in masks.items() if mask.numel() == 16}
    heads["encoder.block.0.layer.0.SelfAttention"][[1, 3]] = False
    heads["encoder.block.1.layer.0.SelfAttention"][0] = False
    heads["encoder.block.1.layer.0.SelfAttention"][2, 1] = False
    heads["decoder.block.0.layer.0.SelfAttention"][:] = False
    heads["decoder.block.1.layer.1.EncDecAttention"][2] = False
    masks["decoder.block.1.layer.2.DenseReluDense"][:] = False
    return masks


@pytest.mark.parametrize("name", ["chronos", "chronos_gated", "chronos_bolt"])
def test_t5_heads_differ_per_layer_under_the_shared_position_bias(name):
    model = build(name)
    install_masks(model)
    with pytest.raises(ValueError, match="allow_empty_blocks=True"):
        shrink(model, t5_head_masks(model))
    plan, rel, _ = masked_vs_shrunk(model, t5_head_masks(model), allow_empty_blocks=True)
    assert rel < 1e-5
    stack = model.encoder.block
    first, second = stack[0].layer[0].SelfAttention, stack[1].layer[0].SelfAttention
    assert first.n_heads == 2 and first.inner_dim == 8 and getattr(first, KEPT_HEADS).tolist() == [0, 2]
    assert first.relative_attention_bias.weight.shape == (8, 4)  # the bias stays over the original heads
    assert second.n_heads == 3 and getattr(second, KEPT_HEADS).tolist() == [1, 2, 3] and second.v_head_dim == 4
    empty = model.decoder.block[0].layer[0].SelfAttention  # kept in place, no head: its cache still advances
    assert empty.n_heads == 0 and empty.q.out_features == 0 and empty.has_relative_attention_bias
    assert type(empty).__name__ == "T5Attention"
    layout = model.config.hf_tsprune_layout
    assert layout["encoder.block.0.layer.0.SelfAttention"]["kept_heads"] == [0, 2]
    assert layout["decoder.block.0.layer.0.SelfAttention"] == {
        "kind": "attention", "num_kv_heads": 0, "v_head_dim": 0, "kept_heads": []
    }  # fmt: skip
    round_trip(model, name)


def test_t5_second_shrink_keeps_original_head_indices():
    model = build("chronos")
    install_masks(model)
    shrink(model, t5_head_masks(model), allow_empty_blocks=True)
    install_masks(model)  # prune the shrunk model again: the second layer's heads are now [1, 2, 3]
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["encoder.block.1.layer.0.SelfAttention"].view(3, 4)[1] = False  # current head 1 = original head 2
    plan, rel, _ = masked_vs_shrunk(model, masks, allow_empty_blocks=True)
    assert rel < 1e-5
    assert getattr(model.encoder.block[1].layer[0].SelfAttention, KEPT_HEADS).tolist() == [1, 3]
    assert model.config.hf_tsprune_layout["encoder.block.1.layer.0.SelfAttention"]["kept_heads"] == [1, 3]
    round_trip(model, "chronos")


def test_chronos_generation_matches_after_shrink():
    """Greedy decoding goes through the key/value cache (per-layer head counts, an empty block, cross-attention)."""
    model = build("chronos")
    install_masks(model)
    set_masks(model, t5_head_masks(model))
    inputs = get_spec(model).example_inputs(model, 2, generator=torch.Generator().manual_seed(1))
    generate = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=6,
                    min_new_tokens=6, do_sample=False, eos_token_id=1, pad_token_id=0)  # fmt: skip
    with torch.no_grad():
        masked = model.generate(**generate, output_logits=True, return_dict_in_generate=True)
        shrink(model, allow_empty_blocks=True)
        shrunk = model.generate(**generate, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(masked.sequences, shrunk.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(masked.logits, shrunk.logits)) < 1e-5


# -- adapters ---------------------------------------------------------------------------------------------------------

CONTEXT = {"chronos": 32, "chronos_gated": 32, "chronos_bolt": 64, "ttm": 32}
CHANNELS = {"chronos": 1, "chronos_gated": 1, "chronos_bolt": 1, "ttm": 2}
HORIZON = 8


def test_family_of_tells_the_t5_families_apart():
    require("chronos_bolt", adapters=True)
    chronos, bolt = build("chronos"), build("chronos_bolt")
    assert chronos.config.model_type == bolt.config.model_type == "t5"
    assert (family_of(chronos), family_of(bolt), family_of(bolt.config)) == ("chronos", "chronos_bolt", "chronos_bolt")
    assert family_of("t5") == "chronos" and family_of("tinytimemixer") == "ttm" and family_of("patchtst") == "patchtst"
    assert get_adapter(bolt).family == "chronos_bolt" and get_adapter(chronos.config).family == "chronos"
    assert training_label_names(chronos) == ["labels"] and training_label_names(bolt) == ["target"]


@pytest.mark.parametrize("name", ["chronos", "chronos_bolt", "ttm"])
def test_adapter_predicts_native_horizon_before_and_after_shrink(name):
    require(name, adapters=True)
    model = build(name)
    adapter = get_adapter(model)
    assert adapter.family == FAMILY[name]
    assert adapter.native_horizon(model) == HORIZON and adapter.max_context(model) == CONTEXT[name]
    past = torch.randn(3, CONTEXT[name] - 4, CHANNELS[name]) + 5.0  # shorter than the context: fitted to it
    observed = torch.ones_like(past)
    observed[0, :3] = 0
    torch.manual_seed(0)
    dense = adapter.predict(model, past, observed)
    assert dense.mean.shape == (3, HORIZON, CHANNELS[name]) and torch.isfinite(dense.mean).all()
    if dense.quantiles is not None:
        assert dense.quantiles.shape == (3, HORIZON, CHANNELS[name], len(dense.quantile_levels))
    install_masks(model)
    shrink(model, random_masks(model, 0.4, seed=1))
    torch.manual_seed(0)
    pruned = adapter.predict(model, past, observed)
    assert pruned.mean.shape == dense.mean.shape and torch.isfinite(pruned.mean).all()


def test_training_inputs_mark_missing_targets():
    require("chronos", adapters=True)
    chronos = build("chronos")
    past, future = torch.rand(2, 32) + 1, torch.rand(2, 8) + 1
    future_observed = torch.ones(2, 8)
    future_observed[1, -3:] = 0
    features = [
        {"past_values": past[i], "future_values": future[i], "future_observed_mask": future_observed[i]}
        for i in range(2)
    ]
    inputs = training_inputs(chronos, features)
    assert inputs["input_ids"].shape == (2, 33) and inputs["labels"].shape == (2, 9)  # EOS appended
    assert (inputs["labels"][1, 5:8] == -100).all() and (inputs["labels"][:, -1] == 1).all()
    assert chronos(**inputs).loss.isfinite()
    require("ttm")
    ttm = build("ttm")
    short = [{"past_values": torch.randn(32, 2), "future_values": torch.randn(5, 2)} for _ in range(2)]
    inputs = training_inputs(ttm, short)  # shorter target: padded to the horizon, masked out of the MSE
    assert inputs["future_values"].shape == (2, 8, 2) and inputs["future_observed_mask"][:, 5:].eq(0).all()
    assert ttm(**inputs).loss.isfinite()
    with pytest.raises(ValueError, match="channel_independent=True"):
        training_inputs(chronos, short)


# -- prune -> shrink -> finetune --------------------------------------------------------------------------------


class Windows(Dataset):
    """Noisy sine windows: `past_values`/`future_values` `(T,)` (one channel) or `(T, C)`, with observed masks."""

    def __init__(self, n: int, context: int, channels: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        t = torch.arange(context + HORIZON).float()
        phase = torch.rand(n, 1, channels, generator=g) * 6.28
        series = 3 + torch.sin(t[None, :, None] / 3 + phase) + 0.1 * torch.randn(n, t.numel(), channels, generator=g)
        self.x = series[..., 0] if channels == 1 else series
        self.context = context

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        past, future = self.x[i, : self.context], self.x[i, self.context :]
        return {
            "past_values": past,
            "future_values": future,
            "past_observed_mask": torch.ones_like(past),
            "future_observed_mask": torch.ones_like(future),
        }


def check_prune_shrink_finetune(model, train, validation, folder):
    """The prune run (Trainer + PruningCallback with the family's own loss) removes about 30% of the channels with
    finite scores and no mask gradient left, the shrink is exact, and a finetune of the shrunk model trains (finite
    loss, weights move, parameter count kept). Returns the plan."""
    install_masks(model)
    common = dict(per_device_train_batch_size=8, label_names=training_label_names(model), report_to=[],
                  save_strategy="no", use_cpu=True, disable_tqdm=True, remove_unused_columns=False)  # fmt: skip
    # min_sparsity: the mechanics under test need a pruned set (validation alone may keep an earlier, lighter one)
    callback = PruningCallback(PruningConfig(ratio_per_epoch=0.3, ema=0.5, min_sparsity=0.25))
    prune_args = TrainingArguments(str(folder / "prune"), num_train_epochs=1, eval_strategy="steps", eval_steps=2,
                                   max_grad_norm=0.0, learning_rate=1e-2, **common)  # fmt: skip
    trainer = Trainer(
        model=model,
        args=prune_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=ForecastCollator(model),
        callbacks=[callback],
    )
    trainer.train()
    assert callback.history and all(torch.isfinite(torch.tensor(h["eval_loss"])) for h in callback.history)
    assert 0.2 < callback.scorer.sparsity <= 0.32
    assert all(g.mask.grad is None for g in masked_groups(model))
    plan = shrink(model)
    assert plan.max_rel_error < 1e-5 and params(model) == plan.params_after < plan.params_before
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune = Trainer(
        model=model.train(),
        args=TrainingArguments(str(folder / "finetune"), max_steps=2, learning_rate=1e-3, **common),
        train_dataset=train,
        data_collator=ForecastCollator(model),
    )
    result = finetune.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert params(model) == plan.params_after
    return plan


@pytest.mark.parametrize("name", ["chronos", "chronos_bolt", "ttm"])
def test_prune_shrink_finetune(tmp_path, name):
    require(name, adapters=True)
    train = Windows(32, CONTEXT[name], CHANNELS[name], 0)
    validation = Windows(16, CONTEXT[name], CHANNELS[name], 1)
    check_prune_shrink_finetune(build(name), train, validation, tmp_path)


# -- save / load ------------------------------------------------------------------------------------------------------


def shrunk_with_every_change(name: str):
    """A tiny model with removed heads, cut value channels, an empty attention block and a zero-width MLP."""
    model = build(name)
    install_masks(model)
    masks = t5_head_masks(model) if name.startswith("chronos") else random_masks(model, 0.5, seed=4)
    if name == "ttm":
        masks[next(iter(m for m in masks if m.endswith("mlp")))][:] = False
        masks[next(iter(m for m in masks if m.endswith("self_attn_layer")))][:] = False
    plan = shrink(model, masks, allow_empty_blocks=True)
    return model.eval(), plan


def test_ttm_attention_block_without_heads_is_exact():
    """TTM's patch-mixer attention returns three values; its `EmptyAttention` stand-in must too."""
    require("ttm")
    model = build("ttm")
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks[next(iter(m for m in masks if m.endswith("self_attn_layer")))][:] = False
    plan, rel, _ = masked_vs_shrunk(model, masks, allow_empty_blocks=True)
    assert rel < 1e-5
    empty = [m for m in model.modules() if isinstance(m, EmptyAttention)]
    assert len(empty) == 1 and empty[0].num_outputs == 3


@pytest.mark.parametrize("name", ["chronos", "chronos_bolt", "ttm"])
def test_save_pretrained_files_round_trip(tmp_path, name):
    """`save_pretrained` files (config.json with the layout, safetensors) rebuild the shrunk model exactly: the base
    model from the saved config, `apply_layout`, then the saved weights."""
    from safetensors.torch import load_file

    model, _ = shrunk_with_every_change(name)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["hf_tsprune_layout"] == json.loads(json.dumps(model.config.hf_tsprune_layout))
    config = type(model.config).from_pretrained(tmp_path)
    layout = config.hf_tsprune_layout
    del config.hf_tsprune_layout
    fresh = apply_layout(type(model)(config), layout).eval()
    missing, unexpected = fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    assert not unexpected and set(missing) <= {
        "lm_head.weight",
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
    }  # fmt: skip  (tied to `shared`)
    if missing:
        fresh.tie_weights()
    inputs = get_spec(model).example_inputs(model, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(forecast(model, inputs), forecast(fresh, inputs))


@pytest.mark.parametrize("name", ["chronos", "chronos_bolt", "ttm"])
def test_save_pruned_and_from_pretrained(tmp_path, name):
    """The pruned-checkpoint API of `hf_tsprune.modeling` (skipped while it has no pruned class for the family)."""
    from transformers import AutoModelForTimeSeriesPrediction

    from hf_tsprune import save_pruned

    model, plan = shrunk_with_every_change(name)
    inputs = get_spec(model).example_inputs(model, 2, generator=torch.Generator().manual_seed(3))
    expected = forecast(model, inputs)
    try:
        save_pruned(model, tmp_path, base_model=f"org/{name}-tiny", plan=plan)
    except TypeError as error:
        pytest.skip(f"hf_tsprune.modeling has no pruned class for {name} yet: {error}")
    loaded = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path).eval()
    assert torch.equal(forecast(loaded, inputs), expected)
    assert loaded.config.hf_tsprune_layout == json.loads(json.dumps(model.config.hf_tsprune_layout))


@pytest.mark.parametrize("name", ["chronos", "chronos_bolt"])
def test_chronos_pipelines_run_pruned_checkpoints(tmp_path, name):
    """The `chronos` package's pipelines forecast with a pruned checkpoint exactly as with the shrunk model."""
    require(name, adapters=True)
    from chronos import BaseChronosPipeline

    from hf_tsprune import save_pruned
    from hf_tsprune.evaluation import load_chronos_pipeline

    model, plan = shrunk_with_every_change(name)
    save_pruned(model, tmp_path, base_model=f"org/{name}-tiny", plan=plan)
    context = torch.randn(2, CONTEXT[name], generator=torch.Generator().manual_seed(5))

    def predict(pipeline):
        torch.manual_seed(0)  # Chronos samples its paths
        return pipeline.predict_quantiles(context, prediction_length=8)[1]

    expected = predict(load_chronos_pipeline(model))
    assert torch.equal(predict(load_chronos_pipeline(tmp_path)), expected)
    if name == "chronos":  # registered with AutoModelForSeq2SeqLM, which ChronosPipeline loads through
        assert torch.equal(predict(BaseChronosPipeline.from_pretrained(tmp_path)), expected)
    else:  # chronos builds the dense class named in its own module: it must fail loudly, never load silently
        assert json.loads((tmp_path / "config.json").read_text())["chronos_pipeline_class"] == "ChronosBoltPipeline"
        with pytest.raises(Exception, match="mismatched_sizes"):
            BaseChronosPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Chronos or Chronos-Bolt"):
        load_chronos_pipeline(build("ttm"))


def test_training_inputs_name_the_supported_families_for_an_unknown_model():
    with pytest.raises(ValueError, match="No training inputs for Linear .*supported: .*chronos_bolt"):
        ForecastCollator(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="No training inputs for Linear"):
        training_inputs(torch.nn.Linear(2, 2), [])
