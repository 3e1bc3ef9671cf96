"""A catalogue of bad inputs. Each either raises one of our errors whose message names the fix, or becomes an
exclusion row with a specific reason, and then count in = count out + excluded.

Reader cases run without a model (``labelers.job.load_pairs`` and ``Labeler.prepare`` with no backend: the
character estimate of a remote endpoint). One label flow on the embedded model covers the path end to end.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from aifeedback.config import GenerateConfig, LabelConfig, build_config, parse_overrides
from aifeedback.errors import ConfigError, InputError, ModelNotFound, StoreError
from aifeedback.records import LABELS, exclusion
from aifeedback.store import RunStore
from labelers.job import load_pairs

GOOD = {"pair_id": "good", "prompt": "What is 2+2?", "response_a": "2+2 is 4.", "response_b": "It is 22."}


def jline(obj) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def pair(pid: str, **kw) -> bytes:
    return jline({"pair_id": pid, "prompt": "Name a fruit.", "response_a": "A banana.", "response_b": "A lemon.", **kw})


class NoTokenizer:
    """For the labeler's input step only: a backend with no tokenizer (like a remote endpoint) that is never called."""

    from aifeedback.backends.base import Capabilities

    name = "openai"
    tokenizer = None
    capabilities = Capabilities(logprobs=True, prefix_reuse=False, in_process=False, token_counts_exact=False, tokenizer=False)


def prepare_all(cfg: LabelConfig, pairs: list[dict], backend=None) -> tuple[list, list[dict]]:
    """The labeler's input step; no backend means one without a tokenizer (about 4 characters a token)."""
    from labelers.labeler import Labeler
    from labelers.templates import load_template

    lab = Labeler(backend or NoTokenizer(), cfg, load_template(cfg.method))
    kept, excluded = [], []
    for p in pairs:
        prep, ex = lab.prepare(p)
        (excluded.append(ex) if ex is not None else kept.append(prep))
    return kept, excluded


def label_inputs(path, n_in: int, **cfg_kw) -> tuple[list, list[dict]]:
    """Read a pairs file and prepare its pairs; asserts every row is accounted for."""
    cfg = LabelConfig(input=str(path), **cfg_kw)
    pairs, excluded = load_pairs(cfg)
    kept, more = prepare_all(cfg, pairs)
    excluded += more
    assert n_in == len(kept) + len(excluded), (kept, excluded)
    return kept, excluded


# -- pairs files: rows that become exclusions --------------------------------------------------------------

ROW_CASES = [
    # id, bad row (raw bytes of one JSONL line), reason, a key word of the detail
    ("prompt-null", pair("x", prompt=None), "missing_prompt", "null"),
    ("prompt-empty-string", pair("x", prompt="   "), "empty_prompt", "empty string"),
    ("prompt-dict", pair("x", prompt={"text": "hi"}), "wrong_type", "got dict"),
    ("prompt-nan", b'{"pair_id": "x", "prompt": NaN, "response_a": "a", "response_b": "b"}\n', "wrong_type", "got float"),
    ("messages-bad-role", pair("x", prompt=[{"role": "bot", "content": "hi"}]), "bad_messages", "unknown role 'bot'"),
    ("messages-last-not-user", pair("x", prompt=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]), "bad_messages", "last message must come from the user"),
    ("messages-no-content", pair("x", prompt=[{"role": "user"}]), "bad_messages", "role and content"),
    ("messages-empty-list", pair("x", prompt=[]), "empty_prompt", "no user message"),
    ("response-int", pair("x", response_a=42), "wrong_type", "response_a must be text, got int"),
    ("response-null", pair("x", response_b=None), "missing_response", "response_b"),
    ("response-column-absent-in-later-row", jline({"pair_id": "x", "prompt": "q", "response_a": "a"}), "missing_response", "response_b"),
    ("response-empty", pair("x", response_a=""), "empty_response", "response_a is empty"),
    ("a-identical-to-b", pair("x", response_a="Same.", response_b=" Same.\n"), "identical_responses", "identical"),
    ("duplicate-pair-id", pair("good"), "duplicate_id", "more than once"),
    ("invalid-utf8", b'{"pair_id": "x", "prompt": "caf\xe9", "response_a": "a", "response_b": "b"}\n', "invalid_row", "re-encode the file as UTF-8"),
    ("truncated-json", b'{"pair_id": "x", "prompt": "q", "respo\n', "invalid_row", "not valid JSON"),
    ("json-array-line", b'["q", "a", "b"]\n', "invalid_row", "expected a JSON object, got list"),
    ("json-scalar-line", b"17\n", "invalid_row", "expected a JSON object, got int"),
]


