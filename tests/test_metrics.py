"""EpochMetrics: a stage's metrics for K runs side by side, each as torchmetrics computes it for one run."""

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from actlab.metrics import EpochMetrics


def test_each_run_gets_what_torchmetrics_computes_for_it_alone_over_the_epoch():
    torch.manual_seed(0)
    runs, classes, batches = 3, 4, [(5, None), (7, torch.tensor([0, 2])), (6, torch.tensor([0, 2]))]
    metrics = EpochMetrics(runs, classes, keep_predictions=True)
    alone = {k: (MulticlassF1Score(classes, average="macro"), MulticlassAccuracy(classes, average=None),
                 MulticlassConfusionMatrix(classes)) for k in range(runs)}  # fmt: skip
    losses_seen = {k: [] for k in range(runs)}
    for batch, rows in batches[:1]:  # every run, then (a compacted stack) runs 0 and 2 for a whole epoch
        logits, targets = torch.randn(runs, batch, classes), torch.randint(0, classes, (runs, batch))
        losses = torch.rand(runs)
        metrics.update(losses, logits, targets, rows)
        for k in range(runs):
            for metric in alone[k]:
                metric.update(logits[k].argmax(-1), targets[k])
            losses_seen[k].append((float(losses[k]), batch))
    first = metrics.compute_and_reset()
    for k in range(runs):
        assert torch.equal(first["f1"][k], alone[k][0].compute())
        assert torch.equal(first["class_acc"][k], alone[k][1].compute())
        assert torch.equal(first["confusion"][k], alone[k][2].compute())
        ((loss, _),) = losses_seen[k]
        assert abs(float(first["loss"][k]) - loss) < 1e-6
    assert first["acc"].tolist() == pytest.approx(
        [float(alone[k][2].compute().diagonal().sum()) / 5 for k in range(runs)]
    )

    rows = torch.tensor([0, 2])
    kept = {k: MulticlassF1Score(classes, average="macro") for k in (0, 2)}
    sums = {0: 0.0, 2: 0.0}
    for batch, _ in batches[1:]:
        logits, targets = torch.randn(2, batch, classes), torch.randint(0, classes, (2, batch))
        losses = torch.rand(2)
        metrics.update(losses, logits, targets, rows)
        for i, k in enumerate((0, 2)):
            kept[k].update(logits[i].argmax(-1), targets[i])
            sums[k] += float(losses[i]) * batch
    second = metrics.compute_and_reset()
    for k in (0, 2):
        assert torch.equal(second["f1"][k], kept[k].compute())
        assert abs(float(second["loss"][k]) - sums[k] / 13) < 1e-6  # the mean over every sample of the epoch
    assert float(second["f1"][1]) == 0.0 and float(second["loss"][1]) == 0.0  # run 1 left the stack: no batch
    # reset: a new epoch starts from nothing
    assert metrics.count == 0 and float(metrics.loss_sum.sum()) == 0.0 and int(metrics.correct.sum()) == 0


def test_training_keeps_sums_only():
    metrics = EpochMetrics(2, 3, keep_predictions=False)
    metrics.update(torch.tensor([1.0, 2.0]), torch.eye(3).expand(2, 3, 3), torch.tensor([[0, 1, 1], [0, 1, 2]]))
    values = metrics.compute_and_reset()
    assert set(values) == {"loss", "acc"}
    assert values["acc"].tolist() == pytest.approx([2 / 3, 1.0]) and values["loss"].tolist() == [1.0, 2.0]


def test_classes_never_predicted_or_never_present_count_as_torchmetrics_counts_them():
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    torch.manual_seed(0)
    classes, runs = 4, 4
    targets = torch.randint(0, classes, (runs, 50))
    predictions = torch.randint(0, classes, (runs, 50))
    predictions[2] = torch.where(targets[2] == 3, 0, predictions[2])  # run 2 never predicts class 3
    targets[3], predictions[3] = targets[3] % 3, predictions[3] % 3  # run 3: no sample of class 3 at all
    metrics = EpochMetrics(runs, classes, keep_predictions=True)
    for part in (slice(0, 20), slice(20, 50)):  # two batches
        logits = torch.nn.functional.one_hot(predictions[:, part], classes).float()
        metrics.update(torch.zeros(runs), logits, targets[:, part])
    values = metrics.compute_and_reset()
    for k in range(runs):
        assert torch.equal(values["f1"][k], multiclass_f1_score(predictions[k], targets[k], classes, average="macro"))
        assert torch.equal(
            values["class_acc"][k], multiclass_accuracy(predictions[k], targets[k], classes, average=None)
        )
        assert float(values["acc"][k]) == pytest.approx(float((predictions[k] == targets[k]).float().mean()))


