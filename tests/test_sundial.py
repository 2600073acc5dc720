"""Own Sundial (`hf_tsprune.models.sundial`) against the upstream code patched for transformers 5
(`../shared/oracles/sundial`, a test oracle only), on the same random state dict: forward, flow-matching losses and
seeded sampled multi-step forecasts (tiny and released sizes), checkpoint loading both ways, the rotary-pairs
contract and the v5 NaN trap."""

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
)
from own_models import randomize as randomize_weights

import hf_tsprune  # noqa: F401  (registers the Auto classes)
from hf_tsprune.models import sundial
from hf_tsprune.models.sundial import SundialConfig, SundialForPrediction, apply_rotary

TINY = dict(
    input_token_len=16,
    hidden_size=64,
    intermediate_size=128,
    output_token_lens=[32],
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    flow_loss_depth=2,
    num_sampling_steps=3,
    diffusion_batch_mul=2,
)
# The released layout of thuml/sundial-base-128m: the class defaults (12 layers, 12 heads, hidden 768, intermediate
# 3072, patch 16, output 720, flow head depth 3, 50 sampling steps, diffusion_batch_mul 4).
BASE = dict()


def oracle_classes():
    configuration, modeling = oracle_modules("sundial", "configuration_sundial", "modeling_sundial", name="Sundial")
    return configuration.SundialConfig, modeling.SundialForPrediction


rel = max_rel_error


def randomize(model: torch.nn.Module) -> None:
    """Weights of unit-gain scale (N(0, 1/fan_in)), biases and norm parameters off their init, so that attention is
    far from uniform and every parameter (the flow head's zero-initialised modulations too) matters."""
    randomize_weights(model, norm_names=("norm", "_ln"))


def pair(kwargs: dict, seed: int = 0):
    """An oracle model with random weights and ours with its state dict loaded strictly."""
    return oracle_pair(oracle_classes(), (SundialConfig, SundialForPrediction), kwargs, seed, randomize)


def seeded(fn, seed: int = 7):
    torch.manual_seed(seed)
    return fn()


