import logging
import warnings

import pytest

from em3rec import run_log

DCP_NOTICE = "Please use DTensor instead and we are deprecating ShardedTensor."
FX_NOTICE = "is_fx_tracing will return true for both fx.symbolic_trace and torch.export."


@pytest.fixture
def fresh_logging():
    """setup_logging replaces the root handler and adds warning filters: put both back after. The
    libraries' loggers start at their default level (a benchmark test may have silenced them)."""
    root = logging.getLogger()
    handlers, level, filters = root.handlers[:], root.level, warnings.filters[:]
    libraries = {name: logging.getLogger(name).level for name in ("torchrec", "torch.fx")}
    for name in libraries:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    warnings.filters[:] = filters
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)
    for source, _ in run_log.LIBRARY_NOTICES:
        if isinstance(source, str):
            logger = logging.getLogger(source)
            for f in [f for f in logger.filters if isinstance(f, run_log._RunLogFilter)]:
                logger.removeFilter(f)


@pytest.mark.parametrize("library_logs", [False, True])
def test_run_log_keeps_em3rec_lines_and_library_warnings(capsys, fresh_logging, library_logs):
    run_log.setup_logging(0, library_logs)
    logging.getLogger("em3rec.train").info("epoch 0 valid auc=0.7")
    logging.getLogger("torchrec.distributed.planner.partitioners").info("GreedyPerfPartitioner - sort_by")
    logging.getLogger().info("[TBE=1] SplitTableBatchedEmbeddingBagsCodegen Arguments")  # FBGEMM logs on root
    logging.getLogger("torchrec.distributed.embedding").warning("a table has no rows")
    logging.getLogger("torchrec.distributed.planner.storage_reservations").warning(
        "There is a known issue with TorchRec's dense tensor size calculation in dry run scenarios"
    )
    lines = capsys.readouterr().err
    assert "[rank0] em3rec.train INFO: epoch 0 valid auc=0.7" in lines
    assert "a table has no rows" in lines  # a library's warning always shows
    for library_info in ("GreedyPerfPartitioner", "SplitTableBatchedEmbeddingBagsCodegen", "dry run scenarios"):
        assert (library_info in lines) == library_logs, library_info


@pytest.mark.parametrize("library_logs", [False, True])
def test_run_log_drops_the_libraries_notices_about_their_internals(fresh_logging, library_logs):
    run_log.setup_logging(0, library_logs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn(DCP_NOTICE, FutureWarning, stacklevel=1)
        warnings.warn(DCP_NOTICE, UserWarning, stacklevel=1)
        warnings.warn("some other future change", FutureWarning, stacklevel=1)
    shown = [(w.category, str(w.message)) for w in caught]
    assert (FutureWarning, "some other future change") in shown
    assert (UserWarning, DCP_NOTICE) in shown  # only the category named is dropped
    assert ((FutureWarning, DCP_NOTICE) in shown) == library_logs
    # torch's loggers write through a handler of their own: the filter sits on the logger
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    fx = logging.getLogger("torch.fx._symbolic_trace")
    fx.addHandler(handler)
    try:
        fx.warning(FX_NOTICE)
        fx.warning("a torch.fx warning of another kind")
    finally:
        fx.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert "a torch.fx warning of another kind" in messages
    assert (FX_NOTICE in messages) == library_logs


def test_run_log_other_ranks_show_warnings_only(capsys, fresh_logging):
    run_log.setup_logging(1)
    logging.getLogger("em3rec.train").info("epoch 0 valid auc=0.7")
    logging.getLogger("em3rec.train").warning("resuming from the latest checkpoint")
    lines = capsys.readouterr().err
    assert "valid auc" not in lines and "[rank1] em3rec.train WARNING: resuming" in lines
