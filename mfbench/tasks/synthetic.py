"""Synthetic probes generated from a seed: no download, the same batch on every machine.

Each task yields ``(inputs, targets)`` of shape (batch, seq): a language model reads ``inputs`` and is
scored only where ``targets`` is not ``IGNORE`` (the answer positions), by argmax. ``chance`` is what a
model that cannot recall gets: the best guess that ignores which key was asked for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

IGNORE = -100  # cross_entropy's ignore_index


@dataclass(frozen=True)
class MQAR:
    """Multi-query associative recall (Arora et al., "Zoology", 2023), the standard probe of whether a
    sequence model can look things up in its context.

    A sequence lists ``pairs`` key-value pairs ``k1 v1 k2 v2 ...`` (distinct keys), then asks ``queries`` of
    the keys again, each followed by its value: ``q1 a1 q2 a2 ...``. The model is scored on predicting each
    ``a`` from the ``q`` before it. Keys and values come from disjoint halves of the vocabulary.
    """

    name: str = "mqar"
    pairs: int = 8
    queries: int = 8
    num_keys: int = 16
    num_values: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.queries <= self.pairs <= self.num_keys:
            raise ValueError(f"mqar needs 1 <= queries <= pairs <= num_keys, got queries={self.queries}, "
                             f"pairs={self.pairs}, num_keys={self.num_keys}")
        if self.num_values < 2:
            raise ValueError(f"mqar needs at least 2 values, got {self.num_values}")

    @property
    def vocab_size(self) -> int:
        return self.num_keys + self.num_values

    @property
    def seq_len(self) -> int:
        return 2 * (self.pairs + self.queries) - 1

    @property
    def chance(self) -> float:
        # Without recall the best guess is one of the values shown, so 1 / pairs (they may repeat, which
        # only helps by a little); uniform guessing over all values would be 1 / num_values.
        return 1.0 / min(self.pairs, self.num_values)

    def batch(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        keys = torch.argsort(torch.rand(size, self.num_keys, generator=g), dim=1)[:, : self.pairs]
        values = self.num_keys + torch.randint(self.num_values, (size, self.pairs), generator=g)
        asked = torch.argsort(torch.rand(size, self.pairs, generator=g), dim=1)[:, : self.queries]
        context = torch.stack((keys, values), dim=2).flatten(1)
        query = torch.stack((keys.gather(1, asked), values.gather(1, asked)), dim=2).flatten(1)
        seq = torch.cat((context, query), dim=1)
        targets = torch.full_like(seq, IGNORE)
        answer = torch.arange(2 * self.pairs + 1, seq.shape[1], 2)
        targets[:, answer] = seq[:, answer]
        return seq[:, :-1].contiguous(), targets[:, 1:].contiguous()

    def spec(self) -> dict:
        return {"task": self.name, **{k: v for k, v in asdict(self).items() if k != "name"}}


@dataclass(frozen=True)
class InductionHeads:
    """Induction heads (Olsson et al., 2022; the H3 paper's synthetic): random tokens in which a trigger
    token is followed once by a random token X; the sequence ends with the trigger again, and the model
    must say X. One scored answer per sequence."""

    name: str = "induction"
    length: int = 32
    num_tokens: int = 64

    def __post_init__(self) -> None:
        if self.length < 4:
            raise ValueError(f"induction needs length >= 4, got {self.length}")
        if self.num_tokens < 2:
            raise ValueError(f"induction needs at least 2 tokens, got {self.num_tokens}")

    @property
    def trigger(self) -> int:
        return self.num_tokens

    @property
    def vocab_size(self) -> int:
        return self.num_tokens + 1

    @property
    def seq_len(self) -> int:
        return self.length

    @property
    def chance(self) -> float:
        # Without recall, the best guess is a token from the sequence: the answer is among length - 2 of them.
        return 1.0 / min(self.num_tokens, self.length - 2)

    def batch(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        seq = torch.randint(self.num_tokens, (size, self.length + 1), generator=g)
        where = torch.randint(self.length - 2, (size,), generator=g)  # trigger position, before the final one
        rows = torch.arange(size)
        seq[rows, where] = self.trigger
        seq[:, -2] = self.trigger
        seq[:, -1] = seq[rows, where + 1]
        targets = torch.full_like(seq, IGNORE)
        targets[:, -1] = seq[:, -1]
        return seq[:, :-1].contiguous(), targets[:, 1:].contiguous()

    def spec(self) -> dict:
        return {"task": self.name, **{k: v for k, v in asdict(self).items() if k != "name"}}


SyntheticTask = MQAR | InductionHeads
TASKS: dict[str, type] = {"mqar": MQAR, "induction": InductionHeads}


def make(name: str, **options: int) -> SyntheticTask:
    """A task by name, with optional overrides of its fields; clear errors for unknown names or fields."""
    try:
        cls = TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None
    known = set(cls.__dataclass_fields__) - {"name"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"task {name} has no option(s) {', '.join(sorted(unknown))}; it takes {', '.join(sorted(known))}")
    return cls(**options)


def from_spec(spec: dict) -> SyntheticTask:
    spec = dict(spec)
    return make(spec.pop("task"), **spec)


@torch.no_grad()
def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(correct, scored) answer positions: argmax of the logits against the targets that are not IGNORE."""
    scored = targets != IGNORE
    correct = (logits.argmax(-1) == targets) & scored
    return int(correct.sum()), int(scored.sum())
