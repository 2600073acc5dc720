"""The Timer-XL family (`hf_tsprune.models.timer_xl`, `hf_tsprune/families/timer_xl.py`): exact shrink with rotary
query/key pairs (tiny and released layouts), the family's forecast and training inputs, prune -> shrink -> finetune
with the next-patch loss, pruned checkpoints reloaded in a fresh process (after `import hf_tsprune`, and with
transformers alone through remote code, which carries the model module verbatim) and the three recipes.

Released layout (`thuml/timer-base-84m` `config.json`, as the oracle's configuration defaults and the issue list it):
8 layers, 8 heads, hidden 1024, intermediate 2048, patches of 96 values (`input_token_len`), one head of 96
(`output_token_lens=[96]`), rotary base 10000, 10000 positions.
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

from hf_tsprune import install_masks, save_pruned, shrink
from hf_tsprune.adapters import get_adapter
from hf_tsprune.family import get_family
from hf_tsprune.masks import get_masks
from hf_tsprune.models.timer_xl import TimerConfig, TimerForPrediction
from hf_tsprune.training import ForecastCollator, training_label_names, training_target_length

TINY = dict(
    input_token_len=4, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    output_token_lens=[4, 8], max_position_embeddings=64,
)  # fmt: skip
RELEASED = dict(
    input_token_len=96, hidden_size=1024, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
    output_token_lens=[96], max_position_embeddings=10000, rope_theta=10000,
)  # fmt: skip


def build(settings: dict = TINY, seed: int = 0, std: float = 0.2) -> TimerForPrediction:
    """A Timer-XL with random weights (std 0.2 in the tiny one, so that every unit matters)."""
    return random_model(TimerForPrediction, TimerConfig, settings, seed, std)


def round_trip(model, settings: dict = TINY):
    """A fresh model given the layout (as stored in config.json) loads the shrunk state dict and forecasts the same."""
    layout_round_trip(model, build(settings, seed=5, std=None))


def test_spec_groups_and_family():
    model = build()
    family = get_family(model)
    assert family.name == "timer_xl" and get_family("timer") is family
    names = [g.name for g in install_masks(model)]
    assert names == [
        "model.layers.0.self_attn", "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn",
        "model.layers.1.self_attn.q_proj", "model.layers.0.ffn_layer", "model.layers.1.ffn_layer",
    ]  # fmt: skip
    assert training_label_names(model) == ["labels"]
    assert training_target_length(model, 4) == 8  # the next-patch loss needs the longest head's values


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_exact_shrink_tiny(fraction):
    model = build()
    install_masks(model)
    masks = random_masks(model, fraction, seed=int(fraction * 10))
    check_exact_rotary_shrink(model, masks, full_head_dim=8)
    round_trip(model)


@pytest.mark.slow
def test_exact_shrink_released_layout():
    """timer-base-84m's layout (random weights, std 0.02 as initialised), one batch of 2 x 4 patches of 96."""
    base = build(RELEASED, std=None)
    assert params(base) == 84_142_080
    for fraction in (0.3, 0.5, 0.7):
        model = copy.deepcopy(base)
        install_masks(model)
        masks = random_masks(model, fraction, seed=int(fraction * 10))
        plan, rel, shrunk = masked_vs_shrunk(model, masks, batch_size=2, count_model_flops=False)
        assert rel < 1e-5 and torch.isfinite(shrunk).all(), (fraction, rel)
        assert params(model) == plan.params_after < (1.1 - fraction) * plan.params_before
        if fraction == 0.5:
            round_trip(model, RELEASED)


# -- forecasting and training inputs --------------------------------------------------------------------------------


