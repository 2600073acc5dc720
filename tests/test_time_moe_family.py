"""The Time-MoE family (`hf_tsprune.models.time_moe`, `hf_tsprune/families/time_moe.py`): exact shrink with rotary
query/key pairs and removed experts (tiny layout, dense blocks, and the released TimeMoE-50M layout), expert removal
that keeps the router whole (removing experts no time point chose changes no forecast; cutting router rows would),
usage and Taylor expert removal through `expert_stage`, the auxiliary loss off in the prune run and on in finetuning,
the forecast and training inputs, prune -> shrink -> finetune -> save -> fresh-process reload (after `import
hf_tsprune`, and with transformers alone through remote code), the three recipes and the speed rows.

Released layouts: `tests/test_time_moe.py` (`TIME_MOE_50M`, `TIME_MOE_200M`).
"""

import copy
import json
import math

import pytest
import torch
from own_models import (
    check_exact_rotary_shrink,
    check_fresh_process_reloads,
    check_module_travels,
    check_recipes,
    check_speed_row,
    data_flags,
    forecast,
    make_task,
    random_model,
    released_row_model,
    speed_module,
)
from own_models import round_trip as layout_round_trip
from test_families import Windows, check_prune_shrink_finetune
from test_surgery import masked_vs_shrunk, params, random_masks
from test_time_moe import TIME_MOE_50M, TIME_MOE_200M
from torch import nn
from torch.utils.data import DataLoader
from transformers.initialization import no_init_weights

from hf_tsprune import install_masks, save_pruned, set_masks, shrink
from hf_tsprune.adapters import get_adapter
from hf_tsprune.family import get_family
from hf_tsprune.masks import describe_expert_blocks
from hf_tsprune.models.time_moe import TimeMoeConfig, TimeMoeForPrediction
from hf_tsprune.pipeline import (
    PruneFinetuneArguments,
    expert_stage,
    finetune_stage,
    load_data,
    load_model,
    parse_arguments,
    prune_stage,
)
from hf_tsprune.scoring import count_expert_tokens, expert_usage, experts_to_keep
from hf_tsprune.surgery import apply_layout, remove_experts
from hf_tsprune.training import ForecastCollator, training_label_names, training_target_length

TINY = dict(
    input_size=1, hidden_size=32, intermediate_size=64, horizon_lengths=[1, 8, 32], num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, max_position_embeddings=1024,
)  # fmt: skip
DENSE = dict(TINY, use_dense=True, apply_aux_loss=False)
BLOCKS = ("model.layers.0.ffn_layer", "model.layers.1.ffn_layer")


def build(settings: dict = TINY, seed: int = 0, std: float | None = 0.2) -> TimeMoeForPrediction:
    """A Time-MoE with random weights (std 0.2 in the tiny one, so that every unit matters; `None`: as
    initialised)."""
    return random_model(TimeMoeForPrediction, TimeMoeConfig, settings, seed, std)


def round_trip(model, settings: dict = TINY):
    """A fresh model given the layout (as stored in config.json) loads the shrunk state dict strictly (kept-experts
    and rotary-pairs buffers included) and forecasts the same."""
    layout_round_trip(model, build(settings, seed=5, std=None))


def window_batches(model, seeds=(0, 1), n: int = 16, context: int = 40) -> list[dict]:
    """Training inputs of noisy sine windows (train and validation alike) through the family's collator."""
    return [
        batch
        for seed in seeds
        for batch in DataLoader(Windows(n, context, 1, seed), batch_size=8, collate_fn=ForecastCollator(model))
    ]


def random_expert_keep(model, seed: int, drop: int = 1) -> dict[str, torch.Tensor]:
    """`drop` random experts of every block removed (used or not)."""
    generator = torch.Generator().manual_seed(seed)
    keep = {}
    for block in describe_expert_blocks(model):
        mask = torch.ones(block.num_experts, dtype=torch.bool)
        mask[torch.randperm(block.num_experts, generator=generator)[:drop]] = False
        keep[block.name] = mask
    return keep


