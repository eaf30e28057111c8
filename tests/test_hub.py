"""Publishing and pulling: push_to_hub captured at huggingface_hub's HTTP client, then from_pretrained from the
local Hub cache layout (HF_HUB_OFFLINE=1) in a fresh process, with and without the package; safe loading."""

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import httpx2
import huggingface_hub
import pytest
import torch

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.data import train_shared_tokenizer
from meta_xlm.hub import UnsafeCheckpointError, load_pretrained, publishable_files, push_to_hub
from meta_xlm.model_card import usage_snippet, write_model_card
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM

LANGUAGES = ["en", "te", "pt"]
REPO_ID = "meta-xlm-org/tiny-meta-adpt"
SENTENCES = {
    "en": [f"the cat number {i} sat on the mat near house {i % 7}" for i in range(120)],
    "te": [f"తెలుగు వాక్యం సంఖ్య {i} ఇక్కడ ఉంది" for i in range(120)],
    "pt": [f"o gato número {i} sentou no tapete da casa {i % 5}" for i in range(120)],
}


def save_tiny_checkpoint(
    directory: Path, languages=LANGUAGES, language_modules="adapters"
) -> MetaXLMForMaskedLM:
    """A random tiny MetaXLMForMaskedLM (hidden 32, 2 layers, 4 heads, FFN 37) with a small trained tokenizer."""
    corpora = {code: datasets.Dataset.from_dict({"text": SENTENCES[code]}) for code in languages}
    tokenizer = train_shared_tokenizer(
        corpora, vocab_size=300, temperature=1.0, num_sentences=300, seed=0, show_progress=False
    )
    torch.manual_seed(0)
    config = MetaXLMConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, languages=list(languages), language_modules=language_modules,
    )  # fmt: skip
    model = MetaXLMForMaskedLM(config).eval()
    with torch.no_grad():  # non-zero adapters, so that every language computes something different
        for name, param in model.named_parameters():
            if ".adapter_modules." in name:
                param.normal_(0, 0.3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "pretrain_config.yaml").write_text(
        "max_steps: 7\nper_device_train_batch_size: 13\nseed: 0\n"
    )
    torch.save(
        {"pickled": True}, directory / "training_args.bin"
    )  # what Trainer writes: must never be published
    return model


