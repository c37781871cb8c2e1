"""Multiple-choice scoring against hand-computed log-likelihoods, and every way data is found or missed."""

import json
import math

import pyarrow as pa
import pytest
import torch

from mfbench.core.model import MemoryFormerLM, ModelConfig
from mfbench.tasks import choice


class Unigram(torch.nn.Module):
    """Every position predicts the same byte distribution, so a continuation's log-likelihood is the sum
    of its bytes' log-probabilities: easy to compute by hand."""

    def __init__(self, logp: dict[int, float]) -> None:
        super().__init__()
        rest = math.log((1 - sum(math.exp(v) for v in logp.values())) / (256 - len(logp)))
        self.table = torch.full((256,), rest)
        for byte, value in logp.items():
            self.table[byte] = value

    def forward(self, idx):
        return self.table.expand(*idx.shape, 256)


# "b" is likely enough: " a" beats " ab" in total, " ab" wins per character.
LOGP = {ord(" "): math.log(0.3), ord("a"): math.log(0.2), ord("b"): math.log(0.4), ord("c"): math.log(0.01)}


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_acc_and_acc_norm_as_the_harness_computes_them(tmp_path):
    _write_jsonl(tmp_path / "generic.jsonl", [
        {"context": "Q:", "choices": [" a", " ab"], "label": 1},
        {"context": "Q:", "choices": [" c", " a"], "label": 1},
    ])
    questions = choice.load("generic", tmp_path)
    model = Unigram(LOGP)
    ll = {text: sum(LOGP[b] for b in text.encode()) for text in (" a", " ab", " c")}
    assert choice.loglikelihood(model, "Q:", " ab", "cpu") == pytest.approx(ll[" ab"], abs=1e-5)
    # question 1: acc picks " a" (higher total, wrong); acc_norm picks " ab" (higher per character, right)
    assert ll[" a"] > ll[" ab"] and ll[" ab"] / 3 > ll[" a"] / 2
    result = choice.score(model, questions)
    assert (result.acc, result.acc_norm, result.questions) == (0.5, 1.0, 2)


def test_dataset_formats(tmp_path):
    _write_jsonl(tmp_path / "piqa.jsonl", [{"goal": "Open a jar", "sol1": "twist", "sol2": "kick", "label": 0}])
    arc = {"question": "Sky?", "choices": {"text": ["blue", "red"], "label": ["A", "B"]}, "answerKey": "A"}
    (tmp_path / "arc_easy").mkdir()
    _write_jsonl(tmp_path / "arc_easy" / "test.jsonl", [arc, {**arc, "choices": {"text": ["x", "y"], "label": ["1", "2"]},
                                                              "answerKey": "2"}])
    _write_jsonl(tmp_path / "winogrande.jsonl", [{"sentence": "The cup fell off the table because _ was tilted.",
                                                  "option1": "the cup", "option2": "the table", "answer": "2"}])
    piqa = choice.load("piqa", tmp_path)[0]
    assert piqa.contexts[0] == "Question: Open a jar\nAnswer:" and piqa.continuations == (" twist", " kick")
    easy = choice.load("arc_easy", tmp_path)
    assert [q.label for q in easy] == [0, 1] and easy[0].continuations == (" blue", " red")
    wino = choice.load("winogrande", tmp_path)[0]
    assert wino.contexts == ("The cup fell off the table because the cup", "The cup fell off the table because the table")
    assert wino.continuations == (" was tilted.", " was tilted.") and wino.label == 1


def test_missing_data_names_the_expected_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    with pytest.raises(choice.DataMissing) as exc:
        choice.load("piqa", tmp_path / "data")
    message = str(exc.value)
    assert str(tmp_path / "data" / "piqa.jsonl") in message
    assert str(tmp_path / "data" / "piqa" / "validation.jsonl") in message
    assert "hf/piqa/**/piqa-validation.arrow" in message


def test_reads_a_local_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    folder = tmp_path / "ai2_arc" / "ARC-Challenge" / "0.0.0" / "abc123"
    folder.mkdir(parents=True)
    table = pa.table({"question": ["Hot?"], "choices": [{"text": ["fire", "ice"], "label": ["A", "B"]}],
                      "answerKey": ["A"]})
    with pa.OSFile(str(folder / "ai2_arc-test.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    [question] = choice.load("arc_challenge", None)
    assert question.continuations == (" fire", " ice") and question.label == 0
    with pytest.raises(choice.DataMissing):  # the easy subset is not in that cache
        choice.load("arc_easy", None)


def test_bad_records_and_names(tmp_path):
    (tmp_path / "generic.jsonl").write_text('{"context": "a", "choices": ["b"], "label": 0}\nnot json\n')
    with pytest.raises(ValueError, match="generic.jsonl:2: not JSON"):
        choice.load("generic", tmp_path)
    _write_jsonl(tmp_path / "piqa.jsonl", [{"goal": "x"}])
    with pytest.raises(ValueError, match="record 1 is not a piqa question"):
        choice.load("piqa", tmp_path)
    with pytest.raises(ValueError, match="unknown multiple-choice task"):
        choice.load("hellaswag", tmp_path)


def test_providers_agree_on_loglikelihoods():
    torch.manual_seed(0)
    model = MemoryFormerLM(ModelConfig.preset("micro")).eval()
    scores = {}
    for provider in ("reference", "triton"):
        model.set_provider(provider)
        scores[provider] = choice.loglikelihood(model, "The answer is", " yes", "cpu")
    assert scores["triton"] == pytest.approx(scores["reference"], rel=1e-4)
