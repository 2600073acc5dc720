"""hf_tsprune.models.time_moe against the upstream Time-MoE code (the patched oracle in ../shared/oracles).

Same random state dict in both: forward forecasts, training losses (with and without the auxiliary loss, with loss
masks, with padding) and multi-step forecasts beyond the native horizon agree within 1e-5 relative, on a tiny
configuration and on the released TimeMoE-50M / TimeMoE-200M layouts (short context, batch 2). Checkpoints move both
ways between the two implementations without missing, unexpected or mismatched keys. Also: the rotary-pairs contract
of the pruning engine, the loss uses every target, nothing is modified in place, and the module imports no hf_tsprune.
The oracle tests skip when ../shared/oracles is absent.
"""

import copy
import os
import shutil
import subprocess
import sys

import pytest
import torch
from own_models import assert_clean_loading, import_roots, kept_rows, max_rel_error, name_remote_code, oracle_modules
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.initialization import no_init_weights

import hf_tsprune  # noqa: F401  (registers the Auto classes)
from hf_tsprune.models import time_moe
from hf_tsprune.models.time_moe import TimeMoeConfig, TimeMoeForPrediction, TimeMoeRotaryEmbedding

TOL = 1e-5
# a rollout feeds every generated point back in, so float32 rounding differences between our kernels and the
# oracle's compound over its steps: 1.2e-5 after 5 steps on some CPUs
ROLLOUT_TOL = 5e-5

TINY = dict(
    input_size=1,
    hidden_size=64,
    intermediate_size=128,
    horizon_lengths=[1, 8],
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts=4,
    num_experts_per_tok=2,
    max_position_embeddings=256,
)

# The released configurations (config.json of Maple728/TimeMoE-50M / -200M, transformers 4.40.1). 50M: the fields as
# quoted in public copies of that config.json; 200M: the same with hidden_size 768 / intermediate_size 3072 (the
# Time-MoE paper's "large"). Each routed expert is intermediate_size // num_experts_per_tok wide in the released code
# (768 / 1536), which gives the paper's totals (113 M / 453 M parameters, 50 M / 200 M activated); the paper's table
# lists d_expert 192 / 384 (= intermediate_size / num_experts), which the released code does not build.
TIME_MOE_50M = dict(
    input_size=1,
    hidden_size=384,
    intermediate_size=1536,
    horizon_lengths=[1, 8, 32, 64],
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    hidden_act="silu",
    num_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=4096,
    initializer_range=0.02,
    rms_norm_eps=1e-6,
    rope_theta=10000,
    use_dense=False,
    apply_aux_loss=True,
    router_aux_loss_factor=0.02,
)
TIME_MOE_200M = {**TIME_MOE_50M, "hidden_size": 768, "intermediate_size": 3072}
RELEASED = {"TimeMoE-50M": (TIME_MOE_50M, 113_352_192), "TimeMoE-200M": (TIME_MOE_200M, 453_196_800)}


@pytest.fixture(scope="module")
def oracle():
    """The oracle's configuration and model classes (skips when ../shared/oracles is absent)."""
    configuration, modeling = oracle_modules(
        "time_moe", "configuration_time_moe", "modeling_time_moe", name="Time-MoE"
    )
    return configuration.TimeMoeConfig, modeling.TimeMoeForPrediction


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return max_rel_error(actual, expected, floor=1e-30)