@pytest.mark.parametrize("row, reason, detail", [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES])
def test_bad_pair_row_becomes_an_exclusion(tmp_path, row, reason, detail):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jline(GOOD) + row)
    kept, excluded = label_inputs(path, 2)
    assert [p.pair["pair_id"] for p in kept] == ["good"]
    (ex,) = excluded
    assert ex["reason"] == reason and detail in ex["detail"], ex


def test_json_array_items_that_are_not_objects(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([GOOD, "a string", 3, None]))
    kept, excluded = label_inputs(path, 4)
    assert len(kept) == 1
    assert [e["reason"] for e in excluded] == ["invalid_row"] * 3
    assert "item 1: expected an object, got str" in excluded[0]["detail"]


def test_csv_rows_stay_text_and_ragged_rows_are_excluded(tmp_path):
    path = tmp_path / "pairs.csv"
    # "4" must stay the text "4" (not an int, then excluded as wrong_type); a row with an extra field is excluded
    path.write_text('pair_id,prompt,response_a,response_b\n1,What is 2+2?,4,5\n2,Say true.,true,false\n3,Hi,Hello,there,extra\n4,Hi,,Hello\n')
    kept, excluded = label_inputs(path, 4)
    assert [(p.pair["response_a"], p.pair["response_b"]) for p in kept] == [("4", "5"), ("true", "false")]
    assert sorted(e["reason"] for e in excluded) == ["empty_response", "invalid_row"]
    ragged = next(e for e in excluded if e["reason"] == "invalid_row")
    assert "5 fields, expected 4" in ragged["detail"] and "quote fields" in ragged["detail"]


def test_overlong_without_tokenizer_exclude_and_truncate(tmp_path):
    long = "word " * 400  # about 2,000 characters: over 8 tokens x 4 characters
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jline(GOOD) + pair("long", response_b=long))
    # exclude needs exact counts: refused at start-up, naming the setting that works
    with pytest.raises(ConfigError, match="overlong: exclude needs exact token counts.*set overlong: truncate"):
        label_inputs(path, 2, max_response_tokens=8, overlong="exclude")
    kept, excluded = label_inputs(path, 2, max_response_tokens=8, overlong="truncate")
    assert not excluded and [p.truncated for p in kept] == [False, True]
    assert kept[1].fields["b"].endswith(" [...]") and len(kept[1].fields["b"]) < 40


def test_overlong_with_the_embedded_tokenizer_is_truncated_and_flagged(embedded_backend):
    cfg = LabelConfig(max_response_tokens=8, max_context_tokens=16, overlong="truncate")
    prompt = "Tell me about fruit. " * 40
    p = {"pair_id": "x", "messages": [{"role": "user", "content": prompt}], "response_a": "Fruit is sweet. " * 30, "response_b": "No."}
    (prep,), excluded = prepare_all(cfg, [p], embedded_backend)
    assert not excluded and prep.truncated
    assert prep.fields["a"].endswith(" [...]") and len(embedded_backend.tokenizer.encode(prep.fields["a"])) <= 8 + 4
    assert prep.fields["context"].startswith("[...] ") and prep.fields["b"] == "No."


# -- pairs files: errors that name the fix -----------------------------------------------------------------

