"""A stage's epoch metrics for K classifiers trained side by side; a single run is K = 1.

One implementation for single runs (:class:`~actlab.classifier.Classifier`) and packs
(:class:`~actlab.pack.module.PackModule`): in training, one reduction every 16 steps (its
batches are summed together) and no host sync (a per-step ``self.log`` or torchmetrics update
costs ~50-130 us of Python each, a few percent of a CPU step of these MLPs); once an epoch, each
run's mean loss and accuracy over every sample, and for evaluation stages each run's confusion
matrix (torchmetrics') and from it the macro F1 and per-class accuracy, as torchmetrics defines
them.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_confusion_matrix

from actlab.plain_attributes import PlainAttributes

# training batches whose losses and correct predictions are summed together (kept meanwhile: for a
# pack of 8 of these MLPs, 16 batches' logits are 0.7 MB)
COUNTED_TOGETHER = 16


def _same_runs(entry: tuple, logits: torch.Tensor, rows: torch.Tensor | None) -> bool:
    """Whether a batch of ``logits`` for ``rows`` can be counted with a kept ``entry``
    ((losses, logits, targets, rows))."""
    if entry[1].shape != logits.shape:
        return False
    kept = entry[3]
    return kept is rows or (kept is not None and rows is not None and torch.equal(kept, rows))


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` in floating point, 0 where the denominator is 0."""
    numerator, denominator = numerator.float(), denominator.float()
    return torch.where(denominator != 0, numerator / denominator, torch.zeros((), device=numerator.device))


