"""`aifeedback export --repo-id` pushing to a stand-in for the Hub (tests/hub_standin.py): the repo it creates, the files
it commits, the stale shards it deletes, and where the token goes.

The export runs as a real CLI process with ``HF_ENDPOINT`` pointed at the stand-in and ``HF_HUB_DISABLE_XET=1``:
the stand-in speaks the Hub's LFS upload path, not Xet's storage protocol (which huggingface_hub uses when hf_xet is
installed). The run is a real preference run made by ``import-labels`` from verdicts whose winners are known.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hub_standin import HubStandin

pytestmark = pytest.mark.slow  # starts a server

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_standinPushToken4c8e1a9d"
# (pair id, p(A better)); the pairs are "question i" with "answer a i" / "answer b i"; x5 is a tie and is not exported
VERDICTS = [("x0", 0.9), ("x1", 0.1), ("x2", 0.8), ("x3", 0.2), ("x4", 0.7), ("x5", 0.5)]
TRAIN, TEST = "data/preferences/train-00000-of-00001.parquet", "data/preferences/test-00000-of-00001.parquet"


def _expected(pair_id: str, p: float) -> dict:
    i = pair_id[1:]
    win, lose = ("a", "b") if p > 0.5 else ("b", "a")
    return {
        "prompt": [{"role": "user", "content": f"question {i}"}],
        "chosen": [{"role": "assistant", "content": f"answer {win} {i}"}],
        "rejected": [{"role": "assistant", "content": f"answer {lose} {i}"}],
    }


EXPECTED = {pid: _expected(pid, p) for pid, p in VERDICTS if p != 0.5}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A labels stage imported from a verdict file (no model): 6 pairs, 5 decided, 1 tie."""
    from flows.import_labels import run_import_labels

    base = tmp_path_factory.mktemp("hubpush")
    pairs, verdicts = base / "pairs.jsonl", base / "verdicts.jsonl"
    pairs.write_text("".join(json.dumps({"pair_id": pid, "prompt": f"question {pid[1:]}", "response_a": f"answer a {pid[1:]}", "response_b": f"answer b {pid[1:]}"}) + "\n" for pid, _ in VERDICTS))
    verdicts.write_text("".join(json.dumps({"pair_id": pid, "p": p}) + "\n" for pid, p in VERDICTS))
    run_import_labels(str(base / "run"), str(verdicts), "hosted-judge-v1", overrides={"input": str(pairs)}, prob_column="p")
    return base / "run"


