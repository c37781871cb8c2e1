import pytest
import torch

from mfbench.tasks import synthetic
from mfbench.tasks.synthetic import IGNORE, MQAR, InductionHeads, accuracy


@pytest.mark.parametrize("task", [MQAR(), MQAR(pairs=4, queries=2, num_keys=8, num_values=5), InductionHeads()])
def test_same_seed_same_batch_other_seed_other_batch(task):
    a, b, c = task.batch(16, 3), task.batch(16, 3), task.batch(16, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    inputs, targets = a
    assert inputs.shape == targets.shape == (16, task.seq_len)
    assert int(inputs.min()) >= 0 and int(inputs.max()) < task.vocab_size
    scored = targets[targets != IGNORE]
    assert int(scored.min()) >= 0 and int(scored.max()) < task.vocab_size


def test_mqar_answers_are_the_values_of_the_asked_keys():
    task = MQAR(pairs=6, queries=4, num_keys=10, num_values=7)
    inputs, targets = task.batch(32, 0)
    for seq, tgt in zip(inputs.tolist(), targets.tolist()):
        context = dict(zip(seq[0:2 * task.pairs:2], seq[1:2 * task.pairs:2]))
        assert len(context) == task.pairs  # distinct keys
        assert all(k < task.num_keys <= v < task.vocab_size for k, v in context.items())
        positions = [i for i, t in enumerate(tgt) if t != IGNORE]
        assert len(positions) == task.queries
        for i in positions:  # the model reads the query key at i and must say its value
            assert seq[i] in context and tgt[i] == context[seq[i]]


def test_induction_answer_follows_the_first_trigger():
    task = InductionHeads(length=20, num_tokens=9)
    inputs, targets = task.batch(64, 1)
    for seq, tgt in zip(inputs.tolist(), targets.tolist()):
        assert seq[-1] == task.trigger and seq.count(task.trigger) == 2
        assert [i for i, t in enumerate(tgt) if t != IGNORE] == [len(seq) - 1]
        assert tgt[-1] == seq[seq.index(task.trigger) + 1]


def test_chance_levels():
    assert MQAR(pairs=8, num_values=16).chance == 1 / 8
    assert MQAR(pairs=4, queries=4, num_keys=4, num_values=2).chance == 1 / 2
    assert InductionHeads(length=32, num_tokens=64).chance == 1 / 30


def test_accuracy_counts_only_scored_positions():
    targets = torch.tensor([[IGNORE, 2, IGNORE, 0]])
    logits = torch.zeros(1, 4, 3)
    logits[0, 1, 2] = 1  # right
    logits[0, 3, 1] = 1  # wrong
    logits[0, 0, 1] = logits[0, 2, 1] = 1  # unscored
    assert accuracy(logits, targets) == (1, 2)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'; choose one of mqar, induction"):
        synthetic.make("nope")
    with pytest.raises(ValueError, match="has no option"):
        synthetic.make("mqar", length=3)
    with pytest.raises(ValueError, match="queries <= pairs"):
        MQAR(pairs=2, queries=3)
    with pytest.raises(ValueError, match="length >= 4"):
        InductionHeads(length=2)
    assert synthetic.from_spec(MQAR(pairs=3, queries=1).spec()) == MQAR(pairs=3, queries=1)
