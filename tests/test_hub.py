"""Model cards, the kept-units heatmap, and pushes to a fake Hub (huggingface_hub's HTTP client, injected)."""

import base64
import json
import logging
import os
import tempfile
import time

import httpx2
import pytest
import torch
from huggingface_hub import ModelCard, constants, set_client_factory
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils._http import close_session, default_client_factory
from models import build
from safetensors.torch import load as load_safetensors
from test_surgery import random_masks
from transformers import AutoModelForTimeSeriesPrediction

import hf_tsprune
from hf_tsprune import PruningConfig, get_spec, install_masks, is_pruned_model, shrink, to_pruned_model
from hf_tsprune.hub import (
    KEPT_UNITS_IMAGE,
    ForecastResult,
    HubUnreachableError,
    _as_results,
    card_template,
    make_model_card,
    measure_latency,
    plot_kept_units,
    push_folder_to_hub,
    push_pruned_to_hub,
    save_model_card,
    write_model_card,
)
from hf_tsprune.modeling import REMOTE_CODE_FILES

FAKE_TOKEN = "hf_fakeTokenThatMustNeverBePrinted0123456789"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ETT = {"dataset": "ETTh1", "dataset_id": "ett-org/ett", "dataset_config": "h1"}
RESULTS = [
    {**ETT, "horizon": 96, "mse": 0.3712, "mae": 0.3951},
    {**ETT, "horizon": 192, "mse": 0.4021, "mae": 0.4133},
    {**ETT, "horizon": 96, "split": "validation", "mse": 0.6512, "mae": 0.5401},
    {"dataset": "Weather", "dataset_id": "weather-org/weather", "horizon": 96, "mse": 0.1493, "mae": 0.2010,
     "context_length": 512},
]  # fmt: skip
ZERO_SHOT = [{"dataset": "ETTh1", "horizon": 96, "mse": 0.4401, "mae": 0.4210}]
FINETUNED = [{"dataset": "ETTh1", "horizon": 96, "mse": 0.3899, "mae": 0.4017}]


def pruned_patchtst(convert: bool = True):
    model = build("patchtst")
    install_masks(model)
    plan = shrink(model, random_masks(model, 0.5, seed=3))
    if convert:
        to_pruned_model(model, base_model="org/base", base_model_revision="f" * 40, plan=plan,
                        pruning_config=PruningConfig(ratio_per_epoch=0.25), seed=11)  # fmt: skip
    return model, plan


def test_card_renders_reloads_and_round_trips_the_numbers(tmp_path):
    model, plan = pruned_patchtst()
    latency = {"batch 1": {"base": 2.0, "pruned": 1.25}, "batch 64": {"base": 10.0, "pruned": 5.0}}
    card = save_model_card(
        model, tmp_path, repo_id="me/patchtst-pruned", results=RESULTS, results_label="pruned + finetuned",
        baselines={"base zero-shot": ZERO_SHOT, "base full finetune": FINETUNED}, latency=latency,
        latency_device="test CPU", license="apache-2.0", tags=["ett"], training_note="Finetuned for 3 epochs.",
    )  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["README.md", KEPT_UNITS_IMAGE]
    assert (tmp_path / KEPT_UNITS_IMAGE).read_bytes().startswith(PNG_MAGIC)
    loaded = ModelCard.load(tmp_path / "README.md")
    assert str(loaded) == str(card)
    data = loaded.data
    assert data.base_model == "org/base" and data.license == "apache-2.0"
    assert data.library_name == "transformers" and data.pipeline_tag == "time-series-forecasting"
    assert data.datasets == ["ett-org/ett", "weather-org/weather"]
    assert {"hf_tsprune", "pruning", "patchtst", "ett"} <= set(data.tags)
    block = data.hf_tsprune
    assert block["sparsity"] == pytest.approx(plan.sparsity) and block["seed"] == 11
    assert (block["params_before"], block["params_after"]) == (plan.params_before, plan.params_after)
    assert (block["flops_before"], block["flops_after"]) == (plan.flops_before, plan.flops_after)
    assert block["settings"]["ratio_per_epoch"] == 0.25 and block["base_model_revision"] == "f" * 40
    # model-index parses back to exactly the numbers given, per dataset, split and horizon
    assert data.model_name == "patchtst-pruned"
    parsed = {
        (r.dataset_name, r.dataset_type, r.dataset_split, r.metric_args["prediction_length"], r.metric_type): (
            r.metric_value
        )
        for r in data.eval_results
    }
    expected = {
        (r["dataset"], r["dataset_id"], r.get("split", "test"), r["horizon"], metric): r[metric]
        for r in RESULTS
        for metric in ("mse", "mae")
    }
    assert parsed == expected
    assert all(r.task_type == "time-series-forecasting" for r in data.eval_results)
    body = loaded.text
    for needle in (
        'from_pretrained("me/patchtst-pruned")', 'from_pretrained("me/patchtst-pruned", trust_remote_code=True)',
        "import hf_tsprune", f"![Kept units per layer]({KEPT_UNITS_IMAGE})", "arXiv 2505.23195",
        "eprint    = {2505.23195}",
        "| ETTh1 | test | 96 | 0.3712 | 0.3951 | 0.4401 | 0.421 | 0.3899 | 0.4017 |",
        "| ETTh1 | test | 192 | 0.4021 | 0.4133 | – | – | – | – |", "pruned + finetuned MSE", "base full finetune MAE",
        "| batch 64 | 10 | 5 | 2.00x |", "test CPU", "Finetuned for 3 epochs.", "`PrunedPatchTSTForPrediction`",
        f"{plan.params_before:,} → {plan.params_after:,}",
    ):  # fmt: skip
        assert needle in body, needle
    for group in plan.groups:
        assert f"| `{group.name}` | {group.kind} | {group.units_after}/{group.units_before} |" in body


