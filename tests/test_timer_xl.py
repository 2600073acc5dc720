"""Own Timer-XL (`hf_tsprune.models.timer_xl`) against the upstream code patched for transformers 5
(`../shared/oracles/timer_xl`, a test oracle only), on the same random state dict: forward, loss, multi-step
forecasts (tiny and released sizes), checkpoint loading both ways, the rotary-pairs contract and the v5 NaN trap."""

import sys

import torch
from own_models import (
    check_checkpoints_both_ways,
    check_rotary_tables_after_loading,
    import_roots,
    kept_rows,
    max_rel_error,
    oracle_modules,
    oracle_pair,
    randomize,
)

import hf_tsprune  # noqa: F401  (registers the Auto classes)
from hf_tsprune.models import timer_xl
from hf_tsprune.models.timer_xl import TimerConfig, TimerForPrediction, apply_rotary

TINY = dict(
    input_token_len=16,
    hidden_size=64,
    intermediate_size=128,
    output_token_lens=[16, 32],
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)
# The released layout of thuml/timer-base-84m (8 layers, 8 heads, hidden 1024, intermediate 2048, patch 96).
BASE = dict(input_token_len=96, output_token_lens=[96])


def oracle_classes():
    configuration, modeling = oracle_modules("timer_xl", "configuration_timer", "modeling_timer", name="Timer-XL")
    return configuration.TimerConfig, modeling.TimerForPrediction


rel = max_rel_error


def pair(kwargs: dict, seed: int = 0):
    """An oracle model with random weights and ours with its state dict loaded strictly."""
    return oracle_pair(oracle_classes(), (TimerConfig, TimerForPrediction), kwargs, seed, randomize)


def compare(oracle, ours, context: int, horizon: int) -> dict:
    """Max relative errors of forward, revin forward, hidden states, loss and cached / uncached generation."""
    cfg = ours.config
    torch.manual_seed(1)
    x = torch.randn(2, context) * 3 + 1
    n_patches = context // cfg.input_token_len
    labels = torch.randn(2, (n_patches - 1) * cfg.input_token_len + max(cfg.output_token_lens))
    loss_masks = (torch.rand(2, n_patches) > 0.3).float()
    loss_masks[:, 0] = 1
    errors = {}
    with torch.no_grad():
        for revin in (False, True):
            a = oracle(input_ids=x.clone(), use_cache=False, revin=revin, return_dict=True)
            b = ours(input_ids=x.clone(), use_cache=False, revin=revin, return_dict=True)
            errors[f"forward revin={revin}"] = rel(b.logits, a.logits)
        a = oracle(input_ids=x.clone(), use_cache=False, output_hidden_states=True, return_dict=True)
        b = ours(input_ids=x.clone(), use_cache=False, output_hidden_states=True, return_dict=True)
        assert len(a.hidden_states) == len(b.hidden_states)
        errors["hidden states"] = max(rel(hb, ha) for ha, hb in zip(a.hidden_states, b.hidden_states))
        for masks in (None, loss_masks):
            a = oracle(input_ids=x.clone(), labels=labels, loss_masks=masks, use_cache=False, return_dict=True)
            b = ours(input_ids=x.clone(), labels=labels, loss_masks=masks, use_cache=False, return_dict=True)
            errors[f"loss masks={masks is not None}"] = rel(b.loss, a.loss)
            errors[f"loss predictions masks={masks is not None}"] = rel(b.logits, a.logits)
        for use_cache in (True, False):
            a = oracle.generate(x.clone(), max_new_tokens=horizon, use_cache=use_cache)
            b = ours.generate(x.clone(), max_new_tokens=horizon, use_cache=use_cache)
            assert a.shape == b.shape == (2, horizon)
            errors[f"generate use_cache={use_cache}"] = rel(b, a)
    return errors


def test_tiny_equals_oracle():
    oracle, ours = pair(TINY)
    # 80 values: heads of 32, 32 and 16 values, i.e. three steps beyond the longest native output
    errors = compare(oracle, ours, context=64, horizon=80)
    assert max(errors.values()) < 1e-5, errors
    # also a context that is not a whole number of patches (generate keeps the last whole patches)
    with torch.no_grad():
        x = torch.randn(2, 71)
        assert rel(ours.generate(x, max_new_tokens=48), oracle.generate(x.clone(), max_new_tokens=48)) < 1e-5


def test_released_size_equals_oracle():
    oracle, ours = pair(BASE)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in oracle.parameters())
    layer = ours.model.layers[0]
    assert (layer.self_attn.num_heads, layer.self_attn.head_dim, layer.ffn_layer.gate_proj.out_features) == (
        8,
        128,
        2048,
    )
    assert len(ours.model.layers) == 8 and ours.config.hidden_size == 1024
    errors = compare(oracle, ours, context=192, horizon=288)
    assert max(errors.values()) < 1e-5, errors