def compare(oracle, ours, context: int, horizon: int, num_samples: int = 3) -> dict:
    """Max relative errors of sampled forwards, hidden states, losses (eval and train) and seeded generation."""
    cfg = ours.config
    torch.manual_seed(1)
    x = torch.randn(2, context) * 3 + 1
    n_patches = -(-context // cfg.input_token_len)
    labels = torch.randn(2, (n_patches - 1) * cfg.input_token_len + cfg.output_token_lens[-1])
    loss_masks = (torch.rand(2, n_patches) > 0.3).float()
    loss_masks[:, 0] = 1
    mask_y = (torch.rand(2, cfg.output_token_lens[-1]) > 0.2).float()
    errors = {}
    with torch.no_grad():
        kw = dict(use_cache=False, num_samples=num_samples, return_dict=True)
        a = seeded(lambda: oracle(input_ids=x.clone(), **kw))
        b = seeded(lambda: ours(input_ids=x.clone(), **kw))
        assert a.logits.shape == b.logits.shape == (2, num_samples, cfg.output_token_lens[0])
        errors["sampled forward"] = rel(b.logits, a.logits)
        # The released revin forecast broadcasts (batch, samples, L) * (batch, 1) wrongly for batch > 1 (and fails for
        # several samples): with one sample it is (batch, batch, L), whose diagonal is each series' own forecast.
        kw = dict(use_cache=False, num_samples=1, revin=True, return_dict=True)
        a = seeded(lambda: oracle(input_ids=x.clone(), **kw)).logits
        b = seeded(lambda: ours(input_ids=x.clone(), **kw)).logits
        assert a.shape == (2, 2, cfg.output_token_lens[0]) and b.shape == (2, 1, cfg.output_token_lens[0])
        errors["sampled forward revin"] = rel(b[:, 0], a[range(2), range(2)])
        a = seeded(lambda: oracle(input_ids=x.clone(), use_cache=False, output_hidden_states=True, return_dict=True))
        b = seeded(lambda: ours(input_ids=x.clone(), use_cache=False, output_hidden_states=True, return_dict=True))
        assert len(a.hidden_states) == len(b.hidden_states)
        errors["hidden states"] = max(rel(hb, ha) for ha, hb in zip(a.hidden_states, b.hidden_states))
    for train in (False, True):  # train: the dropouts draw from the same generator in the same order
        oracle.train(train)
        ours.train(train)
        for revin in (False, True):
            for my in (None, mask_y):
                kw = dict(labels=labels, loss_masks=loss_masks, mask_y=my, revin=revin, use_cache=False)
                if my is None:  # the released loss reshapes loss_masks and mask_y unconditionally
                    kw["mask_y"] = torch.ones_like(mask_y)
                a = seeded(lambda kw=kw: oracle(input_ids=x.clone(), return_dict=True, **kw).loss)
                b = seeded(lambda kw=kw: ours(input_ids=x.clone(), return_dict=True, **kw).loss)
                errors[f"loss train={train} revin={revin} mask_y={my is not None}"] = rel(b, a)
    oracle.eval()
    ours.eval()
    with torch.no_grad():
        kw = dict(max_new_tokens=horizon, num_samples=num_samples)
        a = seeded(lambda: oracle.generate(x.clone(), **kw))
        b = seeded(lambda: ours.generate(x.clone(), **kw))
        assert a.shape == b.shape == (2, num_samples, horizon)
        errors["generate use_cache=True"] = rel(b, a)
        # without the cache the released generate returns only the last step's samples
        a = seeded(lambda: oracle.generate(x.clone(), use_cache=False, **kw))
        b = seeded(lambda: ours.generate(x.clone(), use_cache=False, **kw))
        assert b.shape == (2, num_samples, horizon) and a.shape[-1] < horizon
        errors["generate use_cache=False (last step)"] = rel(b[..., -a.shape[-1] :], a)
    return errors


def test_tiny_equals_oracle():
    oracle, ours = pair(TINY)
    # 80 values: steps of 32, 32 and 16 values, beyond the native output of 32
    errors = compare(oracle, ours, context=64, horizon=80)
    assert max(errors.values()) < 1e-5, errors
    # a context that is not a whole number of patches (left-padded, with its observation mask)
    errors = compare(oracle, ours, context=71, horizon=48, num_samples=2)
    assert max(errors.values()) < 1e-5, errors


def test_released_size_equals_oracle():
    oracle, ours = pair(BASE)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in oracle.parameters())
    attn = ours.model.layers[0].self_attn
    assert (len(ours.model.layers), attn.num_heads, attn.head_dim, ours.config.hidden_size) == (12, 12, 64, 768)
    assert ours.model.layers[0].ffn_layer.gate_proj.out_features == 3072 and ours.config.input_token_len == 16
    # 720 + 48 values: two steps, the second beyond the native output length
    errors = compare(oracle, ours, context=64, horizon=768, num_samples=2)
    assert max(errors.values()) < 1e-5, errors


def test_generator_equals_global_seed():
    _, ours = pair(TINY)
    x = torch.randn(2, 64)
    with torch.no_grad():
        global_seed = seeded(lambda: ours.generate(x, max_new_tokens=80, num_samples=4), seed=11)
        own = ours.generate(x, max_new_tokens=80, num_samples=4, generator=torch.Generator().manual_seed(11))
        other = ours.generate(x, max_new_tokens=80, num_samples=4, generator=torch.Generator().manual_seed(12))
    assert torch.equal(own, global_seed)
    assert not torch.allclose(own, other)
    labels, masks = torch.randn(2, 80), torch.ones(2, 4)
    loss = seeded(lambda: ours(input_ids=x, labels=labels, loss_masks=masks).loss, seed=5)
    assert torch.equal(
        ours(input_ids=x, labels=labels, loss_masks=masks, generator=torch.Generator().manual_seed(5)).loss, loss
    )
    # loss_masks and mask_y default to all ones
    ones = seeded(lambda: ours(input_ids=x, labels=labels, loss_masks=masks, mask_y=torch.ones(2, 32)).loss, seed=5)
    assert rel(seeded(lambda: ours(input_ids=x, labels=labels).loss, seed=5), ones) < 1e-6


def test_state_dict_keys_and_checkpoints_both_ways(tmp_path):
    oracle, ours = pair(TINY)
    x = torch.randn(2, 64)
    auto_map = ("configuration_sundial.SundialConfig", "modeling_sundial.SundialForPrediction")
    check_checkpoints_both_ways(
        oracle,
        ours,
        oracle_classes()[1],
        auto_map,
        lambda model: seeded(lambda: model.generate(x.clone(), max_new_tokens=48, num_samples=2)),
        tmp_path,
    )