def tiny_pair(oracle, **overrides):
    """An oracle model with its own random initialisation and ours with the same state dict (strict)."""
    oracle_config, oracle_model = oracle
    kwargs = {**TINY, **overrides}
    torch.manual_seed(0)
    reference = oracle_model(oracle_config(**kwargs)).eval()
    ours = TimeMoeForPrediction(TimeMoeConfig(**kwargs)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def released_pair(oracle, kwargs):
    """Both models of a released size without their (slow) initialisation; random weights written once, then copied."""
    oracle_config, oracle_model = oracle
    with no_init_weights():
        reference = oracle_model(oracle_config(**kwargs)).eval()
        ours = TimeMoeForPrediction(TimeMoeConfig(**kwargs)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.1 * noise if "norm" in name else 0.02 * noise)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def compare(reference, ours, series, labels, loss_masks, attention_mask, horizons, new_tokens, thorough=True):
    """Asserts our forecasts, losses and rollouts equal the oracle's (which gets clones: it modifies its inputs).

    `thorough=False` (released sizes) checks one loss per auxiliary-loss setting and the cached rollout only."""

    def oracle_call(**kwargs):
        return reference(**{k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    with torch.no_grad():
        for horizon in horizons:
            expected = oracle_call(input_ids=series, max_horizon_length=horizon).logits
            actual = ours(input_ids=series, max_horizon_length=horizon).logits
            assert actual.shape == expected.shape
            assert rel_err(actual, expected) < TOL, f"forecast, max_horizon_length={horizon}"
        cases = {"plain": {}, "loss_masks": {"loss_masks": loss_masks}, "padding": {"attention_mask": attention_mask}}
        # a dense model has no router: the oracle then fails on apply_aux_loss=True
        for aux in (False,) if reference.config.use_dense else (True, False):
            reference.apply_aux_loss = ours.apply_aux_loss = aux
            chosen = cases if thorough else {"loss_masks": cases["loss_masks"]} if aux else {"plain": {}}
            for case, extra in chosen.items():
                expected = oracle_call(input_ids=series, labels=labels, **extra)
                actual = ours(input_ids=series, labels=labels, **extra)
                assert rel_err(actual.loss, expected.loss) < TOL, f"loss ({case}, apply_aux_loss={aux})"
                assert rel_err(actual.logits, expected.logits) < TOL, f"first-head forecast ({case})"
        reference.apply_aux_loss = ours.apply_aux_loss = reference.config.apply_aux_loss
        context = series.shape[1]
        for n in new_tokens:
            expected = reference.generate(series.clone(), max_new_tokens=n)
            assert expected.shape == (series.shape[0], context + n)
            for use_cache in (True, False) if thorough else (True,):
                actual = ours.generate(series, max_new_tokens=n, use_cache=use_cache)
                assert actual.shape == expected.shape
                assert torch.equal(actual[:, :context], series)
                assert rel_err(actual[:, context:], expected[:, context:]) < ROLLOUT_TOL, (
                    f"rollout of {n} (cache={use_cache})"
                )
        if thorough:
            expected = oracle_call(input_ids=series, attention_mask=attention_mask).logits
            assert rel_err(ours(input_ids=series, attention_mask=attention_mask).logits, expected) < TOL, "padding"
            expected = reference.generate(series.clone(), max_new_tokens=new_tokens[-1], attention_mask=attention_mask)
            actual = ours.generate(series, max_new_tokens=new_tokens[-1], attention_mask=attention_mask)
            assert rel_err(actual[:, context:], expected[:, context:]) < TOL, "padded rollout"


def inputs(batch: int, length: int, channels: int = 1, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, length) if channels == 1 else (batch, length, channels)
    series = torch.randn(shape, generator=generator)
    labels = torch.randn(shape, generator=generator)
    loss_masks = (torch.rand(shape, generator=generator) > 0.3).float()
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, : length // 4] = 0  # left padding in the first series
    return series, labels, loss_masks, attention_mask


# -- configuration ----------------------------------------------------------------------------------------------------


def test_config_fields_and_defaults_equal_the_released_ones(oracle):
    oracle_config, _ = oracle
    expected, actual = oracle_config().to_dict(), TimeMoeConfig().to_dict()
    fields = [k for k in expected if k not in ("transformers_version", "architectures")]
    assert {k: actual[k] for k in fields} == {k: expected[k] for k in fields}
    assert TimeMoeConfig.model_type == "time_moe"
    assert TimeMoeConfig(horizon_lengths=8).horizon_lengths == [8]
    assert TimeMoeConfig(num_attention_heads=8).num_key_value_heads == 8


@pytest.mark.parametrize("use_dense", [True, False])
def test_config_refuses_use_dense_equal_to_apply_aux_loss(use_dense):
    with pytest.raises(ValueError, match="exactly one of them must be True"):
        TimeMoeConfig(use_dense=use_dense, apply_aux_loss=use_dense)


def test_auto_classes_without_remote_code():
    config = AutoConfig.for_model("time_moe", **TINY)
    assert type(config) is TimeMoeConfig
    assert type(AutoModelForCausalLM.from_config(config)) is TimeMoeForPrediction


# -- equality with the oracle -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{}, {"num_key_value_heads": 4}, {"use_dense": True, "apply_aux_loss": False}],
    ids=["moe-gqa", "moe-mha", "dense"],
)
def test_tiny_equals_oracle(oracle, overrides):
    reference, ours = tiny_pair(oracle, **overrides)
    # 20 new points with horizons [1, 8]: two steps of 8, then four of 1; 5: one step of 1 each
    compare(reference, ours, *inputs(2, 48), horizons=[None, 1, 5, 8, 30], new_tokens=[5, 20])


def test_tiny_multichannel_equals_oracle(oracle):
    reference, ours = tiny_pair(oracle, input_size=3)
    series, labels, loss_masks, attention_mask = inputs(2, 32, channels=3)
    with torch.no_grad():
        for horizon in (1, 8):
            expected = reference(input_ids=series.clone(), max_horizon_length=horizon).logits
            assert rel_err(ours(input_ids=series, max_horizon_length=horizon).logits, expected) < TOL
        for extra in ({}, {"loss_masks": loss_masks}, {"attention_mask": attention_mask}):
            cloned = {k: v.clone() for k, v in extra.items()}
            expected = reference(input_ids=series.clone(), labels=labels.clone(), **cloned).loss
            assert rel_err(ours(input_ids=series, labels=labels, **extra).loss, expected) < TOL
        rollout = ours.generate(series, max_new_tokens=10)
    assert rollout.shape == (2, 42, 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RELEASED))
def test_released_size_equals_oracle(oracle, name):
    kwargs, parameters = RELEASED[name]
    reference, ours = released_pair(oracle, kwargs)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters()) == parameters
    # 100 new points with horizons [1, 8, 32, 64]: steps of 64 and 32, then four of 1
    compare(reference, ours, *inputs(2, 64), horizons=[64], new_tokens=[100], thorough=False)


