"""2-rank gloo smoke test of the TorchRec stack: DMP over EBC + EC, fused optimiser, DDP dense."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from em3rec.config import OptimConfig, ShardingConfig
from em3rec.distributed import DistEnv, build_optimizer, memory_caps, shard_model
from em3rec.stack import check_stack
from em3rec.testing.multiprocess import run_ranks

DIM = 16


class TinyRanker(nn.Module):
    """User/genre pooled embeddings + a shared item table for target and history + an MLP."""

    def __init__(self) -> None:
        super().__init__()
        meta = torch.device("meta")
        self.ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(name="user", embedding_dim=DIM, num_embeddings=40, feature_names=["user_id"]),
                EmbeddingBagConfig(name="genre", embedding_dim=DIM, num_embeddings=10, feature_names=["genres"]),
            ],
            device=meta,
        )
        self.ec = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name="item", embedding_dim=DIM, num_embeddings=50, feature_names=["item_id", "hist_item_ids"]
                )
            ],
            device=meta,
        )
        self.mlp = nn.Sequential(nn.Linear(4 * DIM, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, pooled: KeyedJaggedTensor, sequence: KeyedJaggedTensor) -> torch.Tensor:
        kt = self.ebc(pooled)
        seq = self.ec(sequence)
        item = seq["item_id"].to_padded_dense(1).squeeze(1)  # (B, D)
        hist = seq["hist_item_ids"].to_padded_dense(5).sum(1)  # (B, D)
        x = torch.cat([kt["user_id"], kt["genres"], item, hist], dim=1)  # (B, 4D)
        return self.mlp(x).squeeze(-1)


def _batch(rank: int, batch_size: int = 32) -> tuple[KeyedJaggedTensor, KeyedJaggedTensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    users = torch.randint(1, 40, (batch_size,), generator=g)
    genre_len = torch.randint(1, 3, (batch_size,), generator=g)
    genres = torch.randint(1, 10, (int(genre_len.sum()),), generator=g)
    items = torch.randint(1, 50, (batch_size,), generator=g)
    hist_len = torch.randint(0, 6, (batch_size,), generator=g)
    hist = torch.randint(1, 50, (int(hist_len.sum()),), generator=g)
    pooled = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id", "genres"],
        values=torch.cat([users, genres]),
        lengths=torch.cat([torch.ones(batch_size, dtype=torch.long), genre_len]),
    )
    sequence = KeyedJaggedTensor.from_lengths_sync(
        keys=["item_id", "hist_item_ids"],
        values=torch.cat([items, hist]),
        lengths=torch.cat([torch.ones(batch_size, dtype=torch.long), hist_len]),
    )
    labels = ((users + items) % 2).float()
    return pooled, sequence, labels


def _train(rank: int, world_size: int, sharding_type: str, grad_clip: float = 0.0) -> dict:
    torch.manual_seed(0)
    env = DistEnv(rank, world_size, rank, torch.device("cpu"), "gloo")
    model = shard_model(
        TinyRanker(),
        env,
        ShardingConfig(types=[sharding_type]),
        OptimConfig(embedding_optimizer="adagrad", embedding_lr=0.1, dense_lr=1e-2),
        batch_size=32,
    )
    optimizer = build_optimizer(model, OptimConfig(dense_lr=1e-2, grad_clip=grad_clip))
    pooled, sequence, labels = _batch(rank)
    losses, grad_norms = [], []
    dense = [p for name, p in model.named_parameters() if ".mlp." in f".{name}"]
    for _ in range(30):
        logits = model(pooled, sequence)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        grad_norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in dense])))  # after any clipping
    types = {table: p.sharding_type for module_plan in model.plan.plan.values() for table, p in module_plan.items()}
    ddp = type(model._dmp_wrapped_module).__name__
    return {"losses": losses, "grad_norms": grad_norms, "types": types, "dense_wrapper": ddp}


@pytest.mark.multiprocess
@pytest.mark.parametrize("sharding_type", ["table_wise", "column_wise"])
def test_dmp_two_ranks_trains_with_requested_sharding(sharding_type: str) -> None:
    results = run_ranks(_train, sharding_type)
    for r in results:
        assert r["types"] == {"user": sharding_type, "genre": sharding_type, "item": sharding_type}
        assert r["dense_wrapper"] == "DistributedDataParallel"
        first, last = sum(r["losses"][:3]) / 3, sum(r["losses"][-3:]) / 3
        assert last < 0.7 * first, r["losses"]


@pytest.mark.multiprocess
def test_grad_clip_bounds_the_dense_gradient_norm_on_every_rank() -> None:
    free, clipped = run_ranks(_train, "table_wise"), run_ranks(_train, "table_wise", 0.05)
    assert max(max(r["grad_norms"]) for r in free) > 0.1  # the bound below binds
    for r in clipped:
        assert max(r["grad_norms"]) <= 0.05 * (1 + 1e-4), r["grad_norms"]
    assert clipped[0]["grad_norms"] == clipped[1]["grad_norms"]  # one DDP-averaged norm on both ranks
    assert clipped[0]["losses"][-1] < clipped[0]["losses"][0]  # and it still trains


def test_stack_is_consistent() -> None:
    versions = check_stack()
    assert versions["torch"].startswith("2.13.0")
    assert versions["fbgemm_gpu"] == "1.8.0"
    assert versions["torchrec"] == "1.8.0"


def test_the_planner_is_told_this_machines_memory() -> None:
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory_caps(torch.device("cpu"), local_world_size=2) == {"ddr_cap": host // 2}  # no GPU memory on CPU
