"""Issue 18: the label stage's per-pair overheads - the shared content encoder and the stage's GC thresholds."""

from __future__ import annotations

import datetime
import gc
import json
import random
import threading

from aifeedback.records import content_json, stable_id
from aifeedback.batches import STAGE_GC_THRESHOLD, item_key, stage_gc


def _value(rnd: random.Random, depth: int = 0):
    c = rnd.random()
    if depth > 3 or c < 0.35:
        return rnd.choice([None, True, False, 0, -5, 1.5, float("inf"), float("nan"), 1e-300, "x", "é\u2028", "\ud800", "\x00\"\\", datetime.date(2020, 1, 2)])
    if c < 0.6:
        return [_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    if c < 0.7:
        return tuple(_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3)))
    return {rnd.choice(["a", "b", "é", "", "Z"]) + str(i): _value(rnd, depth + 1) for i in range(rnd.randint(0, 4))}


def test_content_json_is_json_dumps_byte_for_byte():
    """Item keys and stable ids hash this text: it must stay what json.dumps wrote, or every key changes."""
    rnd = random.Random(18)
    for _ in range(5000):
        v = _value(rnd)
        assert content_json(v) == json.dumps(v, sort_keys=True, ensure_ascii=False, default=str)
    pair = {"pair_id": "s1", "messages": [{"role": "user", "content": "Hi ✓"}], "response_a": "a", "response_b": "b"}
    import hashlib

    blob = json.dumps(pair, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert item_key(b"p", pair) == hashlib.blake2b(b"p" + blob, digest_size=12).hexdigest()
    blob = json.dumps(("x", 1), sort_keys=True, ensure_ascii=False, default=str)
    assert stable_id("x", 1) == hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_stage_gc_raises_the_thresholds_and_restores_them():
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with stage_gc():
            assert gc.get_threshold() == STAGE_GC_THRESHOLD
            with stage_gc():  # nested (run_batch inside execute_stage)
                assert gc.get_threshold() == STAGE_GC_THRESHOLD
            assert gc.get_threshold() == STAGE_GC_THRESHOLD

            seen = []  # an assert inside a thread would not fail the test: record, then check here

            def batch():  # a thread runner's batches enter and leave while the stage holds it
                with stage_gc():
                    seen.append(gc.get_threshold())

            threads = [threading.Thread(target=batch) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert seen == [STAGE_GC_THRESHOLD] * 4
            assert gc.get_threshold() == STAGE_GC_THRESHOLD
        assert gc.get_threshold() == (700, 10, 10)
        gc.set_threshold(0, 10, 10)  # collection switched off by the caller: left off
        with stage_gc():
            assert gc.get_threshold()[0] == 0
        assert gc.get_threshold() == (0, 10, 10)
    finally:
        gc.set_threshold(*before)