def scores_from_confusion(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per run, from its confusion matrix (R, C, C; rows true, columns predicted): the macro F1
    (R,) and the per-class accuracy (R, C), each as torchmetrics' ``multiclass_f1_score(average=
    "macro")`` and ``multiclass_accuracy(average=None)`` compute it for that run alone, to the bit
    (tests/test_metrics.py compares): a class's F1 is ``2tp / (2tp + fn + fp)``, its accuracy
    ``tp / (tp + fn)`` (0 where undefined), and the macro mean leaves out the classes that are
    neither true nor predicted in any sample. Three functional calls a run cost ~0.1 ms each on
    a CPU; these are a few operations for all runs."""
    tp = confusion.diagonal(dim1=1, dim2=2)
    fp, fn = confusion.sum(1) - tp, confusion.sum(2) - tp
    f1 = _safe_divide(2.0 * tp, 2.0 * tp + 1.0 * fn + fp)
    weights = torch.where(tp + fp + fn == 0, 0.0, torch.ones_like(f1))
    macro = _safe_divide(weights * f1, weights.sum(-1, keepdim=True)).sum(-1)
    return macro, _safe_divide(tp, tp + fn)


class EpochMetrics(PlainAttributes, nn.Module):
    """Sums over an epoch of ``runs`` classifiers' losses and correct predictions (and, with
    ``keep_predictions``, their predictions, for F1, per-class accuracy and the confusion
    matrix), read once at the epoch's end by :meth:`compute_and_reset`.

    Args:
        runs: how many classifiers (K); each update may cover some of them (``rows``).
        classes: the number of classes.
        keep_predictions: keep every prediction of the epoch (validation and testing; a few
            bytes a sample), for the metrics that are not sums.
    """

    plain_attributes = frozenset({"count", "_training", "_predictions", "_rows"})  # set every step

    def __init__(self, runs: int, classes: int, keep_predictions: bool) -> None:
        super().__init__()
        self.runs, self.classes, self.keep_predictions = runs, classes, keep_predictions
        self.register_buffer("loss_sum", torch.zeros(runs, dtype=torch.float64), persistent=False)
        self.register_buffer("correct", torch.zeros(runs, dtype=torch.long), persistent=False)
        self.count = 0  # samples each run saw this epoch (every run sees the same batches)
        self._predictions: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._rows: torch.Tensor | None = None
        # training's losses and correct predictions summed in chunks: (the sums of the batches counted since
        # the epoch began, beyond ``loss_sum`` and ``correct``, or None; the batches not counted yet, as
        # (losses, logits, targets, rows)). One attribute, replaced whole: a checkpoint taken in a signal
        # handler (SLURM's requeue) reads the state before a count or after it, never half of it (:meth:`sums`
        # only reads)
        self._training: tuple[tuple[torch.Tensor, torch.Tensor] | None, list[tuple]] = (None, [])

    def update(self, losses: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
               rows: torch.Tensor | None = None) -> None:  # fmt: skip
        """One batch: ``losses`` (R,) the mean loss of each run, ``logits`` (R, B, C),
        ``targets`` (R, B), for the runs ``rows`` (R of the K; None: all K)."""
        batch = targets.shape[1]
        losses, logits = losses.detach(), logits.detach()  # detached: no graph, no grad-mode switch a step
        self.count += batch
        if not self.keep_predictions:  # training: summed with the next batches (no operation of its own a step)
            pending = self._training[1]
            if pending and not _same_runs(pending[-1], logits, rows):
                self._count_pending()
            self._training[1].append((losses, logits, targets, rows))
            if len(self._training[1]) == COUNTED_TOGETHER:
                self._count_pending()
            return
        predictions = logits.max(-1).indices  # the first largest logit's class, as argmax gives it
        correct = (predictions == targets).sum(1)
        # mean x batch, summed in float64 (add_ promotes the float32 losses itself)
        if rows is None:
            self.loss_sum.add_(losses, alpha=batch)
            self.correct.add_(correct)
        else:
            self.loss_sum.index_add_(0, rows, losses.double() * batch)
            self.correct.index_add_(0, rows, correct)
        self._predictions.append((predictions, targets))
        self._rows = rows

    def _count_pending(self) -> None:
        """The losses and correct predictions of the batches kept since the last count, in one
        reduction each: a step's own (a float64 sum; argmax, compare, sum, add) costs ~40 us of
        a CPU step of these MLPs, and as many kernel launches on a GPU."""
        counted, pending = self._training
        if pending:
            self._training = (self._with_pending(counted, pending), [])

    def _with_pending(self, counted: tuple[torch.Tensor, torch.Tensor] | None,
                      pending: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``counted`` (new tensors: neither is changed) plus the losses (each mean x batch, in
        float64) and correct predictions of the ``pending`` batches (the same runs and shape)."""
        losses, logits, targets = (torch.stack([entry[i] for entry in pending]) for i in range(3))
        batch, rows = targets.shape[-1], pending[0][3]
        loss = losses.sum(0, dtype=torch.float64)
        # the first largest logit's class (as argmax gives it; max's indices are faster on a CPU)
        correct = (logits.max(-1).indices == targets).sum((0, 2))
        if rows is not None:  # the runs computed, among all
            loss = self.loss_sum.new_zeros(self.runs).index_add_(0, rows, loss)
            correct = self.correct.new_zeros(self.runs).index_add_(0, rows, correct)
        if counted is None:
            return loss.mul_(batch), correct
        return torch.add(counted[0], loss, alpha=batch), torch.add(counted[1], correct)

    def _so_far(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each run's loss sum and correct predictions this epoch so far (new tensors; nothing is changed)."""
        counted, pending = self._training
        pending = list(pending)  # as it is now (a step may add to it meanwhile)
        if pending:
            counted = self._with_pending(counted, pending)
        if counted is None:
            return self.loss_sum.clone(), self.correct.clone()
        return self.loss_sum + counted[0], self.correct + counted[1]

    def sums(self) -> dict[str, torch.Tensor | int]:
        """The epoch's running sums so far (what a checkpoint taken inside an epoch keeps, so
        that the resumed epoch's mean covers every batch of it): per run ``loss_sum`` and
        ``correct`` (on the CPU), and ``count``. It only reads: a checkpoint may be taken at any
        point of a step (in a signal handler)."""
        loss_sum, correct = self._so_far()
        return {"loss_sum": loss_sum.cpu(), "correct": correct.cpu(), "count": self.count}

    def load_sums(self, sums: dict[str, torch.Tensor | int]) -> None:
        """Go on from :meth:`sums` (a resumed epoch)."""
        self._training = (None, [])
        self.loss_sum.copy_(sums["loss_sum"])
        self.correct.copy_(sums["correct"])
        self.count = int(sums["count"])

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        """Per run (dim 0, K): ``loss``, ``acc``; with kept predictions also ``f1`` (macro),
        ``class_acc`` (K, C) and ``confusion`` (K, C, C; rows true, columns predicted). Runs
        that saw no batch this epoch (left out of a compacted stack) read 0; an epoch in which
        no batch was seen at all (a fit resumed at an epoch's end, whose batches were counted
        before its checkpoint) reads NaN loss and accuracy: not measured, rather than 0."""
        count = self.count if self.count else float("nan")
        loss_sum, correct = self._so_far()
        metrics = {"loss": (loss_sum / count).float(), "acc": correct.double().div(count).float()}
        if self._predictions:
            predictions, targets = (torch.cat(parts, dim=1) for parts in zip(*self._predictions))
            # each run's own (torchmetrics' samplewise mode builds (K, N, C) one-hots: ~200x slower)
            confusion = torch.stack([multiclass_confusion_matrix(p, t, self.classes, validate_args=False)
                                     for p, t in zip(predictions, targets)])  # fmt: skip
            rows = self._rows if self._rows is not None else slice(None)
            for name, values in zip(("f1", "class_acc", "confusion"), (*scores_from_confusion(confusion), confusion)):
                metrics[name] = values.new_zeros(self.runs, *values.shape[1:])
                metrics[name][rows] = values
        self.loss_sum.zero_()
        self.correct.zero_()
        self.count = 0
        self._predictions, self._rows = [], None
        self._training = (None, [])
        return metrics
