"""ID dropout (DropoutNet): whole rows dropped at rate p in training, unseen items / users in evaluation."""

import dataclasses

import pytest
import torch

from em3rec.config import ConfigError, load_config
from em3rec.modules.id_dropout import IdDropout
from em3rec.modules.model import build_model


def test_training_zeroes_whole_rows_at_rate_p():
    dropout = IdDropout(0.3, torch.zeros(10, dtype=torch.bool)).train()
    target = torch.randn(4000, 8) + 5.0  # no entry is 0 by chance
    out = dropout(target, torch.zeros(4000, dtype=torch.long))
    dropped = (out == 0).all(dim=1)
    assert ((out == 0).any(dim=1) == dropped).all()  # a row is dropped whole or kept whole
    torch.testing.assert_close(out[~dropped], target[~dropped])
    assert 0.27 < dropped.float().mean().item() < 0.33


def test_evaluation_zeroes_exactly_the_unseen_items():
    unseen = torch.tensor([False, True, False, True])
    dropout = IdDropout(0.5, unseen).eval()
    item_ids = torch.tensor([0, 1, 2, 3, 1, 0])
    target = torch.randn(6, 4) + 5.0
    out = dropout(target, item_ids)
    assert (out[[1, 3, 4]] == 0).all()
    torch.testing.assert_close(out[[0, 2, 5]], target[[0, 2, 5]])
    assert "unseen" not in dropout.state_dict()  # derived from the data, not a weight


@pytest.mark.parametrize("side", ["item", "user"])
@pytest.mark.parametrize("backbone", ["dlrm", "dcn", "din"])
def test_an_unseen_ids_score_does_not_read_its_id_embedding(meta, data_config, batch, model_config, backbone, side):
    ids = batch.item_ids if side == "item" else batch.user_ids
    unseen = torch.zeros(meta.features_of(side)[0].vocab_size, dtype=torch.bool)
    unseen[ids[0]] = True
    option, argument = ("id_dropout", "unseen_items") if side == "item" else ("user_id_dropout", "unseen_users")
    model = build_model(model_config(backbone=backbone, **{option: 0.2}), meta, data_config, **{argument: unseen})
    model.eval()
    before = model(batch).logits
    user = model.id_arch.pooled_feature_names.index(meta.features_of("user")[0].name)

    def scale_the_id_embedding(_module, _inputs, out):  # every other input untouched
        if side == "item":
            return dataclasses.replace(out, target=3.0 * out.target)
        pooled = out.pooled.clone()
        pooled[:, user] *= 3.0
        return dataclasses.replace(out, pooled=pooled)

    model.id_arch.register_forward_hook(scale_the_id_embedding)
    after = model(batch).logits
    rows = unseen[ids]
    torch.testing.assert_close(after[rows], before[rows])
    assert not torch.allclose(after[~rows], before[~rows])


def test_with_content_regressed_cold_rows_evaluation_reads_every_items_row(meta, data_config, batch, model_config):
    """``model.cold_item_rows = from_content`` writes the unseen items' rows; item-ID dropout then
    drops rows in training only, and evaluation scores unseen items with their (regressed) rows."""
    unseen = torch.zeros(meta.features_of("item")[0].vocab_size, dtype=torch.bool)
    unseen[batch.item_ids[0]] = True
    config = model_config(backbone="din", content="frozen", id_dropout=0.2, cold_item_rows="from_content")
    model = build_model(config, meta, data_config, unseen_items=unseen).eval()
    target = torch.randn(3, 4) + 5.0
    torch.testing.assert_close(model.item_id_dropout(target, batch.item_ids[:3]), target)


def test_user_id_dropout_needs_the_unseen_users(meta, data_config, model_config):
    with pytest.raises(ValueError, match="unseen_users"):
        build_model(model_config(user_id_dropout=0.2), meta, data_config)
    with pytest.raises(ConfigError, match="model.user_id_dropout"):
        load_config("din_em3", ["model.user_id_dropout=1.0"])


def test_id_dropout_needs_the_unseen_items_and_a_probability(meta, data_config, model_config):
    with pytest.raises(ValueError, match="unseen_items"):
        build_model(model_config(id_dropout=0.2), meta, data_config)
    with pytest.raises(ConfigError, match="model.id_dropout"):
        load_config("din_em3", ["model.id_dropout=1.0"])