def test_spec_groups_and_family():
    model = build()
    family = get_family(model)
    assert family.name == "time_moe" and get_family("time_moe") is family and family.pruning_settings is not None
    names = [g.name for g in install_masks(model)]
    experts = [f"model.layers.{i}.ffn_layer.{e}" for i in (0, 1) for e in ("experts.0", "experts.1", "experts.2",
                                                                          "experts.3", "shared_expert")]  # fmt: skip
    assert names == [
        "model.layers.0.self_attn", "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn",
        "model.layers.1.self_attn.q_proj", *experts,
    ]  # fmt: skip
    assert [(b.name, b.num_experts, b.top_k) for b in describe_expert_blocks(model)] == [(n, 4, 2) for n in BLOCKS]
    assert training_label_names(model) == ["labels"]
    assert training_target_length(model, 96) == 96  # one rollout covers the long-term benchmarks' horizons
    dense = build(DENSE)
    assert [g.name for g in install_masks(dense)][-2:] == ["model.layers.0.ffn_layer", "model.layers.1.ffn_layer"]
    assert describe_expert_blocks(dense) == []


# -- exactness ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_exact_shrink_with_rotary_pairs_and_removed_experts(fraction):
    """One random expert of every block removed (kept experts renumbered, router whole), then `fraction` of every
    group's channels and rotary pairs at random: the masked and the shrunk model agree, the plan's parameter count is
    the model's, and the layout rebuilds it."""
    model = build()
    seed = int(fraction * 10)
    keep = random_expert_keep(model, seed)
    removal = remove_experts(model, keep)
    assert params(model) == removal.params_after < removal.params_before
    for name, mask in keep.items():
        block = model.get_submodule(name)
        assert block.kept_experts.tolist() == torch.nonzero(mask).flatten().tolist()
        assert block.gate.out_features == 4 and len(block.experts) == block.num_experts == 3  # the router stays whole
    install_masks(model)
    check_exact_rotary_shrink(model, random_masks(model, fraction, seed=seed), full_head_dim=8)
    layout = model.config.hf_tsprune_layout
    assert list(layout)[:2] == list(BLOCKS) and layout[BLOCKS[0]]["num_experts"] == 3
    round_trip(model)


def test_exact_shrink_dense_blocks():
    model = build(DENSE)
    install_masks(model)
    plan, rel, _ = masked_vs_shrunk(model, random_masks(model, 0.5, seed=4))
    assert rel < 1e-5 and params(model) == plan.params_after < plan.params_before
    assert model.model.layers[0].ffn_layer.down_proj.in_features == 32
    round_trip(model, DENSE)


@pytest.mark.slow
def test_exact_shrink_released_50m_layout():
    """TimeMoE-50M's layout (random weights), batch 1 and a context of 64 points: two experts of every layer and half
    of the channels and rotary pairs at random."""
    with no_init_weights():
        model = TimeMoeForPrediction(TimeMoeConfig(**TIME_MOE_50M)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1.0 + 0.1 * noise if "norm" in name else 0.02 * noise)
    assert params(model) == 113_352_192
    inputs = {"input_ids": torch.randn(1, 64, generator=generator)}
    removal = remove_experts(model, random_expert_keep(model, 0, drop=2), example_inputs=inputs)
    install_masks(model)
    set_masks(model, random_masks(model, 0.5, seed=5))
    masked = forecast(model, inputs)
    plan = shrink(model, example_inputs=inputs, count_model_flops=False)
    shrunk = forecast(model, inputs)
    rel = float((shrunk - masked).abs().max() / masked.abs().max())
    assert rel < 1e-5 and plan.max_rel_error < 1e-5 and torch.isfinite(shrunk).all(), rel
    assert params(model) == plan.params_after < 0.6 * removal.params_before
    layout = json.loads(json.dumps(model.config.hf_tsprune_layout))
    with torch.device("meta"):
        fresh = apply_layout(TimeMoeForPrediction(TimeMoeConfig(**TIME_MOE_50M)), layout)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


# -- expert removal -----------------------------------------------------------------------------------------------


