"""Hub round trips with `huggingface_hub`'s own API captured at its network boundary (the Hub is not reachable)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import huggingface_hub
import pytest
import torch

from hf_lottery import TicketConfig, TicketMask, TicketUploadError
from hf_lottery.constants import (
    SPARSITY_PLOT_NAME,
    TICKET_CARD_NAME,
    TICKET_CONFIG_NAME,
    TICKET_MASK_NAME,
)

HISTORY = [
    {"round": 0, "sparsity": 0.0, "target_sparsity": 0.0, "metrics": {"eval_accuracy": 0.91}, "steps": 4},
    {"round": 1, "sparsity": 0.6, "target_sparsity": 0.6, "metrics": {"eval_accuracy": 0.9}, "steps": 4},
]


@pytest.fixture
def ticket() -> TicketMask:
    g = torch.Generator().manual_seed(0)
    masks = {"enc.0.weight": torch.rand(24, 16, generator=g) > 0.6, "enc.1.weight": torch.rand(9, generator=g) > 0.6}
    config = TicketConfig(base_model_name_or_path="org/base", revision="abc123", task="sst2", history=HISTORY)
    return TicketMask(masks, metadata=config.to_dict())


class FakeHub:
    """Captures HfApi.create_repo / create_branch / create_commit and serves the committed files."""

    def __init__(self, fail_with: Exception | None = None):
        self.fail_with = fail_with
        self.calls: list[tuple[str, dict]] = []
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}

    def install(self, monkeypatch, cache: Path) -> None:
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            if hub.fail_with is not None:
                raise hub.fail_with
            return f"https://hub.invalid/{repo_id}"

        def create_branch(api, repo_id, **kwargs):
            hub.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

        def create_commit(api, repo_id, operations, **kwargs):
            operations = list(operations)
            files = {}
            for op in operations:
                assert isinstance(op, huggingface_hub.CommitOperationAdd)
                files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
            hub.calls.append(("create_commit", {"repo_id": repo_id, "files": sorted(files), **kwargs}))
            hub.repos[(repo_id, kwargs.get("revision") or "main")] = files
            return "commit-url"

        def hf_hub_download(repo_id, filename, *, subfolder=None, revision=None, **kwargs):
            hub.calls.append(("hf_hub_download", {"repo_id": repo_id, "filename": filename, **kwargs}))
            files = hub.repos.get((repo_id, revision or "main"))
            path_in_repo = f"{subfolder}/{filename}" if subfolder else filename
            if files is None or path_in_repo not in files:
                raise huggingface_hub.errors.LocalEntryNotFoundError(f"{path_in_repo} not in {repo_id}")
            target = cache / repo_id.replace("/", "--") / (revision or "main") / path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[path_in_repo])
            return str(target)

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def fake_hub(monkeypatch, tmp_path) -> FakeHub:
    hub = FakeHub()
    hub.install(monkeypatch, tmp_path / "hub-cache")
    return hub


def test_push_is_one_commit_of_the_folder(ticket, fake_hub, tmp_path):
    keep = tmp_path / "kept"
    keep.mkdir()
    (keep / "notes.txt").write_text("not part of the ticket")
    result = ticket.push_to_hub("user/tiny-ticket", private=True, commit_message="ticket at 60%", save_directory=keep)
    assert result == "commit-url"
    assert fake_hub.names() == ["create_repo", "create_commit"]
    repo_call = fake_hub.calls[0][1]
    assert repo_call["private"] is True and repo_call["exist_ok"] is True
    commit = fake_hub.calls[1][1]
    assert commit["commit_message"] == "ticket at 60%" and commit["create_pr"] is False
    expected = sorted([TICKET_CONFIG_NAME, TICKET_MASK_NAME, TICKET_CARD_NAME, SPARSITY_PLOT_NAME])
    assert commit["files"] == expected
    uploaded = fake_hub.repos[("user/tiny-ticket", "main")]
    for name in expected:  # the bytes committed are the local folder's
        assert uploaded[name] == (keep / name).read_bytes(), name
    assert 'TicketMask.from_pretrained("user/tiny-ticket")' in uploaded[TICKET_CARD_NAME].decode()


def test_hub_round_trip(ticket, fake_hub, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ticket.push_to_hub("user/tiny-ticket")
    assert list(scratch.iterdir()) == []  # the temporary local copy is removed after a successful upload
    monkeypatch.chdir(tmp_path)  # no local folder called "user/tiny-ticket"
    loaded = TicketMask.from_pretrained("user/tiny-ticket", token="hf_x", cache_dir=tmp_path / "c")
    assert loaded == ticket
    assert loaded.config.base_model_name_or_path == "org/base" and loaded.config.history == HISTORY
    downloads = [c for n, c in fake_hub.calls if n == "hf_hub_download"]
    assert [d["filename"] for d in downloads] == [TICKET_CONFIG_NAME, TICKET_MASK_NAME]
    assert all(d["token"] == "hf_x" and d["library_name"] == "hf_lottery" for d in downloads)


def test_revision_branch_and_pull_request(ticket, fake_hub, monkeypatch, tmp_path):
    ticket.push_to_hub("user/t", revision="s60", create_pr=True, commit_description="why")
    assert fake_hub.names() == ["create_repo", "create_branch", "create_commit"]
    assert fake_hub.calls[1][1]["branch"] == "s60"
    commit = fake_hub.calls[2][1]
    assert commit["revision"] == "s60" and commit["create_pr"] is True and commit["commit_description"] == "why"
    monkeypatch.chdir(tmp_path)
    assert TicketMask.from_pretrained("user/t", revision="s60") == ticket
    with pytest.raises(OSError, match=r"Can't load a ticket from 'user/t@main'"):
        TicketMask.from_pretrained("user/t", revision="main")


def test_subfolder_download(ticket, fake_hub, tmp_path, monkeypatch):
    folder = ticket.save_pretrained(tmp_path / "t")
    fake_hub.repos[("user/many", "main")] = {f"s60/{p.name}": p.read_bytes() for p in folder.iterdir()}
    monkeypatch.chdir(tmp_path)
    assert TicketMask.from_pretrained("user/many", subfolder="s60") == ticket


def test_save_pretrained_push_to_hub(ticket, fake_hub, tmp_path):
    folder = tmp_path / "my-ticket"
    ticket.save_pretrained(folder, push_to_hub=True, repo_id="user/my-ticket")
    assert fake_hub.names() == ["create_repo", "create_commit"]
    assert TicketMask.from_pretrained(folder) == ticket
    with pytest.raises(TypeError, match="push_to_hub=True"):
        ticket.save_pretrained(folder, repo_id="user/x")


def test_push_while_offline_keeps_a_complete_local_copy(ticket, monkeypatch, tmp_path):
    hub = FakeHub(fail_with=ConnectionError("Failed to resolve 'huggingface.co'"))
    hub.install(monkeypatch, tmp_path / "cache")
    with pytest.raises(TicketUploadError, match=r"Uploading the ticket to the Hub repository 'user/t' failed") as info:
        ticket.push_to_hub("user/t")
    local = info.value.local_dir
    assert str(local) in str(info.value) and "huggingface.co" in str(info.value)
    assert isinstance(info.value, OSError)
    assert TicketMask.from_pretrained(local) == ticket  # complete and loadable
    assert "create_commit" not in hub.names()
    shutil.rmtree(local.parent)


def test_download_failure_is_clear(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not in cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match=r"not a local folder.*ticket_config\.json.*offline"):
        TicketMask.from_pretrained("user/absent")


def test_newer_format_on_the_hub_stops_before_the_mask(ticket, fake_hub, tmp_path, monkeypatch):
    import json

    ticket.push_to_hub("user/t")
    files = fake_hub.repos[("user/t", "main")]
    config = json.loads(files[TICKET_CONFIG_NAME])
    config["format_version"] = 99
    files[TICKET_CONFIG_NAME] = json.dumps(config).encode()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="format version 99"):
        TicketMask.from_pretrained("user/t")
    downloads = [c["filename"] for n, c in fake_hub.calls if n == "hf_hub_download"]
    assert downloads == [TICKET_CONFIG_NAME]