def test_cache_quirk_and_manual_loop():
    """Without the cache generate equals a manual loop of revin forwards; with it, later chunks are re-normalised."""
    _, ours = pair(TINY)
    x = torch.randn(2, 64) * 2 + 5
    with torch.no_grad():
        series, remaining = x, 80
        while remaining > 0:
            step = ours(input_ids=series, use_cache=False, revin=True, max_output_length=remaining).logits
            series, remaining = torch.cat([series, step], -1), remaining - step.shape[1]
        manual = series[:, 64:]
        uncached = ours.generate(x, max_new_tokens=80, use_cache=False)
        cached = ours.generate(x, max_new_tokens=80, use_cache=True)
    assert torch.equal(uncached, manual)
    assert rel(cached[:, :32], uncached[:, :32]) < 1e-5  # the first step is the same forward
    assert rel(cached[:, 32:], uncached[:, 32:]) > 1e-3  # the quirk: later steps differ


def test_state_dict_keys_and_checkpoints_both_ways(tmp_path):
    oracle, ours = pair(TINY)
    x = torch.randn(2, 64)
    auto_map = ("configuration_timer.TimerConfig", "modeling_timer.TimerForPrediction")
    check_checkpoints_both_ways(
        oracle,
        ours,
        oracle_classes()[1],
        auto_map,
        lambda model: model.generate(x.clone(), max_new_tokens=48),
        tmp_path,
    )


def test_from_pretrained_rotary_tables_finite(tmp_path):
    """The v5 trap: from_pretrained leaves non-persistent buffers uninitialised unless _init_weights resets them."""
    torch.manual_seed(0)
    model = TimerForPrediction(TimerConfig(**TINY)).eval()
    randomize(model)
    x = torch.randn(2, 64)
    check_rotary_tables_after_loading(model, lambda m: m.generate(x, max_new_tokens=80), tmp_path)


def test_eager_attention_equals_sdpa():
    torch.manual_seed(0)
    model = TimerForPrediction(TimerConfig(**TINY)).eval()
    randomize(model)
    x = torch.randn(2, 64)
    with torch.no_grad():
        sdpa = model(input_ids=x).logits
        eager = model(input_ids=x, output_attentions=True)
    assert rel(eager.logits, sdpa) < 1e-5
    assert len(eager.attentions) == 2 and eager.attentions[0].shape == (2, 4, 4, 4)


def test_rotary_pairs_contract():
    """Keeping a subset of rotary pairs per head (q/k rows i and i + d/2 sliced, `rotary_pairs` set, `scaling`
    kept) equals the full layer whose query rows of the dropped pairs are zero."""
    torch.manual_seed(0)
    config = TimerConfig(**TINY)
    full = TimerForPrediction(config).eval()
    randomize(full)
    attn = full.model.layers[1].self_attn
    heads, d, n_keep = attn.num_heads, attn.head_dim, 5
    half = d // 2
    generator = torch.Generator().manual_seed(3)
    pairs = torch.stack([torch.randperm(half, generator=generator)[:n_keep].sort().values for _ in range(heads)])

    zeroed = TimerForPrediction(config).eval()
    zeroed.load_state_dict(full.state_dict())
    pruned = TimerForPrediction(config).eval()
    pruned.load_state_dict(full.state_dict())
    with torch.no_grad():
        z_attn = zeroed.model.layers[1].self_attn
        keep_mask = torch.zeros(heads, d, dtype=torch.bool)
        rows = []
        for h in range(heads):
            keep_mask[h, pairs[h]] = True
            keep_mask[h, pairs[h] + half] = True
            rows.append(torch.cat([pairs[h], pairs[h] + half]) + h * d)
        drop = ~keep_mask.reshape(-1)
        z_attn.q_proj.weight[drop] = 0
        z_attn.q_proj.bias[drop] = 0
        rows = torch.cat(rows)
        p_attn = pruned.model.layers[1].self_attn
        for name in ("q_proj", "k_proj"):
            setattr(p_attn, name, kept_rows(getattr(p_attn, name), rows))
        p_attn.head_dim = 2 * n_keep
        p_attn.rotary_pairs = pairs
        assert p_attn.scaling == d**-0.5

        x = torch.randn(2, 80)
        hidden = torch.randn(2, 5, config.hidden_size)
        position_ids = torch.arange(5)[None]
        mask = timer_xl.causal_attention_mask(None, 2, 5, 0, hidden.dtype, hidden.device)
        expected, _ = z_attn(hidden, position_ids=position_ids, attention_mask=mask)
        got, _ = p_attn(hidden, position_ids=position_ids, attention_mask=mask)
        assert rel(got, expected) < 1e-5
        # the whole model, with and without the cache
        assert rel(pruned(input_ids=x).logits, zeroed(input_ids=x).logits) < 1e-5
        assert rel(pruned.generate(x, max_new_tokens=64), zeroed.generate(x, max_new_tokens=64)) < 1e-5
        # the identity permutation is the unpruned layout
        q, k = torch.randn(2, heads, 5, d), torch.randn(2, heads, 5, d)
        cos, sin = attn.rotary_emb(position_ids, torch.float32)
        identity = torch.arange(half).expand(heads, half)
        for a, b in zip(apply_rotary(q, k, cos, sin), apply_rotary(q, k, cos, sin, identity, 1)):
            assert torch.equal(a, b)


def test_module_imports_no_hf_tsprune():
    roots = import_roots(timer_xl)
    assert roots - set(sys.stdlib_module_names) <= {"torch", "transformers"}, roots
