"""Trainer classes, found by name (``-tr``), one per method of the paper.

``LandmarkTrainer`` is the paper's DSNT baseline; a variant changes a class attribute or
overrides one of the three method hooks:

* ``build_network(conf, n_landmarks)``: the model (classmethod: inference uses it too);
* ``compute_loss(outputs, target_mm, present)``: the training objective;
* ``decode(outputs, spacing_zyx)``: outputs -> landmark positions and spread in grid mm
  (classmethod: inference uses it too).

Positions inside the trainer are millimetres of the preprocessed grid, ``index_zyx *
spacing_zyx`` (see lmkreg.training.dsnt); they go back to world LPS through each case's
stored affine.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from lmkreg.errors import LmkregError
from lmkreg.threads import OtherProgramsWatch, configure_threads, import_warning, may_adapt_threads
from lmkreg.geometry.spaces import apply_affine
from lmkreg.io.atomic import atomic_write_json
from lmkreg.io.landmarks import LandmarkSet, write_lmkreg_json
from lmkreg.config.modality import modality_kind
from lmkreg.config.plans import Configuration, Plans
from lmkreg.config.settings import TrainingSettings
from lmkreg.training.budget import StepBudget
from lmkreg.training.checkpoint import load_checkpoint, save_checkpoint
from lmkreg.training.convergence import ADVICE, TrainingVerdict, judge_training
from lmkreg.training.dsnt import dsnt, flat_softmax, heatmap_variance
from lmkreg.training.losses import coordinate_loss, dsnt_loss, masked_mean
from lmkreg.training.network import UNet3D
from lmkreg.training.progress import TrainingLog
from lmkreg.training.stage_offsets import StageHook, stage_hook
from lmkreg.training.runtime import (make_adam, average_across_processes, barrier, broadcast_int,
                                     cpu_bf16_setting, init_distributed, seed_everything, select_device)
from lmkreg.training.data import (WORKER_FAILURES, PreprocessedCases, build_augmentation, iterate_batches,
                                  make_train_loader)

GRAD_CLIP = 12.0
# the plan's "training" keys and their defaults: lmkreg.config.settings.TrainingSettings
LR_RESTART_FRACTION = 0.3  # rate at the start of a budget extension, relative to the planned rate
# progress.png at most this often (and at the end): a plot costs about 0.4 s, 2 % of a demo epoch on 2 cores
PLOT_EVERY_S = 60.0
# training.channels_last (default true): channels-last 3D layout for convolutions on the CPU: same fp32
# arithmetic, a training step took 0.73-0.77x the time of the default layout (documentation/benchmarks.md,
# training-efficiency study).  training.bf16_autocast_cpu (default "auto" = on when the CPU has native
# bf16): bfloat16 autocast of the training forward pass on the CPU, 0.41-0.51x the fp32 step time and
# 0.58-0.62x a whole run, measured on such a CPU; other arithmetic; validation and prediction stay fp32


def world_errors_mm(sample: dict, world: np.ndarray) -> np.ndarray:
    """Distance (mm) of predicted world LPS points (L, 3) to a sample's true landmarks, which are
    voxel (z, y, x) on its grid; NaN where the truth is missing."""
    return np.linalg.norm(world - apply_affine(np.asarray(sample["index_to_world"]), sample["landmarks"]), axis=-1)


def weights_ema_update(decay: float):
    """Update of an exponential moving average of the weights (torch AveragedModel's
    multi_avg_fn): average <- d * average + (1 - d) * weights, with d = min(decay, (1 + n) / (10 + n))
    after n earlier updates, so that a short run's average is not dominated by its first steps."""
    def update(averaged: list, current: list, num_averaged) -> None:
        n = int(num_averaged)
        d = min(float(decay), (1.0 + n) / (10.0 + n))
        for a, c in zip(averaged, current):
            a.lerp_(c.detach(), 1.0 - d)
    return update


