"""The ``telescope`` study: its staged plan on synthetic finished runs (re-centring follows a drifting optimum,
names never change), the brute-force grid, and the analysis of made-up runs with a known optimum."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from muonlab.analysis.runs import Run
from muonlab.experiments.registry import get_study
from muonlab.experiments.studies.telescope import plan as telescope
from muonlab.experiments.studies.telescope.report import analyse, parabola_vertex, refined_optimum
from muonlab.experiments.study import Finished
from muonlab.experiments.telescoping import plan_level
from muonlab.models import model_config_for
from muonlab.train.config import ConfigError

FINE = math.log(2.0) / 4  # the cpu preset's last calibration level: spacing 2^(1/4) in lr and in λ
WALL = {32: 10.0, 64: 30.0, 128: 80.0, 256: 200.0}  # made-up training seconds of one run per width


def _params(**changes) -> dict:
    return {**telescope.PRESETS["cpu"], **changes}


def drifting_optimum(width: int) -> dict[str, float]:
    """lr 0.0207 → 0.0228 → 0.0239 and λ 0.204 → 0.175 → 0.162 from d = 32 to 64 to 128 (an O(1/d) drift)."""
    return {"lr": 0.025 * math.exp(-6 / width), "weight_decay": 0.15 * math.exp(10 / width)}


def drifting_loss(width: int, lr: float, wd: float) -> float:
    best = drifting_optimum(width)
    return 2.0 + width**-0.5 + math.log(lr / best["lr"]) ** 2 + math.log(wd / best["weight_decay"]) ** 2


def _run(planned, loss: float) -> Run:
    config = planned.config.to_dict()
    rows = [{"step": 240, "tokens": 491_520, "loss": loss, "val_loss": loss, "wall_s": WALL[config["d_model"]]}]
    return Run(planned.name, Path(planned.name), config, rows)


def _finish(planned, done: dict, surface) -> list[str]:
    """Finish every planned run whose needs are done (its loss from ``surface``); the names finished."""
    ready = [p for p in planned if p.name not in done and all(n in done for n in p.needs)]
    for p in ready:
        done[p.name] = _run(p, surface(p.config.d_model, p.config.lr, p.config.weight_decay))
    return [p.name for p in ready]


def test_the_plan_per_level_recentres_on_the_previous_best_and_tracks_a_drifting_optimum(tmp_path):
    study, p = get_study("telescope"), _params()
    first = study.planned(p, tmp_path, {})
    names = [r.name for r in first]
    assert len(names) == 36 + 9 + 4 + 36 + 1 + 3 + 3
    by_name = {r.name: r for r in first}
    assert by_name["L2-d128-i0-j0-s0"].needs == tuple(n for n in names if n.startswith("L1-"))
    assert by_name["brute-d128-i5-j5-s0"].needs == ()
    assert by_name["final-d256-s0"].config.d_model == 256 and by_name["final-d256-s0"].config.n_heads == 8
    assert all(r.config.parametrization == "mup" and r.config.optimizer == "muon" for r in first)
    done: dict[str, Run] = {}
    stages = []
    while len(done) < len(names):
        planned = study.planned(p, tmp_path, {}, done)
        assert [r.name for r in planned] == names  # names never depend on results
        stages.append(_finish(planned, done, drifting_loss))
    assert len(stages) == 4  # L0 + brute; L1 + the brute-force check seeds; L2; the final run + telescoped seeds
    planned = {r.name: r for r in study.planned(p, tmp_path, {}, done)}
    # level 1 is centred on level 0's best point, lr 0.03·2^(−1/2) and λ 0.1·2^(3/2), with a mesh of √2
    l1 = sorted({(planned[n].config.lr, planned[n].config.weight_decay) for n in names if n.startswith("L1-")})
    assert l1[4] == pytest.approx((0.03 / math.sqrt(2), 0.1 * 2**1.5))
    assert l1[3][1] / l1[4][1] == pytest.approx(1 / math.sqrt(2))
    # the final run and the telescoped seeds sit within one fine cell of the top calibration width's optimum
    final = planned["final-d256-s0"].config
    assert abs(math.log(final.lr / drifting_optimum(128)["lr"])) <= FINE
    assert abs(math.log(final.weight_decay / drifting_optimum(128)["weight_decay"])) <= FINE
    check = planned["check-telescoped-d128-s2"].config
    assert (check.lr, check.weight_decay, check.seed, check.d_model) == (final.lr, final.weight_decay, 2, 128)
    brute = planned["check-brute-d128-s1"].config  # level 0's points nearest to d=128's optimum (0.0239, 0.162)
    assert (brute.lr, brute.weight_decay) == pytest.approx((0.03 / math.sqrt(2), 0.1 * math.sqrt(2)))


def test_the_gpu_preset_plans_the_same_study_four_times_wider(tmp_path):
    runs = get_study("telescope").planned(_params(**telescope.PRESETS["gpu"]), tmp_path, {})
    assert len(runs) == 16 + 4 + 1 + 16 + 1 + 3 + 3
    assert {r.config.d_model for r in runs} == {128, 256, 512, 1024} and {r.config.device for r in runs} == {"cuda"}


def test_names_carry_level_width_and_grid_index_never_a_value(tmp_path):
    runs = get_study("telescope").planned(_params(), tmp_path, {})
    pattern = re.compile(r"^(L\d-d\d+-i\d-j\d|brute-d128-i\d-j\d|final-d256|check-(telescoped|brute)-d128)-s\d$")
    assert all(pattern.match(r.name) for r in runs), [r.name for r in runs if not pattern.match(r.name)]
    level0 = {r.name: r.config for r in runs if r.name.startswith("L0-")}
    assert level0["L0-d32-i0-j5-s0"].lr == pytest.approx(0.03 * 2**-2.5)  # i: lr index, smallest first
    assert level0["L0-d32-i0-j5-s0"].weight_decay == pytest.approx(0.1 * 2**2.5)  # j: λ index, largest last


def test_the_brute_force_grid_spans_level_0_s_box_at_the_top_width():
    p = _params(brute_points=3)
    grid, status = telescope.brute_grid(p, {})
    assert status == "pending"
    level0 = plan_level(0, 32, {"lr": 0.03, "weight_decay": 0.1}, {"lr": 2.0, "weight_decay": 2.0}, 6)
    assert grid.width == 128 and len(grid.points) == 9
    for name in ("lr", "weight_decay"):
        assert min(q[name] for q in grid.points) == pytest.approx(min(q[name] for q in level0.points))
        assert max(q[name] for q in grid.points) == pytest.approx(max(q[name] for q in level0.points))
    same, _ = telescope.brute_grid(_params(), {})
    pairs = [(q["lr"], q["weight_decay"]) for q in same.points]
    assert pairs == [pytest.approx((q["lr"], q["weight_decay"])) for q in level0.points]


@pytest.mark.parametrize("change, message", [
    (dict(widths=(32, 48, 96)), "double"),
    (dict(final_width=64), "final_width"),
    (dict(widths=(32, 64), final_width=64), "3 distinct"),
    (dict(head_dim=48), "head_dim"),
    (dict(brute_wd_caps=(0.05, 2.0)), "brute_wd_caps"),
    (dict(brute_lr_caps=(1e-4, 0.1)), "brute_lr_caps"),
])
def test_bad_parameters_are_refused_naming_the_parameter(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        get_study("telescope").planned(_params(**change), tmp_path, {})


def test_parabola_vertex_and_the_refined_grid_optimum():
    assert parabola_vertex([-1.0, 0.0, 1.0], [3 * 1.4**2 + 1, 3 * 0.4**2 + 1, 3 * 0.6**2 + 1]) == pytest.approx(0.4)
    assert parabola_vertex([-1.0, 0.0, 1.0], [1.0, 2.0, 1.5]) == 0.0  # concave: the middle point
    assert parabola_vertex([0.0, 1.0, 2.0], [3.0, 1.0, -0.9]) == 2.0  # vertex (x = 20.5) beyond the points: clipped
    grid = plan_level(0, 64, {"lr": 0.01, "weight_decay": 0.1}, {"lr": 2.0, "weight_decay": 2.0}, 5)
    known = {"lr": 0.013, "weight_decay": 0.37}  # λ beyond the grid's largest value, 0.4 (edge)
    losses = [math.log(q["lr"] / known["lr"]) ** 2 + 0.5 * math.log(q["weight_decay"] / known["weight_decay"]) ** 2
              for q in grid.points]
    refined, edge = refined_optimum(grid, losses)
    assert refined["lr"] == pytest.approx(known["lr"]) and edge == {"lr": False, "weight_decay": True}
    assert refined["weight_decay"] == pytest.approx(0.4)


def _grown_brute(tmp_path, p: dict, wd_optimum: float):
    """Every run of the study on a bowl with its optimum at lr 0.02 and λ ``wd_optimum`` (any width), until the
    plan stops growing; the finished runs and the brute-force grid with its status."""
    def bowl(width, lr, wd):
        return 2.0 + math.log(lr / 0.02) ** 2 + math.log(wd / wd_optimum) ** 2
    study, done = get_study("telescope"), {}
    while _finish(study.planned(p, tmp_path, {}, done), done, bowl):
        pass
    return done, telescope.brute_grid(p, done)


def test_a_brute_force_optimum_below_the_box_grows_the_grid_line_by_line_until_it_is_interior(tmp_path):
    """λ's optimum 0.006 lies below the box (0.0177–0.566): the grid grows by whole λ lines 0.0088, 0.0044 and
    λ 0.0022 (there 0.0044 is interior), each waiting for the line before; the seed-noise runs wait for them."""
    study, p = get_study("telescope"), _params()
    done, (grid, status) = _grown_brute(tmp_path, p, wd_optimum=0.006)
    wds = sorted({q["weight_decay"] for q in grid.points})
    assert status == "interior" and len(grid.points) == 6 * 9
    assert wds[:4] == pytest.approx([0.1 * 2**-5.5, 0.1 * 2**-4.5, 0.1 * 2**-3.5, 0.1 * 2**-2.5])
    planned = {r.name: r for r in study.planned(p, tmp_path, {}, done)}
    grown = [n for n in planned if re.match(r"brute-d128-i\d-jm\d-s0$", n)]
    assert len(grown) == 18 and all(n in done for n in grown)
    assert planned["brute-d128-i0-jm2-s0"].needs == planned["brute-d128-i5-jm1-s0"].needs
    assert set(planned["brute-d128-i0-jm1-s0"].needs) == {n for n in planned if re.match(r"brute-d128-i\d-j\d-s0$", n)}
    check = planned["check-brute-d128-s1"]
    assert (check.config.lr, check.config.weight_decay) == pytest.approx((0.03 / math.sqrt(2), 0.1 * 2**-4.5))
    assert set(grown) <= set(check.needs)
    r = analyse(Finished(p, done, tmp_path)).results
    assert r["brute"]["status"] == "interior" and r["brute"]["edge"] == {"lr": False, "weight_decay": False}
    assert r["brute"]["refined"]["weight_decay"] == pytest.approx(0.006)


def test_a_brute_force_optimum_past_the_cap_is_reported_at_the_cap(tmp_path):
    p = _params(brute_wd_caps=(0.005, 2.0))
    done, (grid, status) = _grown_brute(tmp_path, p, wd_optimum=0.001)
    assert status == "at the cap" and len(grid.points) == 6 * 7  # λ 0.0088 grown; the next, 0.0044, passes 0.005
    r = analyse(Finished(p, done, tmp_path))
    assert r.results["brute"]["edge"]["weight_decay"] is True
    assert "at the cap in λ" in dict(r.sections)["Paper claim vs small-scale result"]


KNOWN = {"lr": 0.025, "weight_decay": 0.15}  # the optimum at every width in the made-up runs
A, ALPHA, E = 4.0, 0.5, 1.2


def known_loss(width: int, lr: float, wd: float) -> float:
    return E + A * width**-ALPHA + 0.05 * (math.log(lr / KNOWN["lr"]) ** 2 + math.log(wd / KNOWN["weight_decay"]) ** 2)


def _made_up_runs(tmp_path) -> tuple[dict, dict[str, Run]]:
    study, p = get_study("telescope"), _params()
    done: dict[str, Run] = {}
    while True:
        if not _finish(study.planned(p, tmp_path, {}, done), done, known_loss):
            break
    for seed, offset in zip(p["check_seeds"], (-0.01, 0.0, 0.01)):  # seed noise of std 0.01 on both arms
        for arm in ("telescoped", "brute"):
            run = done[telescope.check_name(arm, p, seed)]
            run.rows[0]["val_loss"] += offset
    return p, done


def test_the_analysis_finds_the_known_optimum_and_accounts_the_cost(tmp_path):
    p, runs = _made_up_runs(tmp_path)
    analysis = analyse(Finished(p, runs, tmp_path))
    r = analysis.results
    assert r["brute"]["refined"] == pytest.approx(KNOWN)  # a parabola in log space is exact on this surface
    # the telescope: level 0's best lr 0.03/√2, λ 0.1·√2; level 1 keeps them; level 2 picks lr·2^(1/8), λ·2^(1/8)
    assert r["choice"] == pytest.approx({"lr": 0.03 * 2**-0.375, "weight_decay": 0.1 * 2**0.625})
    assert r["distance_fine_cells"]["lr"] == pytest.approx(abs(math.log(0.03 * 2**-0.375 / 0.025)) / FINE)
    assert r["distance_fine_cells"]["weight_decay"] == pytest.approx(abs(math.log(0.1 * 2**0.625 / 0.15)) / FINE)
    assert r["seed_noise"]["telescoped"]["std"] == pytest.approx(0.01)
    # Both arms share each seed's offset: the paired difference is the same in every seed, well inside ± 0.01.
    assert r["seed_noise"]["telescoped_minus_brute"]["high"] < 0.01 and r["seed_noise"]["within_noise"] is True
    minima = [min(run.rows[0]["val_loss"] for name, run in runs.items() if name.startswith(f"L{k}-")) for k in range(3)]
    assert r["fit"]["minima"] == pytest.approx([*minima, runs["final-d256-s0"].rows[0]["val_loss"]])
    assert r["fit"]["alpha"] == pytest.approx(ALPHA, abs=0.05) and r["fit"]["r2"] > 0.99
    spreads = [row["spread"] for row in r["levels"]]
    assert spreads[0] > spreads[1] > spreads[2] > 0
    wall = r["ledger_wall_s"]
    assert wall["levels_s"] == [360.0, 270.0, 320.0] and wall["final_s"] == 200.0 and wall["brute_s"] == 2880.0
    assert wall["full_grid_at_final_s"] == 7200.0
    assert wall["saved_fraction_at_final_width"] == pytest.approx(1 - 1150 / 7200)
    flops = {w: model_config_for("demo", 257, 128, d_model=w, n_layers=4, n_heads=w // 32).flops_per_token(128)
             * 491_520 for w in (32, 64, 128, 256)}
    book = r["ledger_flops"]
    assert [row["runs"] for row in book["levels"]] == [36, 9, 4]
    search = 36 * flops[32] + 9 * flops[64] + 4 * flops[128]
    assert book["saved_fraction_at_final_width"] == pytest.approx(1 - (search + flops[256]) / (36 * flops[256]))
    assert r["claims_agree"] == [True, True, True, True, True, True]
    assert all(path is not None and path.is_file() for _, path in analysis.figures)


def test_a_telescoped_choice_far_from_the_brute_force_optimum_is_reported_as_such(tmp_path):
    p, runs = _made_up_runs(tmp_path)
    for seed in p["check_seeds"]:  # the brute-force optimum's seeds come out 0.1 nats lower: beyond the noise
        runs[telescope.check_name("brute", p, seed)].rows[0]["val_loss"] -= 0.1
    for name, run in runs.items():  # and the brute-force grid's optimum moves to lr 0.06 (d=128 only)
        if name.startswith("brute-"):
            c = run.config
            run.rows[0]["val_loss"] = known_loss(128, c["lr"] * 0.025 / 0.06, c["weight_decay"])
    r = analyse(Finished(p, runs, tmp_path)).results
    assert r["brute"]["refined"]["lr"] == pytest.approx(0.06)
    assert r["distance_fine_cells"]["lr"] > 1
    assert r["seed_noise"]["telescoped_minus_brute"]["low"] > 0.01 and r["seed_noise"]["within_noise"] is False
    assert r["claims_agree"][:2] == [False, False]


def test_seed_noise_that_swamps_the_difference_cannot_tell(tmp_path):
    p, runs = _made_up_runs(tmp_path)
    for seed, delta in zip(p["check_seeds"], (0.03, -0.03, 0.0)):  # per-seed differences spread by 0.03
        runs[telescope.check_name("telescoped", p, seed)].rows[0]["val_loss"] += delta
    r = analyse(Finished(p, runs, tmp_path)).results
    # half-width 4.303 · 0.03 / √3 ≈ 0.075: the interval reaches past both −0.01 and +0.01
    assert r["seed_noise"]["within_noise"] is None and r["claims_agree"][1] is None
