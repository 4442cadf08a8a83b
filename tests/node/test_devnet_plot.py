"""The devnet's picture (node/devnet_plot.py) draws any trace, empty ones too;
a real run's trace is read from a stopped node's store in tests/devnet/test_devnet.py."""
from bws.node.devnet_plot import RunTrace, plot_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_trace_is_drawn_with_accuracies_in_the_legend(tmp_path):
    trace = RunTrace(losses={"node2": [(1, 0.5), (0, 2.0)], "node3": [(0, 2.1)]},
                     blocks=[(1, 100, False), (2, 103, True), (3, 104, True)])
    plot_run(trace, {"node2": 0.97}, tmp_path / "run.png", "a run")
    assert (tmp_path / "run.png").read_bytes()[:8] == PNG


def test_an_empty_trace_still_gives_a_picture(tmp_path):
    plot_run(RunTrace(), {}, tmp_path / "empty.png", "nothing happened")
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG
