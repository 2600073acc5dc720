"""The Sundial family (`hf_tsprune.models.sundial`, `hf_tsprune/families/sundial.py`): exact shrink with rotary
query/key pairs and, switched on, the flow head's MLPs (tiny and released layouts), the seeded forecast and the
flow-matching training inputs, prune -> shrink -> finetune with the model's own loss, pruned checkpoints reloaded in a
fresh process (after `import hf_tsprune`, and with transformers alone through remote code, which carries the model
module verbatim), the three recipes and the speed row.

Released layout (`thuml/sundial-base-128m`, the oracle's configuration defaults, as the issue lists them): 12 layers,
12 heads, hidden 768, intermediate 3072, patches of 16 values, one flow head forecasting 720 values (3 residual
blocks, 50 sampling steps), 128,329,680 parameters.
"""

import copy
import json

import pytest
import torch
from own_models import (
    check_exact_rotary_shrink,
    check_fresh_process_reloads,
    check_module_travels,
    check_recipes,
    check_speed_row,
    make_task,
    random_model,
    released_row_model,
    speed_module,
)
from own_models import round_trip as layout_round_trip
from test_families import Windows, check_prune_shrink_finetune
from test_surgery import masked_vs_shrunk, params, random_masks

from hf_tsprune import get_spec, install_masks, save_pruned, shrink
from hf_tsprune.adapters import get_adapter
from hf_tsprune.family import get_family
from hf_tsprune.masks import get_masks, remove_masks
from hf_tsprune.models.sundial import SundialConfig, SundialForPrediction
from hf_tsprune.training import ForecastCollator, training_label_names, training_target_length

TINY = dict(
    input_token_len=4, hidden_size=32, intermediate_size=48, output_token_lens=[8], num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=64, flow_loss_depth=2, num_sampling_steps=3, diffusion_batch_mul=2,
)  # fmt: skip
RELEASED = dict(
    input_token_len=16, hidden_size=768, intermediate_size=3072, output_token_lens=[720], num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=10000, flow_loss_depth=3, num_sampling_steps=50, rope_theta=10000,
)  # fmt: skip
RELEASED_PARAMS = 128_329_680
FLOW_BLOCKS = ["flow_loss.net.res_blocks.0.mlp", "flow_loss.net.res_blocks.1.mlp", "flow_loss.net.time_embed.mlp"]


def build(settings: dict = TINY, seed: int = 0, std: float | None = 0.2) -> SundialForPrediction:
    """A Sundial with random weights (std 0.2 in the tiny one, so that every unit matters; the flow head's
    modulations, zero-initialised as released, too)."""
    return random_model(SundialForPrediction, SundialConfig, settings, seed, std)


def with_flow_head(model) -> list:
    """Masks on every group, the optional flow-head group included."""
    return install_masks(model, get_spec(model).with_optional_groups())


def round_trip(model, settings: dict = TINY):
    """A fresh model given the layout (as stored in config.json) loads the shrunk state dict and forecasts the same."""
    layout_round_trip(model, build(settings, seed=5, std=None))


def test_spec_groups_and_family():
    model = build()
    family = get_family(model)
    assert family.name == "sundial" and get_family("sundial") is family
    default = [
        "model.layers.0.self_attn", "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn",
        "model.layers.1.self_attn.q_proj", "model.layers.0.ffn_layer", "model.layers.1.ffn_layer",
    ]  # fmt: skip
    assert [g.name for g in install_masks(model)] == default  # the flow head is off by default
    remove_masks(model)
    assert [g.name for g in with_flow_head(model)] == default + FLOW_BLOCKS
    spec = get_spec(model)
    assert spec.has_optional_groups and not spec.with_optional_groups().has_optional_groups
    assert [b["pattern"] for b in spec.blocks()] == [b["pattern"] for b in spec.with_optional_groups().blocks()]
    assert training_label_names(model) == ["labels"]
    assert training_target_length(model, 4) == 8  # the flow loss forecasts the head's whole output length