FILE_CASES = [
    # id, file name, bytes, words the message must hold
    ("missing-column", "p.jsonl", jline({"prompt": "q", "response_a": "a"}), ["no column(s) ['response_b']", "Available columns", "`response_b_column`"]),
    ("missing-column-after-bad-first-line", "p.jsonl", b"{oops\n" + jline({"question": "q", "a": "x", "b": "y"}), ["no column(s)", "`prompt_column`"]),
    ("csv-missing-column", "p.csv", b"prompt,response_a\nq,a\n", ["no column(s) ['response_b']", "`response_b_column`"]),
    ("csv-header-only", "p.csv", b"pair_id,prompt,response_a,response_b\n", ["holds no rows"]),
    ("csv-invalid-utf8", "p.csv", b"prompt,response_a,response_b\ncaf\xe9,a,b\n", ["re-encode it as UTF-8"]),
    ("unsupported-extension", "p.txt", b"prompt\tresponse_a\n", ["unsupported input p.txt", ".jsonl"]),
    ("empty-jsonl", "p.jsonl", b"", ["empty file", "check the path"]),
    ("blank-lines-only", "p.jsonl", b"\n\n  \n", ["holds no rows", "response_a"]),
    ("empty-json", "p.json", b"  \n", ["is empty", "JSON list of objects"]),
    ("json-not-a-list", "p.json", b'{"rows": 3}', ["must hold a JSON list of objects"]),
    ("json-invalid", "p.json", b'[{"prompt": "q",', ["not valid JSON", "use JSONL"]),
    ("gzip-not-gzip", "p.jsonl.gz", jline(GOOD), ["drop the .gz"]),
    ("parquet-corrupt", "p.parquet", b"PAR1 this is not parquet", ["not a readable Parquet file"]),
]


@pytest.mark.parametrize("name, data, words", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_pairs_file_is_an_error_naming_the_fix(tmp_path, name, data, words):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError) as exc:
        load_pairs(LabelConfig(input=str(path)))
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_missing_pairs_file(tmp_path):
    with pytest.raises(InputError, match=r"does not exist; pass a file or folder \(.parquet, .jsonl"):
        load_pairs(LabelConfig(input=str(tmp_path / "nope.jsonl")))


# -- prompt files for generation ----------------------------------------------------------------------------


def test_prompt_file_bad_rows_are_exclusions(tmp_path):
    from aifeedback.generation import load_prompts

    path = tmp_path / "prompts.jsonl"
    rows = [jline({"prompt": "Say hi."}), jline({"prompt": 5}), b"{broken\n", jline({"prompt": ""}), jline({"prompt": "Say hi."}),
            jline({"text": "no prompt key"}), b'{"prompt": "caf\xe9"}\n', jline({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})]
    path.write_bytes(b"".join(rows))
    items, excluded = load_prompts(str(path), "prompt")
    assert len(rows) == len(items) + len(excluded)
    assert [e["reason"] for e in excluded] == ["wrong_type", "invalid_row", "empty_prompt", "duplicate_id", "missing_prompt", "invalid_row", "bad_messages"]
    assert "UTF-8" in excluded[5]["detail"] and excluded[0]["raw"] == "5"


def test_prompt_file_errors(tmp_path):
    from aifeedback.generation import load_prompts

    p = tmp_path / "p.jsonl"
    p.write_bytes(jline({"text": "hi"}))
    with pytest.raises(InputError, match=r"no column 'prompt'.*Available columns: \['text'\].*`prompt_column`"):
        load_prompts(str(p), "prompt")
    p.write_bytes(b"\n")
    with pytest.raises(InputError, match="holds no rows"):
        load_prompts(str(p), "prompt")
    c = tmp_path / "p.csv"
    c.write_text("prompt\n42\ntrue\n")
    items, excluded = load_prompts(str(c), "prompt")  # numbers and booleans in a CSV stay text
    assert not excluded and [i["messages"][0]["content"] for i in items] == ["42", "true"]


# -- constitutions ------------------------------------------------------------------------------------------