def _push(hub: HubStandin, run: Path, out: Path, repo_id: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    env.update(HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1", HF_HOME=str(out.parent / "hf-home"), COLUMNS="1000")
    cmd = [sys.executable, "-m", "flows.cli", "export", "--run-dir", str(run), "--to-dir", str(out), "--repo-id", repo_id, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert TOKEN not in proc.stdout + proc.stderr
    return proc


def _rows(data: bytes) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data), columns=["prompt", "chosen", "rejected", "pair_id"]).to_pylist()


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _check_token_only_in_authorization(hub: HubStandin) -> None:
    assert hub.violations == [] and hub.unhandled == []
    for call in hub.calls:
        if call.path.startswith("/lfs-storage/"):  # the presigned storage URL: no credentials at all
            assert "authorization" not in call.headers, call
        else:
            assert call.headers.get("authorization") == "Bearer [redacted]", call  # the stand-in's mark for "Bearer <TOKEN>"


def _check_pushed_export(hub: HubStandin, repo_id: str, out: Path, others: tuple[str, ...] = ()) -> None:
    """The repo holds exactly the export folder (plus the Hub's .gitattributes and ``others``), byte for byte, parquet through LFS."""
    repo = hub.repo(repo_id)
    local = _local_files(out)
    assert set(repo.files) == {".gitattributes", *others, *local}
    for path, data in local.items():
        assert repo.files[path].data == data, path
        assert repo.files[path].lfs == path.endswith(".parquet"), path
    card = repo.files["README.md"].data.decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    pushed_paths = {f["path"] for c in meta["configs"] for f in c["data_files"]}
    assert pushed_paths == {p for p in repo.files if p.startswith("data/")}  # the card's configs point at the pushed shards
    assert "## Provenance" in card and "`hosted-judge-v1`" in card
    prov = json.loads(repo.files["provenance.json"].data)
    assert prov["exporter"] == "aifeedback-export" and prov["stages"]["labels"]["model"] == "hosted-judge-v1"
    assert prov["rows"]["preferences"] == {s: len(_rows(repo.files[p].data)) for s, p in (("train", TRAIN), ("test", TEST)) if p in repo.files}


@pytest.mark.timeout(120)
def test_private_push_creates_a_private_dataset_repo_and_uploads_the_export(run, tmp_path):
    out = tmp_path / "export"
    with HubStandin(TOKEN) as hub:
        proc = _push(hub, run, out, "someone/rlaif-private", "--private", "--test-size", "0.4")
        _check_token_only_in_authorization(hub)
        creates = hub.calls_to("POST", r"^/api/repos/create$")
        assert [c.json for c in creates] == [{"name": "rlaif-private", "organization": "someone", "type": "dataset", "visibility": "private"}]
        assert hub.repo("someone/rlaif-private").private
        assert f"pushed to {hub.url}/datasets/someone/rlaif-private" in proc.stdout
        _check_pushed_export(hub, "someone/rlaif-private", out)
        repo = hub.repo("someone/rlaif-private")
        train, test = _rows(repo.files[TRAIN].data), _rows(repo.files[TEST].data)
        # round(0.4 * 6 prompts) = 2 held out by the seeded draw (x0, x4); the tie x5 drew train and is left out
        assert sorted(r["pair_id"] for r in test) == ["x0", "x4"] and sorted(r["pair_id"] for r in train) == ["x1", "x2", "x3"]
        for r in train + test:
            assert {k: r[k] for k in ("prompt", "chosen", "rejected")} == EXPECTED[r["pair_id"]], r
        # one commit on top of the repo's initial one, its parquet shards uploaded through the LFS batch API first
        assert [c.summary for c in repo.commits] == ["initial commit", "aifeedback export"]
        assert sorted(k for k, _ in repo.commits[-1].operations) == ["file", "file", "lfsFile", "lfsFile"]
        batch = hub.calls_to("POST", r"\.git/info/lfs/objects/batch$")
        assert len(batch) == 1 and batch[0].path == "/datasets/someone/rlaif-private.git/info/lfs/objects/batch"


@pytest.mark.timeout(120)
def test_public_repush_deletes_stale_data_shards_and_keeps_other_files(run, tmp_path):
    repo_id = "someone/rlaif"
    with HubStandin(TOKEN) as hub:
        _push(hub, run, tmp_path / "first", repo_id, "--test-size", "0.4")
        assert [c.json for c in hub.calls_to("POST", r"^/api/repos/create$")] == [{"name": "rlaif", "organization": "someone", "type": "dataset"}]
        assert not hub.repo(repo_id).private
        assert {TRAIN, TEST} <= set(hub.repo(repo_id).files)
        hub.seed(repo_id, {"notes.txt": b"kept by hand, not part of any export\n"})

        second = tmp_path / "second"
        _push(hub, run, second, repo_id, "--test-size", "0")  # train only: the test shard of the first push is stale
        _check_token_only_in_authorization(hub)
        repo = hub.repo(repo_id)
        assert len(hub.calls_to("POST", r"^/api/repos/create$")) == 2 and not repo.private  # 409 on the second: left as it was
        assert ("deletedFile", TEST) in repo.commits[-1].operations
        assert [p for k, p in repo.commits[-1].operations if k.startswith("deleted")] == [TEST]  # nothing else under data/ went
        assert repo.files["notes.txt"].data == b"kept by hand, not part of any export\n" and ".gitattributes" in repo.files
        assert TEST not in repo.files
        _check_pushed_export(hub, repo_id, second, others=("notes.txt",))  # besides those, the repo is the second export
        assert sorted(r["pair_id"] for r in _rows(repo.files[TRAIN].data)) == sorted(EXPECTED)

        # --private into the repo that exists as public: refused before any upload (create_repo leaves visibility as it is)
        commits = len(repo.commits)
        env = {k: v for k, v in os.environ.items() if k not in ("HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
        env.update(HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf-home"), COLUMNS="1000")
        cmd = [sys.executable, "-m", "flows.cli", "export", "--run-dir", str(run), "--to-dir", str(tmp_path / "third"), "--repo-id", repo_id, "--private"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=100, check=False)
        assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "already exists" in proc.stdout + proc.stderr and "is public, so --private would publish this export; nothing was uploaded" in proc.stdout + proc.stderr
        assert len(repo.commits) == commits and not hub.calls_to("POST", r"\.git/info/lfs/objects/batch$")[2:]
