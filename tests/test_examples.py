"""The examples run, draw their figures headless, and show progress only on a terminal."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from _progress import Progress  # noqa: E402

def _run(script: str, *args: str, plots: bool = True) -> list[str]:
    if plots:
        pytest.importorskip("matplotlib", reason='--plot needs matplotlib (pip install "higher-core[examples]")')
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    env.pop("DISPLAY", None)
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _assert_drawn(figure: Path, min_ink: float) -> None:
    """A PNG with something drawn on it: many colours and at least ``min_ink`` of its pixels not white."""
    from PIL import Image  # matplotlib's own dependency

    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(figure) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        pixels = image.width * image.height
    assert len(colours) >= 16, f"{len(colours)} colours: an empty canvas?"
    white = sum(count for count, colour in colours if colour == (255, 255, 255))
    assert 1 - white / pixels >= min_ink, f"only {1 - white / pixels:.1%} of the pixels are drawn on"


def test_maml_sine_plot(tmp_path):
    figure = tmp_path / "sine.png"
    lines = _run("maml_sine.py", "--iterations", "2", "--meta-batch", "2", "--test-tasks", "3", "--plot", str(figure))
    _assert_drawn(figure, min_ink=0.04)  # six panels of fits and a curve (the full run's figure: 8%)
    assert lines[-1].startswith("checksum "), lines  # the checksum stays the last line
    assert not any("\r" in line or "meta-training [" in line for line in lines)  # no progress bar into a pipe


def test_omniglot_shaped_smoke(tmp_path):
    figure = tmp_path / "omniglot.png"
    lines = _run("omniglot_shaped.py", "--iterations", "1", "--meta-batch", "1", "--test-tasks", "1",
                 "--plot", str(figure))
    _assert_drawn(figure, min_ink=0.10)  # three groups of bars (22% of the pixels)
    assert any("accuracy" in line for line in lines), lines


def test_learned_optimizer_quick(tmp_path):
    pytest.importorskip("higher_l2l", reason="the learned optimizer needs its plugin (pip install plugins/higher-l2l)")
    figure = tmp_path / "learned.png"
    lines = _run("learned_optimizer.py", "--quick", "--plot", str(figure))
    _assert_drawn(figure, min_ink=0.04)  # loss curves and the meta-training curve
    assert any(line.startswith("tuned learning rates") for line in lines), lines
    last = re.fullmatch(r"held-out final loss: learned (\S+) adam (\S+) sgd (\S+)", lines[-1])
    assert last is not None, lines
    assert all(float(value) > 0 for value in last.groups()), lines


def test_maml_gpt2_quick(tmp_path):
    pytest.importorskip("transformers", reason="examples/maml_gpt2.py needs `pip install transformers` (tox.ini)")
    figure = tmp_path / "gpt2.png"
    lines = _run("maml_gpt2.py", "--quick", "--plot", str(figure))
    _assert_drawn(figure, min_ink=0.02)  # two curves
    table = [line for line in lines if line.startswith(("| MAML", "| pre-trained"))]
    assert len(table) == 2, lines
    for line in table:  # the query loss after 0, 1, 2 and 5 steps
        assert len([float(cell) for cell in line.strip("| ").split(" | ")[1:]]) == 4, line
    assert lines[-1].startswith("checksum "), lines


def test_dataset_distillation_quick():
    lines = _run("dataset_distillation.py", "--quick", plots=False)
    ratio = next(re.fullmatch(r"K=50 checkpointed/plain: peak (\S+) time \S+ max rel diff (\S+)", line)
                 for line in lines if line.startswith("K=50 "))
    assert float(ratio[2]) <= 1e-10, lines  # the same meta-gradient (float64)
    assert float(ratio[1]) < 0.5, lines  # for less than half the graph's memory
    last = re.fullmatch(r"real loss: initial (\S+) distilled (\S+); test accuracy: initial (\S+) distilled (\S+) "
                        r"random real (\S+)", lines[-1])
    assert last is not None, lines
    loss_initial, loss_distilled, initial, distilled, random_real = map(float, last.groups())
    # distillation lowers the real-data loss and raises the held-out accuracy (seeds 0-3: loss x0.33-0.73,
    # accuracy +0.12-0.40; beating as many random real samples takes the default run's longer distillation)
    assert loss_distilled < 0.85 * loss_initial, lines
    assert distilled > initial + 0.1, lines
    assert 0 < random_real < 1, lines


def _distillation_meta_gradients(checkpoint, steps=12):
    import dataset_distillation as dd

    g = torch.Generator().manual_seed(0)
    problem = dd.make_problem(classes=3, modes=2, dim=2, n_train=64, n_test=8, g=g)
    x_syn = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y_syn = torch.arange(3).repeat_interleave(2)
    log_lr = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    net = dd.make_net(dim=2, hidden=8, classes=3)
    meter = dd.SavedBytes()
    with meter.hooks():
        loss = dd.distilled_loss(net, x_syn, y_syn, log_lr, (problem.x_train, problem.y_train), steps, checkpoint)
        grads = torch.autograd.grad(loss, [x_syn, log_lr])
    assert meter.now == 0, meter.now  # every saved tensor was let go
    return grads, meter.peak


@pytest.mark.parametrize("checkpoint", [1, 4, "sqrt"])
def test_dataset_distillation_checkpointed_meta_gradient(checkpoint):
    expected, plain_peak = _distillation_meta_gradients(None)
    assert all(g.abs().max() > 0 for g in expected)
    got, peak = _distillation_meta_gradients(checkpoint)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * b.abs().max().item())
    assert peak < plain_peak, (checkpoint, peak, plain_peak)


def test_saved_bytes_counts_distinct_storages_until_released():
    import dataset_distillation as dd

    a = torch.ones(100, dtype=torch.float64, requires_grad=True)
    b = torch.ones(50, dtype=torch.float64, requires_grad=True)
    meter = dd.SavedBytes()
    with meter.hooks():
        y = (a * b[:1].expand(100)).sum() + (a * a).sum()  # saves a (twice: one storage) and b's storage
        assert meter.now == meter.peak == 100 * 8 + 50 * 8
        y.backward()
    assert meter.now == 0 and meter.peak == 1200


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    terminal, pipe = _Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        bar = Progress(4, "meta-training", stream=stream, interval=0.0)
        bar.update(2, **{"meta-loss": 0.25})
        bar.close()
    assert "meta-training [" in terminal.getvalue() and "2/4 meta-loss 0.25" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r\033[K")  # the line is erased before the results
    assert pipe.getvalue() == ""
