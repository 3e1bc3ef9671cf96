"""``aifeedback export``: a run as a Hugging Face Hub data set folder, optionally pushed to the Hub.

Layout of the folder (``--to-dir``, default ``RUN/export``)::

    README.md                                   # card: YAML metadata (configs -> data files) + provenance
    provenance.json                             # the same provenance, machine-readable
    data/CONFIG/SPLIT-00000-of-00001.parquet    # e.g. data/preferences/train-00000-of-00001.parquet

``datasets.load_dataset(FOLDER_OR_REPO, CONFIG)`` reads it. The folder is written
beside its destination and swapped in whole, so an earlier export there is replaced
and a failed export leaves it as it was. A push uploads that folder; when the push
fails the folder stays, and the error says where. The Hub token is read by
huggingface_hub (``HF_TOKEN`` or ``hf auth login``) and never written anywhere.

The export is seconds of file work, so the CLI calls ``export_run`` directly;
``run_export`` wraps it for Prefect deployments.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from aifeedback.config import build_config
from aifeedback.errors import AIFeedbackError
from aifeedback.export import (
    SPLITS,
    ExportOptions,
    ExportTables,
    build_tables,
    render_card,
)
from aifeedback.provenance import git_commit, library_versions
from aifeedback.redact import redact, redact_text
from aifeedback.usage import totals as usage_totals


class ExportError(AIFeedbackError):
    pass


STAGES = ("responses", "revisions", "labels")
CONFIG_FILE = {"responses": "generate", "revisions": "revise", "labels": "label"}
MARKER = "aifeedback-export"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def data_path(config: str, split: str) -> str:
    return f"data/{config}/{split}-00000-of-00001.parquet"


# reading the run ---------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"could not read {path}: {exc}") from None


def stage_manifests(root: Path) -> tuple[dict[str, dict], list[str]]:
    """Manifests of the completed stages (without their shard keys), and notes on unfinished ones."""
    from aifeedback.store import RunStore

    out, notes = {}, []
    for stage in STAGES:
        path = root / stage / "_manifest.json"
        if path.is_file():  # read by the store, which checks what a manifest names (a hostile run folder is a StoreError)
            out[stage] = {k: v for k, v in RunStore(root, probe=False).manifest(stage).items() if k != "keys"}
        elif (root / stage).is_dir():
            notes.append(f"{stage}: the stage has not completed (no manifest); finish it with `aifeedback {CONFIG_FILE[stage]} --run-dir {root}` to export it")
    return out, notes


def _constitutions(manifests: dict, configs: dict) -> list[dict]:
    """The constitution files the run recorded, with their text when a file with the recorded version is found."""
    from aifeedback.constitution import load_constitution

    found: dict[tuple, dict] = {}
    for stage in ("revisions", "labels"):
        cid, version = manifests.get(stage, {}).get("constitution_id"), manifests.get(stage, {}).get("constitution_version")
        if not cid:
            continue
        entry = found.setdefault((cid, version), {"id": cid, "version": version, "used_by": [], "source": None, "text": None, "sha256": None, "file_sha256": None, "note": None})
        entry["used_by"].append(stage)
        if entry["text"] is not None:
            continue
        source = (configs.get(CONFIG_FILE[stage]) or {}).get("constitution") or cid
        for candidate in dict.fromkeys([source, cid]):
            try:
                con, text = load_constitution(candidate)
            except AIFeedbackError:
                continue
            if con.id == cid and con.full_version == version:
                entry.update(source=str(candidate), text=text, sha256=con.sha256, file_sha256=hashlib.sha256(text.encode()).hexdigest(), note=None)
                break
            entry["note"] = f"{candidate} now holds version {con.full_version}, not the recorded {version}: the file changed after the run, so its text is not included"
        else:
            entry["note"] = entry["note"] or f"no constitution file for {cid} {version} was found (looked for {source!r}); its text is not included"
    return list(found.values())


def _reports(root: Path, report: str | None) -> list[Path]:
    if report:
        p = Path(report)
        path = p / "metrics.json" if p.is_dir() else p
        if not path.is_file():
            raise ExportError(f"no metrics.json at {report}; write an agreement report with `aifeedback agreement --out {report} ...`, or leave --report out")
        return [path]
    return sorted({*root.glob("metrics.json"), *root.glob("*/metrics.json")})


def _agreement(path: Path, root: Path, labels_manifest: dict | None) -> dict:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("judges"), list):
        raise ExportError(f"{path} is not an agreement report's metrics.json (no 'judges' list); point --report at a folder written by `aifeedback agreement`")
    tv = (labels_manifest or {}).get("template_version")
    judges = []
    for j in data["judges"]:
        pos = j.get("position") or {}
        judges.append(
            {
                "judge": j.get("judge"),
                "description": j.get("description"),
                "n": j.get("n_decided"),
                "agreement": j.get("agreement"),
                "agreement_ci95": j.get("agreement_ci95"),
                "kappa": j.get("kappa"),
                "consistency": pos.get("consistency") if pos.get("n_both_orders") else None,
                "ece": j.get("ece"),
                "this_run": bool(tv) and tv in str(j.get("description") or ""),
            }
        )
    shown = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)  # no local paths for a report inside the run
    return {"path": shown, "title": data.get("title"), "human": (data.get("meta") or {}).get("human"), "human_ceiling": (data.get("human_ceiling") or {}).get("pairwise_agreement"), "judges": judges}


def collect_provenance(root: Path, manifests: dict, opts: ExportOptions, tables: ExportTables, report: str | None) -> dict:
    configs = {p.stem: _read_json(p) for p in sorted((root / "configs").glob("*.json"))}
    stages = {s: {k: v for k, v in m.items() if k != "template"} for s, m in manifests.items()}
    return redact({  # secrets out before the card is rendered from it: a run written before redaction may hold keys
        "exporter": MARKER,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": root.name,
        "export_git_commit": git_commit(),
        "export_versions": library_versions(),
        "options": opts.model_dump(),
        "split": {"by": "prompt (content hash of its messages), shared by every config", "test_size": opts.test_size, "seed": opts.seed, "prompts": tables.n_prompts},
        "rows": {name: {s: t.num_rows for s, t in splits.items()} for name, splits in tables.tables.items()},
        "counts": tables.counts,
        "notes": tables.notes,
        "stages": stages,
        "resolved_configs": configs,
        "labeler_template": (manifests.get("labels") or {}).get("template"),
        "constitutions": _constitutions(manifests, configs),
        "agreement": [_agreement(p.resolve(), root, manifests.get("labels")) for p in _reports(root, report)],
        "usage": usage_totals(root),  # tokens and cost of every batch the run computed
    })


# writing and pushing -----------------------------------------------------------


def _is_export(path: Path) -> bool:
    try:
        return json.loads((path / "provenance.json").read_text()).get("exporter") == MARKER
    except (OSError, ValueError, AttributeError):
        return False


def write_layout(dest: Path, tables: dict, card: str, prov: dict) -> None:
    """Write the Hub layout beside ``dest`` and swap it in (an earlier export at ``dest`` is replaced)."""
    import pyarrow.parquet as pq

    if dest.exists() and not (dest.is_dir() and (not any(dest.iterdir()) or _is_export(dest))):
        raise ExportError(f"{dest} exists and is not an earlier aifeedback export; pass a new or empty --to-dir (nothing was written)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as exc:
        raise ExportError(f"could not create the export folder next to {dest}: {exc.strerror}; pass a writable --to-dir") from None
    try:
        tmp.chmod(0o755)
        for name, splits in tables.items():
            for split, table in splits.items():
                path = tmp / data_path(name, split)
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, path)
        (tmp / "README.md").write_text(redact_text(card), encoding="utf-8")
        (tmp / "provenance.json").write_text(json.dumps(redact(prov), indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"could not write the export to {dest}: {exc}; free space or pass another --to-dir") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Create the data set repo if needed and upload the folder; any failure is one clear ExportError."""
    from huggingface_hub import HfApi, get_token

    intact = f"the local export at {folder} is intact"
    try:
        token = get_token()
    except Exception as exc:  # noqa: BLE001 - e.g. a failed OIDC exchange; reported, not swallowed
        raise ExportError(redact_text(f"could not read a Hugging Face token ({type(exc).__name__}: {exc}); {intact}")) from None
    if not token:
        raise ExportError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login`, then re-run with --repo-id; {intact}")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=True if private else None, exist_ok=True)
        # create_repo leaves an existing repo's visibility as it is: --private must not publish into a public repo
        public = private and not api.repo_info(repo_id, repo_type="dataset").private
        if not public:
            api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="dataset", commit_message="aifeedback export", delete_patterns=["data/**"])
    except Exception as exc:  # noqa: BLE001 - huggingface_hub 2.x raises httpx errors, HfHubHTTPError, OfflineModeIsEnabled, ...
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:300]
        hint = "unset HF_HUB_OFFLINE" if "offline" in type(exc).__name__.lower() else f"check the network, HF_TOKEN and write access to {repo_id}"
        raise ExportError(
            redact_text(f"could not push to {repo_id} on {api.endpoint} ({type(exc).__name__}: {first}); {intact}: {hint}, then re-run with --repo-id, or upload it with `hf upload {repo_id} {folder} --repo-type dataset`")
        ) from None
    if public:
        raise ExportError(f"{repo_id} already exists on {api.endpoint} and is public, so --private would publish this export; nothing was uploaded. Make the repo private on the Hub (its Settings) or pick a new --repo-id, then re-run; {intact}")
    return str(url)


# the export ------------------------------------------------------------------


def export_run(
    run_dir: str,
    to_dir: str | None = None,
    repo_id: str | None = None,
    private: bool = False,
    report: str | None = None,
    **options,
) -> dict:
    """Export a run (see the module docstring); ``options`` are ``ExportOptions`` fields. Returns a summary."""
    opts = build_config(ExportOptions, overrides=options)
    root = Path(run_dir).expanduser().resolve()
    if not root.is_dir():
        raise ExportError(f"no run directory at {root}; pass --run-dir with a run made by `aifeedback generate`, `revise` and `label`")
    if repo_id is not None and not REPO_ID.match(repo_id):
        raise ExportError(f"--repo-id must look like ORG/NAME (letters, digits, '-', '_', '.'), got {repo_id!r}")
    manifests, stage_notes = stage_manifests(root)
    if "labels" not in manifests and "revisions" not in manifests:
        raise ExportError(
            f"run {root} has neither labels nor revisions to export; run `aifeedback label --run-dir {run_dir}` (preference pairs) "
            f"and/or `aifeedback revise --run-dir {run_dir}` (SFT rows) first" + (f" ({'; '.join(stage_notes)})" if stage_notes else "")
        )
    from aifeedback.store import RunStore

    store = RunStore(root)
    labels = store.read_table("labels").to_pylist() if "labels" in manifests else None
    revisions = store.read_table("revisions").to_pylist() if "revisions" in manifests else None
    tables = build_tables(labels, revisions, opts)
    tables.notes[:0] = stage_notes
    if not tables.tables:
        raise ExportError(f"nothing left to export from {root}: {'; '.join(tables.notes)}; loosen the min_confidence / consistency options")
    prov = collect_provenance(root, manifests, opts, tables, report)
    dest = Path(to_dir).expanduser().resolve() if to_dir else root / "export"
    write_layout(dest, tables.tables, render_card(prov, {n: {s: data_path(n, s) for s in splits} for n, splits in tables.tables.items()}, repo_id), prov)
    summary = {
        "to_dir": str(dest),
        "rows": prov["rows"],
        "counts": tables.counts,
        "notes": tables.notes,
        "agreement_reports": [a["path"] for a in prov["agreement"]],
        "splits": {s: tables.n_prompts[s] for s in SPLITS},
    }
    if repo_id:
        summary["hub"] = push(dest, repo_id, private)
    return summary


def run_export(run_dir: str, to_dir: str | None = None, repo_id: str | None = None, private: bool = False, report: str | None = None, options: dict | None = None) -> dict:
    """Export a run to the Hub layout (and push it with ``repo_id``); ``options`` are ``ExportOptions`` fields."""
    return export_run(run_dir, to_dir, repo_id, private, report, **(options or {}))