class FakeHub:
    """The Hub's HTTP API as far as create_repo / create_branch / create_commit use it (regular + LFS uploads)."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.repos: dict[str, dict] = {}  # repo_id -> {"visibility": ..., "branches": {name: {path: bytes}}}
        self.lfs_objects: dict[str, bytes] = {}
        self.commits: list[dict] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        if (request.method, path) == ("POST", "/api/repos/create"):
            body = json.loads(request.content)
            repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            self.repos.setdefault(repo_id, {"visibility": body.get("visibility"), "branches": {"main": {}}})
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{repo_id}", "id": repo_id})
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if match := re.fullmatch(r"/api/models/(.+?/.+?)/branch/(.+)", path):
            branches = self.repos[match[1]]["branches"]
            branches.setdefault(match[2], dict(branches["main"]))
            return httpx2.Response(200, json={})
        if match := re.fullmatch(r"/api/models/(.+?/.+?)/preupload/(.+)", path):
            files = json.loads(request.content)["files"]
            modes = [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                 "shouldIgnore": False, "oid": None}
                for f in files
            ]  # fmt: skip
            return httpx2.Response(200, json={"files": modes})
        if match := re.fullmatch(r"/(.+?/.+?)\.git/info/lfs/objects/batch", path):
            objects = json.loads(request.content)["objects"]
            actions = [
                {"oid": o["oid"], "size": o["size"],
                 "actions": {"upload": {"href": f"https://lfs.fake/upload/{o['oid']}"}}}
                for o in objects
            ]  # fmt: skip
            return httpx2.Response(200, json={"transfer": "basic", "objects": actions})
        if match := re.fullmatch(r"/upload/([0-9a-f]{64})", path):
            content = request.read()
            assert hashlib.sha256(content).hexdigest() == match[1]
            self.lfs_objects[match[1]] = content
            return httpx2.Response(200, json={})
        if match := re.fullmatch(r"/api/models/(.+?/.+?)/commit/(.+)", path):
            return self.commit(match[1], match[2], request)
        return httpx2.Response(404, json={"error": f"FakeHub: no route for {request.method} {path}"})

    def commit(self, repo_id: str, revision: str, request: httpx2.Request) -> httpx2.Response:
        lines = [json.loads(line) for line in request.read().decode().splitlines() if line.strip()]
        files = {}
        for line in lines:
            if line["key"] == "file":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] == "lfsFile":
                files[line["value"]["path"]] = self.lfs_objects[line["value"]["oid"]]
        branch = self.repos[repo_id]["branches"][revision]
        branch.update(files)
        sha = hashlib.sha1(
            json.dumps(sorted((p, hashlib.sha256(c).hexdigest()) for p, c in branch.items())).encode()
        )
        oid = sha.hexdigest()
        self.commits.append({"repo_id": repo_id, "revision": revision, "oid": oid, "files": files,
                             "summary": lines[0]["value"]["summary"]})  # fmt: skip
        return httpx2.Response(
            200, json={"commitUrl": f"https://huggingface.co/{repo_id}/commit/{oid}", "commitOid": oid}
        )

    def write_cache(self, cache_dir: Path, repo_id: str, revision: str) -> str:
        """Lay the branch out as huggingface_hub's cache: models--org--name/{snapshots/<sha>/..., refs/<revision>}."""
        commit = [c for c in self.commits if c["repo_id"] == repo_id and c["revision"] == revision][-1]
        repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo_dir / "snapshots" / commit["oid"]
        snapshot.mkdir(parents=True, exist_ok=True)  # two branches with the same files share a snapshot
        for name, content in self.repos[repo_id]["branches"][revision].items():
            (snapshot / name).write_bytes(content)
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / revision).write_text(commit["oid"])
        return commit["oid"]


@pytest.fixture
def fake_hub(monkeypatch):
    # hf_xet uploads large files from Rust, outside huggingface_hub's HTTP client (and would try the network):
    # the legacy LFS protocol keeps every byte of the push on the httpx2 client captured here.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    hub = FakeHub()
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub.handle)))
    yield hub
    huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hub") / "output"
    model = save_tiny_checkpoint(directory)
    write_model_card(directory, model_id=REPO_ID, datasets=["wikipedia"])
    return directory, model


PULL = textwrap.dedent(
    """
    import sys, torch
    {preamble}
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    repo_id, revision, out_file = sys.argv[1:4]
    kwargs = {kwargs}
    tokenizer = AutoTokenizer.from_pretrained(repo_id, revision=revision, **kwargs)
    model = AutoModelForMaskedLM.from_pretrained(repo_id, revision=revision, **kwargs).eval()
    batch = tokenizer(["the cat sat", "తెలుగు వాక్యం", "o gato"], padding=True, return_tensors="pt")
    logits = model(**batch, lang_ids=torch.tensor([0, 1, 2])).logits
    torch.save({{"logits": logits, "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}}, out_file)
    print("model class module:", type(model).__module__)
    """
)


def pull_in_fresh_process(tmp_path, cache_dir, revision, remote: bool) -> tuple[dict, str]:
    script = tmp_path / f"pull_{remote}.py"
    preamble = (
        "sys.modules['meta_xlm'] = None  # as if meta-xlm were not installed" if remote else "import meta_xlm"
    )
    kwargs = "{'trust_remote_code': True}" if remote else "{}"
    script.write_text(PULL.format(preamble=preamble, kwargs=kwargs))
    out_file = tmp_path / f"pulled_{remote}.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache_dir),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(script), REPO_ID, revision, str(out_file)],
        capture_output=True, text=True, check=False, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out_file), result.stdout.split("model class module:")[-1].strip()


