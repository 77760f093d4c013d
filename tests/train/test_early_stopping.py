import pytest

from em3rec.train import Progress


@pytest.mark.parametrize(
    "patience,epoch,best_epoch,stop",
    [(0, 4, 0, False), (1, 1, 0, False), (1, 2, 0, True), (2, 2, 0, False), (2, 3, 0, True), (1, 3, 2, False)],
)
def test_patience_counts_epochs_since_the_best_valid_epoch(recipe, patience, epoch, best_epoch, stop):
    # `epoch` is the next epoch to train (epochs 0..epoch-1 done); the best valid AUC came at `best_epoch`.
    saved = recipe.config.train.patience, recipe.progress
    recipe.config.train.patience = patience
    recipe.progress = Progress(epoch=epoch, best_epoch=best_epoch, best_valid_auc=0.7)
    try:
        assert recipe._patience_exhausted() is stop
    finally:
        recipe.config.train.patience, recipe.progress = saved
