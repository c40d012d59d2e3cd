"""The verdict on a training run: too few steps, validation MRE still falling, above the plan's
expected accuracy; each reason named, with numbers worked out by hand."""
from types import SimpleNamespace

import pytest

from lmkreg.config.settings import TrainingSettings
from lmkreg.training.convergence import judge_training, recent_drop
from lmkreg.training.trainers import LandmarkTrainer


def test_recent_drop_compares_the_best_mre_before_and_within_the_last_quarter():
    steps = [50, 100, 150, 200, 250, 300, 350, 400]
    # last quarter: steps > 300 -> 350, 400; best before 3.0, best within 2.4 -> 20 %
    assert recent_drop(steps, [9, 6, 4, 3.5, 3.2, 3.0, 2.7, 2.4]) == pytest.approx(0.2)
    # converged: best before 1.50 (at 250), best within 1.47 -> 2 %
    assert recent_drop(steps, [9, 3, 2, 1.6, 1.5, 1.52, 1.47, 1.49]) == pytest.approx(0.02)
    assert recent_drop([50, 100], [5.0, 4.0]) is None  # two validations cannot show a trend


def test_a_run_cut_short_while_still_improving_is_not_fit_for_use():
    v = judge_training(150, 400, [50, 100, 150], [12.0, 8.0, 5.0])
    # last quarter: steps > 112.5 -> 150 only; best before 8.0, within 5.0 -> 37.5 %
    assert not v.fit_for_use and v.recent_drop == pytest.approx(0.375)
    assert any("150 optimiser steps" in r and "400" in r for r in v.reasons)
    assert any("still falling fast" in r and "38 %" in r for r in v.reasons)


def test_a_converged_run_is_fit_for_use_unless_above_the_expected_accuracy():
    steps, mre = [100, 200, 300, 400, 500], [6.0, 2.0, 1.5, 1.45, 1.44]
    v = judge_training(500, 400, steps, mre)
    assert v.fit_for_use and v.reasons == [] and v.recent_drop == pytest.approx(0.04)
    v = judge_training(500, 400, steps, mre, expected_mre_mm=1.2)
    assert not v.fit_for_use and "1.44 mm" in v.reasons[0] and "1.2 mm" in v.reasons[0]
    assert v.to_json()["fit_for_use"] is False


def test_learning_rate_follows_the_step_count_the_run_will_actually_do():
    fake = SimpleNamespace(settings=TrainingSettings(learning_rate=1e-3), lr_warmup_steps=10,
                           total_steps=1000, lr_segment=(0, 0.0))
    lr = lambda step: LandmarkTrainer.learning_rate(fake, step)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4) and lr(9) == pytest.approx(1e-3)  # linear warm-up over 10 steps
    assert lr(500) == pytest.approx(1e-3 * 0.5 ** 0.9)
    fake.total_steps = 600  # a budget re-fit: the decay now ends at step 600
    assert lr(500) == pytest.approx(1e-3 * (100 / 600) ** 0.9) and lr(600) == 0.0


def test_an_unconverged_budgeted_run_trains_on_with_a_restarted_schedule_up_to_the_limit():
    from lmkreg.training.budget import StepBudget
    from lmkreg.training.convergence import TrainingVerdict
    from lmkreg.training.trainers import LR_RESTART_FRACTION

    clock = SimpleNamespace(now=0.0)
    budget = StepBudget(100.0, 5000, 50, clock=lambda: clock.now, limit_s=125.0)
    budget.start()
    for _ in range(4):  # 4 epochs of 50 steps, 25 s each: the budget is spent at 200 steps
        clock.now += 25.0
        budget.epoch_done(50, 20.0, 5.0)
    messages = []
    verdicts = [TrainingVerdict(False, ["validation MRE still falling fast: 14 % lower"]), TrainingVerdict(True)]
    fake = SimpleNamespace(settings=TrainingSettings(learning_rate=1e-3), lr_warmup_steps=0,
                           total_steps=200, steps_done=200, lr_segment=(0, 0.0),
                           ddp=SimpleNamespace(is_main=True, enabled=False), verdict=lambda: verdicts.pop(0),
                           log=SimpleNamespace(write=messages.append))
    bar = SimpleNamespace(total=200, refresh=lambda: None)
    LandmarkTrainer._maybe_extend(fake, budget, bar)
    # +25 s (a quarter of the budget) at 0.4 s/step + 5 s per epoch: floor((25 - 5) / 0.4) = 50 more steps
    assert fake.total_steps == 250 and bar.total == 250
    assert "still falling fast" in messages[-1] and "250 steps" in messages[-1]
    lr = lambda step: LandmarkTrainer.learning_rate(fake, step)  # noqa: E731
    assert lr(199) == pytest.approx(1e-3 * (1 / 200) ** 0.9)  # the first decay ended at step 200
    assert lr(200) == pytest.approx(LR_RESTART_FRACTION * 1e-3) and lr(225) == pytest.approx(
        LR_RESTART_FRACTION * 1e-3 * 0.5 ** 0.9) and lr(250) == 0.0
    # fit for use now: no further extension; and the limit (125 s) is reached anyway
    fake.steps_done = 250
    clock.now += 25.0
    LandmarkTrainer._maybe_extend(fake, budget, bar)
    assert fake.total_steps == 250 and len(budget.extensions) == 1


def test_demo_verdict_names_each_failing_model_and_what_to_do():
    from lmkreg.run.demo import models_verdict, verdict_lines

    good = {"mre_mm": 1.1, "num_cases": 8, "steps": 520, "min_steps": 400, "undertrained_reasons": []}
    slow = {"mre_mm": 13.45, "num_cases": 8, "steps": 150, "min_steps": 400,
            "undertrained_reasons": ["ran 150 optimiser steps, fewer than the plan's minimum of 400"]}
    v = models_verdict({"MR": good, "US": good}, 1.5)
    assert v["fit_for_use"] and verdict_lines(v, 5.0)[0].startswith("Models fit for use")
    v = models_verdict({"MR": good, "US": slow}, 1.5)
    assert not v["fit_for_use"] and v["modalities"]["MR"]["fit_for_use"]
    lines = verdict_lines(v, 5.0)
    assert lines[0].startswith("Models NOT fit for use") and lines[1].startswith("  US: validation MRE 13.45 mm")
    assert "--train-minutes 10" in lines[-1] and "GPU" in lines[-1]
    # a summary with the validation's largest errors: the reason says whether one landmark decides the mean
    one_miss = {**good, "mre_mm": 1.76, "median_landmark_error_mm": 1.1,
                "largest_errors_mm": [{"case": "X_009", "landmark": "apex", "error_mm": 15.24}]}
    v = models_verdict({"MR": good, "US": one_miss}, 1.5)
    assert v["modalities"]["US"]["reasons"][0] == ("validation MRE 1.76 mm on 8 cases is above the 1.5 mm expected "
                                                   "(largest error: case X_009 apex 15.2 mm; median landmark error "
                                                   "1.1 mm)")