def test_removing_unused_experts_changes_no_forecast_and_cutting_router_rows_would():
    model = build()
    batches = window_batches(model)
    past = torch.stack([Windows(16, 40, 1, 0)[i]["past_values"] for i in range(4)])[..., None]
    adapter = get_adapter(model)
    before = [forecast(model, {"input_ids": b["input_ids"]}) for b in batches]
    before_rollout = adapter.predict(model, past).mean
    tokens = count_expert_tokens(model, batches)
    keep = {name: experts_to_keep(expert_usage(t, 2), 0.0, 2) for name, t in tokens.items()}
    assert all(0 < int(k.sum()) < 4 for k in keep.values())  # some experts are idle on these windows
    rows_cut, used_removed = copy.deepcopy(model), copy.deepcopy(model)
    plan = remove_experts(model, keep, example_inputs={"input_ids": batches[0]["input_ids"]})
    assert plan.max_rel_error == 0.0 and params(model) == plan.params_after < plan.params_before
    after = [forecast(model, {"input_ids": b["input_ids"]}) for b in batches]
    assert all(torch.equal(a, b) for a, b in zip(after, before))  # bit for bit, on every window counted
    assert torch.equal(adapter.predict(model, past).mean, before_rollout)  # and the adapter's rollout
    # The "the router loses their rows": exact for a softmax over the top-k, not for Time-MoE's softmax over
    # every row, whose denominator shrinks with the rows
    for name, mask in keep.items():
        block = rows_cut.get_submodule(name)
        kept = torch.nonzero(mask).flatten()
        block.experts = nn.ModuleList([block.experts[i] for i in kept.tolist()])
        gate = nn.Linear(block.gate.in_features, kept.numel(), bias=False)
        gate.weight.data = block.gate.weight.data[kept].clone()
        block.gate = gate
    cut = forecast(rows_cut, {"input_ids": batches[0]["input_ids"]})
    assert float((cut - before[0]).abs().max() / before[0].abs().max()) > 1e-4
    # removing a used expert changes the forecast (its time points go to the next-best kept expert)
    name, busiest = BLOCKS[0], int(tokens[BLOCKS[0]].argmax())
    drop = torch.ones(4, dtype=torch.bool)
    drop[busiest] = False
    remove_experts(used_removed, {name: drop})
    assert not torch.equal(forecast(used_removed, {"input_ids": batches[0]["input_ids"]}), before[0])
    assert used_removed.get_submodule(name).kept_experts.tolist() == [e for e in range(4) if e != busiest]


# -- forecasting and training inputs --------------------------------------------------------------------------------


