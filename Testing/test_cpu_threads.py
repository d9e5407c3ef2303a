"""CPU threads of a fit: a fixed count, or "auto", which keeps timing blocks of the fit's steps on two counts."""
import subprocess
import sys

import pytest
import torch

from VascularINRLib import cpu_threads, phantoms
from VascularINRLib.cpu_threads import (BLOCK_STEPS, CLEAR_LOSS, PERIOD_STEPS, ThreadChooser, candidate_counts,
                                        check_threads, torch_threads, usable_cores)
from VascularINRLib.errors import InputError
from VascularINRLib.fitting import fit_points, preset, run_adam, training_loss
from VascularINRLib.mesh import sample_points_on_mesh
from VascularINRLib.network import SDFNetwork


@pytest.fixture(scope="module")
def ball_points():
    return sample_points_on_mesh(phantoms.sphere(20.0).mesh(voxel_mm=1.0), 150, seed=0)


@pytest.fixture
def restored_threads():
    previous = torch.get_num_threads()
    yield previous
    torch.set_num_threads(previous)


def test_candidates_double_up_to_the_usable_cores():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(6) == [1, 2, 4]
    assert candidate_counts(64) == [1, 2, 4, 8]
    assert candidate_counts() == candidate_counts(usable_cores())


def _run_auto(chooser, periods):
    """A real run_adam on a real network; the thread count each step ran on."""
    network = SDFNetwork(depth=2, width=16)
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(64, 3, generator=generator) - 0.5
    config = preset("fast", max_iterations=periods * PERIOD_STEPS, early_stop=False, far_field=False)
    seen = []

    def loss_step(iteration):
        seen.append(torch.get_num_threads())
        samples = torch.rand(128, 3, generator=generator) * 2 - 1
        return training_loss(network, points, samples, config)

    run_adam(network, loss_step, config, 1e-3, 0.0, threads=chooser)
    return seen


def test_auto_duels_the_current_count_with_a_challenger_and_runs_the_rest_on_the_winner(restored_threads,
                                                                                      monkeypatch):
    monkeypatch.setattr(cpu_threads, "_memory", {})
    chooser = ThreadChooser("auto", torch.device("cpu"), candidates=[1, 2])
    periods = 6
    seen = _run_auto(chooser, periods)
    duels = {duel["period"]: duel for duel in chooser.duels}
    current = 2  # the first fit starts on the most threads
    for period in range(periods):
        steps = seen[period * PERIOD_STEPS:(period + 1) * PERIOD_STEPS]
        duel = duels.get(period)
        if duel is None:  # the only challenger sits out: it lost the last duel clearly
            last = duels[max(p for p in duels if p < period)]
            assert last["winner"] == last["current"] and last["challenger_s"] > CLEAR_LOSS * last["current_s"]
            assert set(steps) == {current}
            continue
        assert duel["current"] == current and steps[:BLOCK_STEPS] == [current] * BLOCK_STEPS
        assert steps[BLOCK_STEPS:2 * BLOCK_STEPS] == [duel["challenger"]] * BLOCK_STEPS != steps[:BLOCK_STEPS]
        faster = duel["challenger"] if duel["challenger_s"] < duel["current_s"] else current
        assert duel["winner"] == faster and set(steps[2 * BLOCK_STEPS:]) == {faster}
        current = faster
    report = chooser.report()
    assert sum(report["steps_by_threads"].values()) == len(seen) == periods * PERIOD_STEPS
    assert report["steps_by_threads"] == {str(count): seen.count(count) for count in (1, 2)}
    assert seen.count(report["threads"]) == max(seen.count(1), seen.count(2))  # the most used (either, in a tie)
    assert set(report["step_ms_by_threads"]) == {"1", "2"}
    # the next fit in this process starts where this one left off
    assert ThreadChooser("auto", torch.device("cpu"), candidates=[1, 2]).current == current


