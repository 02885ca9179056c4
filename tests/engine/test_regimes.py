"""Sample schedules: every row once per epoch, reshuffling, partial batches, errors."""

import pytest
import torch

from gdlab.engine.regimes import make_schedule
from gdlab.errors import GdlabError


def epoch(schedule):
    return [schedule.next_indices() for _ in range(schedule.steps_per_epoch)]


def test_minibatch_epoch_touches_every_row_exactly_once():
    """With last_batch=keep, one epoch of B=10 over N=103 is 11 steps (ten of 10 rows, one of 3)
    and the indices form a permutation of range(N)."""
    s = make_schedule("minibatch", 103, batch_size=10, seed=4)
    batches = epoch(s)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert torch.equal(torch.sort(torch.cat(batches)).values, torch.arange(103))


def test_minibatch_reshuffles_each_epoch():
    """Consecutive epochs use different permutations, each still covering every row once."""
    s = make_schedule("minibatch", 50, batch_size=7, seed=0)
    first, second = torch.cat(epoch(s)), torch.cat(epoch(s))
    assert not torch.equal(first, second)
    assert torch.equal(torch.sort(second).values, torch.arange(50))
    assert s.epoch == 1


def test_drop_last_gives_equal_batches_and_skips_the_remainder():
    """last_batch=drop: every step has exactly B rows, N // B steps per epoch, no row twice."""
    s = make_schedule("minibatch", 103, batch_size=10, last_batch="drop", seed=1)
    assert s.steps_per_epoch == 10
    for _ in range(3):
        batches = epoch(s)
        assert all(len(b) == 10 for b in batches)
        assert len(set(torch.cat(batches).tolist())) == 100


def test_stochastic_uses_one_row_per_step_and_covers_the_set_each_epoch():
    """Stochastic regime: N steps of exactly one row make an epoch covering every row."""
    s = make_schedule("stochastic", 17, seed=2)
    batches = epoch(s)
    assert all(len(b) == 1 for b in batches)
    assert sorted(torch.cat(batches).tolist()) == list(range(17))


def test_full_regime_uses_all_rows():
    """The full regime returns None (all rows) every step: one step is one epoch."""
    s = make_schedule("full", 9)
    assert s.next_indices() is None and s.steps_per_epoch == 1 and s.batch_size == 9


def test_same_seed_same_order_and_state_round_trip():
    """The order is a function of the seed, and a schedule restored from state_dict continues
    exactly like the original."""
    a, b = make_schedule("minibatch", 40, batch_size=6, seed=9), make_schedule("minibatch", 40, batch_size=6, seed=9)
    assert all(torch.equal(x, y) for x, y in zip(epoch(a), epoch(b)))
    for _ in range(4):
        a.next_indices()
    state = a.state_dict()
    c = make_schedule("minibatch", 40, batch_size=6, seed=123)
    c.load_state_dict(state)
    for _ in range(15):
        assert torch.equal(a.next_indices(), c.next_indices())


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(regime="minibatch", batch_size=200), "larger than the training set"),
        (dict(regime="minibatch", batch_size=0), ">= 1"),
        (dict(regime="stochastic", batch_size=5), "one row per step"),
        (dict(regime="full", batch_size=5), "conflicts"),
        (dict(regime="minibtch"), "did you mean 'minibatch'"),
        (dict(regime="minibatch", last_batch="partial"), "last_batch"),
    ],
)
def test_bad_schedule_arguments_raise_one_line_errors(kwargs, needle):
    """Each bad argument raises GdlabError whose single line names the problem."""
    regime = kwargs.pop("regime")
    with pytest.raises(GdlabError) as info:
        make_schedule(regime, 100, **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)