# -- checkpoints ------------------------------------------------------------------------------------------------------


def test_checkpoints_load_both_ways(oracle, tmp_path):
    _, oracle_model = oracle
    reference, ours = tiny_pair(oracle)
    series = inputs(2, 40)[0]
    with torch.no_grad():
        expected = reference(input_ids=series.clone(), max_horizon_length=8).logits
        in_memory = ours(input_ids=series, max_horizon_length=8).logits

    reference.save_pretrained(tmp_path / "oracle")
    loaded, info = TimeMoeForPrediction.from_pretrained(tmp_path / "oracle", output_loading_info=True)
    assert_clean_loading(info)
    assert not any("rotary" in key for key in loaded.state_dict())
    fresh = TimeMoeRotaryEmbedding(16, TINY["max_position_embeddings"], 10000)
    for module in loaded.modules():
        if isinstance(module, TimeMoeRotaryEmbedding):
            for buffer in ("inv_freq", "cos_cached", "sin_cached"):
                assert torch.equal(getattr(module, buffer), getattr(fresh, buffer)), buffer
    with torch.no_grad():
        forecast = loaded.eval()(input_ids=series, max_horizon_length=8).logits
    assert torch.isfinite(forecast).all()
    assert torch.equal(forecast, in_memory)
    assert rel_err(forecast, expected) < TOL

    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "oracle")
    assert type(auto) is TimeMoeForPrediction
    # as on the Hub: config.json names the remote code, which is not there; without trust_remote_code ours loads
    name_remote_code(
        tmp_path / "oracle", "configuration_time_moe.TimeMoeConfig", "modeling_time_moe.TimeMoeForPrediction"
    )
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "oracle")) is TimeMoeForPrediction

    ours.save_pretrained(tmp_path / "ours")
    back, info = oracle_model.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert_clean_loading(info)
    with torch.no_grad():
        assert rel_err(back.eval()(input_ids=series.clone(), max_horizon_length=8).logits, expected) < TOL
    reloaded = TimeMoeForPrediction.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert torch.equal(reloaded.generate(series, max_new_tokens=12), ours.generate(series, max_new_tokens=12))


