"""Parameter counts and FLOPs per sample of each model component, over one forward + backward.

FLOPs are counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention; embedding
lookups and element-wise ops count 0). Forward FLOPs go to the component whose ``forward`` is
running; backward FLOPs go to the component that created the autograd node being run (nodes are
tagged during the forward), which stays right for branches that take no gradient (``frozen``,
``cached``) or a partial one (``lora``). Run it on a real-shaped batch::

    python -m benchmarks.flops --set model.backbone=din --set model.seq_content_mode=lora
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from em3rec import cli
from em3rec.data.batch import Batch
from em3rec.modules.model import EM3Train

COMPONENTS = ("id_arch", "content_tower", "content_interest", "backbone", "cic")
OTHER = "loss/other"


@dataclass
class ComponentCost:
    """One table row: ``params`` (all), ``trainable`` (requires_grad), and FLOPs per sample."""

    name: str
    params: int
    trainable: int
    forward_flops: float
    backward_flops: float


class _Tagger(TorchFunctionMode):
    """Maps every autograd node created in the forward to the component that was running."""

    def __init__(self, stack: list[str], owner: dict) -> None:
        super().__init__()
        self._stack = stack
        self._owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        name = self._stack[-1] if self._stack else OTHER
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                self._tag(t.grad_fn, name)
        return out

    def _tag(self, node, name: str) -> None:  # noqa: ANN001
        # A composite op leaves several nodes behind its output's grad_fn: tag back to known ones.
        todo = [node]
        while todo:
            n = todo.pop()
            if n is None or n in self._owner or type(n).__name__ == "AccumulateGrad":
                continue
            self._owner[n] = name
            todo.extend(next_fn for next_fn, _ in n.next_functions)


class _Counter(FlopCounterMode):
    """FlopCounterMode that also attributes every op's FLOPs to a component and a phase."""

    def __init__(self, stack: list[str], owner: dict) -> None:
        super().__init__(display=False)
        self._stack = stack
        self._owner = owner
        self.by_component: dict[tuple[str, str], int] = defaultdict(int)

    def _count_flops(self, func_packet, out, args, kwargs):  # noqa: ANN001
        if func_packet in self.flop_registry:
            flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            node = torch._C._current_autograd_node()
            if node is not None:
                self.by_component[("backward", self._owner.get(node, OTHER))] += flops
            else:
                self.by_component[("forward", self._stack[-1] if self._stack else OTHER)] += flops
        return super()._count_flops(func_packet, out, args, kwargs)


def _params(module: nn.Module | None) -> tuple[int, int]:
    if module is None:
        return 0, 0
    ps = list(module.parameters())
    return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)


def measure(train: EM3Train, batch: Batch) -> list[ComponentCost]:
    """Parameters and FLOPs per sample of each component over one forward + backward of ``batch``.

    Args:
        train (EM3Train): the training wrapper (its mode, train or eval, is used as is).
        batch (Batch): a real-shaped batch.

    Returns:
        list[ComponentCost]: one row per component that exists, then ``loss/other`` and ``total``.
    """
    model = train.model
    stack: list[str] = []
    owner: dict = {}
    handles = []
    for name in COMPONENTS:
        module = getattr(model, name)
        if module is None:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: stack.append(n) and None))
        handles.append(module.register_forward_hook(lambda m, a, o: stack.pop() and None))
    counter = _Counter(stack, owner)
    try:
        with torch.compiler.set_stance("force_eager"), counter:  # see runner.flops_per_sample
            with _Tagger(stack, owner):
                loss, _ = train(batch)
            loss.backward()
    finally:
        for h in handles:
            h.remove()
        train.zero_grad(set_to_none=True)

    B = batch.batch_size
    rows = []
    for name in (*COMPONENTS, OTHER):
        module = getattr(model, name, None)
        if name != OTHER and module is None:
            continue
        params, trainable = _params(module)
        rows.append(
            ComponentCost(
                name,
                params,
                trainable,
                counter.by_component[("forward", name)] / B,
                counter.by_component[("backward", name)] / B,
            )
        )
    params, trainable = _params(model)
    rows.append(
        ComponentCost(
            "total",
            params,
            trainable,
            sum(r.forward_flops for r in rows),
            sum(r.backward_flops for r in rows),
        )
    )
    return rows


def format_table(rows: list[ComponentCost]) -> str:
    """A Markdown table of :func:`measure`'s rows (FLOPs in MFLOP per sample)."""
    lines = [
        "| component | params | trainable | fwd MFLOP/sample | bwd MFLOP/sample |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.params:,} | {r.trainable:,} | {r.forward_flops / 1e6:.3f} | {r.backward_flops / 1e6:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from em3rec.data.schema import DatasetMeta
    from em3rec.testing.example_batch import example_batch, ml100k_shaped_meta
    from em3rec.modules.model import build_model

    parser = cli.config_parser(__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(config=None)  # no config: the dataclass defaults
    parser.add_argument(
        "--meta", default=None, help="a prepared dataset folder (default: ml-100k-shaped synthetic meta)"
    )
    parser.add_argument("--batch-size", type=int, default=0, help="default: data.batch_size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = cli.load(args)
    meta = DatasetMeta.load(args.meta) if args.meta else ml100k_shaped_meta()
    torch.manual_seed(args.seed)
    train = EM3Train(build_model(config.model, meta, config.data))
    batch = example_batch(
        meta,
        args.batch_size or config.data.batch_size,
        max_history=config.data.max_history,
        modalities=config.data.modalities,
        seed=args.seed,
    )
    print(
        f"backbone={config.model.backbone} content={config.model.content} "
        f"seq_content_mode={config.model.seq_content_mode} dedup={config.model.dedup} "
        f"B={batch.batch_size} L={batch.history_mask.shape[1]} U={batch.content_item_ids.numel()} "
        f"(synthetic batch, real shapes)"
    )
    print(format_table(measure(train, batch)))


if __name__ == "__main__":
    main()
