"""Fitting quality against exact phantoms and real data, at bounded iteration counts (no timings)."""
import math
import threading

import numpy as np
import pytest
import torch

from VascularINRLib import phantoms
from VascularINRLib.errors import FitCancelled, InputError
from VascularINRLib.far_field import FarFieldPrior
from VascularINRLib.fitting import fit_points, planned_iterations, preset, resolve_device, samples_per_step
from VascularINRLib.mesh import read_mesh, sample_points_on_mesh
from VascularINRLib.metrics import compare, dice
from VascularINRLib.sampling import EikonalSampler
from VascularINRLib.surface import extract_surface

FAST = preset("fast", early_stop=False)  # the full bounded schedule: results independent of timing


@pytest.fixture(scope="module")
def aaa():
    return phantoms.aaa_lumen()


@pytest.mark.parametrize("count", [200, 400])
def test_sphere_reaches_dice_095(count):
    sphere = phantoms.sphere(radius=20.0, center=(5.0, -3.0, 40.0))
    points = sample_points_on_mesh(sphere.mesh(), count, seed=1)
    result = fit_points(points, preset("fast", early_stop=False, max_iterations=1000))
    assert dice(result.sdf, sphere, voxel_mm=0.5, bounds=sphere.bounds + np.array([-5, 5, -5, 5, -5, 5])) >= 0.95


@pytest.mark.parametrize("count", [200, 400, 1000])  # 400 and 1000: a batch of the points per step
def test_aaa_phantom_reaches_dice_095(aaa, count):
    points = sample_points_on_mesh(aaa.mesh(), count, seed=1)
    result = fit_points(points, FAST)
    surface = extract_surface(result.sdf, resolution=160, points_mm=result.points_mm)
    metrics = compare(surface.polydata, aaa)
    assert metrics["dice"] >= 0.95, metrics
    assert metrics["asd_mm"] < 1.0, metrics
    assert surface.report["watertight"] and surface.report["components"] == 1
    assert result.mean_abs_sdf_at_points_mm < 0.2


def test_real_vmtk_bifurcation_from_400_points(shared_data):
    reference = read_mesh(shared_data / "vmtk_aorta" / "aorta-surface.vtp")
    points = sample_points_on_mesh(reference, 400, seed=1)
    result = fit_points(points, FAST)
    surface = extract_surface(result.sdf, resolution=160, points_mm=result.points_mm)
    metrics = compare(surface.polydata, reference)
    print(f"vmtk aorta, 400 points: Dice {metrics['dice']:.4f}, ASD {metrics['asd_mm']:.3f} mm")
    assert metrics["dice"] >= 0.93, metrics
    assert surface.report["watertight"]


def test_report_holds_what_the_cli_promises(aaa):
    points = sample_points_on_mesh(aaa.mesh(), 100, seed=2)
    result = fit_points(points, preset("fast", max_iterations=60, early_stop=False))
    report = result.report()
    for key in ("fit_seconds", "iterations", "points", "mean_abs_sdf_at_points_mm", "max_radius_mm",
                "far_field_distance_mm", "stopped_because", "device"):
        assert key in report
    assert report["iterations"] == 60 and report["points"] == 100


def test_progress_is_reported_and_the_fit_is_seeded(aaa):
    points = sample_points_on_mesh(aaa.mesh(), 100, seed=3)
    seen = []
    config = preset("fast", max_iterations=100, early_stop=False, seed=7)
    first = fit_points(points, config, progress=seen.append, progress_every=25)
    second = fit_points(points, config)
    assert [p.iteration for p in seen] == [25, 50, 75, 100]
    probe = points[:20] + 1.0
    assert np.array_equal(first.sdf(probe), second.sdf(probe))


def test_cancel_from_another_thread_stops_within_one_iteration(aaa):
    points = sample_points_on_mesh(aaa.mesh(), 200, seed=4)
    cancel = threading.Event()
    started = threading.Event()
    iterations, outcome = [], {}

    def on_progress(progress):
        iterations.append(progress.iteration)
        started.set()

    def run():
        try:
            fit_points(points, preset("fast", max_iterations=100000, early_stop=False),
                       progress=on_progress, progress_every=1, cancel_event=cancel)
        except FitCancelled:
            outcome["cancelled"] = True

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(30)
    cancel.set()
    seen_after_cancel = iterations[-1]
    worker.join(30)
    assert not worker.is_alive() and outcome.get("cancelled")
    assert iterations[-1] - seen_after_cancel <= 1  # the iteration under way finishes, no other starts


def test_warm_start_absorbs_new_points_quickly(aaa):
    mesh = aaa.mesh()
    points = sample_points_on_mesh(mesh, 200, seed=5)
    first = fit_points(points, FAST)
    more = np.vstack([points, sample_points_on_mesh(mesh, 10, seed=6)])
    refit = fit_points(more, preset("fast", max_iterations=300, early_stop=False), warm_start=first.sdf)
    assert refit.warm_started
    box = aaa.bounds + np.array([-15, 15, -15, 15, -15, 15])
    assert dice(refit.sdf, aaa, voxel_mm=0.5, bounds=box) >= 0.95
    assert np.abs(refit.sdf(more[-10:])).mean() < 0.3  # the new points lie on the refitted surface


def test_warm_start_outside_the_old_domain_starts_afresh(aaa):
    points = sample_points_on_mesh(aaa.mesh(), 100, seed=8)
    first = fit_points(points, preset("fast", max_iterations=50, early_stop=False))
    moved = fit_points(points + 500.0, preset("fast", max_iterations=50, early_stop=False), warm_start=first.sdf)
    assert not moved.warm_started