def test_f1_and_class_accuracy_from_the_confusion_matrix_are_torchmetrics_to_the_bit():
    """The F1 and per-class accuracy computed from each run's confusion matrix, against
    torchmetrics' own functions over 200 random epochs: few samples, skewed classes (some never
    true, never predicted, or neither), one run and several."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    from actlab.metrics import scores_from_confusion

    generator = torch.Generator().manual_seed(0)
    for case in range(200):
        runs, classes = (1, 3, 10)[case % 3], (2, 5, 10)[case % 4 % 3]
        samples = int(torch.randint(1, 60, (1,), generator=generator))
        weights = torch.rand(classes, generator=generator) ** 4  # skewed: some classes (almost) never drawn
        targets = torch.multinomial(weights, runs * samples, True, generator=generator).view(runs, samples)
        predictions = torch.multinomial(weights.flip(0), runs * samples, True, generator=generator).view(runs, -1)
        confusion = torch.stack([torch.bincount(t * classes + p, minlength=classes**2).view(classes, classes)
                                 for p, t in zip(predictions, targets)])  # fmt: skip
        f1, class_acc = scores_from_confusion(confusion)
        for k in range(runs):
            expected = multiclass_f1_score(predictions[k], targets[k], classes, average="macro")
            assert torch.equal(f1[k], expected), (case, k, f1[k], expected)
            assert torch.equal(class_acc[k], multiclass_accuracy(predictions[k], targets[k], classes, average=None))


def test_tied_logits_predict_the_first_class_for_one_run_and_for_several():
    """A network that outputs equal logits (e.g. one whose units all died) predicts class 0, as
    argmax does, whether its run is alone or in a pack: its accuracy is that of class 0."""
    targets = torch.tensor([[0, 1, 2, 0], [3, 0, 0, 1]])
    tied = torch.zeros(2, 4, 5)
    tied[1, :, 3] = tied[1, :, 4] = 1.0  # run 1: classes 3 and 4 tie
    together = EpochMetrics(2, 5, keep_predictions=True)
    together.update(torch.zeros(2), tied, targets)
    alone = [EpochMetrics(1, 5, keep_predictions=True) for _ in range(2)]
    for k, metrics in enumerate(alone):
        metrics.update(torch.zeros(1), tied[k : k + 1], targets[k : k + 1])
    packed = together.compute_and_reset()
    assert packed["acc"].tolist() == [0.5, 0.25]  # run 0 predicts class 0 (2 of 4), run 1 class 3 (1 of 4)
    for k, metrics in enumerate(alone):
        single = metrics.compute_and_reset()
        assert torch.equal(single["acc"][0], packed["acc"][k]) and torch.equal(
            single["confusion"][0], packed["confusion"][k]
        )


def test_an_epoch_without_a_batch_reads_nan_not_zero():
    """A fit resumed at an epoch's end replays that end with no batch in its sums: its loss and
    accuracy were not measured, and must not read as a perfect loss of 0."""
    metrics = EpochMetrics(2, 5, keep_predictions=False).compute_and_reset()
    assert torch.isnan(metrics["loss"]).all() and torch.isnan(metrics["acc"]).all()


def test_training_batches_counted_together_give_each_batchs_own_count():
    """Training sums its losses and counts its correct predictions over several batches at once:
    across the count's boundaries, a last smaller batch, a change of the runs computed (a stack
    compacted inside an epoch's loader) and a checkpoint's sums taken in between, the epoch's
    loss and accuracy are the ones summed batch by batch (the loss to float64 rounding)."""
    from actlab.metrics import COUNTED_TOGETHER

    torch.manual_seed(0)
    runs, classes = 3, 4
    metrics = EpochMetrics(runs, classes, keep_predictions=False)
    correct = torch.zeros(runs, dtype=torch.long)
    loss_sum = torch.zeros(runs, dtype=torch.float64)
    count = 0
    rows_later = torch.tensor([0, 2])
    plan = [(8, None)] * (COUNTED_TOGETHER + 3) + [(5, None)] + [(8, rows_later)] * 4 + [(8, rows_later.clone())] * 2
    for i, (batch, rows) in enumerate(plan):
        height = runs if rows is None else len(rows)
        logits, targets = torch.randn(height, batch, classes), torch.randint(0, classes, (height, batch))
        losses = torch.rand(height)
        metrics.update(losses, logits, targets, rows)
        mine = (logits.argmax(-1) == targets).sum(1)
        correct.index_add_(0, torch.arange(runs) if rows is None else rows, mine)
        loss_sum.index_add_(0, torch.arange(runs) if rows is None else rows, losses.double() * batch)
        count += batch
        if i == COUNTED_TOGETHER + 1:  # a checkpoint inside the epoch keeps the sums so far
            sums = metrics.sums()
            assert torch.equal(sums["correct"], correct) and sums["count"] == count
            assert torch.allclose(sums["loss_sum"], loss_sum, rtol=1e-12, atol=0)
    values = metrics.compute_and_reset()
    assert torch.equal(values["acc"], correct.double().div(count).float())
    assert torch.allclose(values["loss"], (loss_sum / count).float(), rtol=1e-7, atol=0)


def test_a_checkpoints_sums_change_nothing():
    """A checkpoint may read the sums at any point of a step (SLURM's requeue signal saves one
    from its handler): reading them after every batch leaves the epoch's metrics as they are."""
    torch.manual_seed(1)
    read, untouched = EpochMetrics(2, 5, keep_predictions=False), EpochMetrics(2, 5, keep_predictions=False)
    for _ in range(37):
        losses, logits, targets = torch.rand(2), torch.randn(2, 8, 5), torch.randint(0, 5, (2, 8))
        for metrics in (read, untouched):
            metrics.update(losses, logits, targets)
        first, again = read.sums(), read.sums()
        assert torch.equal(first["correct"], again["correct"]) and first["count"] == again["count"]
    mine, theirs = read.compute_and_reset(), untouched.compute_and_reset()
    assert torch.equal(mine["acc"], theirs["acc"]) and torch.equal(mine["loss"], theirs["loss"])