HEAD = 'id: t\nversion: "1"\ndescription: test\n'
CONSTITUTION_CASES = [
    ("unknown-key", HEAD + "choices:\n  - {id: a, question: 'Which is kinder?'}\n", ["unknown key 'choices'", "check the spelling", "'choice'"]),
    ("duplicate-ids", HEAD + "choice:\n  - {id: a, question: 'Which is kinder?'}\n  - {id: a, question: 'Which is safer?'}\n", ["ids must be unique", "['a']"]),
    ("no-principles", HEAD, ["at least one critique_revision pair or one choice principle"]),
    ("unknown-placeholder", HEAD + "critique_revision:\n  - {id: a, critique: 'Look at {answer}', revision: 'Fix {response}'}\n", ["unknown placeholders ['answer']", "allowed: ['prompt', 'response']"]),
    ("placeholder-in-question", HEAD + "choice:\n  - {id: a, question: 'Which answers {prompt}?'}\n", ["take none"]),
    ("unbalanced-brace", HEAD + "critique_revision:\n  - {id: a, critique: 'Look at {response', revision: 'Fix it'}\n", ["write literal braces as {{"]),
    ("not-yaml", "id: [unclosed\n  : :\n", ["is not valid YAML"]),
    ("yaml-but-not-a-mapping", "Be kind and helpful.\n", ["must hold a mapping with id, version"]),
]


@pytest.mark.parametrize("text, words", [c[1:] for c in CONSTITUTION_CASES], ids=[c[0] for c in CONSTITUTION_CASES])
def test_bad_constitution(tmp_path, text, words):
    from aifeedback.constitution import load_constitution

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_constitution(path)
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_constitution_missing_or_not_utf8(tmp_path):
    from aifeedback.constitution import load_constitution

    with pytest.raises(ConfigError, match=r"no constitution at '.*nope.yaml'; shipped: \['harmless', 'helpful-honest'\], or pass a YAML file path"):
        load_constitution(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="shipped"):
        load_constitution("harmles")
    (tmp_path / "c.yaml").write_bytes(b"id: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8 text.*save the constitution as UTF-8"):
        load_constitution(tmp_path / "c.yaml")


# -- human labels and judges for the agreement report -------------------------------------------------------