REMOTE_CODE_CHECK = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert "hf_tsprune" not in sys.modules, "hf_tsprune was imported"
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    torch.save(model.generate(torch.load(sys.argv[2]), max_new_tokens=12), sys.argv[3])
"""


def test_module_runs_as_remote_code(tmp_path):
    """The module file alone, beside the weights, loads with transformers and trust_remote_code in a fresh process."""
    model = tiny_model()
    folder = tmp_path / "remote"
    model.save_pretrained(folder)
    shutil.copy(time_moe.__file__, folder / "time_moe.py")
    name_remote_code(folder, "time_moe.TimeMoeConfig", "time_moe.TimeMoeForPrediction")
    series = torch.randn(2, 40)
    torch.save(series, tmp_path / "series.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    script = [
        sys.executable,
        "-c",
        REMOTE_CODE_CHECK,
        str(folder),
        str(tmp_path / "series.pt"),
        str(tmp_path / "out.pt"),
    ]
    subprocess.run(script, env=env, check=True, cwd=tmp_path, timeout=300)
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt"), model.generate(series, max_new_tokens=12))


# -- contracts --------------------------------------------------------------------------------------------------------


def tiny_model(**overrides) -> TimeMoeForPrediction:
    torch.manual_seed(0)
    return TimeMoeForPrediction(TimeMoeConfig(**{**TINY, **overrides})).eval()


def pruned_and_zeroed(attention, pairs: torch.Tensor):
    """Our attention with only `pairs` (per key/value head) of its rotary query/key pairs, in the engine's layout, and
    the full attention whose query rows of the dropped pairs are zero."""
    d, half, groups = attention.head_dim, attention.head_dim // 2, attention.num_key_value_groups
    zeroed, pruned = copy.deepcopy(attention), copy.deepcopy(attention)

    def rows(head: int, kv_head: int) -> torch.Tensor:
        return torch.cat([head * d + pairs[kv_head], head * d + half + pairs[kv_head]])

    q_rows = torch.cat([rows(h, h // groups) for h in range(attention.num_heads)])
    k_rows = torch.cat([rows(g, g) for g in range(attention.num_key_value_heads)])
    with torch.no_grad():
        dropped = torch.ones(attention.q_proj.out_features, dtype=torch.bool)
        dropped[q_rows] = False
        zeroed.q_proj.weight[dropped] = 0.0
        zeroed.q_proj.bias[dropped] = 0.0
        for name, kept in (("q_proj", q_rows), ("k_proj", k_rows)):
            setattr(pruned, name, kept_rows(getattr(attention, name), kept))
    pruned.head_dim = 2 * pairs.shape[1]
    pruned.register_buffer("rotary_pairs", pairs)
    return pruned, zeroed


def test_rotary_pairs_contract():
    model = tiny_model()
    attention = model.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(3)
    half = attention.head_dim // 2
    pairs = torch.stack([torch.randperm(half, generator=generator)[:5] for _ in range(attention.num_key_value_heads)])
    pruned, zeroed = pruned_and_zeroed(attention, pairs)
    assert pruned.scaling == zeroed.scaling == attention.head_dim**-0.5
    hidden = torch.randn(2, 24, TINY["hidden_size"], generator=generator)
    positions = torch.arange(24).view(1, -1)
    with torch.no_grad():
        expected = zeroed(hidden, positions)[0]
        assert rel_err(pruned(hidden, positions)[0], expected) < TOL
        assert rel_err(expected, attention(hidden, positions)[0]) > 1e-3  # the dropped pairs mattered

        # all pairs in their order: the pairs path is the plain path
        identity = copy.deepcopy(attention)
        identity.register_buffer("rotary_pairs", torch.arange(half).repeat(attention.num_key_value_heads, 1))
        assert torch.equal(identity(hidden, positions)[0], attention(hidden, positions)[0])

        # in the whole model, with the key/value cache of a rollout
        with_pruned, with_zeroed = copy.deepcopy(model), copy.deepcopy(model)
        with_pruned.model.layers[0].self_attn, with_zeroed.model.layers[0].self_attn = pruned, zeroed
        series = torch.randn(2, 40, generator=generator)
        expected = with_zeroed.generate(series, max_new_tokens=20)
        assert rel_err(with_pruned.generate(series, max_new_tokens=20)[:, 40:], expected[:, 40:]) < TOL


def test_value_head_dim_contract():
    model = tiny_model()
    attention = model.model.layers[1].self_attn
    d, groups = attention.v_head_dim, attention.num_key_value_groups
    generator = torch.Generator().manual_seed(4)
    kept = torch.stack([torch.randperm(d, generator=generator)[:6].sort().values for _ in range(2)])
    v_rows = torch.cat([g * d + kept[g] for g in range(attention.num_key_value_heads)])
    o_cols = torch.cat([h * d + kept[h // groups] for h in range(attention.num_heads)])
    zeroed, pruned = copy.deepcopy(attention), copy.deepcopy(attention)
    with torch.no_grad():
        dropped = torch.ones(attention.v_proj.out_features, dtype=torch.bool)
        dropped[v_rows] = False
        zeroed.v_proj.weight[dropped] = 0.0
        zeroed.v_proj.bias[dropped] = 0.0
        v = torch.nn.Linear(attention.v_proj.in_features, v_rows.numel())
        v.weight.copy_(attention.v_proj.weight[v_rows])
        v.bias.copy_(attention.v_proj.bias[v_rows])
        o = torch.nn.Linear(o_cols.numel(), attention.o_proj.out_features, bias=False)
        o.weight.copy_(attention.o_proj.weight[:, o_cols])
        pruned.v_proj, pruned.o_proj, pruned.v_head_dim = v, o, 6
        hidden = torch.randn(2, 16, TINY["hidden_size"], generator=generator)
        positions = torch.arange(16).view(1, -1)
        assert rel_err(pruned(hidden, positions)[0], zeroed(hidden, positions)[0]) < TOL


@pytest.mark.parametrize("qk_head_dim, v_head_dim", [(6, 12), (12, 6), (12, 12)])
def test_fused_attention_runs_one_kernel_for_unequal_head_dims(qk_head_dim, v_head_dim):
    """Pruned rotary pairs or value channels leave the query/key and value head dims unequal. The attention still runs
    PyTorch's fused CPU flash kernel (which needs one head dim; the shrunk Time-MoE lost it before) and equals the
    unfused attention at the unpruned scale, forward and backward, causal and with an additive mask."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"query": qk_head_dim, "key": qk_head_dim, "value": v_head_dim}
    tensors = {n: torch.randn(2, 3, 20, d, generator=generator, requires_grad=True) for n, d in shapes.items()}
    scaling = 16**-0.5
    additive = torch.randn(2, 1, 20, 20, generator=generator)
    for mask, is_causal in ((None, True), (additive, False)):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            output = time_moe.fused_attention(*tensors.values(), mask, 0.0, scaling, is_causal)
        assert "aten::_scaled_dot_product_flash_attention_for_cpu" in {e.key for e in profile.key_averages()}
        scores = tensors["query"] @ tensors["key"].transpose(2, 3) * scaling
        scores = scores + (additive if mask is not None else torch.full((20, 20), -torch.inf).triu(1))
        expected = torch.softmax(scores, dim=-1) @ tensors["value"]
        assert output.shape == expected.shape == (2, 3, 20, v_head_dim)
        assert rel_err(output, expected) < TOL
        cotangent = torch.randn(expected.shape, generator=generator)
        grads = torch.autograd.grad(output, list(tensors.values()), cotangent)
        expected_grads = torch.autograd.grad(expected, list(tensors.values()), cotangent)
        for grad, expected_grad in zip(grads, expected_grads):
            assert rel_err(grad, expected_grad) < TOL