@pytest.mark.slow
def test_push_then_pull_from_the_hub_cache_in_a_fresh_process(tmp_path, fake_hub, checkpoint):
    directory, model = checkpoint
    commit = push_to_hub(directory, REPO_ID, revision="v1", private=True)

    # What was uploaded: exactly the publishable files, byte for byte; never the pickle.
    uploaded = fake_hub.repos[REPO_ID]["branches"]["v1"]
    expected_files = publishable_files(directory)
    assert sorted(uploaded) == expected_files
    assert {"config.json", "model.safetensors", "configuration_meta_xlm.py", "modeling_meta_xlm.py",
            "tokenizer.json", "tokenizer_config.json", "README.md", "pretrain_config.yaml"} <= set(uploaded)  # fmt: skip
    assert "training_args.bin" not in uploaded
    assert all(uploaded[name] == (directory / name).read_bytes() for name in uploaded)
    assert fake_hub.repos[REPO_ID]["visibility"] == "private"
    assert ("POST", f"/api/models/{REPO_ID}/branch/v1") in fake_hub.requests
    assert commit.oid == fake_hub.commits[-1]["oid"] and fake_hub.commits[-1]["revision"] == "v1"
    assert any(
        path.endswith("lfs/objects/batch") for _, path in fake_hub.requests
    )  # weights went through LFS
    assert fake_hub.repos[REPO_ID]["branches"]["main"] == {}  # the revision passed through

    cache_dir = tmp_path / "hub_cache"
    fake_hub.write_cache(cache_dir, REPO_ID, "v1")
    for remote in (False, True):
        pulled, module = pull_in_fresh_process(tmp_path, cache_dir, "v1", remote)
        expected = model(
            input_ids=pulled["input_ids"],
            attention_mask=pulled["attention_mask"],
            lang_ids=torch.tensor([0, 1, 2]),
        ).logits
        torch.testing.assert_close(pulled["logits"], expected, rtol=0, atol=0)
        assert (
            module.startswith("transformers_modules") if remote else module == "meta_xlm.modeling_meta_xlm"
        ), module


@pytest.mark.slow
def test_published_card_usage_snippet_runs_against_the_hub_cache(tmp_path, fake_hub, checkpoint):
    directory, _ = checkpoint
    push_to_hub(directory, REPO_ID)
    cache_dir = tmp_path / "hub_cache"
    fake_hub.write_cache(cache_dir, REPO_ID, "main")
    snippet = usage_snippet(fake_hub.repos[REPO_ID]["branches"]["main"]["README.md"].decode())
    assert f'model_id = "{REPO_ID}"' in snippet
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache_dir),
        "HF_MODULES_CACHE": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(eval(result.stdout.strip().splitlines()[-1])) == 5  # the top-5 predicted tokens


def test_push_to_main_without_revision_creates_no_branch(fake_hub, checkpoint):
    directory, _ = checkpoint
    push_to_hub(directory, REPO_ID, commit_message="first upload")
    assert not any("/branch/" in path for _, path in fake_hub.requests)
    assert fake_hub.commits[-1]["revision"] == "main" and fake_hub.commits[-1]["summary"] == "first upload"
    assert (
        fake_hub.repos[REPO_ID]["visibility"] is None
    )  # the Hub's default (public unless the org says otherwise)


