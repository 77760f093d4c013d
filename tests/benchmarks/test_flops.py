import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.flops import format_table, measure
from em3rec.modules.model import EM3Train, build_model


def test_components_add_up_to_the_global_count(meta, data_config, batch, model_config):
    train = EM3Train(build_model(model_config(seq_content_mode="lora"), meta, data_config))
    rows = {r.name: r for r in measure(train, batch)}
    assert all(p.grad is None for p in train.parameters())  # measure() leaves no gradients behind
    assert {"id_arch", "content_tower", "content_interest", "backbone", "cic", "total"} <= rows.keys()
    with FlopCounterMode(display=False) as counter:
        train(batch)[0].backward()
    total = rows["total"]
    torch.testing.assert_close(
        (total.forward_flops + total.backward_flops) * batch.batch_size, float(counter.get_total_flops())
    )
    assert rows["content_tower"].forward_flops > 0 and rows["content_tower"].backward_flops > 0
    assert total.params == sum(p.numel() for p in train.parameters())
    assert "| content_tower |" in format_table(list(rows.values()))


def test_history_without_gradient_costs_no_backward(meta, data_config, batch, model_config):
    def content_backward(mode: str) -> float:
        train = EM3Train(build_model(model_config(seq_content_mode=mode), meta, data_config))
        return {r.name: r for r in measure(train, batch)}["content_tower"].backward_flops

    none, frozen, full = content_backward("none"), content_backward("frozen"), content_backward("full")
    assert frozen == none < full