def _write(tmp_path, name, data) -> str:
    p = tmp_path / name
    (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
    return str(p)


PANDALM_ROW = {"idx": 0, "instruction": "i", "response1": "a", "response2": "b", "annotator1": 1, "annotator2": 1, "annotator3": 2}
HUMAN_CASES = [
    ("pandalm-not-json", "pandalm", "h.json", "{not json", ["not a UTF-8 JSON file", "--human-format generic"]),
    ("pandalm-not-a-list", "pandalm", "h.json", '{"idx": 0}', ["must hold a JSON list of objects"]),
    ("pandalm-missing-annotator", "pandalm", "h.json", json.dumps([{k: v for k, v in PANDALM_ROW.items() if k != "annotator3"}]), ["no 'annotator3'", "PandaLM testset-v1.json"]),
    ("pandalm-label-outside-set", "pandalm", "h.json", json.dumps([{**PANDALM_ROW, "annotator2": 5}]), ["must be 0 (tie), 1 or 2", "[1, 5, 2]"]),
    ("llmbar-label-outside-set", "llmbar", "h.json", json.dumps([{"input": "i", "output_1": "a", "output_2": "b", "label": 3}]), ["label must be 1 or 2", "got 3"]),
    ("hh-line-not-json", "hh", "h.jsonl", "{oops\n", ["line 1 is not an hh-rlhf record", "chosen and rejected"]),
    ("hh-missing-key", "hh", "h.jsonl", json.dumps({"chosen": "\n\nHuman: q\n\nAssistant: a"}) + "\n", ["KeyError", "'rejected'"]),
    ("hh-invalid-utf8", "hh", "h.jsonl", b'{"chosen": "caf\xe9"}\n', ["pass a UTF-8 .jsonl"]),
    ("generic-missing-label-column", "generic", "h.jsonl", json.dumps({"pair_id": "a", "winner": "A"}) + "\n", ["no column(s) ['label']", "--human-label-column"]),
    ("generic-row-without-id", "generic", "h.jsonl", json.dumps({"pair_id": "a", "label": "A"}) + "\n" + json.dumps({"label": "B"}) + "\n", ["row 2 has no 'pair_id'", "--human-id-column"]),
    ("generic-invalid-json-line", "generic", "h.jsonl", json.dumps({"pair_id": "a", "label": "A"}) + "\n{oops\n", ["line 2: not valid JSON"]),
]


@pytest.mark.parametrize("fmt, name, data, words", [c[1:] for c in HUMAN_CASES], ids=[c[0] for c in HUMAN_CASES])
def test_bad_human_label_file(tmp_path, fmt, name, data, words):
    from labelers.human_data import load_human

    with pytest.raises(InputError) as exc:
        load_human(fmt, _write(tmp_path, name, data))
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_human_file_missing_or_unknown_format(tmp_path):
    from labelers.human_data import load_human

    with pytest.raises(InputError, match="does not exist; pass --human"):
        load_human("pandalm", tmp_path / "nope.json")
    with pytest.raises(InputError, match="use hh, pandalm, llmbar or generic"):
        load_human("xml", _write(tmp_path, "h.jsonl", "{}\n"))


def test_generic_labels_outside_the_set_are_counted_unreadable(tmp_path):
    from labelers.human_data import load_human

    rows = [{"pair_id": "a", "label": "A"}, {"pair_id": "b", "label": "maybe"}, {"pair_id": "c", "label": 7}, {"pair_id": "d", "label": "tie"}]
    items = load_human("generic", _write(tmp_path, "h.jsonl", "".join(json.dumps(r) + "\n" for r in rows)))
    # every row comes back; the unreadable ones carry human=None, which the agreement flow counts and excludes
    assert [(i["pair_id"], i["human"]) for i in items] == [("a", "A"), ("b", None), ("c", None), ("d", "tie")]


def test_judge_files_and_zero_overlap(tmp_path):
    from labelers.agreement import Judge, evaluate, judge_from_file

    with pytest.raises(InputError, match="not valid JSON"):
        judge_from_file("j", _write(tmp_path, "j.json", "[{"))
    with pytest.raises(InputError, match="none of its 2 verdicts in column 'x_result' is readable.*Put the verdicts in a column named label"):
        judge_from_file("j", _write(tmp_path, "j2.json", json.dumps([{"idx": 0, "x_result": "maybe"}, {"idx": 1, "x_result": "?"}])))
    j = judge_from_file("j", _write(tmp_path, "j3.json", json.dumps([{"idx": 0, "x_result": "1"}, "junk", {"idx": 2, "x_result": "?"}])))
    assert j.verdicts == {"pandalm-0": "A"} and j.unreadable == 2  # 3 rows = 1 verdict + 2 unreadable, counted
    with pytest.raises(InputError, match="shares no pair ids.*Label the same pairs"):
        evaluate(Judge("j", {"x1": "A", "x2": "B"}), {"p1": {"human": "A"}, "p2": {"human": "B"}})


# -- models, configs, run store -----------------------------------------------------------------------------


def test_unknown_model_offline_names_what_to_do(monkeypatch):
    from aifeedback.models import resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("AIFEEDBACK_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(ModelNotFound) as exc:
        resolve("nobody-org/no-such-model")
    msg = str(exc.value)
    assert "Pass a local folder" in msg and "embedded/smollm2-135m-instruct" in msg and "set AIFEEDBACK_ALLOW_DOWNLOAD=1 and unset HF_HUB_OFFLINE" in msg
    monkeypatch.setenv("AIFEEDBACK_ALLOW_DOWNLOAD", "1")  # already allowed: the message must name the real blocker
    with pytest.raises(ModelNotFound, match="unset HF_HUB_OFFLINE"):
        resolve("nobody-org/no-such-model")


CONFIG_CASES = [
    ("temperature-negative", GenerateConfig, ["sampling.temperature=-1"], ["sampling.temperature", "greater than or equal to 0", "got -1"]),
    ("unknown-key", GenerateConfig, ["sampling.temprature=0.2"], ["unknown key 'sampling.temprature'", "allowed here", "'temperature'"]),
    ("wrong-type", GenerateConfig, ["sampling.n=two"], ["sampling.n", "valid integer", "got 'two'"]),
    ("not-yaml-value-is-validated-as-text", GenerateConfig, ["sampling.n=[1"], ["sampling.n", "got '[1'"]),
    ("bad-backend-kind", GenerateConfig, ["backend.kind=pytorch"], ["transformers, openai, vllm or module:Class", "'pytorch'"]),
    ("bad-base-url", GenerateConfig, ["backend.kind=openai", "backend.base_url=localhost:8000"], ["must start with http:// or https://"]),
    ("section-given-a-scalar", GenerateConfig, ["sampling=2"], ["sampling", "valid dictionary"]),
    ("cot-clamp-reversed", LabelConfig, ["cot_clamp=[0.6, 0.4]"], ["0 <= lo <= hi <= 1", "[0.6, 0.4]"]),
    ("top-logprobs-too-high", LabelConfig, ["backend.kind=openai", "backend.top_logprobs=50"], ["backend.top_logprobs", "less than or equal to 20"]),
    ("label-temperature-zero", LabelConfig, ["temperature=0"], ["temperature", "greater than 0"]),
]


@pytest.mark.parametrize("cls, overrides, words", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value(cls, overrides, words):
    with pytest.raises(ConfigError) as exc:
        build_config(cls, overrides=parse_overrides(overrides))
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_bad_override_syntax_and_config_files(tmp_path):
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        parse_overrides(["sampling.n"])
    with pytest.raises(ConfigError, match="'sampling' is not a section"):
        parse_overrides(["sampling=1", "sampling.n=2"])
    assert parse_overrides(["system_prompt=Answer: briefly"]) == {"system_prompt": "Answer: briefly"}  # not YAML, kept as text
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(GenerateConfig, tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="must hold a mapping at the top level, got list"):
        build_config(GenerateConfig, tmp_path / "list.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"limit: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8 text.*saved as UTF-8"):
        build_config(GenerateConfig, tmp_path / "bin.yaml")


def test_run_dir_under_a_regular_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(StoreError, match=r"file.txt/run is not writable \(Not a directory\); pass --run-dir with a writable folder"):
        RunStore(tmp_path / "file.txt" / "run")
    with pytest.raises(StoreError, match="not writable.*--run-dir"):
        RunStore("/proc/aifeedback-run")


def test_run_dir_read_only(tmp_path):
    """A read-only parent folder. Root writes through chmod, so as root the check runs as `nobody` in a child process."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(StoreError, match="not writable.*--run-dir"):
                RunStore(ro / "run")
        finally:
            ro.chmod(0o700)
        return
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="aif-ro-"))  # pytest's tmp_path is 0700 root: nobody could not even look
    try:
        base.chmod(0o755)
        (base / "ro").mkdir(mode=0o555)
        r, w = os.pipe()
        pid = os.fork()  # the child drops to nobody and tries; no exec, so it needs no access to the interpreter
        if pid == 0:
            os.close(r)
            status, msg = 2, "no StoreError"
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                RunStore(base / "ro" / "run")
            except StoreError as e:
                status, msg = 3, str(e)
            except BaseException as e:  # noqa: BLE001 - reported to the parent as text
                msg = f"{type(e).__name__}: {e}"
            os.write(w, msg.encode())
            os._exit(status)
        os.close(w)
        with os.fdopen(r) as fh:
            msg = fh.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3, msg
        assert re.search("not writable.*--run-dir", msg), msg
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_full_disk_keeps_finished_batches(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    store = RunStore(tmp_path / "run")
    store.write_batch("labels", "k1", [], LABELS, [exclusion("a", "labels", "invalid_row", "x")])
    real = pq.write_table

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(StoreError) as exc:
        store.write_batch("labels", "k2", [], LABELS, [exclusion("b", "labels", "invalid_row", "y")])
    msg = str(exc.value)
    assert "is full" in msg and "free disk space" in msg and "another disk" in msg and "finished batches are kept" in msg
    assert store.has("labels", "k1") and not store.has("labels", "k2")
    assert not list(store.stage_dir("labels").glob(".*"))  # no temporary files left behind
    monkeypatch.setattr(pq, "write_table", real)
    assert pq.read_table(store.excluded_path("labels", "k1")).column("item_id").to_pylist() == ["a"]


def test_full_disk_mid_flow_then_resume(tmp_path, monkeypatch):
    """Input exclusions only (no model): the second batch hits ENOSPC, the first stays, a re-run completes."""
    import pyarrow.parquet as pq

    from flows.label import run_label

    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"{bad\n" * 2 + b"[1]\n" * 2)
    run = tmp_path / "run"
    real, calls = pq.write_table, []

    def fill_up(table, where, **kw):
        calls.append(where)
        if len(calls) > 2:  # batch 1 wrote its two files; the disk is full from then on
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", fill_up)
    with pytest.raises(StoreError, match="free disk space or pass --run-dir on another disk"):
        run_label(run_dir=str(run), overrides={"input": str(path), "batch_size": 2})
    kept = list((run / "labels").glob("*.excluded.parquet"))
    assert len(kept) == 1
    before = kept[0].stat().st_mtime_ns
    monkeypatch.setattr(pq, "write_table", real)
    s = run_label(run_dir=str(run), overrides={"input": str(path), "batch_size": 2})
    assert s["complete"] and s["n_in"] == 4 == s["n_out"] + s["n_excluded"] and s["n_excluded"] == 4
    assert kept[0].stat().st_mtime_ns == before  # the finished batch was kept, not rewritten


# -- end to end: one label flow on the embedded model, many bad rows, two good pairs ------------------------


def test_label_flow_accounts_for_every_bad_row(tmp_path):
    from flows.label import run_label

    rows = [
        jline(GOOD),
        pair("fruit"),
        b'{"pair_id": "u", "prompt": "caf\xe9"}\n',
        b'{"pair_id": "t", "prompt": "q", "respo\n',
        b'["q", "a", "b"]\n',
        pair("null-prompt", prompt=None),
        pair("blank-prompt", prompt=" "),
        pair("dict-prompt", prompt={"q": 1}),
        pair("bad-role", prompt=[{"role": "robot", "content": "hi"}]),
        pair("ends-with-assistant", prompt=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
        pair("good", prompt="dup"),
        pair("int-response", response_a=7),
        jline({"pair_id": "no-b", "prompt": "q", "response_a": "a"}),
        pair("empty-response", response_b=""),
        pair("same", response_a="Yes.", response_b="Yes."),
        pair("too-long", response_a="A banana is a long yellow fruit that grows in bunches on large plants. " * 3),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"".join(rows))
    run = tmp_path / "run"
    s = run_label(run_dir=str(run), overrides={"input": str(path), "batch_size": 4, "max_response_tokens": 12, "overlong": "exclude"})
    assert s["complete"] and s["n_in"] == len(rows) == s["n_out"] + s["n_excluded"]
    store = RunStore(run)
    assert sorted(store.read_table("labels").column("pair_id").to_pylist()) == ["fruit", "good"]
    ex = {(e["item_id"], e["reason"]) for e in store.read_table("labels", excluded=True).to_pylist()}
    assert {r for _, r in ex} == {
        "invalid_row", "missing_prompt", "empty_prompt", "wrong_type", "bad_messages", "duplicate_id",
        "missing_response", "empty_response", "identical_responses", "too_long",
    }
    assert ("too-long", "too_long") in ex and ("int-response", "wrong_type") in ex and ("good", "duplicate_id") in ex
    assert s["n_excluded"] == 14