def test_eager_attention_equals_sdpa():
    model = tiny_model()
    series, _, _, attention_mask = inputs(2, 24)
    with torch.no_grad():
        for mask in (None, attention_mask):
            sdpa = model(input_ids=series, attention_mask=mask, max_horizon_length=8)
            eager = model(input_ids=series, attention_mask=mask, max_horizon_length=8, output_attentions=True)
            assert sdpa.attentions is None and len(eager.attentions) == TINY["num_hidden_layers"]
            assert eager.attentions[0].shape == (2, TINY["num_attention_heads"], 24, 24)
            assert torch.allclose(eager.attentions[0].sum(-1), torch.ones(()))
            assert rel_err(eager.logits, sdpa.logits) < TOL


def test_fully_masked_rows_attend_uniformly():
    """Padded points before the first observed one see no key: as released, they average every value (on every
    SDPA backend; CUDA kernels otherwise differ there)."""
    attention = tiny_model().model.layers[0].self_attn
    series, _, _, attention_mask = inputs(2, 16)
    hidden = torch.randn(2, 16, TINY["hidden_size"])
    mask = time_moe._attention_mask(attention_mask, 2, 16, 0, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        out = attention(hidden, torch.arange(16).view(1, -1), attention_mask=mask)[0]
        value = attention.v_proj(hidden).view(2, 16, 2, 1, 16).expand(2, 16, 2, 2, 16).reshape(2, 16, 64)
        expected = attention.o_proj(value.mean(dim=1))
    assert rel_err(out[0, :4], expected[0].expand(4, -1)) < TOL  # the first 4 points of series 0 are padding
    assert rel_err(out[0, 4:], expected[0].expand(12, -1)) > 1e-3


def test_gradient_checkpointing_gives_the_same_gradients():
    series, labels, _, _ = inputs(2, 24)
    grads, calls = [], []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        counter = []
        model.model.layers[0].self_attn.register_forward_pre_hook(lambda *args, counter=counter: counter.append(1))
        model(input_ids=series, labels=labels).loss.backward()
        calls.append(len(counter))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert calls == [1, 2], "the checkpointed layer runs again in the backward pass"
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, atol=1e-7), name