def test_a_checkpoint_taken_while_batches_are_counted_reads_the_whole_count(monkeypatch):
    """SLURM's requeue signal saves a checkpoint from its handler, which may run in the middle of
    counting a chunk of batches: the checkpoint reads every batch so far once, and the count
    goes on unharmed (here the "signal" lands inside each count's stacking of the batches)."""
    from actlab.metrics import COUNTED_TOGETHER

    torch.manual_seed(2)
    metrics, checkpoints, correct = EpochMetrics(3, 4, keep_predictions=False), [], torch.zeros(3, dtype=torch.long)
    real_stack, inside = torch.stack, []

    def stack_then_checkpoint(tensors, *args, **kwargs):
        stacked = real_stack(tensors, *args, **kwargs)
        if not inside:  # the handler's own reading stacks too
            inside.append(True)
            checkpoints.append((metrics.sums()["correct"], correct.clone()))
            inside.clear()
        return stacked

    monkeypatch.setattr(torch, "stack", stack_then_checkpoint)
    for _ in range(2 * COUNTED_TOGETHER + 3):
        logits, targets = torch.randn(3, 8, 4), torch.randint(0, 4, (3, 8))
        correct += (logits.argmax(-1) == targets).sum(1)
        metrics.update(torch.rand(3), logits, targets)
    assert len(checkpoints) >= 2
    for read, expected in checkpoints:
        assert torch.equal(read, expected)
    assert torch.equal(metrics.compute_and_reset()["acc"], correct.double().div(8 * (2 * COUNTED_TOGETHER + 3)).float())
