"""2 gloo ranks: each backbone with EM3 under DistributedModelParallel, sharded ID tables, fused
row-wise Adagrad in backward for the tables, AdamW for the dense part."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2


def _local(tensor) -> torch.Tensor:
    """A state_dict entry's data on this rank (sharded tensors: the local shards, concatenated)."""
    if hasattr(tensor, "local_shards"):
        shards = [s.tensor.detach().clone().flatten() for s in tensor.local_shards()]
        return torch.cat(shards) if shards else torch.zeros(0)
    if hasattr(tensor, "to_local"):  # DTensor
        return tensor.to_local().detach().clone().flatten()
    return tensor.detach().clone().flatten()


def _worker(rank: int, store_path: str, cases: list[tuple[str, str]]) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, WORLD_SIZE), rank=rank, world_size=WORLD_SIZE)
    try:
        for backbone, mode, pipelined in cases:
            _train_steps(rank, backbone, mode, pipelined)
    finally:
        dist.destroy_process_group()


def _train_steps(rank: int, backbone: str, mode: str, pipelined: bool) -> None:
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.sharding_plan import get_default_sharders
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    from em3rec.config import CICConfig, DataConfig, LoraConfig, ModelConfig, QFormerConfig
    from em3rec.testing.example_batch import ExampleItems, example_batch, example_meta
    from em3rec.modules.model import EM3Train, build_model

    meta = example_meta()
    config = ModelConfig(
        backbone=backbone,
        content="em3",
        seq_content_mode=mode,
        embedding_dim=16,
        dense_layers=[16],
        over_layers=[16, 8],
        cross_layers=1,
        cross_low_rank=4,
        attention_hidden=[8],
        qformer=QFormerConfig(dim=16, num_heads=2, token_dropout=0.0, attention_dropout=0.0, ffn_dropout=0.0),
        lora=LoraConfig(rank=2),
        cic=CICConfig(dim=8),
        cache_refresh_steps=1,
    )
    torch.manual_seed(0)
    model = build_model(config, meta, DataConfig(), sparse_device=torch.device("meta"))
    apply_optimizer_in_backward(RowWiseAdagrad, model.id_arch.parameters(), {"lr": 0.5})
    train = EM3Train(model)

    constraints = {
        "item": ParameterConstraints(sharding_types=["column_wise"], min_partition=8),
        "user_id": ParameterConstraints(sharding_types=["table_wise"]),
        "gender": ParameterConstraints(sharding_types=["table_wise"]),
        "genres": ParameterConstraints(sharding_types=["table_column_wise"], min_partition=8),
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=WORLD_SIZE, compute_device="cpu"), constraints=constraints
    )
    sharders = get_default_sharders()
    plan = planner.collective_plan(train, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(train, device=torch.device("cpu"), plan=plan, sharders=sharders)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())), lambda ps: torch.optim.AdamW(ps, lr=1e-2)
    )
    optimizer = CombinedOptimizer([dmp.fused_optimizer, dense])

    tables = [k for k in dmp.state_dict() if k.endswith(".weight") and "id_arch." in k]
    qformer = [k for k in dmp.state_dict() if "content_tower.qformer." in k and "lora_" not in k]
    adapters = [k for k in dmp.state_dict() if "lora_B" in k]
    assert {k.split(".")[-2] for k in tables} == {"item", "user_id", "gender", "genres"}
    before = {k: _local(v) for k, v in dmp.state_dict().items()}
    items = ExampleItems.random(meta)
    batches = [example_batch(meta, 8, items=items, seed=100 * rank + step) for step in range(3)]
    if pipelined:  # TorchRec's TrainPipelineSparseDist fx-traces the model to pipeline the lookups
        pipeline = TrainPipelineSparseDist(dmp, optimizer, torch.device("cpu"))
        data = iter(batches)
        for _ in batches:
            loss, logits, _, aux = pipeline.progress(data)  # the second element of EM3Train's output
            assert torch.isfinite(loss) and logits.shape == (8,)
        assert len(pipeline._pipelined_modules) == 2  # the EBC and the EC
    else:
        for batch in batches[:2]:  # 2 steps: DDP (static graph) fails on the 2nd if a parameter got no grad
            loss, (_, logits, _, aux) = dmp(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            assert torch.isfinite(loss) and logits.shape == (8,)
    after = {k: _local(v) for k, v in dmp.state_dict().items()}

    # the fused kernels run row-wise Adagrad (one accumulator per row), not their default optimiser
    for state in dmp.fused_optimizer.state_dict()["state"].values():
        for name, value in state.items():
            local = [s.tensor for s in value.local_shards()] if hasattr(value, "local_shards") else [value]
            assert name.endswith("momentum1") and all(t.dim() == 1 for t in local), name

    changed = {k: bool(before[k].numel()) and not torch.equal(before[k], after[k]) for k in tables}
    held = {k: before[k].numel() > 0 for k in tables}
    everywhere = [None] * WORLD_SIZE
    dist.all_gather_object(everywhere, (changed, held))
    for k in tables:  # every table has shards somewhere, and they moved
        assert any(h[k] for _, h in everywhere), k
        assert any(c[k] for c, _ in everywhere), f"{backbone}/{mode}: sharded table {k} did not change"
    assert all(
        not torch.equal(before[k], after[k]) for k in qformer if k.endswith("queries") or k.endswith("head.weight")
    )
    if mode == "lora":
        assert adapters and all(not torch.equal(before[k], after[k]) for k in adapters)
    # dense weights stay identical across ranks (DDP all-reduces their gradients)
    dense_now = torch.cat([after[k] for k in qformer])
    gathered = [torch.zeros_like(dense_now) for _ in range(WORLD_SIZE)]
    dist.all_gather(gathered, dense_now)
    torch.testing.assert_close(gathered[0], gathered[1])
    if mode == "cached":  # each rank keeps its own bank: DMP's DDP must not broadcast it
        banks = [torch.zeros_like(model.content_tower.history.bank) for _ in range(WORLD_SIZE)]
        dist.all_gather(banks, model.content_tower.history.bank)
        assert not torch.equal(banks[0], banks[1])


@pytest.mark.multiprocess
def test_dmp_trains_sharded_ids_and_the_qformer(tmp_path):
    cases = [("dlrm", "lora", False), ("dcn", "lora", False), ("din", "lora", True), ("din", "cached", False)]
    mp.spawn(_worker, args=(str(tmp_path / "store"), cases), nprocs=WORLD_SIZE, join=True)
