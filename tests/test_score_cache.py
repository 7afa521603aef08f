"""Victim and floor scores come from an on-disk cache keyed by content, never from (or into) a card."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import sslaudit.score_cache as score_cache
import sslaudit.tasks
from sslaudit.audit import floor_scores, victim_scores
from sslaudit.models import InputSpec
from sslaudit.score_cache import cached_scores, encoder_digest, score_key, score_path
from test_honest import tiny_encoder, tiny_task, tiny_victim

FAKE = {"linear_1pct": 0.5, "linear_1pct_spread": 0.01, "linear_full": 0.75, "knn": 0.625}


@pytest.fixture
def evaluations(tmp_path, monkeypatch):
    """A private cache, and an evaluator that counts its calls instead of probing."""
    monkeypatch.setenv("SSLAUDIT_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake(encoder, task, **progress):
        calls.append((encoder_digest(encoder), task.key))
        return dict(FAKE)

    monkeypatch.setattr(score_cache, "evaluate_encoder", fake)
    return calls


def test_a_second_call_reads_the_cache(evaluations, tmp_path):
    task, encoder = tiny_task(), tiny_encoder()
    assert cached_scores(encoder, task) == FAKE
    assert cached_scores(copy.deepcopy(encoder), task) == FAKE  # same weights, another object: a hit
    assert len(evaluations) == 1
    files = list((tmp_path / "cache" / "scores").iterdir())
    assert files == [score_path(score_key(encoder, task))]  # and no temporary file left behind
    stored = json.loads(files[0].read_text())
    assert stored["key"]["task"] == task.key and stored["scores"] == FAKE


def test_other_weights_tasks_or_probe_versions_miss(evaluations, monkeypatch):
    task, encoder = tiny_task(), tiny_encoder()
    cached_scores(encoder, task)
    cached_scores(encoder, tiny_task(name="other"))
    monkeypatch.setattr(sslaudit.tasks, "PROBE_VERSION", "probe-next")  # task.key names the probe version
    cached_scores(encoder, task)
    with torch.no_grad():
        next(encoder.parameters()).view(-1)[0] += 1e-3
    cached_scores(encoder, task)
    assert len(evaluations) == 4 and len({key for _, key in evaluations}) == 3


def test_victim_scores_leave_the_card_alone(evaluations):
    task, victim = tiny_task(), tiny_victim()
    card = copy.deepcopy(victim.card)
    assert victim_scores(victim, task) == FAKE == victim_scores(victim, task)
    assert victim.card == card and "scores" not in victim.card
    assert len(evaluations) == 1


def test_the_floor_is_cached_per_architecture_spec_and_seed(evaluations):
    task = tiny_task()
    first = floor_scores("convnet-small", InputSpec(), 0, task)
    assert floor_scores("convnet-small", InputSpec(), 0, task) == first
    floor_scores("convnet-small", InputSpec(), 1, task)
    floor_scores("convnet-small", InputSpec(mean=(0.2,), std=(0.3,)), 0, task)
    assert len(evaluations) == 3


@pytest.mark.parametrize("data", [b"{not json", b'{"key": {}, "scores": {}}', b'{"scores": [1]}', b"\xff\xfe"])
def test_a_corrupt_cache_file_is_ignored_with_a_warning(evaluations, data):
    task, encoder = tiny_task(), tiny_encoder()
    path = score_path(score_key(encoder, task))
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with pytest.warns(UserWarning, match="score cache"):
        assert cached_scores(encoder, task) == FAKE
    assert len(evaluations) == 1 and json.loads(path.read_text())["scores"] == FAKE  # rewritten
    assert cached_scores(encoder, task) == FAKE and len(evaluations) == 1


def test_the_content_hash_names_the_weights():
    a, b = tiny_encoder(0), tiny_encoder(0)
    assert encoder_digest(a) == encoder_digest(b) != encoder_digest(tiny_encoder(1))
    assert len(encoder_digest(a.to(torch.bfloat16))) == 64  # any dtype hashes


def test_shipped_scores_are_read_when_the_user_cache_has_none(evaluations, tmp_path, monkeypatch):
    task, encoder = tiny_task(), tiny_encoder()
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(score_cache, "SHIPPED", shipped)
    key = score_key(encoder, task)
    score_path(key, shipped).parent.mkdir(parents=True)
    stored = dict(FAKE, linear_full=0.9)
    score_path(key, shipped).write_text(json.dumps({"key": key, "scores": stored}))
    assert cached_scores(encoder, task) == stored and evaluations == []
    # a shipped file for other weights (or another probe version) is never read
    assert cached_scores(tiny_encoder(1), task) == FAKE and len(evaluations) == 1


def test_the_key_names_float32_evaluation_on_every_machine(monkeypatch):
    import sslaudit.device
    task, encoder = tiny_task(), tiny_encoder()
    plain = score_key(encoder, task)
    monkeypatch.setattr(sslaudit.device, "cpu_has_bf16", lambda: True)
    assert score_key(encoder, task) == plain and plain["precision"] == "float32"


def test_evaluation_embeds_without_autocast(monkeypatch):
    import sslaudit.evaluate as evaluate
    seen = []
    monkeypatch.setattr(evaluate, "embed", lambda enc, images, **kw: seen.append(kw) or torch.zeros(len(images), 2))
    evaluate.embed_for_eval(tiny_encoder(), torch.zeros(3, 1, 28, 28))
    assert [kw["mixed_precision"] for kw in seen] == [False]