def test_unknown_device_and_missing_gpu_are_input_errors():
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_unknown_preset_names_the_choices():
    with pytest.raises(InputError, match="fast, paper"):
        preset("slow")


def test_paper_preset_is_faithful():
    config = preset("paper")
    assert (config.depth, config.width, config.skip_layer) == (6, 256, 3)
    assert config.learning_rate == 1e-4 and config.max_iterations == 25000
    assert config.eikonal_weight == 0.1 and config.lr_schedule == "constant"
    assert config.points_per_step is None and config.light_iterations == 0  # every point and sample, every step


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_the_learning_rate_follows_its_schedule_to_zero_over_the_fit(aaa, monkeypatch, schedule):
    import VascularINRLib.fitting as fitting
    optimizers, rates = [], []
    real_adam = fitting._adam

    def recording_adam(model, learning_rate):
        optimizers.append(real_adam(model, learning_rate))
        return optimizers[-1]

    monkeypatch.setattr(fitting, "_adam", recording_adam)
    config = preset("fast", max_iterations=40, early_stop=False, lr_schedule=schedule)
    points = sample_points_on_mesh(aaa.mesh(), 100, seed=0)
    fit_points(points, config, progress_every=1,
               progress=lambda p: rates.append(optimizers[0].param_groups[0]["lr"]))
    fraction = [step / 40 for step in range(40)]  # the step before each iteration
    if schedule == "linear":
        falls = [1.0 - f for f in fraction]
    else:
        falls = [0.5 * (1 + math.cos(math.pi * f)) for f in fraction]
    assert rates == pytest.approx([config.learning_rate * f for f in falls])
    assert preset("fast").lr_schedule == "cosine"
    with pytest.raises(InputError, match="'linear', 'cosine' or 'constant'"):
        fit_points(points, preset("fast", max_iterations=5, lr_schedule="step"))


def test_a_batch_of_points_samples_the_eikonal_term_around_those_points_alone():
    points = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [-0.5, 0.0, 0.5]])
    sampler = EikonalSampler(points, torch.full((3,), 0.01), torch.Generator().manual_seed(0))
    samples = sampler.local(torch.tensor([2, 0]))
    assert samples.shape == (2, 3)
    assert torch.linalg.norm(samples - points[[2, 0]], dim=1).max() < 0.1
    assert sampler.local().shape == (3, 3)


def test_a_warm_start_runs_the_short_refit_schedule(aaa):
    points = sample_points_on_mesh(aaa.mesh(), 100, seed=9)
    first = fit_points(points, preset("fast", max_iterations=50, early_stop=False))
    refit = fit_points(points, preset("fast", early_stop=False), warm_start=first.sdf)
    assert refit.warm_started and refit.iterations == preset("fast").warm_start_iterations
    assert refit.config.uniform_samples == preset("fast").warm_start_uniform_samples < first.config.uniform_samples
    assert preset("paper").warm_start_iterations is None  # the paper preset stays faithful


def test_fast_plans_more_iterations_for_longer_thinner_vessels():
    config = preset("fast")
    compact = np.array([[0, 0, 0], [40, 40, 40]], dtype=float)  # 40 mm across, radius 20: elongation 1
    medium = np.array([[0, 0, 0], [20, 20, 120]], dtype=float)  # 120 mm long, radius 10: elongation 6
    long_thin = np.array([[0, 0, 0], [20, 20, 340]], dtype=float)  # 340 mm long, radius 10: elongation 17
    short, plan_short = planned_iterations(compact, 20.0, config)
    _, plan_medium = planned_iterations(medium, 10.0, config)
    long_, plan_long = planned_iterations(long_thin, 10.0, config)
    # the volume left to carve away grows as elongation²: 24 × 36 = 864, in steps of 50
    assert plan_medium == {"elongation": 6.0, "planned_iterations": 850}
    assert plan_short["planned_iterations"] == config.min_planned_iterations == short.max_iterations
    assert plan_long["planned_iterations"] == config.max_iterations == long_.max_iterations
    assert plan_long["elongation"] == 17.0 and short.min_iterations <= short.max_iterations
    assert preset("fast", max_iterations=300).iterations_per_elongation_squared is None  # an explicit count is kept
    assert preset("paper").iterations_per_elongation_squared is None  # the paper preset stays faithful


def test_the_first_iterations_of_a_fresh_fit_take_a_fraction_of_the_samples(aaa, monkeypatch):
    config = preset("fast", max_iterations=10, early_stop=False, light_iterations=4, light_sample_fraction=0.5)
    assert samples_per_step(config, 1000) == (256, 512, 512)
    assert samples_per_step(config, 1000, 0.5) == (128, 256, 256)
    assert samples_per_step(config, 200, 0.5) == (128, 256, 256)  # never below LIGHT_MIN_POINTS points
    assert samples_per_step(config, 100, 0.5) == (100, 256, 256)  # all of them when there are fewer
    with pytest.raises(InputError, match="fraction"):
        samples_per_step(config, 100, 0.0)
    drawn = []
    real_draw = FarFieldPrior.draw

    def draw_and_count(prior, count, generator):  # the real draw, counted
        drawn.append(count)
        return real_draw(prior, count, generator)

    monkeypatch.setattr(FarFieldPrior, "draw", draw_and_count)
    points = sample_points_on_mesh(aaa.mesh(), 300, seed=2)
    first = fit_points(points, config)
    assert drawn == [256] * 4 + [512] * 6 and first.iterations == 10
    drawn.clear()
    fit_points(points, config, warm_start=first.sdf)  # a refit continues a carved field: every sample
    assert drawn == [512] * 10
