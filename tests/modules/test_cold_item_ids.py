import pytest
import torch
import torch.nn.functional as F

from em3rec.config import CICConfig, ConfigError, load_config
from em3rec.modules.cic import ContentIDContrastive
from em3rec.modules.cold_item_ids import ContentInferredIds


def test_inferred_ids_project_exactly_onto_their_contents_direction():
    torch.manual_seed(0)
    cic = ContentIDContrastive(8, 6, CICConfig(dim=8))
    content = torch.randn(5, 6)
    inferred = cic.id_from_content(content)  # (5, 8)
    assert torch.allclose(inferred.norm(dim=-1), torch.ones(5), atol=1e-5)
    z_id = F.normalize(cic.id_head(inferred), dim=-1)
    z_content = F.normalize(cic.content_head(content), dim=-1)
    assert torch.allclose((z_id * z_content).sum(-1), torch.ones(5), atol=1e-4)


def test_only_unseen_rows_change_and_take_the_observed_norm():
    torch.manual_seed(0)
    cic = ContentIDContrastive(4, 4, CICConfig(dim=4))
    inferred = ContentInferredIds(torch.tensor([False, True, False]), momentum=0.5)
    inferred.observe(torch.full((2, 4), 1.0), torch.tensor([1.0, 1.0]))  # norm 2: the first batch sets it
    inferred.observe(torch.full((3, 4), 2.0), torch.tensor([1.0, 1.0, 0.0]))  # norm 4, padding ignored
    assert inferred.id_norm.item() == pytest.approx(3.0)
    target_id = torch.randn(4, 4)
    out = inferred(target_id, torch.randn(4, 4), torch.tensor([0, 1, 2, 1]), cic)
    assert torch.equal(out[[0, 2]], target_id[[0, 2]])
    assert torch.allclose(out[[1, 3]].norm(dim=-1), torch.full((2,), 3.0))


def test_from_content_needs_em3_with_cic_heads_without_bias():
    with pytest.raises(ConfigError, match="model.cold_item_id"):
        load_config("din_frozen", ["model.cold_item_id=from_content"])
    with pytest.raises(ConfigError, match="head_bias"):
        load_config("din_em3", ["model.cold_item_id=from_content", "model.cic.head_bias=true"])
    with pytest.raises(ValueError, match="head_bias"):
        ContentIDContrastive(4, 4, CICConfig(dim=4, head_bias=True)).id_from_content(torch.randn(2, 4))