def test_from_pretrained_rotary_tables_finite(tmp_path):
    """The v5 trap: from_pretrained leaves non-persistent buffers uninitialised unless _init_weights resets them."""
    torch.manual_seed(0)
    model = SundialForPrediction(SundialConfig(**TINY)).eval()
    randomize(model)
    x = torch.randn(2, 64)
    check_rotary_tables_after_loading(
        model, lambda m: seeded(lambda: m.generate(x, max_new_tokens=80, num_samples=2)), tmp_path
    )


def test_eager_attention_equals_sdpa():
    torch.manual_seed(0)
    model = SundialForPrediction(SundialConfig(**TINY)).eval()
    randomize(model)
    x = torch.randn(2, 64)
    with torch.no_grad():
        sdpa = model(input_ids=x, output_hidden_states=True).hidden_states[-1]
        eager = model(input_ids=x, output_hidden_states=True, output_attentions=True)
    assert rel(eager.hidden_states[-1], sdpa) < 1e-5
    assert len(eager.attentions) == 2 and eager.attentions[0].shape == (2, 4, 4, 4)


def test_rotary_pairs_contract():
    """Keeping a subset of rotary pairs per head (q/k rows i and i + d/2 sliced, `rotary_pairs` set, `scaling`
    kept) equals the full layer whose key rows of the dropped pairs are zero."""
    torch.manual_seed(0)
    config = SundialConfig(**TINY)
    full = SundialForPrediction(config).eval()
    randomize(full)
    heads, d, n_keep = config.num_attention_heads, config.hidden_size // config.num_attention_heads, 3
    half = d // 2
    generator = torch.Generator().manual_seed(3)
    pairs = torch.stack([torch.randperm(half, generator=generator)[:n_keep].sort().values for _ in range(heads)])
    keep = torch.zeros(heads, d, dtype=torch.bool)
    rows = []
    for h in range(heads):
        keep[h, pairs[h]] = True
        keep[h, pairs[h] + half] = True
        rows.append(torch.cat([pairs[h], pairs[h] + half]) + h * d)
    rows = torch.cat(rows)

    zeroed = SundialForPrediction(config).eval()
    zeroed.load_state_dict(full.state_dict())
    pruned = SundialForPrediction(config).eval()
    pruned.load_state_dict(full.state_dict())
    with torch.no_grad():
        for layer in range(config.num_hidden_layers):
            z_attn = zeroed.model.layers[layer].self_attn
            z_attn.k_proj.weight[~keep.reshape(-1)] = 0
            z_attn.k_proj.bias[~keep.reshape(-1)] = 0
            p_attn = pruned.model.layers[layer].self_attn
            for name in ("q_proj", "k_proj"):
                setattr(p_attn, name, kept_rows(getattr(p_attn, name), rows))
            p_attn.head_dim = 2 * n_keep
            p_attn.rotary_pairs = pairs
            assert p_attn.scaling == d**-0.5

        hidden = torch.randn(2, 5, config.hidden_size)
        position_ids = torch.arange(5)[None]
        mask = sundial.causal_attention_mask(None, 2, 5, 0, hidden.dtype, hidden.device)
        z_attn, p_attn = zeroed.model.layers[0].self_attn, pruned.model.layers[0].self_attn
        expected, _ = z_attn(hidden, position_ids=position_ids, attention_mask=mask)
        got, _ = p_attn(hidden, position_ids=position_ids, attention_mask=mask)
        assert rel(got, expected) < 1e-5
        # the whole model, forward and the cached rollout (same seed, same samples)
        x = torch.randn(2, 80)
        got = seeded(lambda: pruned(input_ids=x, num_samples=2).logits)
        assert rel(got, seeded(lambda: zeroed(input_ids=x, num_samples=2).logits)) < 1e-5
        got = seeded(lambda: pruned.generate(x, max_new_tokens=64, num_samples=2))
        assert rel(got, seeded(lambda: zeroed.generate(x, max_new_tokens=64, num_samples=2))) < 1e-5
        # the identity permutation is the unpruned layout
        q, k = torch.randn(2, heads, 5, d), torch.randn(2, heads, 5, d)
        cos, sin = full.model.layers[0].self_attn.rotary_emb(position_ids, torch.float32)
        identity = torch.arange(half).expand(heads, half)
        for a, b in zip(apply_rotary(q, k, cos, sin), apply_rotary(q, k, cos, sin, identity, 1)):
            assert torch.equal(a, b)


def test_module_imports_no_hf_tsprune():
    roots = import_roots(sundial)
    assert roots - set(sys.stdlib_module_names) <= {"torch", "transformers"}, roots