def test_sub_folders_and_pickles_stay_home_and_create_pr_goes_to_main(tmp_path, fake_hub, checkpoint):
    directory, _ = checkpoint
    copy = tmp_path / "with_history"
    copy.mkdir()
    for path in directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    for name in ("checkpoint-7/model.safetensors", "checkpoint-7/optimizer.pt", "runs/events.json"):
        (copy / name).parent.mkdir(exist_ok=True)
        (copy / name).write_bytes(b"history")
    push_to_hub(copy, REPO_ID)
    uploaded = fake_hub.commits[-1]["files"]
    assert sorted(uploaded) == publishable_files(copy) and "training_args.bin" not in uploaded
    assert not any("/" in name for name in uploaded)  # nothing of checkpoint-7/ or runs/
    with pytest.raises(ValueError, match="create_pr=True opens a pull request against main: drop revision="):
        push_to_hub(copy, REPO_ID, revision="v2", create_pr=True)
    assert not any("v2" in path for _, path in fake_hub.requests)  # refused before any request


def test_incomplete_output_folder_is_not_published(tmp_path, checkpoint):
    directory, _ = checkpoint
    for missing, message in [("README.md", "README.md"), ("model.safetensors", "safetensors"),
                             ("modeling_meta_xlm.py", "remote code"), ("tokenizer.json", "tokenizer")]:  # fmt: skip
        copy = tmp_path / f"without_{missing}"
        copy.mkdir()
        for path in directory.iterdir():
            if path.name != missing:
                (copy / path.name).write_bytes(path.read_bytes())
        with pytest.raises(ValueError, match=message):
            publishable_files(copy)


def test_config_without_complete_auto_map_is_not_published(tmp_path, checkpoint):
    directory, _ = checkpoint
    copy = tmp_path / "partial_auto_map"
    copy.mkdir()
    for path in directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    del config["auto_map"]["AutoModelForTokenClassification"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="auto_map lacks.*AutoModelForTokenClassification"):
        publishable_files(copy)


def test_load_pretrained_reads_safetensors_and_refuses_pickle_only(tmp_path):
    config = MetaXLMConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, languages=["en"])  # fmt: skip
    model = MetaXLMForMaskedLM(config).eval()
    model.save_pretrained(tmp_path / "safe")
    loaded = load_pretrained(MetaXLMForMaskedLM, tmp_path / "safe")
    ids = torch.randint(4, 99, (13, 7))
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)

    pickled = tmp_path / "pickled"
    config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin.*allow_pickle=True"):
        load_pretrained(MetaXLMForMaskedLM, pickled)
    opted_in = load_pretrained(MetaXLMForMaskedLM, pickled, allow_pickle=True)
    torch.testing.assert_close(opted_in(input_ids=ids).logits, model(input_ids=ids).logits)
    config.save_pretrained(tmp_path / "config_only")
    with pytest.raises(OSError, match="no file named model.safetensors, or pytorch_model.bin"):
        load_pretrained(MetaXLMForMaskedLM, tmp_path / "config_only", allow_pickle=True)


def test_load_pretrained_refuses_pickle_only_repo_in_the_hub_cache(tmp_path):
    config = MetaXLMConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=37, languages=["en"])  # fmt: skip
    snapshot = tmp_path / "cache" / "models--org--pickled" / "snapshots" / ("a" * 40)
    config.save_pretrained(snapshot)
    torch.save(MetaXLMForMaskedLM(config).state_dict(), snapshot / "pytorch_model.bin")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    with pytest.raises(UnsafeCheckpointError, match="org/pickled"):
        load_pretrained(MetaXLMForMaskedLM, "org/pickled", cache_dir=str(tmp_path / "cache"))


@pytest.mark.slow
def test_push_recipe_dry_run_writes_the_card_and_lists_the_files(tmp_path, checkpoint):
    directory, _ = checkpoint
    copy = tmp_path / "output"
    copy.mkdir()
    for path in directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "README.md").unlink()
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "recipes" / "push_to_hub.py"),
         "--output_dir", str(copy), "--hub_model_id", REPO_ID, "--datasets", "wikipedia", "--dry_run"],
        capture_output=True, text=True, check=False, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == publishable_files(copy)
    assert "README.md" in result.stdout.split() and "training_args.bin" not in result.stdout
    assert f'model_id = "{REPO_ID}"' in (copy / "README.md").read_text()