def test_adapter_normalises_and_rolls_out_with_generate():
    model = build(std=None)
    adapter = get_adapter(model)
    assert adapter.native_horizon(model) == 720 and adapter.max_context(model) == 1024
    past = torch.randn(3, 40, 2, generator=torch.Generator().manual_seed(0)) * 5 + 7
    result = adapter.predict(model, past)
    assert result.mean.shape == (3, 720, 2)
    series = past[..., 1]
    mean, std = series.mean(1, keepdim=True), series.std(1, keepdim=True)
    direct = model.generate((series - mean) / std, max_new_tokens=720)[:, -720:] * std + mean
    torch.testing.assert_close(result.mean[..., 1], direct, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(adapter.predict(model, torch.ones(1, 16, 1)).mean).all()  # a constant series
    gaps = past[:1, :, :1].clone()
    gaps[0, :5] = float("nan")  # unobserved points: masked as keys, the rest normalised over the observed ones
    observed = adapter.predict(model, gaps).mean
    torch.testing.assert_close(observed, adapter.predict(model, past[:1, 5:, :1]).mean, rtol=1e-4, atol=1e-4)


def test_training_inputs_give_the_multi_horizon_loss():
    model = build().train()
    train = Windows(4, 24, 1, 0)
    batch = ForecastCollator(model)([train[i] for i in range(4)])
    assert set(batch) == {"input_ids", "labels", "loss_masks"} and batch["input_ids"].shape == (4, 31)
    mean, std = train.x[:, :24].mean(1, keepdim=True), train.x[:, :24].std(1, keepdim=True)
    series = (train.x - mean) / std
    torch.testing.assert_close(batch["input_ids"], series[:, :-1])
    torch.testing.assert_close(batch["labels"], series[:, 1:])
    outputs = model(**batch)
    with torch.no_grad():  # by hand: every point's every head against the points after it (none beyond the window)
        hidden = model.model(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
        total = 0
        for head, horizon in zip(model.lm_heads, (1, 8, 32)):
            targets = torch.nn.functional.pad(batch["labels"], (0, horizon - 1)).unfold(-1, horizon, 1)
            valid = torch.nn.functional.pad(torch.ones(4, 31), (0, horizon - 1)).unfold(-1, horizon, 1)
            losses = torch.nn.functional.huber_loss(head(hidden), targets, reduction="none", delta=2.0)
            total = total + (losses * valid).sum() / valid.sum()
    torch.testing.assert_close(outputs.loss, total / 3 + 0.02 * outputs.aux_loss)
    missing = [dict(train[i]) for i in range(2)]
    missing[0]["past_observed_mask"] = torch.ones(24)
    missing[0]["past_observed_mask"][:3] = 0
    batch = ForecastCollator(model)(missing)
    assert batch["attention_mask"][0, :3].tolist() == [0, 0, 0] and batch["loss_masks"][0, :2].tolist() == [0, 0]
    assert batch["position_ids"][0, 3:6].tolist() == [0, 1, 2] and torch.isfinite(model(**batch).loss)


# -- the pipeline's stages ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("time_moe_task"), build(seed=3, std=None))


def stage_arguments(task, tmp_path, *extra) -> PruneFinetuneArguments:
    return parse_arguments(
        PruneFinetuneArguments,
        ["--model_name_or_path", str(task / "model"), "--output_dir", str(tmp_path), "--per_device_train_batch_size",
         "32", "--per_device_eval_batch_size", "64", "--disable_tqdm", "true", "--use_cpu", "true", *data_flags(task),
         *extra],
    )  # fmt: skip


def validation_forecasts(model, data) -> torch.Tensor:
    past = torch.stack([torch.as_tensor(data.validation[i]["past_values"]) for i in range(8)]).float()
    return get_adapter(model).predict(model, past.reshape(8, -1, 1)).mean


@pytest.mark.parametrize("score", ["usage", "taylor"])
def test_expert_stage(task, tmp_path, score):
    """Usage (threshold 0: the experts no time point of the train and validation windows chose) and Taylor (threshold
    -1: the top-k per layer, experts idle in every step unscored) removal through `expert_stage`; the Taylor pass runs
    without the auxiliary loss, which is on again afterwards."""
    model = load_model(str(task / "model"))
    threshold = "0" if score == "usage" else "-1"
    args = stage_arguments(task, tmp_path, "--expert_threshold", threshold, "--expert_score", score)
    data = load_data(args, model)
    before = validation_forecasts(model, data)
    aux = []
    hook = model.register_forward_hook(lambda module, inputs, output: aux.append(output.aux_loss is not None))
    result = expert_stage(model, data, args)
    hook.remove()
    assert model.apply_aux_loss and aux and not any(aux)  # (the token counts and the Taylor pass alike)
    for name in BLOCKS:
        tokens, kept = torch.tensor(result.tokens[name]), result.kept_experts[name]
        assert model.get_submodule(name).kept_experts.tolist() == kept
        if score == "usage":
            assert kept == torch.nonzero(tokens).flatten().tolist() and len(kept) < 4
        else:
            assert len(kept) == 2
            scores = result.taylor_scores[name]
            assert all((s is None) == (int(t) == 0) for s, t in zip(scores, tokens))  # idle: unscored, not zero
            assert sorted(kept) == sorted(sorted(range(4), key=lambda e: -(scores[e] or -math.inf))[:2])
    if score == "usage":  # only experts unused on these windows went: their forecasts are unchanged
        assert torch.equal(validation_forecasts(model, data), before)


def test_aux_loss_off_in_the_prune_run_and_on_in_finetuning(task, tmp_path):
    model = load_model(str(task / "model"))
    args = stage_arguments(task, tmp_path, "--eval_steps", "2", "--finetune_epochs", "1")
    data = load_data(args, model)
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append((module.training, output.aux_loss)))
    pruned = prune_stage(model, data, args, str(tmp_path / "prune_run"))
    prune_calls, calls[:] = list(calls), []
    assert pruned.plan.max_rel_error < 1e-5 and model.apply_aux_loss
    assert any(training for training, _ in prune_calls) and all(aux is None for _, aux in prune_calls)
    model, _ = finetune_stage(model, data, args, str(tmp_path / "finetune_run"))
    training = [aux for is_training, aux in calls if is_training]
    assert training and all(aux is not None and torch.isfinite(aux) for aux in training)


# -- prune, shrink, finetune, save, reload ------------------------------------------------------------------------

RUN = """
series = inputs["input_ids"]
with torch.no_grad():
    logits = model.eval()(input_ids=series, use_cache=False, max_horizon_length=32).logits
outputs = {"logits": logits, "rollout": model.generate(series, max_new_tokens=40)}
"""
REPORT = 'report["kept_experts"] = model.model.layers[1].ffn_layer.kept_experts.tolist()'


def test_experts_channels_finetune_experts_save_and_reload_in_a_fresh_process(tmp_path):
    """Unused experts go first, then the prune run prunes channels and rotary pairs, the shrunk model is finetuned,
    one more expert goes (kept experts keep their original indices) and the checkpoint reloads strictly, forecasting
    the same, after `import hf_tsprune` and with transformers alone."""
    model = build(seed=1, std=0.1)
    train, validation = Windows(32, 24, 1, 0), Windows(16, 24, 1, 1)
    tokens = count_expert_tokens(model, window_batches(model, n=32, context=24))
    remove_experts(model, {name: experts_to_keep(expert_usage(t, 2), 0.0, 2) for name, t in tokens.items()})
    plan = check_prune_shrink_finetune(model, train, validation, tmp_path)
    block = model.get_submodule(BLOCKS[1])
    assert block.kept_experts.tolist() == [0, 1, 2]  # (on these windows layer 1 does not use expert 3)
    remove_experts(model.eval(), {BLOCKS[1]: torch.tensor([True, False, True])})  # original expert 1 goes now
    kept = block.kept_experts.tolist()
    assert kept == [0, 2]
    files = save_pruned(model, tmp_path / "pruned", base_model="Maple728/TimeMoE-50M", plan=plan)
    check_module_travels(files, tmp_path / "pruned", "time_moe.py")  # the own model module, verbatim
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    layout = config["hf_tsprune_layout"]
    assert layout[BLOCKS[1]] == {"kind": "experts", "num_experts": 2, "kept_experts": kept}
    assert config["num_experts"] == 4 and config["architectures"] == ["PrunedTimeMoeForPrediction"]
    inputs = {"input_ids": torch.randn(3, 24, generator=torch.Generator().manual_seed(2))}
    with torch.no_grad():
        expected = model.eval()(**inputs, use_cache=False, max_horizon_length=32).logits
    rollout = model.generate(inputs["input_ids"], max_new_tokens=40)
    expected = {"logits": expected, "rollout": rollout}
    check_fresh_process_reloads(tmp_path / "pruned", inputs, expected, tmp_path, RUN, REPORT, {"kept_experts": kept})


# -- recipes ------------------------------------------------------------------------------------------------------


def test_recipes_run_on_a_time_moe_folder(task, tmp_path):
    results = check_recipes(task, tmp_path, "time_moe", "time_moe.py", prune=("--expert_threshold", "0"))
    experts = results["experts"]
    assert experts["experts_before"] == 8 and 4 <= experts["experts_after"] < 8  # idle experts of the routers went
    assert results["params_after"] < experts["params_after"] < experts["params_before"] == results["params_before"]
    layout = json.loads((tmp_path / "p" / "model" / "config.json").read_text())["hf_tsprune_layout"]
    assert [layout[name]["kept_experts"] for name in BLOCKS] == [experts["kept_experts"][name] for name in BLOCKS]


# -- benchmarks/speed.py ------------------------------------------------------------------------------------------


def test_speed_rows(monkeypatch):
    """The Time-MoE rows of `benchmarks/speed.py` build the released layouts and run (on a tiny model here): the exact
    shrink with half the heads, pairs and channels, the interleaved timing and a prune and a finetune step."""
    speed = speed_module("time_moe")
    for name, settings, count in (("time_moe_50m", TIME_MOE_50M, 113_352_192), ("time_moe_200m", TIME_MOE_200M,
                                                                               453_196_800)):  # fmt: skip
        released = released_row_model(speed, name)
        assert {k: getattr(released.config, k) for k in settings} == settings and params(released) == count
    check_speed_row(speed, monkeypatch, "time_moe_50m", "time_moe", build, 0.6)