@pytest.mark.parametrize("flow_head", [False, True], ids=["decoder", "flow_head"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_exact_shrink_tiny(fraction, flow_head):
    model = build()
    (with_flow_head if flow_head else install_masks)(model)
    masks = random_masks(model, fraction, seed=int(fraction * 10))
    check_exact_rotary_shrink(model, masks, full_head_dim=8)
    flow = model.flow_loss.net
    widths = [block.mlp[0].out_features for block in flow.res_blocks] + [flow.time_embed.mlp[0].out_features]
    assert widths == ([round((1 - fraction) * 32)] * 3 if flow_head else [32] * 3)
    assert all(b.mlp[2].in_features == w for b, w in zip(flow.res_blocks, widths))
    assert (set(FLOW_BLOCKS) <= set(model.config.hf_tsprune_layout)) is flow_head
    round_trip(model)


@pytest.mark.slow
def test_exact_shrink_released_layout():
    """sundial-base-128m's layout (random weights as initialised), batch 1 of 32 patches of 16, 2 samples of 720
    values with 50 flow steps; half the units of every group, the flow head's MLPs included."""
    model = build(RELEASED, std=None)
    assert params(model) == RELEASED_PARAMS
    with_flow_head(model)
    masks = random_masks(model, 0.5, seed=5)
    plan, rel, shrunk = masked_vs_shrunk(model, masks, batch_size=1, count_model_flops=False)
    assert rel < 1e-5 and torch.isfinite(shrunk).all() and shrunk.shape == (1, 2, 720), rel
    assert params(model) == plan.params_after < 0.6 * plan.params_before
    assert model.flow_loss.net.res_blocks[0].mlp[0].out_features == 384
    round_trip(model, RELEASED)


def test_a_layer_without_heads_keeps_one_and_cached_generation_works():
    """Every value channel of layer 0 masked: the layer keeps its first head with no value channel and one zero
    rotary pair (`keep_one_head`), so the released rollout's key/value cache keeps its length: cached and uncached
    rollouts (same seed) agree, and the layout rebuilds the layer."""
    model = build()
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["model.layers.0.self_attn"][:] = False
    plan, rel, _ = masked_vs_shrunk(model, masks)
    attention = model.model.layers[0].self_attn
    assert rel < 1e-5 and params(model) == plan.params_after
    assert (attention.num_heads, attention.v_head_dim, attention.head_dim) == (1, 0, 2)
    series = torch.randn(2, 24, generator=torch.Generator().manual_seed(4))
    runs = [
        model.generate(series, max_new_tokens=16, num_samples=3, use_cache=cache,
                       generator=torch.Generator().manual_seed(1))
        for cache in (True, False)
    ]  # fmt: skip
    torch.testing.assert_close(runs[0], runs[1])
    round_trip(model)


# -- forecasting and training inputs --------------------------------------------------------------------------------


def test_adapter_forecast_is_the_seeded_samples_mean():
    model = build()
    adapter = get_adapter(model)
    assert adapter.native_horizon(model) == 8 and adapter.max_context(model) == 64 * 4
    past = torch.randn(3, 18, 2) * 5 + 7  # not whole patches: the model left-pads the first one
    result = adapter.predict(model, past)
    assert result.mean.shape == (3, 8, 2) and result.quantiles.shape == (3, 8, 2, 9)
    again = adapter.predict(model, past)  # the noise is seeded per batch: evaluations agree exactly
    assert torch.equal(result.mean, again.mean) and torch.equal(result.quantiles, again.quantiles)
    series = past[..., 1]
    mean, std = series.mean(1, keepdim=True), series.std(1, keepdim=True, unbiased=False) + 1e-5
    with torch.no_grad():
        samples = model(
            input_ids=(series - mean) / std, use_cache=False, num_samples=20, max_output_length=8,
            generator=torch.Generator().manual_seed(adapter.seed),
        ).logits  # fmt: skip
    samples = samples * std[:, None] + mean[:, None]
    folded = adapter.sample(model, past.permute(0, 2, 1).reshape(6, 18))  # channels fold into the batch
    assert folded.shape == (6, 20, 8)
    torch.testing.assert_close(result.mean, folded.mean(1).reshape(3, 2, 8).permute(0, 2, 1), rtol=1e-5, atol=1e-5)
    solo = adapter.predict(model, past[..., 1:])  # the same series alone: the seeded draws of a batch of 3
    torch.testing.assert_close(solo.mean[..., 0], samples.mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(solo.quantiles[:, :, 0, 4], samples.quantile(0.5, dim=1), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(adapter.predict(model, torch.ones(1, 16, 1)).mean).all()  # a constant series


def test_training_inputs_give_the_flow_matching_loss_seeded_per_batch():
    model = build()
    train = Windows(4, 18, 1, 0)  # 18 steps: the first 2 are dropped (whole patches of 4 at the end)
    collate = ForecastCollator(model)
    batch = collate([train[i] for i in range(4)])
    assert batch["input_ids"].shape == (4, 16) and batch["labels"].shape == (4, 12 + 8)
    series = train.x[:, 2:26]
    mean, std = series[:, :16].mean(1, keepdim=True), series[:, :16].std(1, keepdim=True, unbiased=False) + 1e-5
    torch.testing.assert_close(batch["labels"], ((series - mean) / std)[:, 4:])
    torch.testing.assert_close(batch["input_ids"], ((series - mean) / std)[:, :16])
    loss = model(**batch).loss
    assert torch.equal(loss, model(**collate([train[i] for i in range(4)])).loss)  # the same batch, the same draws
    other = model(**collate([train[i] for i in (1, 0, 2, 3)])).loss  # another batch draws other noise
    assert not torch.equal(loss, other)
    with torch.no_grad():  # by hand: each patch's hidden state and the 8 values after it, 2 draws each
        hidden = model.model(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
        targets = batch["labels"].unfold(-1, 8, 4).reshape(16, 8).repeat(2, 1)
        generator = collate([train[i] for i in range(4)])["generator"]
        expected = model.flow_loss(targets, hidden.reshape(16, -1).repeat(2, 1), torch.ones(32), generator=generator)
    torch.testing.assert_close(loss, expected)


# -- prune, shrink, finetune, save, reload ------------------------------------------------------------------------

RUN = """
with torch.no_grad():
    outputs = {"logits": model.eval()(input_ids=inputs["input_ids"], use_cache=False, num_samples=3,
                                      max_output_length=8, generator=torch.Generator().manual_seed(0)).logits}
"""


def test_prune_shrink_finetune_save_and_reload_in_a_fresh_process(tmp_path):
    """Half the rotary pairs and half the flow head's hidden channels are cut first (the optional group switched on),
    then the prune run prunes the shrunk model again with the default groups before the finetune and the save; the
    checkpoint's layout holds both, and reloads in a fresh process to the same seeded samples."""
    model = build(seed=1, std=0.1)
    with_flow_head(model)
    generator = torch.Generator().manual_seed(0)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    for name in [k for k in masks if k.endswith("q_proj")]:  # 2 of the 4 pairs of every head, different per head
        masks[name] = torch.stack([torch.randperm(4, generator=generator) < 2 for _ in range(4)]).flatten()
    for name in FLOW_BLOCKS:
        masks[name] = torch.randperm(32, generator=generator) < 16
    shrink(model, masks)
    assert all(layer.self_attn.head_dim == 4 for layer in model.model.layers)
    plan = check_prune_shrink_finetune(model, Windows(32, 16, 1, 0), Windows(16, 16, 1, 1), tmp_path)
    files = save_pruned(model, tmp_path / "pruned", base_model="thuml/sundial-base-128m", plan=plan)
    check_module_travels(files, tmp_path / "pruned", "sundial.py")  # the own model module, verbatim
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    layout = config["hf_tsprune_layout"]
    pairs = [entry.get("rotary_pairs") for entry in layout.values() if "v_head_dim" in entry]
    # the same count of at most 2 of 4 pairs in every kept head (the hand cut kept 2, the prune run may take more)
    assert len(pairs) == 2 and all(len({len(h) for h in p}) == 1 and len(p[0]) <= 2 for p in pairs)
    assert [layout[name]["width"] for name in FLOW_BLOCKS] == [16, 16, 16]
    assert config["pruning"]["params_after"] == params(model)
    recorded = config["pruning"]["groups"]  # the flow head's blocks are recorded, pruned in an earlier round
    assert [(recorded[n]["units_before"], recorded[n]["units_after"]) for n in FLOW_BLOCKS] == [(32, 16)] * 3
    inputs = {"input_ids": torch.randn(3, 24, generator=torch.Generator().manual_seed(2))}
    with torch.no_grad():
        expected = model.eval()(
            **inputs, use_cache=False, num_samples=3, max_output_length=8, generator=torch.Generator().manual_seed(0)
        ).logits
    check_fresh_process_reloads(tmp_path / "pruned", inputs, {"logits": expected}, tmp_path, RUN)


# -- recipes ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("sundial_task"), build(seed=3, std=None))


def test_recipes_run_on_a_sundial_folder(task, tmp_path):
    """The prune run with the flow head's group switched on (`--prune_optional_groups`); the pruned folder's
    zero-shot test MSE equals the pipeline's own evaluation of it (sampling seeded per batch: evaluations in batches
    of the same size agree)."""
    results = check_recipes(
        task, tmp_path, "sundial", "sundial.py", prune=("--prune_optional_groups", "true"),
        zero_shot=("--batch_size", "64"),  # the noise is seeded per batch: the pipeline's test batches, 64 windows
    )  # fmt: skip
    assert set(FLOW_BLOCKS) <= {group["name"] for group in results["plan"]["groups"]}  # the flow head was masked
    assert results["settings"]["prune_optional_groups"] is True


# -- benchmarks/speed.py ------------------------------------------------------------------------------------------


def test_speed_row(monkeypatch):
    """The Sundial row of `benchmarks/speed.py` builds the released layout and runs (on a tiny model here): the exact
    shrink with half the heads, pairs and channels, the interleaved timing and a prune and a finetune step."""
    speed = speed_module("sundial")
    released = released_row_model(speed, "sundial")
    assert {k: getattr(released.config, k) for k in RELEASED} == RELEASED
    assert params(released) == RELEASED_PARAMS
    check_speed_row(speed, monkeypatch, "sundial", "sundial", build, 0.8)  # the flow head kept


def test_copy_of_a_pruned_model_prunes_again():
    """A shrunk model (flow head included) is pruned again: the masks cover the kept units only, the shrink is
    exact, and the layout of both rounds rebuilds it."""
    model = build()
    with_flow_head(model)
    masked_vs_shrunk(model, random_masks(model, 0.3, seed=1))
    again = copy.deepcopy(model)
    with_flow_head(again)
    assert get_masks(again)["flow_loss.net.time_embed.mlp"].numel() == 22
    plan, rel, _ = masked_vs_shrunk(again, random_masks(again, 0.3, seed=2))
    assert rel < 1e-5 and params(again) == plan.params_after
    round_trip(again)
