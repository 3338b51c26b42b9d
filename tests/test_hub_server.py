"""LocalHub against the real huggingface_hub client: publish, inspect, download, auth, faults.

Every call passes `endpoint=local_hub.url`: huggingface_hub reads HF_ENDPOINT only when it is
imported, so in this process the variable cannot redirect it (a subprocess started with it
can; see test_hf_endpoint_in_a_fresh_process).
"""

import hashlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from tests.hub_server import TEST_TOKEN, LocalHub, local_hub  # noqa: F401  (the fixture)

REPO = "me/my-model"

# The client's own LFS upload (a PUT with `data=` a file object) warns under httpx2; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def api(local_hub) -> HfApi:
    return HfApi(endpoint=local_hub.url, token=TEST_TOKEN)


def write_model(folder: Path, weights: bytes, config: str = '{"hidden_size": 8}') -> Path:
    """A small model folder: a text config, a nested text file, and binary safetensors weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config)
    (folder / "tokenizer").mkdir(exist_ok=True)
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    (folder / "model.safetensors").write_bytes(weights)
    return folder


MODEL_FILES = ["config.json", "model.safetensors", "tokenizer/vocab.txt"]


def download(hub: LocalHub, revision: str, dest: Path, token=TEST_TOKEN) -> Path:
    return Path(snapshot_download(REPO, revision=revision, endpoint=hub.url, cache_dir=dest, token=token))


def assert_same_files(downloaded: Path, folder: Path) -> None:
    for name in MODEL_FILES:
        assert (downloaded / name).read_bytes() == (folder / name).read_bytes(), name


def test_create_repo_is_public_by_default_and_exist_ok_accepts_an_existing_one(local_hub, api):
    assert api.whoami()["name"] == "me"

    url = api.create_repo(REPO)

    assert url == f"{local_hub.url}/{REPO}"
    assert url.repo_id == REPO
    assert local_hub.repos() == [REPO]
    assert local_hub.is_private(REPO) is False
    assert api.model_info(REPO).private is False
    # Like the Hub, a new repo starts with one commit holding .gitattributes.
    initial = local_hub.commits(REPO)
    assert len(initial) == 1 and re.fullmatch(r"[0-9a-f]{40}", initial[0])
    assert list(local_hub.files(REPO)) == [".gitattributes"]

    assert api.create_repo(REPO, exist_ok=True) == url
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(REPO)
    assert conflict.value.response.status_code == 409
    assert local_hub.commits(REPO) == initial


def test_upload_folder_then_model_info_and_snapshot_download_at_the_commit_sha(local_hub, api, tmp_path):
    weights = os.urandom(3 * 1024 * 1024)
    folder = write_model(tmp_path / "model", weights)
    api.create_repo(REPO)

    commit = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="Publish model")

    assert re.fullmatch(r"[0-9a-f]{40}", commit.oid)
    assert local_hub.commits(REPO)[-1] == commit.oid
    assert commit.commit_url == f"{local_hub.url}/{REPO}/commit/{commit.oid}"
    # The weights went through git-LFS (batch API + PUT of the bytes), never through Xet.
    assert local_hub.lfs_files(REPO, commit.oid) == {"model.safetensors"}
    paths = [path for _, path, _ in local_hub.request_log]
    assert f"/{REPO}.git/info/lfs/objects/batch" in paths
    assert any(path.startswith("/lfs-upload/") for path in paths)
    assert not any("xet" in path for path in paths)

    info = api.model_info(REPO, revision=commit.oid, files_metadata=True)
    assert info.sha == commit.oid
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", *MODEL_FILES}
    for name in MODEL_FILES:
        assert siblings[name].size == (folder / name).stat().st_size, name
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert siblings["model.safetensors"].lfs.size == len(weights)
    assert siblings["config.json"].lfs is None

    downloaded = download(local_hub, commit.oid, tmp_path / "cache")
    assert downloaded.name == commit.oid
    assert_same_files(downloaded, folder)
    assert {name: data for name, data in local_hub.files(REPO, commit.oid).items() if name in MODEL_FILES} == {
        name: (folder / name).read_bytes() for name in MODEL_FILES
    }


def test_a_second_commit_gets_a_new_sha_and_the_first_stays_downloadable(local_hub, api, tmp_path):
    api.create_repo(REPO)
    first_folder = write_model(tmp_path / "v1", os.urandom(2 * 1024 * 1024), '{"v": 1}')
    first = api.upload_folder(repo_id=REPO, folder_path=first_folder).oid
    second_folder = write_model(tmp_path / "v2", os.urandom(2 * 1024 * 1024), '{"v": 2}')
    second = api.upload_folder(repo_id=REPO, folder_path=second_folder).oid

    assert second != first
    assert local_hub.commits(REPO)[1:] == [first, second]
    assert api.model_info(REPO).sha == second
    assert api.model_info(REPO, revision=first).sha == first
    assert_same_files(download(local_hub, first, tmp_path / "cache"), first_folder)
    assert_same_files(download(local_hub, second, tmp_path / "cache"), second_folder)
    one_file = hf_hub_download(REPO, "config.json", revision=first, endpoint=local_hub.url,
                               cache_dir=tmp_path / "cache-2")
    assert Path(one_file).read_text() == '{"v": 1}'


def test_uploading_unchanged_files_makes_no_commit(local_hub, api, tmp_path):
    api.create_repo(REPO)
    folder = write_model(tmp_path / "model", os.urandom(1024 * 1024))
    first = api.upload_folder(repo_id=REPO, folder_path=folder).oid
    lfs_puts = sum(path.startswith("/lfs-upload/") for _, path, _ in local_hub.request_log)

    again = api.upload_folder(repo_id=REPO, folder_path=folder)

    # The preupload answer carries each file's oid; the client skips what did not change.
    assert again.oid == first
    assert local_hub.commits(REPO)[-1] == first
    assert sum(path.startswith("/lfs-upload/") for _, path, _ in local_hub.request_log) == lfs_puts


def test_visibility_switches_between_private_and_public(local_hub, api):
    api.create_repo(REPO, private=True)
    anonymous = HfApi(endpoint=local_hub.url, token=False)

    assert local_hub.is_private(REPO) is True
    assert api.model_info(REPO).private is True
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info(REPO)

    api.update_repo_settings(REPO, private=False)
    assert local_hub.is_private(REPO) is False
    assert api.model_info(REPO).private is False
    assert anonymous.model_info(REPO).private is False

    api.update_repo_settings(REPO, visibility="private")
    assert api.model_info(REPO).private is True


@pytest.mark.parametrize("token", [False, "hf_wrong_token"], ids=["no-token", "wrong-token"])
def test_writes_without_a_valid_token_get_401_and_change_nothing(local_hub, api, token, caplog):
    caplog.set_level(logging.DEBUG, logger="tests.hub_server")
    api.create_repo(REPO)
    commits = local_hub.commits(REPO)
    intruder = HfApi(endpoint=local_hub.url, token=token)

    writes = {
        "create": lambda: intruder.create_repo("me/other-model"),
        "commit": lambda: intruder.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO),
        "settings": lambda: intruder.update_repo_settings(REPO, private=True),
    }
    for name, write in writes.items():
        with pytest.raises(HfHubHTTPError) as refused:
            write()
        assert refused.value.response.status_code == 401, name

    assert local_hub.repos() == [REPO]
    assert local_hub.commits(REPO) == commits
    assert local_hub.is_private(REPO) is False
    # Requests are logged, tokens never.
    logged = "\n".join(record.getMessage() for record in caplog.records if record.name == "tests.hub_server")
    assert "/api/repos/create" in logged
    assert TEST_TOKEN not in logged and "hf_wrong_token" not in logged


def test_an_injected_commit_failure_surfaces_as_a_5xx_and_the_retry_succeeds(local_hub, api, tmp_path):
    api.create_repo(REPO)
    folder = write_model(tmp_path / "model", os.urandom(1024 * 1024))
    local_hub.fail_next("commit", status=503)

    with pytest.raises(HfHubHTTPError) as failed:
        api.upload_folder(repo_id=REPO, folder_path=folder)

    assert failed.value.response.status_code == 503
    assert len(local_hub.commits(REPO)) == 1
    commit = api.upload_folder(repo_id=REPO, folder_path=folder)
    assert local_hub.commits(REPO)[-1] == commit.oid
    # The weights were stored by the failed attempt: the LFS batch API lets the client skip them.
    assert sum(path.startswith("/lfs-upload/") for _, path, _ in local_hub.request_log) == 1


@pytest.mark.parametrize("operation, call", [
    ("create", lambda api: api.create_repo("me/another-model")),
    ("model_info", lambda api: api.model_info(REPO)),
    ("settings", lambda api: api.update_repo_settings(REPO, private=True)),
])
def test_injected_failures_of_calls_the_client_does_not_retry(local_hub, api, operation, call):
    api.create_repo(REPO)
    local_hub.fail_next(operation, times=1, status=500)

    with pytest.raises(HfHubHTTPError) as failed:
        call(api)

    assert failed.value.response.status_code == 500
    call(api)  # only the next request failed


def test_the_client_retries_a_transient_failure_of_the_lfs_upload_and_of_a_download(local_hub, api, tmp_path):
    api.create_repo(REPO)
    folder = write_model(tmp_path / "model", os.urandom(1024 * 1024))
    local_hub.fail_next("lfs_upload", status=500)

    commit = api.upload_folder(repo_id=REPO, folder_path=folder)

    puts = [status for method, path, status in local_hub.request_log if path.startswith("/lfs-upload/")]
    assert puts == [500, 200]
    local_hub.fail_next("download", status=502)
    assert_same_files(download(local_hub, commit.oid, tmp_path / "cache"), folder)
    assert [s for m, p, s in local_hub.request_log if "/resolve/" in p].count(502) == 1


def test_fail_next_rejects_an_unknown_operation(local_hub):
    with pytest.raises(ValueError, match="unknown operation"):
        local_hub.fail_next("push")


def test_hf_endpoint_in_a_fresh_process(local_hub, api, tmp_path):
    """HF_ENDPOINT (exported by the fixture) is honoured by a process that imports the client after it."""
    api.create_repo(REPO)
    sha = local_hub.add_commit(REPO, {"config.json": b'{"from": "seed"}'})
    script = (
        "import sys; from huggingface_hub import HfApi, snapshot_download\n"
        f"print(HfApi().model_info({REPO!r}).sha)\n"
        f"print(snapshot_download({REPO!r}, revision={sha!r}, cache_dir=sys.argv[1]))\n"
    )
    assert os.environ["HF_ENDPOINT"] == local_hub.url

    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache")],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ))

    assert result.returncode == 0, result.stderr
    reported_sha, snapshot = result.stdout.split()
    assert reported_sha == sha
    assert (Path(snapshot) / "config.json").read_bytes() == b'{"from": "seed"}'


def test_without_the_xet_switch_the_client_asks_for_xet_and_localhub_refuses(local_hub, api, tmp_path,
                                                                               monkeypatch):
    """Why the fixture turns Xet off: with hf_xet installed, upload_folder has no LFS fallback."""
    pytest.importorskip("hf_xet")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", False)
    api.create_repo(REPO)

    with pytest.raises(Exception):
        api.upload_folder(repo_id=REPO, folder_path=write_model(tmp_path / "model", os.urandom(64 * 1024)))

    assert ("GET", f"/api/models/{REPO}/xet-write-token/main", 501) in local_hub.request_log
    assert len(local_hub.commits(REPO)) == 1


def test_seeded_repos_are_served_like_uploaded_ones(local_hub, tmp_path):
    """add_commit stores files without HTTP; binary and .gitattributes-tracked files become LFS."""
    sha = local_hub.add_commit(REPO, {"notes.txt": b"hello", "weights.bin": b"text but *.bin",
                                      "blob.dat": b"\x00\x01binary"})

    assert local_hub.lfs_files(REPO, sha) == {"weights.bin", "blob.dat"}
    downloaded = download(local_hub, sha, tmp_path / "cache", token=False)
    assert (downloaded / "notes.txt").read_bytes() == b"hello"
    assert (downloaded / "weights.bin").read_bytes() == b"text but *.bin"
    assert (downloaded / "blob.dat").read_bytes() == b"\x00\x01binary"