def test_a_challenger_that_keeps_losing_clearly_sits_out_longer_until_it_wins(restored_threads, monkeypatch):
    """Steps timed on a scripted clock: 2 threads take 3 units a step, 1 thread 1 unit, then the reverse.
    The loser sits out 1, 3, then 7 periods; its win makes it the current count and clears its record."""
    monkeypatch.setattr(cpu_threads, "_memory", {})
    now = [0.0]
    chooser = ThreadChooser("auto", torch.device("cpu"), candidates=[1, 2], clock=lambda: now[0])
    cost = {1: 1.0, 2: 3.0}
    for iteration in range(1, 16 * PERIOD_STEPS + 1):
        if iteration == 14 * PERIOD_STEPS + 1:
            cost = {1: 3.0, 2: 1.0}
        chooser.before_step(iteration)
        now[0] += cost[torch.get_num_threads()]
        chooser.after_step(iteration)
    assert [(duel["period"], duel["challenger"], duel["winner"]) for duel in chooser.duels] == [
        (0, 1, 1), (1, 2, 1), (3, 2, 1), (7, 2, 1), (15, 2, 2)]
    assert chooser.current == 2 and chooser.losses == {}
    # on 2 threads: period 0's first block, 4 duels as the challenger, the rest of the last period
    on_two = BLOCK_STEPS + 4 * BLOCK_STEPS + (PERIOD_STEPS - 2 * BLOCK_STEPS)
    assert chooser.steps_by_threads == {1: 16 * PERIOD_STEPS - on_two, 2: on_two}


def test_a_fit_reports_its_threads_and_restores_torchs_count(ball_points, restored_threads, monkeypatch):
    monkeypatch.setattr(cpu_threads, "_memory", {})  # no challenger sits out from an earlier fit
    torch.set_num_threads(1)
    auto = fit_points(ball_points, preset("fast", max_iterations=120), device="cpu")
    assert torch.get_num_threads() == 1
    report = auto.report()
    assert report["config"]["threads"] == "auto" and report["threads"] in candidate_counts()
    assert sum(report["steps_by_threads"].values()) == 120
    if len(candidate_counts()) > 1:
        timed = report["step_ms_by_threads"]
        assert len(timed) >= 2 and set(timed) <= {str(count) for count in candidate_counts()}
    fixed = fit_points(ball_points, preset("fast", max_iterations=30, threads=2), device="cpu")
    assert fixed.report()["steps_by_threads"] == {"2": 30} and "step_ms_by_threads" not in fixed.report()
    assert torch.get_num_threads() == 1
    # the threads do not change the fit: the same surface on any count (same seed, same samples)
    one = fit_points(ball_points, preset("fast", max_iterations=30, threads=1), device="cpu")
    grid = torch.rand(500, 3, generator=torch.Generator().manual_seed(1)).numpy() * 40 - 20
    assert abs(one.sdf.sdf(grid) - fixed.sdf.sdf(grid)).max() < 1e-3


@pytest.mark.parametrize("threads", [0, -2, 1.5, "two", True])
def test_a_bad_thread_count_is_an_input_error(threads, ball_points):
    with pytest.raises(InputError, match="threads must be a positive number or 'auto'"):
        check_threads(threads)
    with pytest.raises(InputError, match="threads"):
        fit_points(ball_points, preset("fast", max_iterations=5, threads=threads), device="cpu")


def test_torch_threads_restores_the_count_after_an_error(restored_threads):
    torch.set_num_threads(1)
    with pytest.raises(RuntimeError):
        with torch_threads(2):
            assert torch.get_num_threads() == 2
            raise RuntimeError("inside the fit")
    assert torch.get_num_threads() == 1


def test_the_cli_takes_a_count_or_auto_and_names_a_bad_one(tmp_path):
    from VascularINRLib.cli import build_parser

    fit = ["fit", "in.csv", "-o", "out.stl", "--threads"]
    assert build_parser().parse_args(fit + ["auto"]).threads == "auto"
    assert build_parser().parse_args(fit + ["3"]).threads == 3
    completed = subprocess.run([sys.executable, "-m", "VascularINRLib.cli", "fit", str(tmp_path / "in.csv"), "-o",
                                str(tmp_path / "out.stl"), "--threads", "none"], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 2
    assert "expected a positive number of threads or auto, got 'none'" in completed.stderr
    assert not list(tmp_path.iterdir())