def test_card_inherits_the_base_licence_and_works_from_a_loaded_checkpoint(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    model, plan = pruned_patchtst(convert=False)
    hf_tsprune.save_pruned(model, tmp_path / "ckpt", base_model=str(base), plan=plan)
    loaded = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "ckpt")
    card = make_model_card(loaded)  # no results, no latency: still renders
    assert card.data.license == "mit" and card.data.base_model is None  # a local path is no Hub id
    assert "model-index" not in card.content and "No evaluation results were given." in card.text
    assert "No latency figures were given." in card.text and f"`{base}`" in card.text
    with pytest.raises(ValueError, match="to_pruned_model"):
        make_model_card(build("patchtst"))


def test_template_is_packaged_and_heatmap_accepts_groups(tmp_path):
    assert card_template().startswith("---\n{{ card_data }}\n---")
    import hf_tsprune.hub as hub_module

    packaged = os.path.join(os.path.dirname(hub_module.__file__), "model_cards", "pruned_model_card.md")
    assert os.path.isfile(packaged)
    model, _ = pruned_patchtst()
    custom = tmp_path / "custom.md"
    custom.write_text("---\n{{ card_data }}\n---\n# {{ title }} keeps {{ '%.0f' | format(100 * (1 - sparsity)) }}%\n")
    assert make_model_card(model, template_path=custom, license="mit").text.strip() == "# patchtst-pruned keeps 50%"
    path = plot_kept_units(model.config.pruning["groups"], tmp_path / "h.png", title="custom")
    assert open(path, "rb").read(8) == PNG_MAGIC
    with pytest.raises(ValueError, match="empty"):
        plot_kept_units({}, tmp_path / "empty.png")


def test_results_normalisation_accepts_evaluation_output():
    evaluation_output = {
        "model": "org/m", "dataset": "ETTh1", "prediction_length": 96, "context_length": 512,
        "test": {"mse": 0.5, "mae": 0.4, "num_values": 10}, "validation": {"mse": 0.7, "mae": 0.6},
    }  # fmt: skip
    results = _as_results([evaluation_output, ForecastResult("Weather", 24, 0.1, 0.2)])
    assert [(r.dataset, r.split, r.horizon, r.mse, r.context_length) for r in results] == [
        ("ETTh1", "validation", 96, 0.7, 512),
        ("ETTh1", "test", 96, 0.5, 512),
        ("Weather", "test", 24, 0.1, None),
    ]
    with pytest.raises(ValueError, match="needs `dataset`, `horizon`, `mse` and `mae`"):
        _as_results({"dataset": "x", "mse": 1.0})
    with pytest.raises(ValueError, match="per-split sub-dicts"):
        _as_results({"dataset": "x"})


def test_write_model_card_from_pipeline_results(tmp_path):
    model, plan = pruned_patchtst(convert=False)
    hf_tsprune.save_pruned(model, tmp_path / "pruned", base_model="org/base", plan=plan, seed=1)
    results = {
        "dataset": "ETTh1", "prediction_length": 96, "context_length": 512,
        "zero_shot": {"test": {"mse": 0.51, "mae": 0.47, "n_windows": 10}},
        "pruned": {"test": {"mse": 0.66, "mae": 0.58, "n_windows": 10}},
        "finetuned": {"test": {"mse": 0.42, "mae": 0.41, "n_windows": 10}, "validation_loss": 0.3},
        "latency": {"batch 1": {"base": 3.0, "pruned": 2.0}},
    }  # fmt: skip
    card = write_model_card(tmp_path / "pruned", results, license="apache-2.0")
    assert (tmp_path / "pruned" / "README.md").is_file() and (tmp_path / "pruned" / KEPT_UNITS_IMAGE).is_file()
    assert [(r.metric_type, r.metric_value, r.metric_args) for r in card.data.eval_results] == [
        ("mse", 0.42, {"prediction_length": 96, "context_length": 512}),
        ("mae", 0.41, {"prediction_length": 96, "context_length": 512}),
    ]
    assert "| ETTh1 | test | 96 | 0.42 | 0.41 | 0.66 | 0.58 | 0.51 | 0.47 |" in card.text
    assert "pruned + finetuned MSE | pruned + finetuned MAE | pruned MSE" in card.text and "| 1.50x |" in card.text
    build("patchtst").save_pretrained(tmp_path / "dense")
    assert write_model_card(tmp_path / "dense", results) is None  # an unpruned checkpoint gets no pruned-model card


