"""How well CIC's inverted alignment recovers trained ID embeddings (``model.cold_item_id``).

    python -m benchmarks.cold_item_id_probe --run-dir runs/cg_din --run-name din_em3_seed0 \
        --set data.path=data/ml100k_cold20

Loads a trained EM3 run (best checkpoint) with ``model.cold_item_id = from_content``, reads the
first test batches and prints, over their warm target rows: the cosine between each row's trained
ID embedding and the one inferred from its content; the same for random pairs; and the CIC-space
cosine of the positive pair. One process.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from em3rec.config import load_config
from em3rec.factory import load_trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="din_em3")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--run-name", required=True)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    overrides = [f"train.run_dir={args.run_dir}", f"train.run_name={args.run_name}", *args.set]
    trained = load_trained(load_config(args.config, [*overrides, "model.cold_item_id=from_content"]))
    model = trained.model.module.model
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    model.cold_item_ids.register_forward_hook(
        lambda module, inputs, output: seen.append(tuple(t.detach().float() for t in inputs[:3]))
    )
    trained.model.eval()
    with torch.no_grad(), trained.precision.autocast():
        for i, batch in enumerate(trained.loader("test")):
            trained.model(batch)
            if i + 1 == args.batches:
                break
    target_id, content, items = (torch.cat(column) for column in zip(*seen))
    warm = ~model.cold_item_ids.unseen[items.long()]
    target_id, content = target_id[warm], content[warm]
    inferred = model.cic.id_from_content(content)
    perm = torch.randperm(target_id.shape[0], generator=torch.Generator().manual_seed(0))
    z_id = F.normalize(model.cic.id_head(target_id), dim=-1)
    z_content = F.normalize(model.cic.content_head(content), dim=-1)
    print(f"warm rows: {target_id.shape[0]}; running warm ID norm {float(model.cold_item_ids.id_norm):.3f}")
    print(f"cos(inferred, trained ID), same item: {F.cosine_similarity(inferred, target_id).mean():.4f}")
    print(f"cos(inferred, trained ID), random pairs: {F.cosine_similarity(inferred, target_id[perm]).mean():.4f}")
    print(f"CIC space cos(ID, content), same item: {(z_id * z_content).sum(-1).mean():.4f}")
    print(f"CIC space cos(ID, content), random pairs: {(z_id * z_content[perm]).sum(-1).mean():.4f}")
    print(f"ID head singular values: {torch.linalg.svdvals(model.cic.id_head.weight.float()).tolist()[::8]}")


if __name__ == "__main__":
    main()