def test_cache_steps_equal_one_pass():
    model = tiny_model()
    series = torch.randn(2, 30)
    with torch.no_grad():
        full = model(input_ids=series, max_horizon_length=8, use_cache=False).logits
        out = model(input_ids=series[:, :20], max_horizon_length=8, use_cache=True)
        cache = out.cache
        assert cache.get_seq_length() == 20
        step = model(input_ids=series[:, 20:27], past_key_values=cache, max_horizon_length=8).logits
        last = model(input_ids=series[:, 27:], past_key_values=cache, max_horizon_length=8).logits
    assert rel_err(torch.cat([out.logits, step, last], dim=1), full) < TOL


def test_loss_uses_every_target_and_modifies_no_input():
    model = tiny_model()
    series, labels, loss_masks, attention_mask = inputs(2, 32)
    copies = [t.clone() for t in (series, labels, loss_masks, attention_mask)]
    labels.requires_grad_(True)
    model(input_ids=series, labels=labels).loss.backward()
    assert (labels.grad != 0).all(), "a target the loss ignores"
    labels.grad = None
    model(input_ids=series, labels=labels, loss_masks=loss_masks, attention_mask=attention_mask).loss.backward()
    assert ((labels.grad != 0) == loss_masks.bool()).all(), "loss_masks: exactly the masked targets are ignored"
    labels = labels.detach()
    with torch.no_grad():
        changed = labels.clone()
        changed[1, -1] += 1.0
        assert model(input_ids=series, labels=changed).loss != model(input_ids=series, labels=labels).loss
    for before, after in zip(copies, (series, labels, loss_masks, attention_mask)):
        assert before.shape == after.shape and torch.equal(before, after)