def test_measure_latency_reports_milliseconds():
    model, _ = pruned_patchtst()
    latency = measure_latency({"base": build("patchtst"), "pruned": model}, batch_sizes=(1, 2), repeats=1, warmup=0)
    assert set(latency) == {"batch 1", "batch 2"}
    assert all(set(row) == {"base", "pruned"} and min(row.values()) > 0 for row in latency.values())


class FakeHub:
    """Answers the Hub endpoints a push uses and records every request."""

    def __init__(
        self, fail_commit: bool = False, unreachable: bool = False, exists: bool = False, reject_token: bool = False
    ):
        self.requests: list[httpx2.Request] = []
        self.created: list[dict] = []
        self.deleted: list[dict] = []
        self.commits: list[dict] = []
        self.fail_commit = fail_commit
        self.unreachable = unreachable
        self.exists = exists
        self.reject_token = reject_token

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if self.unreachable:
            raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)
        path = request.url.path
        if path == "/api/whoami-v2":  # the token check before a push
            if self.reject_token:
                return httpx2.Response(401, json={"error": "Invalid credentials in Authorization header"})
            return httpx2.Response(200, json={"type": "user", "name": "me", "auth": {"type": "access_token"}})
        if path == "/api/repos/create":
            body = json.loads(request.content)
            if self.exists:
                return httpx2.Response(409, json={"error": "You already created this model repo"})
            self.created.append(body)
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{body['organization']}/{body['name']}"})
        if path == "/api/repos/delete":
            self.deleted.append(json.loads(request.content))
            return httpx2.Response(200, json={})
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return httpx2.Response(200, json={"files": modes})
        if "/commit/" in path:
            if self.fail_commit:
                return httpx2.Response(422, json={"error": "Commit rejected"})
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
            files = {
                line["value"]["path"]: base64.b64decode(line["value"]["content"])
                for line in lines
                if line["key"] == "file"
            }
            header = next(line["value"] for line in lines if line["key"] == "header")
            self.commits.append({"path": path, "files": files, "header": header})
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            oid = "c" * 40
            return httpx2.Response(
                200, json={"commitUrl": f"https://huggingface.co/{repo}/commit/{oid}", "commitOid": oid}
            )
        if path.startswith("/api/models/org/base"):  # base model info: its card's licence
            return httpx2.Response(
                200, json={"id": "org/base", "sha": "f" * 40, "cardData": {"license": "apache-2.0"}}
            )
        return httpx2.Response(404, json={"error": f"{path} not found"})

    @property
    def writes(self) -> list[tuple[str, str]]:
        return [(r.method, r.url.path) for r in self.requests if r.method != "GET"]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Online mode against a fake Hub; temporary folders under tmp_path/tmp to check nothing is left behind."""
    fakes = []

    def install(**kwargs) -> FakeHub:
        fake = FakeHub(**kwargs)
        fakes.append(fake)
        set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake)))
        return fake

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    yield install
    set_client_factory(default_client_factory)
    close_session()


def test_push_uploads_everything_in_one_commit(hub, tmp_path, capsys, caplog):
    fake = hub()
    model, plan = pruned_patchtst(convert=False)
    inputs = get_spec(model).example_inputs(model, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = get_spec(model).forecast(model, inputs)
    with caplog.at_level(logging.DEBUG):
        info = push_pruned_to_hub(
            model, "me/patchtst-pruned", private=True, base_model="org/base", base_model_revision="f" * 40, plan=plan,
            pruning_config={"ratio_per_epoch": 0.3, "hub_token": FAKE_TOKEN}, seed=5, results=RESULTS[:2],
            baselines={"base zero-shot": ZERO_SHOT},
        )  # fmt: skip
    assert info.oid == "c" * 40 and is_pruned_model(model)
    assert fake.created == [
        {"name": "patchtst-pruned", "organization": "me", "visibility": "private", "type": "model"}
    ]
    assert len(fake.commits) == 1 and fake.deleted == []
    assert [w for w in fake.writes if "/commit/" in w[1] or "/repos/" in w[1]] == [
        ("POST", "/api/repos/create"),
        ("POST", "/api/models/me/patchtst-pruned/commit/main"),
    ]
    files = fake.commits[0]["files"]
    assert sorted(files) == sorted(
        ["README.md", KEPT_UNITS_IMAGE, "config.json", "model.safetensors", *REMOTE_CODE_FILES]
    )
    assert fake.commits[0]["header"]["summary"].startswith("Upload pruned patchtst (50% of channels pruned)")
    # the card's metadata, with the licence inherited from the base model's Hub card
    card = ModelCard(files["README.md"].decode())
    assert card.data.license == "apache-2.0" and card.data.base_model == "org/base"
    assert card.data.pipeline_tag == "time-series-forecasting" and card.data.library_name == "transformers"
    assert card.data.hf_tsprune["seed"] == 5 and card.data.hf_tsprune["sparsity"] == pytest.approx(plan.sparsity)
    parsed = {
        (r.dataset_name, r.metric_args["prediction_length"], r.metric_type): r.metric_value
        for r in card.data.eval_results
    }
    assert parsed == {("ETTh1", r["horizon"], m): r[m] for r in RESULTS[:2] for m in ("mse", "mae")}
    assert files[KEPT_UNITS_IMAGE].startswith(PNG_MAGIC)
    config = json.loads(files["config.json"])
    assert config["model_type"] == "hf_tsprune_patchtst" and config["base_model_revision"] == "f" * 40
    weights = load_safetensors(files["model.safetensors"])
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    # what was committed loads back, bit-identical
    for name, content in files.items():
        (tmp_path / "downloaded").mkdir(exist_ok=True)
        (tmp_path / "downloaded" / name).write_bytes(content)
    loaded = AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path / "downloaded").eval()
    with torch.no_grad():
        assert torch.equal(get_spec(loaded).forecast(loaded, inputs), expected)
    # the token authenticated the writes and appears nowhere else
    assert all(r.headers.get("authorization") == f"Bearer {FAKE_TOKEN}" for r in fake.requests if r.method == "POST"
               and "/validate-yaml" not in r.url.path)  # fmt: skip
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err + caplog.text
    assert not any(FAKE_TOKEN.encode() in content for content in files.values())
    assert os.listdir(tmp_path / "tmp") == []  # the temporary folder is gone


def test_push_folder_to_an_existing_repository(hub, tmp_path):
    fake = hub(exists=True)
    model, plan = pruned_patchtst()
    folder = tmp_path / "ckpt"
    hf_tsprune.save_pruned(model, folder)
    write_model_card(folder, license="mit")
    info = push_folder_to_hub(folder, "me/existing", commit_message="second version")
    assert info.oid == "c" * 40 and fake.created == [] and fake.deleted == []
    assert sorted(fake.commits[0]["files"]) == sorted(os.listdir(folder))
    assert fake.commits[0]["header"]["summary"] == "second version"
    with pytest.raises(ValueError, match="Nothing to upload"):
        push_folder_to_hub(tmp_path / "missing", "me/existing")


def test_failed_commit_deletes_the_repository_it_created(hub, tmp_path):
    fake = hub(fail_commit=True)
    model, _ = pruned_patchtst()
    with pytest.raises(HfHubHTTPError, match="422"):
        push_pruned_to_hub(model, "me/broken", license="mit")
    assert [c["name"] for c in fake.created] == ["broken"]
    assert fake.deleted == [{"name": "broken", "organization": "me", "type": "model"}]
    assert fake.commits == [] and os.listdir(tmp_path / "tmp") == []


def test_push_without_network_fails_clearly_and_leaves_nothing(hub, tmp_path):
    fake = hub(unreachable=True)
    model, _ = pruned_patchtst()
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="Could not reach the Hugging Face Hub.*nothing was uploaded"):
        push_pruned_to_hub(model, "me/unreachable")
    assert time.perf_counter() - start < 30
    assert fake.created == [] and fake.commits == []
    assert {r.method for r in fake.requests if r.url.path != "/api/validate-yaml"} == {"GET"}  # nothing written
    assert os.listdir(tmp_path / "tmp") == []


def test_offline_mode_fails_fast_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests = []
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(lambda r: requests.append(r))))
    try:
        model, plan = pruned_patchtst(convert=False)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        start = time.perf_counter()
        with pytest.raises(OfflineModeIsEnabled, match="offline mode is enabled \\(HF_HUB_OFFLINE=1\\).*save_pruned"):
            push_pruned_to_hub(model, "me/offline", plan=plan)
        assert time.perf_counter() - start < 1.0
    finally:
        set_client_factory(default_client_factory)
        close_session()
    assert requests == [] and os.listdir(tmp_path) == []
    assert not is_pruned_model(model)  # nothing was done to the model either