def test_adapter_forecast_crops_to_whole_patches_and_normalises():
    model = build()
    adapter = get_adapter(model)
    assert adapter.native_horizon(model) == 8 and adapter.max_context(model) == 64 * 4
    past = torch.randn(3, 18, 2) * 5 + 7  # 18 steps: the first 2 are dropped (whole patches of 4 at the end)
    result = adapter.predict(model, past)
    assert result.mean.shape == (3, 8, 2)
    series = past[:, 2:, 1]
    mean, std = series.mean(1, keepdim=True), series.std(1, keepdim=True)
    with torch.no_grad():
        direct = model(input_ids=(series - mean) / std, max_output_length=8, use_cache=False).logits * std + mean
    torch.testing.assert_close(result.mean[..., 1], direct, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(adapter.predict(model, torch.ones(1, 16, 1)).mean).all()  # a constant series
    with pytest.raises(ValueError, match="input_token_len=4"):
        adapter.predict(model, torch.randn(1, 3, 1))


def test_training_inputs_give_the_next_patch_loss():
    model = build()
    train = Windows(4, 16, 1, 0)
    batch = ForecastCollator(model)([train[i] for i in range(4)])
    assert batch["input_ids"].shape == (4, 16) and batch["labels"].shape == (4, 12 + 8)
    series = torch.cat([train.x[:, :16], train.x[:, 16:24]], dim=1)
    mean, std = series[:, :16].mean(1, keepdim=True), series[:, :16].std(1, keepdim=True)
    torch.testing.assert_close(batch["labels"], ((series - mean) / std)[:, 4:])
    loss = model(**batch).loss
    with torch.no_grad():  # by hand: every patch's forecast of each head against the values after it
        hidden = model.model(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
        total = 0
        for head, length in zip(model.lm_heads, (4, 8)):
            targets = batch["labels"][:, : 12 + length].unfold(-1, length, 4)
            total = total + ((head(hidden) - targets) ** 2).mean()
    torch.testing.assert_close(loss, total / 2)


# -- prune, shrink, finetune, save, reload ------------------------------------------------------------------------

RUN = """
with torch.no_grad():
    outputs = {"logits": model.eval()(input_ids=inputs["input_ids"], use_cache=False, max_output_length=8).logits}
"""


def test_prune_shrink_finetune_save_and_reload_in_a_fresh_process(tmp_path):
    """Half the rotary pairs are cut first (the Taylor scores of a random model rarely pick them), then the prune run
    prunes the shrunk model again (pairs indexed by their original frequencies) before the finetune and the save."""
    model = build(seed=1, std=0.1)
    install_masks(model)
    generator = torch.Generator().manual_seed(0)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    for name in [k for k in masks if k.endswith("q_proj")]:  # 2 of the 4 pairs of every head, different per head
        masks[name] = torch.stack([torch.randperm(4, generator=generator) < 2 for _ in range(4)]).flatten()
    shrink(model, masks)
    assert all(layer.self_attn.head_dim == 4 for layer in model.model.layers)
    plan = check_prune_shrink_finetune(model, Windows(32, 16, 1, 0), Windows(16, 16, 1, 1), tmp_path)
    files = save_pruned(model, tmp_path / "pruned", base_model="thuml/timer-base-84m", plan=plan)
    check_module_travels(files, tmp_path / "pruned", "timer_xl.py")  # the own model module, verbatim
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    pairs = [entry.get("rotary_pairs") for entry in config["hf_tsprune_layout"].values() if "v_head_dim" in entry]
    # 4 heads with the same count of at most 2 of the 4 pairs each (the hand cut kept 2, the prune run may take more)
    assert len(pairs) == 2 and all(len(p) == 4 and len({len(h) for h in p}) == 1 and len(p[0]) <= 2 for p in pairs)
    assert config["pruning"]["params_after"] == params(model)
    inputs = {"input_ids": torch.randn(3, 24, generator=torch.Generator().manual_seed(2))}
    with torch.no_grad():
        expected = model.eval()(**inputs, use_cache=False, max_output_length=8).logits
    check_fresh_process_reloads(tmp_path / "pruned", inputs, {"logits": expected}, tmp_path, RUN)


# -- recipes ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("timer_task"), build(seed=3, std=None))


def test_recipes_run_on_a_timer_xl_folder(task, tmp_path):
    check_recipes(task, tmp_path, "timer_xl", "timer_xl.py")


# -- benchmarks/speed.py ------------------------------------------------------------------------------------------


def test_speed_row(monkeypatch):
    """The Timer-XL row of `benchmarks/speed.py` builds the released layout and runs (on a tiny model here): the
    exact shrink with half the heads, pairs and channels, the interleaved timing and a prune and a finetune step."""
    speed = speed_module("timer_xl")
    released = released_row_model(speed, "timer_xl")
    assert {k: getattr(released.config, k) for k in RELEASED} == RELEASED
    assert params(released) == 84_142_080
    check_speed_row(speed, monkeypatch, "timer_xl", "timer_xl", build, 0.6)


def test_a_layer_without_heads_keeps_one_and_cached_generation_works():
    """Every value channel of layer 0 masked: the layer keeps its first head with no value channel and one zero
    rotary pair (`keep_one_head`), so its keys still carry the sequence length the key/value cache reports, and
    cached and uncached rollouts agree; the checkpoint layout rebuilds it, and it prunes again."""
    model = build()
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    masks["model.layers.0.self_attn"][:] = False
    plan, rel, _ = masked_vs_shrunk(model, masks)  # no allow_empty_blocks needed: nothing is replaced
    attention = model.model.layers[0].self_attn
    assert rel < 1e-5 and params(model) == plan.params_after
    assert (attention.num_heads, attention.v_head_dim, attention.head_dim) == (1, 0, 2)
    assert attention.o_proj.in_features == 0 and bool((attention.q_proj.weight == 0).all())
    assert model.config.hf_tsprune_layout["model.layers.0.self_attn"] == {
        "kind": "attention", "num_kv_heads": 1, "v_head_dim": 0, "rotary_pairs": [[0]]
    }  # fmt: skip
    series = torch.randn(2, 24, generator=torch.Generator().manual_seed(4))
    cached = model.generate(series, max_new_tokens=16, use_cache=True, revin=False)
    torch.testing.assert_close(cached, model.generate(series, max_new_tokens=16, use_cache=False, revin=False))
    round_trip(model)
    install_masks(model)
    masks = {k: torch.ones_like(v) for k, v in get_masks(model).items()}
    assert masks["model.layers.0.self_attn"].numel() == 0 and masks["model.layers.0.self_attn.q_proj"].numel() == 1
    masks["model.layers.1.ffn_layer"][:5] = False
    plan, rel, _ = masked_vs_shrunk(model, masks)
    assert rel < 1e-5 and params(model) == plan.params_after
    round_trip(model)