def test_aux_loss_switch():
    model = tiny_model()
    series, labels, _, _ = inputs(2, 32)
    with torch.no_grad():
        with_aux = model(input_ids=series, labels=labels)
        model.apply_aux_loss = False
        without = model(input_ids=series, labels=labels)
    assert with_aux.aux_loss is not None and without.aux_loss is None
    assert len(with_aux.router_logits) == TINY["num_hidden_layers"]
    assert torch.allclose(with_aux.loss, without.loss + model.router_aux_loss_factor * with_aux.aux_loss)


def test_experts_counted_from_the_modules():
    model = tiny_model()
    series, labels, _, _ = inputs(2, 32)
    block = model.model.layers[1].ffn_layer
    keep = [0, 2, 3]
    with torch.no_grad():
        router = torch.nn.Linear(block.gate.in_features, len(keep), bias=False)
        router.weight.copy_(block.gate.weight[keep])
        block.gate = router
        block.experts = torch.nn.ModuleList([block.experts[i] for i in keep])
        block.num_experts = len(keep)
        out = model(input_ids=series, labels=labels)
        rollout = model.generate(series, max_new_tokens=10)
    assert [r.shape[-1] for r in out.router_logits] == [4, 3]
    assert torch.isfinite(out.loss) and torch.isfinite(out.aux_loss) and torch.isfinite(rollout).all()


def test_removing_an_unused_expert_with_kept_experts_is_exact():
    model = tiny_model()
    series = torch.randn(4, 48, generator=torch.Generator().manual_seed(5))
    block = model.model.layers[1].ffn_layer
    router_inputs = []
    handle = block.register_forward_pre_hook(lambda module, args: router_inputs.append(args[0].reshape(-1, 64)))
    with torch.no_grad():
        model(input_ids=series)
        handle.remove()
        mean = router_inputs[0].mean(dim=0)
        block.gate.weight[3] = -0.1 * mean / mean.norm()  # expert 3: no time point of `series` chooses it
        out = model(input_ids=series, max_horizon_length=8)
        assert not (out.router_logits[1].softmax(-1).topk(2, dim=-1).indices == 3).any()
        assert out.router_logits[1].softmax(-1)[:, 3].min() > 0.1  # yet it holds softmax mass
        keep = [0, 1, 2]
        exact, cut = copy.deepcopy(model), copy.deepcopy(model)
        for pruned in (exact, cut):
            pruned_block = pruned.model.layers[1].ffn_layer
            pruned_block.experts = torch.nn.ModuleList([pruned_block.experts[i] for i in keep])
            pruned_block.num_experts = len(keep)
        exact.model.layers[1].ffn_layer.register_buffer("kept_experts", torch.tensor(keep))
        cut_block = cut.model.layers[1].ffn_layer
        router = torch.nn.Linear(64, len(keep), bias=False)
        router.weight.copy_(cut_block.gate.weight[keep])
        cut_block.gate = router
        exact_out = exact(input_ids=series, max_horizon_length=8)
        cut_out = cut(input_ids=series, max_horizon_length=8)
    assert torch.equal(exact_out.logits, out.logits)
    # the same router rows, multiplied as part of a 4-row and of a 3-row matrix: kernels may round them differently
    assert rel_err(exact_out.router_logits[1], cut_out.router_logits[1]) < 1e-6
    assert rel_err(cut_out.logits, out.logits) > 1e-3  # cut router rows: the softmax denominator changed


def test_module_imports_only_stdlib_torch_transformers():
    roots = import_roots(time_moe)
    assert "hf_tsprune" not in roots
    assert roots - set(sys.stdlib_module_names) <= {"torch", "transformers"}
