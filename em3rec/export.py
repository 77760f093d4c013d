"""Export item content embeddings for serving and cold start.

    python -m em3rec.export --config din_em3 [--checkpoint DIR] [--out FILE.parquet]

Runs the trained content tower (the Fusion-Q-Former's target branch, or the frozen baseline's
projection) over *every* item of the catalogue, including items never seen in training: that is
what makes content useful for cold start. Writes ``item_idx``, the raw ``item_id`` and a
``content_embedding`` fixed-size list of float32 ``(D,)`` per item.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from tqdm import tqdm

from em3rec import cli
from em3rec.data.item_store import ItemStore
from em3rec.error_file import record
from em3rec.errors import UsageError
from em3rec.factory import load_trained
from em3rec.modules.model import EM3Model, uses_pooled_vectors


@torch.no_grad()
def item_embeddings(
    model: EM3Model,
    store: ItemStore,
    pooled: bool,
    device: torch.device,
    chunk: int = 1024,
    pooled_vectors: bool = False,
    rows: range | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """``(N, D)`` float32 content embeddings of the item rows ``rows`` (default: every row, row 0
    the padding item); ``pooled_vectors``: the model reads the stored pooled vectors beside the
    tokens, as in training."""
    model.eval()
    rows = rows if rows is not None else range(store.num_rows)
    out = []
    progress = tqdm(range(rows.start, rows.stop, chunk), desc="items", unit="chunk", disable=not show_progress)
    for start in progress:
        ids = np.arange(start, min(start + chunk, rows.stop))
        tokens, mask = store.gather(ids, pooled=pooled)
        tokens = {k: v.to(device) for k, v in tokens.items()}
        mask = {k: v.to(device) for k, v in mask.items()}
        vectors = {k: v.to(device) for k, v in store.gather_pooled(ids).items()} if pooled_vectors else None
        item_ids = torch.from_numpy(ids).to(device)
        out.append(model.encode_items(tokens, mask, vectors, item_ids).float().cpu().numpy())  # (chunk, D)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)  # no rows: a share of 0


def write_embeddings(path: Path, embeddings: np.ndarray, raw_item_ids: pa.Array | None) -> None:
    n, d = embeddings.shape
    columns = {"item_idx": pa.array(np.arange(n, dtype=np.int64))}
    if raw_item_ids is not None:
        columns["item_id"] = raw_item_ids
    columns["content_embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), d)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def raw_item_ids(folder: Path, num_rows: int) -> pa.Array | None:
    """The dataset's own item ids by item index, when ``items/items.parquet`` has them."""
    file = folder / "items" / "items.parquet"
    if not file.is_file():
        return None
    table = pq.read_table(file, columns=["item_idx", "item_id"])
    by_index = [None] * num_rows
    for idx, raw in zip(table["item_idx"].to_pylist(), table["item_id"].to_pylist()):
        by_index[idx] = raw
    return pa.array(by_index, type=table.schema.field("item_id").type)


@record  # under torchrun, a rank's exception (with traceback) lands in the job's error file
@cli.user_errors
def main(argv: list[str] | None = None) -> Path:
    parser = cli.config_parser(__doc__.splitlines()[0].strip(), checkpoint=True)
    parser.add_argument("--out", default="", help="default: runs/<name>/item_embeddings.parquet")
    args = parser.parse_args(argv)
    config = cli.load(args)
    if config.model.content == "none":
        raise UsageError(f"config {args.config!r} has model.content = 'none': no content tower to export")
    trained = load_trained(config, args.checkpoint)
    env = trained.env
    out = Path(args.out) if args.out else trained.run_dir / "item_embeddings.parquet"
    store = trained.item_store
    assert store is not None  # a content model has its item store
    # Each rank encodes its contiguous share of the catalogue (the content tower is replicated);
    # rank 0 gathers the shares in rank order and writes the file.
    share = range(env.rank * store.num_rows // env.world_size, (env.rank + 1) * store.num_rows // env.world_size)
    with trained.precision.autocast():
        part = item_embeddings(
            trained.em3_model,
            store,
            config.data.pooled_content,
            env.device,
            pooled_vectors=uses_pooled_vectors(config.model),
            rows=share,
            show_progress=env.is_main,
        )
    parts: list[np.ndarray] | None = [np.empty(0)] * env.world_size if env.is_main else None
    dist.gather_object(part, parts, dst=0)
    if parts is not None:
        embeddings = np.concatenate([p for p in parts if len(p)])
        write_embeddings(out, embeddings, raw_item_ids(Path(config.data.path), store.num_rows))
        print(f"wrote {embeddings.shape[0]} item embeddings of width {embeddings.shape[1]} to {out}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return out


if __name__ == "__main__":
    main()
