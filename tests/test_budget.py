"""StepBudget driven by a fake clock: a slow first epoch, a slow-down, a speed-up.

Every expected step count below is worked out by hand from the rule in StepBudget's docstring:
seconds per step s and per-epoch overhead o from the last two steady epochs (the first epoch
left out); the remaining time R holds n = floor(R / (50 s + o)) full epochs, then a partial one
of floor((R - n (50 s + o) - o) / s) steps if what is left exceeds o.
"""
import pytest

from lmkreg.training.budget import StepBudget


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def drive(budget, clock, epochs):
    """Run epochs of (train seconds per step, other seconds) until the budget ends; returns
    [(steps of the epoch, total after the re-fit)]."""
    budget.start()
    seen = []
    for step_s, other_s in epochs:
        steps = budget.next_epoch_steps()
        if steps == 0:
            break
        clock.now += steps * step_s + other_s
        seen.append((steps, budget.epoch_done(steps, steps * step_s, other_s)))
    return seen


def test_budget_ignores_the_slow_first_epoch_and_refits_down_then_up():
    clock = FakeClock()
    budget = StepBudget(budget_s=300.0, max_steps=5000, steps_per_epoch=50, clock=clock)
    epochs = [(1.6, 4.0),   # E0 slow first epoch (80 s of steps): ignored, the plan's 5000 steps stand
              (0.5, 5.0),   # E1 steady: s=0.5 o=5, R=186: 6 full (180 s) + partial floor((6-5)/0.5)=2 -> 402
              (1.0, 10.0),  # E2 slow-down: s=0.75 o=7.5, R=126: 2 full (90 s), partial floor(28.5/0.75)=38 -> 288
              (1.0, 10.0),  # E3 still slow: s=1 o=10, R=66: 1 full (60 s), 6 s left < o -> 250
              (0.25, 2.5),  # E4 speed-up: s=0.625 o=6.25, R=51: 1 full (37.5 s), floor(7.25/0.625)=11 -> 311
              (0.25, 2.5),  # E5 fast: s=0.25 o=2.5, R=36: 2 full (30 s), floor(3.5/0.25)=14 -> 414
              (0.25, 2.5),  # E6: R=21: 1 full + 14 -> 414
              (0.25, 2.5),  # E7: R=6: partial 14 -> 414
              (0.25, 2.5),  # E8: the partial epoch of 14 steps ends at 300 s exactly -> 414
              (0.25, 2.5)]  # (not run: nothing left)
    seen = drive(budget, clock, epochs)
    assert seen == [(50, 5000), (50, 402), (50, 288), (50, 250), (50, 311), (50, 414), (50, 414), (50, 414),
                    (14, 414)]
    assert budget.steps_done == 414 and budget.elapsed_s == pytest.approx(300.0)
    assert budget.next_epoch_steps() == 0


def test_first_epoch_alone_would_have_cut_the_run_to_a_third():
    # the old rule (mean epoch time so far, first epoch included) after E0+E1 above: 114 s for
    # 2 epochs -> floor(300 / 57) = 5 epochs = 250 steps; the steady estimate gives 402
    clock = FakeClock()
    budget = StepBudget(budget_s=300.0, max_steps=5000, steps_per_epoch=50, clock=clock)
    seen = drive(budget, clock, [(1.6, 4.0), (0.5, 5.0)])
    assert seen[-1][1] == 402 > 250


def test_budget_spent_in_the_first_epoch_stops_the_run_there():
    clock = FakeClock()
    budget = StepBudget(budget_s=10.0, max_steps=5000, steps_per_epoch=50, clock=clock)
    assert drive(budget, clock, [(0.5, 1.0)] * 3) == [(50, 50)]


def test_budget_never_runs_longer_than_the_plan():
    clock = FakeClock()
    budget = StepBudget(budget_s=1e6, max_steps=120, steps_per_epoch=50, clock=clock)
    assert drive(budget, clock, [(0.1, 1.0)] * 5) == [(50, 120), (50, 120), (20, 120)]


def test_resumed_budget_counts_from_the_steps_already_done():
    clock = FakeClock()
    budget = StepBudget(budget_s=100.0, max_steps=1000, steps_per_epoch=50, clock=clock)
    budget.start(steps_done=200)
    clock.now += 50 * 2.0 + 5.0  # warm-up epoch after the resume: 105 s > budget
    assert budget.epoch_done(50, 100.0, 5.0) == 250


def test_budget_rejects_nonsense():
    with pytest.raises(ValueError):
        StepBudget(budget_s=0.0, max_steps=10, steps_per_epoch=5)


def test_extension_adds_a_quarter_of_the_budget_up_to_the_limit():
    # budget 100 s, limit 150 s; steady s=0.5 o=5 (epoch of 50 steps = 30 s)
    clock = FakeClock()
    budget = StepBudget(budget_s=100.0, max_steps=5000, steps_per_epoch=50, clock=clock, limit_s=150.0)
    seen = drive(budget, clock, [(0.5, 5.0)] * 10)
    # E0 ignored; E1 at 60 s: R=40: 1 full (30 s), floor((10-5)/0.5)=10 -> 160; E2 at 90 s: R=10: partial 10 -> 160
    assert seen == [(50, 5000), (50, 160), (50, 160), (10, 160)]
    assert clock.now - 1000.0 == pytest.approx(100.0)
    # first extension: +25 s -> budget 125 s, R=25: 0 full, floor((25-5)/0.5)=40 -> 200 steps
    assert budget.extend("still falling") == 200
    clock.now += 40 * 0.5 + 5.0
    assert budget.epoch_done(40, 20.0, 5.0) == 200
    # second: +25 s -> the limit, R=25 -> 240; a third is refused (limit reached)
    assert budget.extend("still falling") == 240
    clock.now += 40 * 0.5 + 5.0
    budget.epoch_done(40, 20.0, 5.0)
    assert budget.extend("still falling") is None
    assert [e["total_steps"] for e in budget.extensions] == [200, 240]
    assert budget.extensions[0]["reason"] == "still falling"


def test_no_limit_means_no_extension_and_limit_below_budget_is_refused():
    clock = FakeClock()
    budget = StepBudget(budget_s=100.0, max_steps=5000, steps_per_epoch=50, clock=clock)
    drive(budget, clock, [(0.5, 5.0)] * 10)
    assert not budget.can_extend() and budget.extend("x") is None
    with pytest.raises(ValueError):
        StepBudget(budget_s=100.0, max_steps=10, steps_per_epoch=5, limit_s=50.0)


def test_extension_counts_from_now_when_the_last_epoch_ran_past_the_budget():
    clock = FakeClock()
    budget = StepBudget(budget_s=20.0, max_steps=1000, steps_per_epoch=10, clock=clock, limit_s=40.0)
    budget.start()
    for _ in range(2):  # E0 (warm-up) and E1: 10 steps at 1 s + 2.5 s overhead -> 25 s in all, past 20 s
        clock.now += 12.5
        budget.epoch_done(10, 10.0, 2.5)
    assert budget.total_steps == 20
    # from 25 s: +5 s -> 30 s; R=5: no full epoch (12.5 s), partial floor((5-2.5)/1)=2 steps -> 22
    assert budget.extend("too few steps") == 22 and budget.budget_s == pytest.approx(30.0)
    clock.now += 40.0  # far past the limit
    assert budget.extend("too few steps") is None and "time limit of 40 s is reached" in budget.refusal
    no_limit = StepBudget(budget_s=20.0, max_steps=1000, steps_per_epoch=10, clock=clock)
    no_limit.start()
    assert no_limit.extend("x") is None and "no time limit" in no_limit.refusal