class LandmarkTrainer:
    """3D U-Net + DSNT, loss ||P-G||_1 + lambda1 ||P-G||_2 (+ lambda2 R(H) in subclasses)."""

    regularizer = "none"
    uses_masks = False  # True: the data carry each case's prostate mask (lmkreg.training.segmentation)

    def __init__(self, plans: Plans, configuration: str, fold: Union[int, str], preprocessed_folder: Path,
                 output_folder: Path, splits: list[dict], device: Optional[str] = None,
                 num_epochs: Optional[int] = None, iterations_per_epoch: Optional[int] = None,
                 num_workers: int = 2, seed: Optional[int] = None, progress_bar: bool = True,
                 time_budget_s: Optional[float] = None, time_limit_s: Optional[float] = None):
        self.plans = plans
        self.conf: Configuration = plans.configuration(configuration)
        self.configuration = configuration  # MR, MR_localizer, MR_refine...
        self.modality = self.conf.modality  # the dataset's modality (MR)
        self.kind = modality_kind(self.conf.modality)
        self.fold = fold
        self.names = list(plans.landmarks)
        self.data_folder = Path(preprocessed_folder) / self.conf.data_identifier
        self.output_folder = Path(output_folder)
        self.train_cases, self.val_cases = self._split(splits, fold)
        t = self.settings
        self.num_epochs = int(num_epochs if num_epochs is not None else t.num_epochs)
        self.iterations_per_epoch = int(iterations_per_epoch if iterations_per_epoch is not None
                                        else t.iterations_per_epoch)
        self.seed = int(seed if seed is not None else t.seed)
        self.lambda1 = float(t.lambda1)
        self.lambda2 = float(t.lambda2(self.regularizer))
        self.num_workers = num_workers
        self.progress_bar = progress_bar
        # wall-clock budget: the number of optimiser steps is re-fitted after every epoch from the
        # steady speed (lmkreg.training.budget); the learning-rate schedule follows the count, and
        # the run is then no longer bit-reproducible
        self.time_budget_s = time_budget_s
        # with a budget: how long a run whose model has not converged may go on (None: stop at the budget)
        self.time_limit_s = time_limit_s
        # the schedule restarts at an extension: (first step, rate at that step) of the current decay
        self.lr_segment: tuple[int, float] = (0, 0.0)
        self._extensions: list[dict] = []  # the budget's extensions of this run, for summary.json
        # planned length in optimiser steps; total_steps is what this run will do (a budget moves it)
        self.max_steps = self.num_epochs * self.iterations_per_epoch
        self.total_steps = self.max_steps
        self.steps_done = 0
        self.min_steps = int(t.min_steps)
        self.lr_warmup_steps = int(t.lr_warmup_steps)
        self.expected_mre_mm = t.expected_val_mre_mm
        self.device = select_device(device)
        self.ddp = init_distributed(self.device)
        self.amp = self.device.type == "cuda"
        self.cpu_bf16 = self.device.type == "cpu" and cpu_bf16_setting(t.bf16_autocast_cpu)
        self.spacing = [float(s) for s in self.conf.spacing_zyx]
        # what the configuration's cascade stage adds to the run (refine: crops placed by the
        # localizer's measured error); the model folder is the fold folder's parent
        self.stage_hook: StageHook = stage_hook(self.conf, self.output_folder.parent, splits)
        self.refine_crop_offsets = None  # refine: set by the stage hook (lmkreg.training.stage_offsets)

    @property
    def settings(self) -> TrainingSettings:
        """The plan's typed ``training`` section (lmkreg.config.settings)."""
        return self.conf.training

    # ---- hooks ---------------------------------------------------------------------------

    @classmethod
    def build_network(cls, conf: Configuration, n_landmarks: int) -> nn.Module:
        return UNet3D(1, n_landmarks, conf.network, head_bias=False)

    def compute_loss(self, outputs: torch.Tensor, target_mm: torch.Tensor,
                     present: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        heatmaps = flat_softmax(outputs)
        pred = dsnt(heatmaps, self.spacing)
        return dsnt_loss(heatmaps, pred, target_mm, present, self.spacing, self.lambda1, self.lambda2,
                         self.regularizer)

    @classmethod
    def decode(cls, outputs: torch.Tensor, spacing_zyx: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, L, 3) in grid mm and spread (B, L): the heatmap's RMS radius in mm."""
        heatmaps = flat_softmax(outputs)
        pred = dsnt(heatmaps, spacing_zyx)
        return pred, torch.sqrt(heatmap_variance(heatmaps, spacing_zyx, pred).clamp(min=0))

    # ---- setup ---------------------------------------------------------------------------

    @staticmethod
    def _split(splits: list[dict], fold: Union[int, str]) -> tuple[list[str], list[str]]:
        if fold == "all":
            cases = sorted({c for s in splits for c in s["train"] + s["val"]})
            return cases, cases
        f = int(fold)
        if not 0 <= f < len(splits):
            raise ValueError(f"fold {fold} does not exist; splits_final.json has folds 0..{len(splits) - 1}")
        return list(splits[f]["train"]), list(splits[f]["val"])

    def _setup(self) -> None:

        seed_everything(self.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
        self.network = self.build_network(self.conf, len(self.names)).to(self.device)
        self.memory_format = (torch.channels_last_3d if self.device.type == "cpu" and
                              self.settings.channels_last
                              else torch.contiguous_format)
        self.network = self.network.to(memory_format=self.memory_format)
        self.model: nn.Module = self.network
        if self.ddp.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.ddp.local_rank] if self.device.type == "cuda" else None)
        t = self.settings
        self.optimizer = make_adam(self.network.parameters(), float(t.learning_rate), float(t.weight_decay))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        decay = float(t.weights_ema_decay)
        self.ema = None
        if decay > 0:  # validation, checkpoints and predictions use the running average of the weights
            self.ema = AveragedModel(self.network, multi_avg_fn=weights_ema_update(decay), use_buffers=True)
        self.train_data = PreprocessedCases(self.data_folder, self.train_cases, with_masks=self.uses_masks)
        self.val_data = PreprocessedCases(self.data_folder, self.val_cases, with_masks=self.uses_masks)
        self.augmentation = build_augmentation(self.kind, t.augmentation)
        self.log = TrainingLog(self.output_folder / "training_log.txt", self.names,
                               echo=self.progress_bar and self.ddp.is_main)
        self.start_epoch = 0
        self.start_step = 0
        self.best_mre = math.inf
        self._last_validation: Optional[tuple] = None  # (steps, result of validate()) of the newest weights

    @property
    def eval_network(self) -> nn.Module:
        """The weights validation, checkpoints and predictions use: the running average of the
        training weights when the plan sets training.weights_ema_decay, else the weights."""
        ema = getattr(self, "ema", None)
        return self.network if ema is None else ema.module

    def learning_rate(self, step: int) -> float:
        """Rate of optimiser step `step` (0-based): an optional linear warm-up, then polynomial
        decay (nnU-Net's, exponent 0.9) that reaches zero at ``total_steps``, the count this run
        will actually do (a time budget moves it, and the schedule follows)."""
        lr0 = float(self.settings.learning_rate)
        if step < self.lr_warmup_steps:
            return lr0 * (step + 1) / self.lr_warmup_steps
        first, start_lr = self.lr_segment
        if first > 0:  # extended: the first decay ended at `first`, a second one runs from a lower rate to zero
            if step >= first:
                return start_lr * max(0.0, 1 - (step - first) / max(self.total_steps - first, 1)) ** 0.9
            return lr0 * max(0.0, 1 - step / first) ** 0.9
        return lr0 * max(0.0, 1 - step / max(self.total_steps, 1)) ** 0.9

    # ---- checkpoints ---------------------------------------------------------------------

    def _state(self, epoch: int) -> dict[str, Any]:
        return {"trainer": type(self).__name__, "modality": self.configuration, "fold": str(self.fold),
                "epoch": epoch, "steps_done": self.steps_done, "total_steps": self.total_steps,
                "best_mre": self.best_mre, "network": self.eval_network.state_dict(),
                **({"network_training": self.network.state_dict(), "ema_updates": int(self.ema.n_averaged)}
                   if self.ema is not None else {}),
                "optimizer": self.optimizer.state_dict(), "grad_scaler": self.scaler.state_dict(),
                "history": self.log.history, "configuration": self.conf.to_json(), "landmarks": self.names,
                "torch_rng": torch.get_rng_state(), "lr_segment": list(self.lr_segment)}

    def save(self, name: str, epoch: int) -> None:
        if self.ddp.is_main:
            save_checkpoint(self._state(epoch), self.output_folder / f"checkpoint_{name}.pth")

    def resume(self) -> None:
        path = self.output_folder / "checkpoint_latest.pth"
        if not path.is_file():
            self.log.write(f"--c given but {path} does not exist: starting from scratch")
            return
        state = load_checkpoint(path, self.device)
        if state.get("trainer") != type(self).__name__:
            raise ValueError(f"{path}: written by {state.get('trainer')}, not {type(self).__name__}")
        self.network.load_state_dict(state.get("network_training", state["network"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(state["network"])
            self.ema.n_averaged.fill_(int(state.get("ema_updates", 0)))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["grad_scaler"])
        self.log.history = state["history"]
        self.best_mre = float(state["best_mre"])
        self.start_epoch = int(state["epoch"])
        self.start_step = int(state.get("steps_done", self.start_epoch * self.iterations_per_epoch))
        torch.set_rng_state(state["torch_rng"])
        self.lr_segment = tuple(state.get("lr_segment", (0, 0.0)))
        self.log.write(f"resumed from {path} at epoch {self.start_epoch}")

    # ---- loop ----------------------------------------------------------------------------

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        target_mm = batch["landmarks"].to(self.device).float() * torch.tensor(self.spacing, device=self.device)
        present = batch["present"].to(self.device).bool()
        return image, torch.nan_to_num(target_mm), present

    def train_step(self, batch: dict) -> float:
        image, target_mm, present = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._train_autocast():
            outputs = self.model(image)
        loss, _ = self.compute_loss(outputs.float(), target_mm, present)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.network.parameters(), GRAD_CLIP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def validation_outputs(self, case: str, sample: dict, outputs: torch.Tensor) -> None:
        """Hook: called with each validation case's outputs before its loss (the segmentation
        trainers set the case's mask for the loss and measure its Dice here)."""

    def precision_description(self) -> str:
        """One log line: the arithmetic of the training forward pass and why (the plan's keys)."""
        if self.amp:
            return "precision: float16 autocast of the training forward pass (CUDA)"
        layout = "channels-last 3D" if self.memory_format == torch.channels_last_3d else "default"
        setting = self.settings.bf16_autocast_cpu
        why = " (auto: this CPU has native bfloat16)" if setting == "auto" and self.cpu_bf16 else \
            " (auto: no native bfloat16 on this CPU)" if setting == "auto" else ""
        arithmetic = "bfloat16 autocast of the training forward pass" if self.cpu_bf16 else "float32"
        return f"precision: {arithmetic}{why}, {layout} memory layout; validation and prediction in float32"

    def _train_autocast(self) -> torch.autocast:
        """Mixed precision of the training forward pass: fp16 on CUDA, bfloat16 on the CPU
        when the plan asks for it, otherwise none (fp32)."""
        if self.cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=self.amp)

    @torch.no_grad()
    def validate(self) -> tuple[float, np.ndarray, dict[str, np.ndarray]]:
        """Validation loss, per-landmark MRE in world mm, and each case's predicted world points."""
        net = self.eval_network
        net.eval()
        losses, errors, predictions = [], [], {}
        for case in self.val_data.cases:
            sample = self.val_data.get(case)
            image = torch.from_numpy(sample["image"][None]).to(self.device).contiguous(memory_format=self.memory_format)
            with torch.autocast(self.device.type, enabled=self.amp):
                outputs = net(image)
            outputs = outputs.float()
            self.validation_outputs(case, sample, outputs)
            target_vox = torch.from_numpy(sample["landmarks"][None]).float()
            present = ~torch.isnan(target_vox).any(-1)
            target_mm = torch.nan_to_num(target_vox).to(self.device) * torch.tensor(self.spacing, device=self.device)
            loss, _ = self.compute_loss(outputs, target_mm, present.to(self.device))
            losses.append(float(loss))
            pred_mm, _ = self.decode(outputs, self.spacing)
            world = apply_affine(np.asarray(sample["index_to_world"]),
                                 pred_mm[0].cpu().double().numpy() / np.asarray(self.spacing))
            predictions[case] = world
            errors.append(world_errors_mm(sample, world))  # NaN for missing
        self.network.train()
        err = np.array(errors)
        per_landmark = np.nanmean(err, axis=0) if len(err) else np.full(len(self.names), np.nan)
        return float(np.mean(losses)) if losses else math.nan, per_landmark, predictions

    def run(self, resume: bool = False) -> dict:
        """Train, validate each epoch, checkpoint; at the end write validation predictions and
        the verdict on whether the run trained long enough (summary.json, log and console)."""

        self.output_folder.mkdir(parents=True, exist_ok=True)
        threads = configure_threads(self.num_workers, processes=self.ddp.local_world_size)
        self._setup()
        self.stage_hook.prepare(self)
        if resume:
            self.resume()
        self.steps_done = self.start_step
        self.log.write(f"{type(self).__name__} {self.configuration} fold {self.fold}: {len(self.train_cases)} training, "
                       f"{len(self.val_cases)} validation cases, device {self.device}, epochs {self.num_epochs}, "
                       f"{self.iterations_per_epoch} iterations of batch {self.conf.batch_size} "
                       f"({self.max_steps} steps; minimum for a usable model {self.min_steps})")
        self.log.write(threads.describe())
        self.log.write(self.precision_description())
        if self.ema is not None:
            self.log.write(f"weights: validation, checkpoints and predictions use the exponential moving average of the "
                           f"training weights (decay {float(self.settings.weights_ema_decay):g})")
        for warning in filter(None, [import_warning()]):
            self.log.write(f"warning: {warning}")
        per_process_batch = -(-self.conf.batch_size // self.ddp.world_size)
        if per_process_batch * self.ddp.world_size != self.conf.batch_size:
            self.log.write(f"batch {self.conf.batch_size} does not split over {self.ddp.world_size} processes: "
                           f"using {per_process_batch} per process")
        budget = watch = None
        if self.time_budget_s is not None:
            budget = StepBudget(self.time_budget_s, self.max_steps, self.iterations_per_epoch,
                                limit_s=self.time_limit_s)
            budget.start(self.steps_done)
            # a budgeted run is not bit-reproducible anyway: follow the free cores as other programs come and go
            if may_adapt_threads(threads) and not self.ddp.enabled and self.device.type == "cpu":
                watch = OtherProgramsWatch()
        bar = tqdm(desc=f"{type(self).__name__} {self.configuration} fold {self.fold}", unit="step",
                   disable=not (self.progress_bar and self.ddp.is_main), initial=self.steps_done,
                   total=self.total_steps)
        epoch = self.start_epoch
        last_plot, plotted = -math.inf, -1  # when progress.png was drawn, and with how many epochs
        while self.steps_done < self.total_steps:  # total_steps moves with a time budget
            t0 = time.monotonic()
            steps = min(self.iterations_per_epoch, self.total_steps - self.steps_done)
            lr = self.learning_rate(self.steps_done)
            loader = make_train_loader(self.train_data, per_process_batch, self.augmentation, threads.workers,
                                       seed=self.seed + 1000 * epoch, iterations_per_epoch=steps,
                                       rank=self.ddp.rank, world_size=self.ddp.world_size)
            self.network.train()
            train_losses = self._train_epoch(loader)
            del loader  # its workers exit now, so their CPU time counts as this run's, not as other programs'
            train_s = time.monotonic() - t0
            self.steps_done += steps
            train_loss = average_across_processes(float(np.mean(train_losses)), self.ddp)
            if self.ddp.is_main:
                validation = self.validate()
                self._last_validation = (self.steps_done, validation)
                val_loss, per_landmark, _ = validation
                mre = float(np.nanmean(per_landmark))
                self.log.add_epoch(train_loss, val_loss, mre, per_landmark, lr, time.monotonic() - t0,
                                   steps=self.steps_done)
                self.log.write(f"epoch {epoch}: train loss {train_loss:.3f}, val loss {val_loss:.3f}, val MRE "
                               f"{mre:.2f} mm ({', '.join(f'{n} {v:.2f}' for n, v in zip(self.names, per_landmark))}), "
                               f"lr {lr:.2e}, {steps} steps ({self.steps_done} in all), {time.monotonic() - t0:.1f} s")
                if mre < self.best_mre:
                    self.best_mre = mre
                    self.save("best", epoch + 1)
                self.save("latest", epoch + 1)
                if time.monotonic() - last_plot >= PLOT_EVERY_S:
                    self.log.plot(self.output_folder / "progress.png")
                    last_plot, plotted = time.monotonic(), len(self.log.history["val_mre"])
                bar.set_postfix(loss=f"{train_loss:.2f}", val_mre=f"{mre:.2f}mm")
            barrier(self.ddp)
            if budget is not None:
                self._fit_budget(budget, steps, train_s, time.monotonic() - t0 - train_s, bar)
            if budget is not None and self.steps_done >= self.total_steps:
                self._maybe_extend(budget, bar)
            if watch is not None:
                self._follow_free_cores(watch)
            bar.update(steps)
            epoch += 1
        bar.close()
        self._extensions = list(budget.extensions) if budget is not None else []
        self.save("final", epoch)
        if self.ddp.is_main and plotted != len(self.log.history["val_mre"]):  # not drawn with the last epoch yet
            self.log.plot(self.output_folder / "progress.png")
        summary = self.write_validation() if self.ddp.is_main else {}
        if summary:
            self.stage_hook.finish(self, summary)
        barrier(self.ddp)
        return summary

    def _train_epoch(self, loader) -> list[float]:
        """One pass over the loader, the learning rate set before every step; a dead data worker
        stops training with a clear message (torch may report it from a signal handler while a
        step runs, so catch it here too)."""

        losses = []
        try:
            for i, batch in enumerate(iterate_batches(loader)):
                for group in self.optimizer.param_groups:
                    group["lr"] = self.learning_rate(self.steps_done + i)
                losses.append(self.train_step(batch))
                if self.ema is not None:
                    self.ema.update_parameters(self.network)
        except RuntimeError as exc:
            if any(s in str(exc) for s in WORKER_FAILURES):
                raise LmkregError(f"training stopped: a data loader worker died ({exc}). Often the machine ran "
                                  f"out of memory; fewer --workers may help. Resume with --c.") from exc
            raise
        return losses

    def _fit_budget(self, budget: StepBudget, steps: int, train_s: float, other_s: float, bar: tqdm) -> None:
        """Re-fit the number of steps to the time budget from the steady speed (up or down);
        rank 0 decides, so every process of a torchrun job stops at the same step."""
        before = self.total_steps
        total = budget.epoch_done(steps, train_s, other_s)
        self.total_steps = broadcast_int(total, self.ddp)
        if self.total_steps != before:
            self.log.write(f"{budget.describe()}: {self.total_steps} steps instead of {before}")
            bar.total = self.total_steps
            bar.refresh()

    def _maybe_extend(self, budget: StepBudget, bar: tqdm) -> None:
        """At the end of the budget: a model that is not fit for use yet (too few steps, MRE still
        falling fast, or above the plan's expectation) trains on, a quarter of the budget at a
        time, up to the time limit; the learning rate restarts at ``LR_RESTART_FRACTION`` of the
        planned rate and decays to zero again over the extension."""
        verdict = self.verdict() if self.ddp.is_main else None
        reason = "; ".join(verdict.reasons) if verdict is not None and not verdict.fit_for_use else ""
        total = budget.extend(reason) if (reason and self.ddp.is_main) else None
        total = broadcast_int(-1 if total is None else total, self.ddp)
        if total < 0:
            if reason and self.ddp.is_main:
                why = budget.refusal
                self.log.write(f"budget over and the model is not fit for use yet ({reason}); stopping: {why}")
            return
        lr0 = float(self.settings.learning_rate)
        self.lr_segment = (self.steps_done, LR_RESTART_FRACTION * lr0)
        self.total_steps = total
        self.log.write(f"budget over at {self.steps_done} steps but the model is not fit for use yet ({reason}): "
                       f"training on to {total} steps ({budget.describe()}); learning rate restarts at "
                       f"{LR_RESTART_FRACTION * lr0:.2e}")
        bar.total = self.total_steps
        bar.refresh()

    def _follow_free_cores(self, watch) -> None:
        """Intra-op threads = the cores other programs left free over the last epoch."""
        free = watch.free_cores()
        if free is not None and free != torch.get_num_threads():
            self.log.write(f"threads: {free} intra-op instead of {torch.get_num_threads()} (other programs used "
                           f"{len(watch.cpus) - free} of {len(watch.cpus)} core(s) during the last epoch)")
            torch.set_num_threads(free)

    def verdict(self) -> TrainingVerdict:
        """Whether this run trained long enough (lmkreg.training.convergence)."""
        h = self.log.history
        val_steps = h.get("steps") or [(i + 1) * self.iterations_per_epoch for i in range(len(h["val_mre"]))]
        expected = None if self.expected_mre_mm is None else float(self.expected_mre_mm)
        return judge_training(self.steps_done, self.min_steps, val_steps, h["val_mre"], expected)

    def largest_errors(self, predictions: dict[str, np.ndarray], count: int = 3) -> dict:
        """The validation errors a user needs to read the MRE: the median landmark error and the
        `count` largest (case, landmark, mm), because with a handful of cases one missed landmark
        (e.g. beyond the TRUS fan) can decide the mean."""
        rows = []
        for case, world in predictions.items():
            for n, e in zip(self.names, world_errors_mm(self.val_data.get(case), world)):
                if np.isfinite(e):
                    rows.append({"case": case, "landmark": n, "error_mm": float(e)})
        rows.sort(key=lambda r: -r["error_mm"])
        return {"median_landmark_error_mm": float(np.median([r["error_mm"] for r in rows])) if rows else None,
                "largest_errors_mm": rows[:count]}

    def training_set_mre(self, max_cases: int = 12) -> tuple[float, int]:
        """MRE (world mm) of the current weights on up to `max_cases` training cases, spread evenly
        over the sorted list and without augmentation, and how many were used.  Why: next to the
        validation MRE it shows the train/validation gap, i.e. overfitting, which more epochs
        widen on small multi-centre datasets (issue 27)."""
        cases = sorted(self.train_cases)
        if not cases:
            return math.nan, 0
        cases = [cases[int(i)] for i in np.unique(np.linspace(0, len(cases) - 1, min(max_cases, len(cases))).round())]
        net = self.eval_network
        net.eval()
        errors = []
        with torch.no_grad():
            for case in cases:
                sample = self.train_data.get(case)
                image = torch.from_numpy(sample["image"][None]).to(self.device).contiguous(
                    memory_format=self.memory_format)
                with torch.autocast(self.device.type, enabled=self.amp):
                    outputs = net(image)
                pred_mm, _ = self.decode(outputs.float(), self.spacing)
                world = apply_affine(np.asarray(sample["index_to_world"]),
                                     pred_mm[0].cpu().double().numpy() / np.asarray(self.spacing))
                errors.append(world_errors_mm(sample, world))
        self.network.train()
        return float(np.nanmean(np.nanmean(np.array(errors), axis=0))), len(cases)  # as the validation MRE

    def write_validation(self) -> dict:
        """Predictions of the final model for the fold's validation cases, in world LPS, MREs, and
        the verdict on the training (a warning in the log and on the console when it is unfit)."""
        cached = self._last_validation
        _, per_landmark, predictions = (cached[1] if cached is not None and cached[0] == self.steps_done
                                        else self.validate())
        folder = self.output_folder / "validation"
        for case, world in predictions.items():
            write_lmkreg_json(LandmarkSet.from_array(self.names, world), folder / f"{case}.json")
        verdict = self.verdict()
        summary = {"trainer": type(self).__name__, "modality": self.configuration, "fold": str(self.fold),
                   "num_cases": len(predictions),
                   "mre_per_landmark_mm": {n: float(v) for n, v in zip(self.names, per_landmark)},
                   **self.largest_errors(predictions),
                   "mre_mm": float(np.nanmean(per_landmark)), "epochs": len(self.log.history["val_mre"]),
                   "steps": self.steps_done, "planned_steps": self.max_steps, "min_steps": self.min_steps,
                   "time_budget_s": self.time_budget_s, "time_limit_s": self.time_limit_s,
                   "budget_extensions": self._extensions, "fit_for_use": verdict.fit_for_use,
                   "undertrained_reasons": verdict.reasons, "training_verdict": verdict.to_json()}
        train_mre, n_train = (summary["mre_mm"], len(predictions)) if self.fold == "all" else self.training_set_mre()
        summary.update(training_mre_mm=train_mre, training_mre_cases=n_train,
                       train_validation_gap_mm=summary["mre_mm"] - train_mre)
        atomic_write_json(folder / "summary.json", summary)
        self.log.write(f"final validation MRE {summary['mre_mm']:.2f} mm after {self.steps_done} steps")
        self.log.write(f"training-set MRE {train_mre:.2f} mm on {n_train} training case(s): train/validation gap "
                       f"{summary['train_validation_gap_mm']:+.2f} mm"
                       + (" (fold 'all' validates on its training cases: no gap to see)" if self.fold == "all"
                          else " (a large gap = the model fits its training cases, not new ones: overfitting)"
                          if summary["train_validation_gap_mm"] > max(1.0, 0.5 * train_mre) else ""))
        if not verdict.fit_for_use:
            text = (f"warning: the {self.configuration} model of {type(self).__name__} fold {self.fold} may be "
                    f"undertrained and not fit for use: {'; '.join(verdict.reasons)}. To fix: {ADVICE}.")
            self.log.write(text)
            if not self.log.echo:  # echo already printed it
                print(text, file=sys.stderr, flush=True)
        return summary


class LandmarkTrainer_Variance(LandmarkTrainer):
    """DSNT + variance regulariser sum H ||v - P||^2 (paper eq. 4)."""

    regularizer = "variance"


class LandmarkTrainer_Distance(LandmarkTrainer):
    """DSNT + distance-map regulariser sum H ||v - G|| (paper eq. 5)."""

    regularizer = "distance"


class RegressionNet(nn.Module):
    """U-Net encoder + fully connected head regressing coordinates (grid mm) directly."""

    def __init__(self, conf: Configuration, n_landmarks: int):
        super().__init__()
        unet = UNet3D(1, n_landmarks, conf.network)
        self.encoder = unet.encoder
        size = np.asarray(conf.input_size_zyx) // np.asarray(conf.network.total_downsampling)
        features = conf.network.features_per_stage[-1] * int(np.prod(size))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(features, 256), nn.LeakyReLU(0.2), nn.Linear(256, n_landmarks * 3))
        centre = (np.asarray(conf.input_size_zyx) - 1) / 2 * np.asarray(conf.spacing_zyx)
        with torch.no_grad():  # start at the grid centre rather than at 0 mm
            self.head[-1].bias.copy_(torch.tensor(np.tile(centre, n_landmarks), dtype=torch.float32))
        self.n_landmarks = n_landmarks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.encoder:
            x = stage(x)
        return self.head(x).reshape(x.shape[0], self.n_landmarks, 3)


class DirectRegressionTrainer(LandmarkTrainer):
    """Paper's comparison: coordinates from a fully connected layer (no heatmap)."""

    @classmethod
    def build_network(cls, conf: Configuration, n_landmarks: int) -> nn.Module:
        return RegressionNet(conf, n_landmarks)

    def compute_loss(self, outputs, target_mm, present):
        return coordinate_loss(outputs, target_mm, present, self.lambda1)

    @classmethod
    def decode(cls, outputs, spacing_zyx):
        return outputs, torch.full(outputs.shape[:2], float("nan"), device=outputs.device)


class HeatmapMatchingTrainer(LandmarkTrainer):
    """Paper's comparison: regress Gaussian target heatmaps (MSE), decode by the peak."""

    sigma_voxels = 2.0
    amplitude = 100.0  # keeps the few foreground voxels from being drowned by the background

    @classmethod
    def build_network(cls, conf: Configuration, n_landmarks: int) -> nn.Module:
        return UNet3D(1, n_landmarks, conf.network, head_bias=True)  # MSE on heatmaps needs the offset

    def _targets(self, shape: Sequence[int], target_mm: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma_voxels * max(self.spacing)
        z, y, x = [torch.arange(n, device=target_mm.device, dtype=torch.float32) * s
                   for n, s in zip(shape, self.spacing)]
        g = target_mm[..., None, None, None, :]
        d2 = (z[:, None, None] - g[..., 0]) ** 2 + (y[None, :, None] - g[..., 1]) ** 2 + (x[None, None, :] - g[..., 2]) ** 2
        return self.amplitude * torch.exp(-d2 / (2 * sigma ** 2))

    def compute_loss(self, outputs, target_mm, present):
        target = self._targets(outputs.shape[2:], target_mm)
        mse = ((outputs - target) ** 2).flatten(2).mean(-1)
        loss = masked_mean(mse, present)
        return loss, {"mse": loss.detach()}

    @classmethod
    def decode(cls, outputs, spacing_zyx):
        """Peak voxel, refined by the centroid of the positive response in its 3x3x3 neighbourhood."""
        b, l = outputs.shape[:2]
        shape = outputs.shape[2:]
        flat = outputs.reshape(b, l, -1)
        peak = torch.stack(torch.unravel_index(flat.argmax(-1), shape), -1)  # (B, L, 3)
        offsets = torch.stack(torch.meshgrid(*[torch.arange(-1, 2, device=outputs.device)] * 3, indexing="ij"),
                              -1).reshape(-1, 3)
        idx = peak[:, :, None, :] + offsets[None, None]
        for a, n in enumerate(shape):
            idx[..., a] = idx[..., a].clamp(0, n - 1)
        lin = (idx[..., 0] * shape[1] + idx[..., 1]) * shape[2] + idx[..., 2]
        w = torch.gather(flat, 2, lin).clamp(min=0) + 1e-12
        centre = (idx.float() * w[..., None]).sum(2) / w.sum(2)[..., None]
        spacing = torch.tensor(list(spacing_zyx), device=outputs.device, dtype=torch.float32)
        spread = torch.sqrt((w * (((idx.float() - centre[:, :, None]) * spacing) ** 2).sum(-1)).sum(2) / w.sum(2))
        return centre * spacing, spread
