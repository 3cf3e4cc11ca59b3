"""The Streamlit explorer (app.py, studies/results.py, `pocketdiff app`) on a small real study.

The studies are made by the real runner (studies/runner.py) with the cheap evaluators only (cost evaluator and
the latency predictor, at a 32x32 latent so a trial takes about a second): training a quality proxy per trial
would take minutes on 2 CPU cores. One storage holds the search study "app-test" (feasible, infeasible and
failed trials, an enqueued preset, one trial whose artifact folder is gone), the Figure 3 chain "paper-fig3"
from studies/paper-fig3.toml, and an empty study. Every page is run with Streamlit's AppTest; one test drives
the app in Debian's headless Chromium with selenium and saves screenshots to out/test-artifacts/.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("POCKETDIFF_TEST_ARTIFACTS", REPO / "out" / "test-artifacts"))
MAIN_STUDY = {
    "study": {"name": "app-test", "sampler": "random", "seed": 3, "n_trials": 8},
    "target": {"latent": 32, "device": "a17pro"},
    "space": {"base": "tiny-debug",
              "stages.0.channels": {"choices": [16, 32]},
              # 40 channels are not a multiple of head_dim 16: the runner records a FAIL with the SpecError
              "stages.1.channels": {"choices": [32, 40, 64, 96]},
              "ffn_ratio": {"choices": [2.0, 4.0]},
              "attention": {"choices": ["mqa", "mhsa"]}},
    "objectives": {"latency_ms": "minimize", "params_m": "minimize", "gmacs": "minimize"},
    "constraints": {"max_latency_ms": 0.95},
    "enqueue": {"presets": ["tiny-debug"]},
}


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Storage URL of the three studies, built once for this module by the real runner."""
    from studies.config import parse_study
    from studies.runner import run_study

    root = tmp_path_factory.mktemp("app-study")
    url = f"sqlite:///{root}/study.db"
    with _env(POCKETDIFF_CACHE=str(root / "cache")):
        study, _ = run_study(parse_study(MAIN_STUDY, "app-test.toml", storage=url), progress=False,
                             echo=lambda line: None)
        fig3 = tomllib.loads((REPO / "studies" / "paper-fig3.toml").read_text())
        fig3["quality"] = {"evaluator": "none"}
        fig3["objectives"] = {"latency_ms": "minimize", "params_m": "minimize", "gmacs": "minimize"}
        fig3["target"]["latent"] = 32
        run_study(parse_study(fig3, "studies/paper-fig3.toml", storage=url), progress=False, echo=lambda line: None)
        # Every candidate over a latency budget no design meets: nothing feasible.
        strict = dict(MAIN_STUDY, study=dict(MAIN_STUDY["study"], name="all-infeasible", n_trials=3),
                      constraints={"max_latency_ms": 0.05})
        run_study(parse_study(strict, "all-infeasible.toml", storage=url), progress=False, echo=lambda line: None)
    # A finished trial whose artifact folder was deleted afterwards (a copy of a real trial's record).
    donor = next(t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    attrs = dict(donor.user_attrs)
    attrs["artifacts"] = str(root / "artifacts" / f"trial-0099-{attrs['spec_id']}")
    attrs.pop("latency_low_ms"), attrs.pop("latency_high_ms")  # a trial without some metrics
    study.add_trial(optuna.trial.create_trial(values=donor.values, user_attrs=attrs, constraints=donor.constraints))
    optuna.create_study(study_name="empty", storage=url, directions=["minimize", "minimize"])
    FINGERPRINT[url] = _sha(url)
    return url


FINGERPRINT: dict[str, str] = {}  # storage URL -> SHA-256 of the SQLite file once the fixture wrote it


def _sha(url: str) -> str:
    return hashlib.sha256(Path(url[len("sqlite:///"):]).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def study(store):
    return optuna.load_study(study_name="app-test", storage=store)


def _app(store: str, page: str, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["storage_url"] = store
    at.session_state["page"] = page
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def _texts(at) -> str:
    parts = []
    for kind in ("header", "subheader", "caption", "markdown", "info", "warning", "error", "code", "title"):
        parts += [str(e.value) for e in at.get(kind)]
    return "\n".join(parts)


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def _feasible_front(study) -> set[int]:
    """Optuna's own answer: best_trials restricted to feasible ones (all constraints <= 0)."""
    return {t.number for t in study.best_trials if all(v <= 0 for v in t.constraints.values())}


# --- studies/results.py ------------------------------------------------------------------------------------

def test_frame_matches_storage(store, study):
    from studies import results as R

    frame, info = R.load_frame(store, "app-test")
    assert len(frame) == len(study.trials) and info.metric_names == ["latency_ms", "params_m", "gmacs"]
    states = {t.number: t.state.name for t in study.trials}
    assert dict(zip(frame["number"], frame["state"])) == states
    assert {"COMPLETE", "PRUNED", "FAIL"} <= set(states.values()), "the fixture should exercise every state"
    for t in study.trials:
        row = frame[frame["number"] == t.number].iloc[0]
        feasible = bool(t.constraints) and all(v <= 0 for v in t.constraints.values())
        assert row["feasible"] == (feasible and "infeasible" not in t.user_attrs), t.number
        if t.state.name == "COMPLETE":
            assert row["latency_ms"] == pytest.approx(t.values[0])
    assert "stages.1.channels" in info.knobs and "knob:ffn_ratio" in frame.columns
    front = R.front(frame, info.metric_names, info)
    assert set(front[front["pareto"]]["number"]) == _feasible_front(study)


def test_pareto_mask_directions():
    import numpy as np
    from studies.results import pareto_mask

    v = np.array([[1.0, 5.0], [2.0, 4.0], [2.0, 6.0], [3.0, 1.0], [3.0, 1.0]])
    assert pareto_mask(v, ["minimize", "minimize"]).tolist() == [True, True, False, True, True]
    assert pareto_mask(v, ["maximize", "maximize"]).tolist() == [False, False, True, True, True]


def test_storage_is_read_only_and_missing_file_not_created(store, tmp_path):
    from studies import results as R

    path = Path(store[len("sqlite:///"):])
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    frame, _ = R.load_frame(store, "app-test")
    storage = R.open_storage(store)
    with pytest.raises(Exception) as caught:
        optuna.create_study(study_name="written-by-app", storage=storage)
    chain = f"{caught.value} {caught.value.__cause__} {caught.value.__context__}"
    assert "readonly" in chain or "read-only" in chain, chain
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    missing = tmp_path / "nothing" / "study.db"
    with pytest.raises(R.ResultsError, match="no SQLite file"):
        R.study_names(f"sqlite:///{missing}")
    assert not missing.exists() and not missing.parent.exists()


def test_latency_breakdown_sums_to_prediction():
    from latency_models.api import predict
    from search_space import PRESETS
    from evaluators.plugins.latency import latency_breakdown

    for name in ("tiny-debug", "tiny-debug-decoder"):
        spec = PRESETS[name]
        b = latency_breakdown(spec, 32, "a17pro")
        total = predict(spec, None, "a17pro", latent=32).ms
        assert b["total_ms"] == pytest.approx(total, rel=1e-9)
        assert sum(b["per_stage_ms"].values()) + b["overhead_ms"] == pytest.approx(total, rel=1e-9)
        assert sum(b["per_class_ms"].values()) + b["overhead_ms"] == pytest.approx(total, rel=1e-9)
        assert {"stage1", "stage2"} <= set(b["per_stage_ms"])


# --- pages (AppTest) -----------------------------------------------------------------------------------------

def test_pareto_page(store, study):
    at = _ok(_app(store, "Pareto front"))
    assert at.get("plotly_chart"), "no Pareto plot"
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t["name"] for t in fig["data"]]
    assert any(n.startswith("Pareto front") for n in names) and any(n.startswith("infeasible") for n in names)
    presets = next(t for t in fig["data"] if t["name"].startswith("presets"))
    assert "tiny-debug" in presets["text"]
    front_trace = next(t for t in fig["data"] if t["name"].startswith("Pareto front"))
    # the 2D front (latency x, params y) is a subset of the 3-objective front
    assert {int(c[0]) for c in front_trace["customdata"]} <= _feasible_front(study)
    table = at.dataframe[0].value
    assert set(table["number"]) == {int(c[0]) for c in front_trace["customdata"]}
    # the latency budget filters
    slider = at.slider(key="latency_budget")
    lowest = min(t.user_attrs["latency_ms"] for t in study.trials if "latency_ms" in t.user_attrs)
    slider.set_value(lowest).run()
    _ok(at)
    # trials without a latency (failed before the cheap checks) are kept: the budget cannot judge them
    kept = sum(t.user_attrs.get("latency_ms", lowest) <= lowest for t in study.trials)
    assert f"{kept} of {len(study.trials)} trials at or under" in _texts(at)
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    plotted = {int(c[0]) for t in fig["data"] if not t["name"].startswith("presets") for c in t["customdata"]}
    assert plotted and all(study.trials[n].user_attrs["latency_ms"] <= lowest + 1e-9 for n in plotted)
    # three axes: a 3D plot
    at.selectbox(key="axis_z").set_value("gmacs").run()
    _ok(at)
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["type"] == "scatter3d"


def test_pareto_page_nothing_feasible(store):
    at = _ok(_app(store, "Pareto front", study_name="all-infeasible"))
    text = _texts(at)
    assert "no trial is feasible" in text and "least-violating" in text
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any(t["name"].startswith("least violating") for t in fig["data"])
    assert not any(t["name"].startswith("Pareto front") for t in fig["data"])


def test_trials_page_filters_and_csv(store, study):
    at = _ok(_app(store, "Trials"))
    table = at.dataframe[0].value
    assert len(table) == len(study.trials)
    assert {"latency_ms", "params_m", "gmacs", "spec_id", "compact", "knob:stages.1.channels"} <= set(table.columns)
    at.multiselect(key="trial_states").set_value(["FAIL"]).run()
    failed = at.dataframe[0].value
    assert len(failed) == sum(t.state.name == "FAIL" for t in study.trials) > 0
    assert failed["reason"].str.contains("not divisible by head_dim").all()
    at.multiselect(key="trial_states").set_value(["COMPLETE", "PRUNED", "FAIL"]).run()
    at.text_input(key="trial_search").set_value("tiny-debug").run()
    found = at.dataframe[0].value
    assert len(found) >= 1 and (found["preset"] == "tiny-debug").all()


def test_detail_page(store, study):
    t = next(t for t in study.trials if t.user_attrs.get("preset") == "tiny-debug")
    at = _ok(_app(store, "Trial detail", trial_number=t.number))
    text = _texts(at)
    assert f"Trial {t.number} · {t.user_attrs['spec_id']}" in text
    assert t.user_attrs["compact"] in text
    stages = at.dataframe[1].value
    assert list(stages["stage"][:2]) == ["stage1", "stage2"] and stages["params (M)"].sum() == pytest.approx(
        t.user_attrs["params_m"], rel=1e-6)
    assert len(at.get("plotly_chart")) >= 2
    assert "no learning curve recorded" in text and "no artifact folder" in text
    assert f"pocketdiff export coreml {t.user_attrs['spec_id']}.json --latent 32" in text
    assert "predicted" in text and "stored on the trial" in text


def test_detail_page_deleted_artifacts_and_missing_metrics(store, study):
    t = study.trials[-1]
    assert "artifacts" in t.user_attrs
    at = _ok(_app(store, "Trial detail", trial_number=t.number))
    text = _texts(at)
    assert "was deleted or is not on this machine" in text
    assert f"Trial {t.number} · {t.user_attrs['spec_id']}" in text


def test_detail_page_failed_trial(store, study):
    t = next(t for t in study.trials if t.state.name == "FAIL")
    at = _ok(_app(store, "Trial detail", trial_number=t.number))
    text = _texts(at)
    assert "not divisible by head_dim" in text and f"Trial {t.number}" in text


def test_compare_page(store, study):
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    a, b = next((x, y) for x in done for y in done if x.user_attrs["spec_id"] != y.user_attrs["spec_id"])
    at = _ok(_app(store, "Compare", compare_a=a.number, compare_b=b.number))
    diff = at.dataframe[0].value
    assert len(diff) >= 1 and set(diff.columns) == {"knob", "A", "B"}
    deltas = at.dataframe[1].value.set_index("metric")
    assert deltas.loc["params_m", "B - A"] == pytest.approx(b.values[1] - a.values[1])


def test_paper_figures_page(store, tmp_path, monkeypatch):
    from studies.results import fig3_steps

    monkeypatch.chdir(tmp_path)  # the page also reads runs/decoder/study.db under the working directory if present
    at = _ok(_app(store, "Paper figures"))
    fig3 = at.dataframe[0].value
    # paper-fig3.toml sweeps both separable-block readings; a and b have no separable convs (one model each)
    assert list(fig3[fig3["reading"] == "per_conv"]["step"]) == fig3_steps()
    uib = fig3[fig3["reading"] == "uib"].set_index("step")
    assert list(uib.index) == fig3_steps()[2:]
    assert uib.loc["c2", "relative to"] == "b" and uib.loc["c2", "params change (%)"] == pytest.approx(-19.4, abs=0.5)
    row = fig3[fig3["reading"] == "per_conv"].set_index("step")
    # the chain's published direction holds at any latent: separable convs cut params by about a quarter
    assert row.loc["c1", "params change (%)"] == pytest.approx(-23.8, abs=1.0)
    assert row.loc["c1", "paper params change"] == "-24%"
    assert row.loc["a", "paper ImageNet FID"] == "3.76"
    orderings = at.dataframe[1].value
    orderings = orderings[orderings["reading"] == "per_conv"].set_index("step")
    # the study ran without a quality evaluator: every ordering is listed with the paper's FIDs, none judged
    from studies.results import FIG3_PARENT
    assert list(orderings.index) == list(FIG3_PARENT)  # b, c1, c2, d, e, f, f-1to1, g
    assert orderings.loc["c1", "paper ordering"] == "worse" and orderings.loc["c1", "paper FID"] == "3.38"
    assert set(orderings["verdict"]) == {"not measured"}
    assert "Holm-corrected over the 0 tests of this table; 'comparable' steps: TOST within +-5 fd_domain" in _texts(at)
    assert "press the button" in _texts(at)  # Table 2 builds the decoder presets: only on request
    at.button(key="table2_button").click().run()
    _ok(at)
    t2 = at.dataframe[2].value.set_index("decoder")
    assert t2.loc["sd3-decoder", "params (M)"] == pytest.approx(49.545475)
    assert t2.loc["snapgen-decoder", "paper GFLOPs"] == 224
    assert "PSNR not measured" in _texts(at)
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} absent: install Debian's chromium to test the PNG export")
    at.button(key="render_figure3").click().run()
    _ok(at)
    assert at.session_state["png_figure3"][:8] == b"\x89PNG\r\n\x1a\n"


def test_study_health_page(store, study):
    at = _ok(_app(store, "Study health"))
    counts = at.dataframe[0].value.set_index("state")["trials"].to_dict()
    assert counts == {s: sum(t.state.name == s for t in study.trials) for s in counts}
    reasons = at.dataframe[1].value
    assert reasons["reason"].str.contains("not divisible by head_dim").any()
    assert reasons["reason"].str.contains("infeasible").any()
    assert any("hypervolume" in json.dumps(json.loads(c.proto.spec)["layout"]) for c in at.get("plotly_chart"))
    at.button(key="importance_button").click().run()
    _ok(at)
    imp = at.dataframe[2].value
    assert set(imp["parameter"]) <= set(study.trials[1].params) | {"preset"} and len(imp) >= 1


@pytest.mark.parametrize("url,expect", [
    ("postgresql://nobody:nothing@127.0.0.1:9/none", "cannot open storage"),
    ("sqlite:///{tmp}/absent/study.db", "no SQLite file"),
    ("not a url", "is not a storage URL"),
])
def test_bad_storage_is_reported(url, expect, tmp_path):
    url = url.format(tmp=tmp_path)
    at = _ok(_app(url, "Pareto front"))
    assert expect in _texts(at)
    assert not (tmp_path / "absent").exists()
    at = _ok(_app(url, "Paper figures", table2_requested=True))  # the paper page still shows Table 2
    assert any("decoder" in df.value.columns for df in at.dataframe)


def test_refresh_reloads_trials(store, study, tmp_path):
    url = f"sqlite:///{tmp_path}/live.db"
    live = optuna.create_study(study_name="live", storage=url, directions=["minimize"] * 3)
    live.set_user_attr("metric_names", ["latency_ms", "params_m", "gmacs"])
    at = _ok(_app(url, "Trials"))
    assert "has no trials yet" in _texts(at)
    donor = next(t for t in study.trials if t.state.name == "COMPLETE")
    live.add_trial(optuna.trial.create_trial(values=donor.values, user_attrs=donor.user_attrs))
    at.run()  # cached: the same frame until Refresh
    assert "has no trials yet" in _texts(at)
    at.button(key="refresh_button").click().run()
    _ok(at)
    assert list(at.dataframe[0].value["spec_id"]) == [donor.user_attrs["spec_id"]]


def test_empty_study(store):
    at = _ok(_app(store, "Pareto front", study_name="empty"))
    assert "has no trials yet" in _texts(at)


@pytest.mark.slow
def test_detail_page_after_a_quality_run(tmp_path, monkeypatch):
    """The detail page of a trial the real quality evaluator ran: curve, sample grid, record (minutes on CPU)."""
    from studies.config import parse_study
    from studies.runner import run_study

    monkeypatch.setenv("POCKETDIFF_CACHE", str(tmp_path / "cache"))
    url = f"sqlite:///{tmp_path}/study.db"
    cfg = parse_study({"study": {"name": "quality", "sampler": "random", "n_trials": 1},
                       "target": {"latent": 32}, "space": {"base": "tiny-debug"},
                       "quality": {"evaluator": "flow", "data": "mnist5k", "budget": "12steps", "n_samples": 150,
                                   "sample_steps": 2, "early_stop": {"enabled": False}},
                       "objectives": {"fd_domain": "minimize", "latency_ms": "minimize"}}, "q.toml", storage=url)
    study, _ = run_study(cfg, progress=False, echo=lambda line: None)
    t = study.trials[0]
    assert t.state.name == "COMPLETE", t.user_attrs.get("fail_reason")
    at = _ok(_app(url, "Trial detail", trial_number=t.number))
    text = _texts(at)
    assert "no learning curve" not in text and "artifact folder" not in text
    assert at.get("image"), "the sample grid is not shown"
    vals = at.dataframe[0].value.set_index("metric")["value"]
    assert vals["fd_domain"] == pytest.approx(t.values[0])
    # the real record's regime: mnist5k's baselines and the run's learned fraction (12 steps learn little)
    assert "baselines of this data regime (val loss without learning): constant 1.204, class mean 1.162, " \
           "linear-Gaussian 0.2692; learned fraction" in text
    assert vals["learned_fraction"] == pytest.approx(t.user_attrs["learned_fraction"])
    assert t.user_attrs["learned_fraction"] < 0.5
    curve = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert curve["layout"]["yaxis"]["title"]["text"] == "validation loss"


def test_rendering_every_page_builds_no_model(store, study, monkeypatch):
    """The explorer only reads: per-stage costs and latency splits come from what the evaluators stored on each
    trial. Every model constructor and the builder raise; every page (and a trial's detail) still renders."""
    import search_space
    import search_space.build
    from search_space.decoder import Decoder
    from search_space.unet import UNet

    def refuse(*args, **kwargs):
        raise AssertionError("a page built a model")
    for owner, name in ((UNet, "__init__"), (Decoder, "__init__"), (search_space.build, "build_model"),
                        (search_space, "build_model")):
        monkeypatch.setattr(owner, name, refuse)
    t = next(t for t in study.trials if t.user_attrs.get("preset") == "tiny-debug")
    assert "stage_costs" in t.user_attrs and "latency_breakdown" in t.user_attrs  # stored at evaluation
    for page in ("Pareto front", "Trials", "Trial detail", "Compare", "Paper figures", "Study health"):
        at = _ok(_app(store, page, trial_number=t.number))
        assert at.get("header"), page
    text = _texts(_app(store, "Trial detail", trial_number=t.number))
    assert "predicted" in text and "stored on the trial" in text


def _suggested_commands(store, study) -> list[str]:
    from explorer.commands import design_commands, study_run

    out = [study_run("quick"), study_run("paper-fig3")]
    for kind in ("unet", "decoder"):
        out += design_commands("abc", kind, 32, "a17pro", json.dumps({"data": "mnist5k", "budget": "8steps"}))
    return out


def test_every_suggested_command_exists(store, study, capsys):
    """Each command the app suggests parses: its `--help` exits 0 (a `train run` that does not exist would not)."""
    from pocketdiff.cli import main

    t = next(t for t in study.trials if t.user_attrs.get("preset") == "tiny-debug")
    shown = _texts(_ok(_app(store, "Trial detail", trial_number=t.number)))
    commands = _suggested_commands(store, study)
    assert f"pocketdiff train unet {t.user_attrs['spec_id']}.json" in shown
    for command in commands:
        words = command.split()[1:]
        group = words[:2] if words[0] in ("study", "export", "latency", "train", "eval") else words[:1]
        with pytest.raises(SystemExit) as exit_:
            main(group + ["--help"])
        assert exit_.value.code == 0, command
        # and the arguments it passes parse (the files need not exist: only the parser runs)
        from pocketdiff.cli import build_parser, _train_alias
        build_parser().parse_args(_train_alias(words))
    capsys.readouterr()


def test_sigterm_to_pocketdiff_app_ends_its_server(store, tmp_path):
    """`pocketdiff app` terminated with SIGTERM takes its Streamlit server with it (no orphan)."""
    import signal

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pocketdiff.cli", "app", "--storage", store, "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        server = int(line.rsplit("server pid", 1)[1].strip(" )\n"))
        deadline = time.time() + 60
        while time.time() < deadline:  # the server is up once it answers
            try:
                urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and _alive(server):
            time.sleep(0.2)
        assert not _alive(server), "the Streamlit server outlived `pocketdiff app`"
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# --- the CLI and a real browser ---------------------------------------------------------------------------

def test_cli_builds_streamlit_command():
    from pocketdiff.cli import build_parser
    from pocketdiff.cmd_app import streamlit_command

    args = build_parser().parse_args(["app", "--storage", "sqlite:///x.db", "--port", "8765", "--study", "s"])
    cmd = streamlit_command(args)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]).resolve() == Path(APP).resolve()
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[cmd.index("--") + 1:] == ["--storage", "sqlite:///x.db", "--study", "s"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BROWSER = pytest.mark.skipif(not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
                             reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
                                    f"apt-get install -y chromium chromium-driver")


@contextlib.contextmanager
def _browser(store: str, study_name: str, tmp_path):
    """`pocketdiff app` on `store` and headless Chromium at its page once the Pareto plot has points:
    (driver, wait)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    log = open(tmp_path / "app.log", "w")
    env = dict(os.environ, POCKETDIFF_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    server = subprocess.Popen([sys.executable, "-m", "pocketdiff.cli", "app", "--storage", store, "--study",
                               study_name, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                              cwd=REPO)
    driver = None
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "app.log").read_text()
            assert time.time() < deadline, "the app did not start in 60 s"
            time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.get(f"http://localhost:{port}")
        wait = WebDriverWait(driver, 90)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".js-plotly-plot g.trace path.point")))
        time.sleep(1.0)  # let the layout settle before the screenshot
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        yield driver, wait
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@BROWSER
def test_browser_pareto_click_opens_detail(store, study, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    with _browser(store, "app-test", tmp_path) as (driver, wait):
        points = driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot g.trace path.point")
        assert len(points) >= 3
        driver.save_screenshot(str(ARTIFACTS / "app-pareto.png"))
        # click the first point of the front (red trace) and expect its detail page
        front = driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot g.trace.scatter")
        target = None
        for trace in front:
            pts = trace.find_elements(By.CSS_SELECTOR, "path.point")
            if pts and "214, 39, 40" in (pts[0].get_attribute("style") or ""):
                target = pts[0]
                break
        assert target is not None, "no point of the Pareto front was drawn"
        ActionChains(driver).move_to_element(target).pause(0.5).click().perform()
        header = wait.until(EC.presence_of_element_located((By.XPATH, "//h3[contains(., 'Trial ')]")))
        text = header.text
        number = int(text.split()[1])
        assert study.trials[number].user_attrs["spec_id"] in text
        wait.until(EC.presence_of_element_located((By.XPATH, "//h3[contains(., 'Use this design')]")))
        time.sleep(1.0)
        driver.save_screenshot(str(ARTIFACTS / "app-detail.png"))
        assert (ARTIFACTS / "app-pareto.png").stat().st_size > 10_000


def test_app_never_wrote_the_storage(store):
    """Runs after every page test and the browser test of this module: the SQLite file is byte-identical."""
    assert _sha(store) == FINGERPRINT[store]


def test_pareto_page_builds_the_front_from_the_top_rung(tmp_path):
    """A successive-halving study: rung-0 scores are better (shorter budget, by construction) yet the front
    holds top-rung trials only, and the page says so."""
    url = f"sqlite:///{tmp_path}/rungs.db"
    study = optuna.create_study(study_name="rungs", storage=url, directions=["minimize", "minimize"])
    study.set_user_attr("metric_names", ["fd_domain", "latency_ms"])
    study.set_user_attr("rungs", ["10steps", "30steps"])
    for i in range(6):
        study.add_trial(optuna.trial.create_trial(values=[1.0 + i, 10.0 - i], user_attrs={
            "rung": 0, "budget": "10steps", "spec_id": f"s{i}", "fd_domain": 1.0 + i, "latency_ms": 10.0 - i}))
    for i in (4, 5):
        study.add_trial(optuna.trial.create_trial(values=[50.0 + i, 10.0 - i], user_attrs={
            "rung": 1, "budget": "30steps", "spec_id": f"s{i}", "fd_domain": 50.0 + i, "latency_ms": 10.0 - i,
            "fd_domain_ci_low": 49.0 + i, "fd_domain_ci_high": 51.0 + i}))
    top = {t.number for t in study.trials if t.user_attrs["rung"] == 1}
    at = _ok(_app(url, "Pareto front", study_name="rungs", axis_x="latency_ms", axis_y="fd_domain"))
    assert "front from the top rung only (30steps)" in _texts(at)
    fig = at.get("plotly_chart")[0].proto.spec
    fig = json.loads(fig)
    front_trace = next(t for t in fig["data"] if t["name"].startswith("Pareto front"))
    assert {int(c[0]) for c in front_trace["customdata"]} == top
    lower = next(t for t in fig["data"] if t["name"].startswith("lower rung"))
    assert len(lower["customdata"]) == 6
    table = at.dataframe[0].value
    assert set(table["number"]) == top and "fd_domain_ci_low" in table.columns


# --- the uncertainty and the regime: seed intervals, baselines, the regime gate ----------------------------------

REGIME = {"val_loss_constant": 1.2, "val_loss_class_mean": 1.16, "val_loss_linear": 0.27}


def _learned(val: float) -> float:
    return (REGIME["val_loss_constant"] - val) / (REGIME["val_loss_constant"] - REGIME["val_loss_linear"])


def _regime_trial(rung: int, i: int, val: float, half: float) -> optuna.trial.FrozenTrial:
    """A finished flow-quality trial as the evaluator records it: val_loss and learned fraction with their seed
    intervals, and the regime's baselines."""
    from search_space import PRESETS

    attrs = {"spec": json.loads(PRESETS["tiny-debug"].to_json()), "rung": rung, "budget": ["10steps", "30steps"][rung],
             "spec_id": f"s{i}", "candidate": f"s{i}",
             "val_loss": val, "val_loss_ci_low": val - half, "val_loss_ci_high": val + half, "latency_ms": 10.0 - i,
             "learned_fraction": _learned(val), "learned_fraction_ci_low": _learned(val + half),
             "learned_fraction_ci_high": _learned(val - half), "curve": [[rung * 20 + 5, 1.3, 0.5],
                                                                          [rung * 20 + 10, val, 1.0]], **REGIME}
    return optuna.trial.create_trial(values=[val, 10.0 - i], user_attrs=attrs)


@pytest.fixture(scope="module")
def regime_store(tmp_path_factory):
    """Two successive-halving studies over val_loss and latency: "regime", whose first rung learned little (mean
    learned fraction about 0.16, below the gate) and whose top rung learned (about 0.8); "all-gated", whose top rung
    is below the gate too."""
    url = f"sqlite:///{tmp_path_factory.mktemp('regime')}/regime.db"
    for name, top_val in (("regime", 0.45), ("all-gated", 0.9)):
        study = optuna.create_study(study_name=name, storage=url, directions=["minimize", "minimize"])
        study.set_user_attr("metric_names", ["val_loss", "latency_ms"])
        study.set_user_attr("rungs", ["10steps", "30steps"])
        for i in range(6):
            study.add_trial(_regime_trial(0, i, 1.0 + i / 50, 0.05))
        for i in (4, 5):
            study.add_trial(_regime_trial(1, i, top_val + (i - 4) / 20, 0.03))
    return url


def _figure(at, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def _array(value) -> list[float]:
    """A plotly JSON array: a list, or numpy's bytes in base64 ({"bdata", "dtype"})."""
    import base64

    import numpy as np
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def _trace(fig: dict, prefix: str) -> dict:
    return next(t for t in fig["data"] if t["name"].startswith(prefix))


def test_pareto_page_shows_seed_intervals_baselines_and_the_gate(regime_store):
    at = _ok(_app(regime_store, "Pareto front", study_name="regime", axis_x="latency_ms", axis_y="val_loss"))
    fig = _figure(at)
    front = _trace(fig, "Pareto front")
    assert sorted(_array(front["y"])) == pytest.approx([0.45, 0.5])
    # seed intervals as error bars: the 95% interval of each point, on the front and on the rungs below
    assert _array(front["error_y"]["array"]) == pytest.approx([0.03, 0.03])
    assert _array(front["error_y"]["arrayminus"]) == pytest.approx([0.03, 0.03])
    assert front["error_y"]["symmetric"] is False
    assert _array(_trace(fig, "lower rung")["error_y"]["array"]) == pytest.approx([0.05] * 6)
    assert "error_x" not in front  # latency has no seed interval
    # the regime's baselines as reference lines on the val_loss axis
    lines = {round(shape["y0"], 4) for shape in fig["layout"]["shapes"] if shape["y0"] == shape["y1"]}
    assert lines == {1.2, 0.27}
    notes = [a["text"] for a in fig["layout"]["annotations"]]
    assert "constant predictor 1.2" in notes and "linear-Gaussian optimum 0.27" in notes
    # the points of the rung below the gate are ringed, and the page says why
    ringed = _trace(fig, "below the regime gate (6)")
    rung0 = {t.number for t in optuna.load_study(study_name="regime", storage=regime_store).trials
             if t.user_attrs["rung"] == 0}
    assert {int(c[0]) for c in ringed["customdata"]} == rung0
    text = _texts(at)
    assert "rung 0 (10steps): mean learned fraction 0.16 over 6 candidate(s), below the regime gate 0.5" in text
    assert "rung 1" not in text.split("regime gate 0.5")[-1]  # the top rung learned: not marked
    assert "error bars: each point's 95% interval over its seeds" in text
    # the learned fraction as an axis: lines at the constant (0), the gate and the linear-Gaussian optimum (1)
    at.selectbox(key="axis_y").set_value("learned_fraction").run()
    fig = _figure(_ok(at))
    assert {shape["y0"] for shape in fig["layout"]["shapes"]} == {0.0, 0.5, 1.0}
    assert _array(_trace(fig, "Pareto front")["error_y"]["array"]) == pytest.approx([0.03 / 0.93] * 2)
    # a top rung below the gate: the front's own points are ringed
    at = _ok(_app(regime_store, "Pareto front", study_name="all-gated", axis_x="latency_ms", axis_y="val_loss"))
    fig = _figure(at)
    front = {int(c[0]) for c in _trace(fig, "Pareto front")["customdata"]}
    assert front and front <= {int(c[0]) for c in _trace(fig, "below the regime gate (8)")["customdata"]}
    assert "rung 1 (30steps): mean learned fraction" in _texts(at)


def test_detail_and_trials_pages_show_the_regime(regime_store):
    study = optuna.load_study(study_name="regime", storage=regime_store)
    low, top = study.trials[0], study.trials[-1]
    at = _ok(_app(regime_store, "Trial detail", study_name="regime", trial_number=low.number))
    text = _texts(at)
    assert "baselines of this data regime (val loss without learning): constant 1.2, class mean 1.16, " \
           "linear-Gaussian 0.27; learned fraction 0.215" in text
    assert "rung 0 is below the regime gate" in text
    values = at.dataframe[0].value.set_index("metric")["value"]
    assert values["learned_fraction"] == pytest.approx(_learned(1.0))
    curve = _figure(at, -1)
    assert curve["layout"]["yaxis"]["title"]["text"] == "validation loss"
    assert {round(shape["y0"], 4) for shape in curve["layout"]["shapes"]} == {1.2, 0.27}
    at = _ok(_app(regime_store, "Trial detail", study_name="regime", trial_number=top.number))
    assert "below the regime gate" not in _texts(at)
    at = _ok(_app(regime_store, "Trials", study_name="regime"))
    table = at.dataframe[0].value
    assert (table["below_gate"] == (table["rung"] == 0)).all() and table["below_gate"].sum() == 6


@BROWSER
def test_browser_shows_intervals_baselines_and_the_gate(regime_store, tmp_path):
    """The same elements drawn by plotly in a real browser: error bars, the two baseline lines with their labels,
    the ring trace of the rung below the gate."""
    from selenium.webdriver.common.by import By

    with _browser(regime_store, "regime", tmp_path) as (driver, wait):
        driver.save_screenshot(str(ARTIFACTS / "app-pareto-regime.png"))
        plot = driver.find_element(By.CSS_SELECTOR, ".js-plotly-plot")
        bars = plot.find_elements(By.CSS_SELECTOR, "g.errorbar path")
        assert len(bars) >= 8, "no seed-interval error bars drawn"  # 6 lower-rung and 2 front points
        labels = [e.text for e in plot.find_elements(By.CSS_SELECTOR, "g.annotation text")]
        assert "constant predictor 1.2" in labels and "linear-Gaussian optimum 0.27" in labels
        assert len(plot.find_elements(By.CSS_SELECTOR, "g.shapelayer path")) >= 2
        legend = " ".join(e.text for e in plot.find_elements(By.CSS_SELECTOR, "g.legend text"))
        assert "below the regime gate (6)" in legend
