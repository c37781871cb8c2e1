"""Zero-shot multiple choice scored as lm-evaluation-harness scores it.

Each choice is a continuation of a context; its score is the log-likelihood the model gives the
continuation's tokens. ``acc`` picks the choice of highest log-likelihood, ``acc_norm`` the highest
log-likelihood per character of the continuation (the harness's length normalisation). Text is read as
UTF-8 bytes, one token per byte, so any model with a vocabulary of at least 256 can be scored without a
tokenizer download.

Data is read from disk only: a JSONL file per task (``DIR/<task>.jsonl`` or ``DIR/<task>/<split>.jsonl``)
in the dataset's own field names, or the Arrow file a local Hugging Face ``datasets`` cache holds for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

BYTE_VOCAB = 256


class DataMissing(Exception):
    """The task's data is not on this machine; the message names where it was looked for."""


@dataclass(frozen=True)
class Question:
    contexts: tuple[str, ...]  # one per choice (WinoGrande varies the context), else the same repeated
    continuations: tuple[str, ...]
    label: int


def _piqa(doc: dict) -> Question:
    context = f"Question: {doc['goal']}\nAnswer:"
    return Question((context, context), (" " + doc["sol1"], " " + doc["sol2"]), int(doc["label"]))


def _arc(doc: dict) -> Question:
    context = f"Question: {doc['question']}\nAnswer:"
    labels = list(doc["choices"]["label"])
    texts = [" " + t for t in doc["choices"]["text"]]
    answer = str(doc["answerKey"])
    # A few ARC items number their choices 1-4 instead of A-D.
    answer = {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}.get(answer, answer) if answer not in labels else answer
    return Question(tuple(context for _ in texts), tuple(texts), labels.index(answer))


def _winogrande(doc: dict) -> Question:
    # Partial scoring, as the harness does: the option fills the blank in the context and the model scores
    # the rest of the sentence, which is the same for both options.
    before, after = doc["sentence"].split("_", 1)
    contexts = tuple(before + doc[f"option{i}"] for i in (1, 2))
    rest = " " + after.strip()
    return Question(contexts, (rest, rest), int(doc["answer"]) - 1)


def _generic(doc: dict) -> Question:
    choices = tuple(doc["choices"])
    return Question(tuple(doc["context"] for _ in choices), choices, int(doc["label"]))


@dataclass(frozen=True)
class ChoiceTask:
    name: str
    hf_name: str  # the dataset's directory name in a Hugging Face datasets cache
    split: str
    parse: Callable[[dict], Question]


CHOICE_TASKS = {t.name: t for t in (
    ChoiceTask("piqa", "piqa", "validation", _piqa),
    ChoiceTask("arc_easy", "ai2_arc", "test", _arc),
    ChoiceTask("arc_challenge", "ai2_arc", "test", _arc),
    ChoiceTask("winogrande", "winogrande", "validation", _winogrande),
    # The format the project's own small sets use: {"context": str, "choices": [str], "label": int}.
    ChoiceTask("generic", "", "test", _generic),
)}


def _hf_cache_roots() -> list[Path]:
    roots = [os.environ.get("HF_DATASETS_CACHE")]
    home = os.environ.get("HF_HOME")
    roots.append(os.path.join(home, "datasets") if home else None)
    roots.append(os.path.expanduser("~/.cache/huggingface/datasets"))
    return [Path(r) for r in roots if r]


def _arrow_rows(path: Path) -> list[dict]:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()  # what `datasets` writes
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(source).read_all()
    return table.to_pylist()


def locate(task: ChoiceTask, data_dir: str | os.PathLike | None) -> Path:
    """The file holding ``task``'s questions, or DataMissing naming every place looked at."""
    looked: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir)
        if root.is_file():
            return root
        for candidate in (root / f"{task.name}.jsonl", root / task.name / f"{task.split}.jsonl"):
            looked.append(candidate)
            if candidate.is_file():
                return candidate
    if task.hf_name:
        for root in _hf_cache_roots():
            pattern = f"{task.hf_name}/**/{task.hf_name}-{task.split}.arrow"
            looked.append(root / pattern)
            # ARC keeps both subsets under one dataset name; the config directory tells them apart.
            subset = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}.get(task.name, "")
            found = sorted(p for p in root.glob(pattern) if subset.lower() in str(p).lower())
            if found:
                return found[-1]
    where = "\n  ".join(str(p) for p in looked) or "(no data directory given and no datasets cache)"
    raise DataMissing(f"no local data for {task.name}; looked for:\n  {where}\n"
                      f"Put the {task.split} split there as JSONL (the dataset's own fields), or pass --data DIR.")


def load(name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> list[Question]:
    try:
        task = CHOICE_TASKS[name]
    except KeyError:
        raise ValueError(f"unknown multiple-choice task {name!r}; choose one of {', '.join(CHOICE_TASKS)}") from None
    path = locate(task, data_dir)
    if path.suffix == ".arrow":
        docs = _arrow_rows(path)
    else:
        docs = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
    questions = []
    for number, doc in enumerate(docs[:limit] if limit else docs, 1):
        try:
            questions.append(task.parse(doc))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: record {number} is not a {task.name} question ({type(exc).__name__}: {exc})") from None
    return questions


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@torch.no_grad()
def loglikelihood(model: torch.nn.Module, context: str, continuation: str, device: torch.device | str) -> float:
    """Sum of log p(continuation token | everything before it), as the harness's ``loglikelihood``."""
    ctx, cont = encode(context), encode(continuation)
    if not ctx or not cont:
        raise ValueError("scoring needs a non-empty context and continuation (there is no start token)")
    tokens = torch.tensor([(ctx + cont)[:-1]], device=device)
    logits = model(tokens)[0, -len(cont):].float()
    return float(F.log_softmax(logits, -1).gather(1, torch.tensor(cont, device=device)[:, None]).sum())


@dataclass(frozen=True)
class ChoiceScore:
    acc: float
    acc_norm: float
    questions: int


def score(model: torch.nn.Module, questions: Iterable[Question], device: torch.device | str = "cpu") -> ChoiceScore:
    hits = hits_norm = count = 0
    for q in questions:
        lls = [loglikelihood(model, c, t, device) for c, t in zip(q.contexts, q.continuations)]
        norm = [ll / len(t) for ll, t in zip(lls, q.continuations)]
        hits += max(range(len(lls)), key=lls.__getitem__) == q.label
        hits_norm += max(range(len(norm)), key=norm.__getitem__) == q.label
        count += 1
    if not count:
        raise ValueError("no questions to score")
    return ChoiceScore(hits / count, hits_norm / count, count)
