"""`pocketdiff study run|worker|status|export|best`: Optuna studies from study files (studies/*.toml)."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from search_space.outputs import check_output_file

STORAGE_ENV = "POCKETDIFF_STORAGE"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run and inspect Optuna studies")
    s = p.add_subparsers(dest="command", metavar="<command>")

    run = s.add_parser("run", help="run (or resume) a study from its file")
    run.add_argument("file", help="study file, e.g. studies/quick.toml")
    _storage_flag(run)
    run.add_argument("--n-trials", type=int, help="trials to run now (default: until the study has the file's "
                                                  "n_trials finished trials)")
    run.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--jobs", type=int, default=None,
                     help="worker processes on this host, one thread each (default: the file's [study] jobs, else 1)")
    run.set_defaults(func=cmd_run, worker=False, no_summary=False)

    w = s.add_parser("worker", help="one worker of a study shared through --storage (many processes / hosts)")
    w.add_argument("file")
    _storage_flag(w, required=True)
    w.add_argument("--n-trials", type=int, help="trials this worker runs (default: until the study, across all "
                                                "workers, has the file's n_trials)")
    w.add_argument("--timeout", type=float)
    w.add_argument("--no-progress", action="store_true")
    w.add_argument("--no-summary", action="store_true",
                   help="print only the trial lines (the workers `study run --jobs` starts)")
    w.set_defaults(func=cmd_run, worker=True, jobs=1)

    st = s.add_parser("status", help="trial counts by state and rung, failures, the Pareto set of the top rung")
    st.add_argument("file", nargs="?", help="study file (its storage and name)")
    _storage_flag(st)
    st.add_argument("--study", help="study name (not needed when the storage holds one study)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    ex = s.add_parser("export", help="write trials (or only the Pareto set) to CSV")
    ex.add_argument("file", nargs="?")
    _storage_flag(ex)
    ex.add_argument("--study")
    ex.add_argument("--pareto", action="store_true", help="only feasible Pareto-optimal trials")
    ex.add_argument("-o", "--output", required=True, help="CSV path")
    ex.set_defaults(func=cmd_export)

    b = s.add_parser("best", help="the winning spec of the top rung under a latency budget, as JSON for training")
    b.add_argument("file", nargs="?")
    _storage_flag(b)
    b.add_argument("--study")
    b.add_argument("--max-latency-ms", type=float, help="only candidates predicted at or under this latency")
    b.add_argument("--metric", help="metric to pick the winner by, in its direction (default: the study's first "
                                    "quality objective)")
    b.add_argument("-o", "--output", required=True, help="where to write winner.json")
    b.set_defaults(func=cmd_best)

    rr = s.add_parser("rerank", help="re-predict every complete trial's latency with the current device profile "
                                     "(after `latency fit`) and rank the front, the winner and exports by it")
    rr.add_argument("file", help="the study file (its [target] device and latent, its latency constraints)")
    _storage_flag(rr)
    rr.add_argument("--study")
    rr.add_argument("--json", action="store_true", help="print JSON")
    rr.set_defaults(func=cmd_rerank)


def _storage_flag(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--storage", required=required and not os.environ.get(STORAGE_ENV),
                   default=os.environ.get(STORAGE_ENV),
                   help=f"Optuna storage URL (sqlite:///path.db, journal:///path.log, postgresql://...); env {STORAGE_ENV}")


def _load_cfg(args):
    from studies.config import load_study_file
    return load_study_file(args.file, storage=args.storage)


def _study(args):
    from pocketdiff.cli import UsageError
    from studies.queries import resolve_study

    if getattr(args, "file", None):
        cfg = _load_cfg(args)
        return resolve_study(cfg.storage, args.study or cfg.name)
    if not args.storage:
        raise UsageError("give a study file or --storage URL (and --study NAME if it holds several studies)")
    return resolve_study(args.storage, args.study)


def cmd_run(args) -> int:
    from studies.runner import run_study

    cfg = _load_cfg(args)
    n_trials = args.n_trials
    if args.no_summary:
        _, stats = run_study(cfg, n_trials=n_trials, timeout=args.timeout, progress=False, jobs=1)
        return 1 if stats.all_failed else 0
    jobs = cfg.jobs if args.jobs is None else args.jobs
    print(f"study {cfg.name}  storage {cfg.storage}  sampler {cfg.sampler}  objectives "
          f"{', '.join(f'{m} ({d})' for m, d in cfg.objectives)}" + (f"  {jobs} worker processes" if jobs > 1 else ""))
    rungs = cfg.quality.rungs
    if rungs:
        when = ("once the rung is complete" if rungs.promotion == "synchronous"
                else "as its candidates finish")
        print(f"successive halving: rungs {' -> '.join(map(str, rungs.budgets))}, the best 1/{rungs.reduction} of "
              f"each rung promoted {when}, {cfg.n_trials} candidates at the first rung")
        if "budget" in cfg.quality.written:
            print(f"  [quality] budget = {cfg.quality.written['budget']!r} is not used: each rung sets its trials' "
                  f"budget")
    study, stats = run_study(cfg, n_trials=n_trials, timeout=args.timeout, progress=not args.no_progress, jobs=jobs)
    _print_summary(study)
    if stats.run_seconds > 0 and stats.states:
        workers = f" x {stats.workers} workers" if stats.workers > 1 else ""
        print(f"workbench overhead (everything but training, sampling and scoring): {stats.overhead_share:.1%} of "
              f"{stats.run_seconds:.0f} s{workers} of run time ({stats.evaluator_seconds:.0f} s training, sampling "
              f"and scoring in {len(stats.states)} trials)")
    if stats.all_failed:
        print(f"pocketdiff: error: every trial of this run failed ({len(stats.states)}); see the reasons above",
              file=sys.stderr)
        return 1
    from studies.opening import PRESET_ATTEMPTS
    from studies.queries import presets_without_result
    lost = presets_without_result(study, cfg.enqueue)
    if lost:
        retry = [p for p, failures in lost.items() if len(failures) < PRESET_ATTEMPTS]
        print("pocketdiff: error: enqueued preset(s) without a finished trial, so the front lacks its reference: "
              + "; ".join(f"{p} ({', '.join(reasons)})" for p, reasons in lost.items())
              + (f". Run the same command again: {', '.join(retry)} will be tried once more" if retry else
                 f". Each was tried {PRESET_ATTEMPTS} times: fix the cause and start a new study (another "
                 f"[study] name or storage)"), file=sys.stderr)
        return 1
    return 0


def _print_summary(study) -> None:
    from optuna.trial import TrialState
    from studies.queries import front_note, metric_names, pareto_rows, regime_note, rung_counts, study_rungs
    from studies.record import LEARNED_FRACTION

    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    print("trials: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    rungs = study_rungs(study)
    if len(rungs) > 1:
        for r, c in enumerate(rung_counts(trials, len(rungs))):
            budget = rungs[r] if r < len(rungs) else "?"
            print(f"  rung {r} ({budget}): " + (", ".join(f"{k} {v}" for k, v in c.items()) or "no trial yet"))
    rows = pareto_rows(study)
    names = metric_names(study)
    print(f"Pareto set ({len(rows)} feasible trials) -- {front_note(study)}:")
    from studies.overlay import refit_note
    if refit_note(study):
        print(f"  ({refit_note(study)})")
    for r in rows:
        shown = names + ([LEARNED_FRACTION] if LEARNED_FRACTION in r and LEARNED_FRACTION not in names else [])
        vals = "  ".join(_with_interval(r, n) for n in shown)
        print(f"  #{r['number']:<4} {vals}  {r['preset'] or r['spec_id']}  {r['compact']}")
    note = regime_note(study)
    if note:
        print(note)


def _with_interval(row: dict, name: str) -> str:
    """`fd_domain=12.3 [10.1, 14.5]` when the evaluator gave a seed interval, else `fd_domain=12.3`."""
    text = f"{name}={row[name]:.4g}"
    if f"{name}_ci_low" in row and f"{name}_ci_high" in row:
        text += f" [{row[name + '_ci_low']:.4g}, {row[name + '_ci_high']:.4g}]"
    return text


def cmd_status(args) -> int:
    from optuna.trial import TrialState
    from studies.paper import fig3_pair_possible
    from studies.queries import (complete_rungs, front_note, front_rung, pareto_rows, regime_note, regimes,
                                 rung_counts, study_rungs)
    from studies.record import TrialRecord

    study = _study(args)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    failures = [{"number": t.number, "state": t.state.name, "reason": TrialRecord.of(t).reason}
                for t in trials if t.state in (TrialState.FAIL, TrialState.PRUNED)]
    rungs = study_rungs(study)
    fig3 = None
    if fig3_pair_possible(trials):  # only then pandas (studies/results.py builds the ordering table)
        from studies.results import fig3_orderings_of, fig3_orderings_text
        fig3 = fig3_orderings_of(study)
    if args.json:
        print(json.dumps({"study": study.study_name, "counts": counts, "failures": failures,
                          "rungs": rungs, "rung_counts": rung_counts(trials, len(rungs)),
                          "front_rung": front_rung(complete_rungs(trials)), "front": front_note(study),
                          "pareto": pareto_rows(study), "regimes": regimes(study), "regime": regime_note(study),
                          **({"fig3_orderings": fig3.to_dict("records")} if fig3 is not None else {})},
                         indent=2, default=str))
        return 0
    print(f"study {study.study_name}: {len(trials)} trials")
    _print_summary(study)
    for f in failures:
        print(f"  #{f['number']:<4} {f['state']:<7} {f['reason']}")
    if fig3 is not None:
        print(fig3_orderings_text(fig3))
    return 0


def _flat_rows(study, pareto: bool) -> list[dict]:
    from studies import record as R
    from studies.overlay import current_trials
    from studies.queries import metric_names, pareto_rows

    keep = {r["number"] for r in pareto_rows(study)} if pareto else None
    names = metric_names(study)
    rows = []
    for t in current_trials(study):
        if keep is not None and t.number not in keep:
            continue
        row = {"number": t.number, "state": t.state.name}
        if t.values:
            row.update(dict(zip(names, t.values)))
        for k, v in t.user_attrs.items():
            if k in (R.SPEC, R.CURVE):
                row[k] = json.dumps(v)
            elif isinstance(v, (int, float, str, bool)) or v is None:
                row.setdefault(k, v)
        row.update({f"param:{k}": v for k, v in t.params.items()})
        row.update({f"constraint:{k}": v for k, v in t.constraints.items()})
        rows.append(row)
    return rows


def cmd_export(args) -> int:
    from studies.queries import front_note

    check_output_file(args.output, "-o")
    study = _study(args)
    rows = _flat_rows(study, args.pareto)
    if args.pareto:
        print(front_note(study))
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} trial(s) to {out}")
    return 0


def cmd_rerank(args) -> int:
    from studies.queries import front_note
    from studies.rerank import rerank

    import optuna
    from studies import storage as S

    cfg = _load_cfg(args)
    found = _study(args)  # read-only: checks the name before anything is written
    study = optuna.load_study(study_name=found.study_name, storage=S.open_for_writing(cfg.storage))
    result = rerank(study, cfg.device, cfg.latent, cfg.constraints)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if not result["changes"]:
        print(f"study {study.study_name}: no complete trial with a predicted latency; nothing to re-rank")
        return 0
    print(f"study {study.study_name}: latency of {len(result['changes'])} trials re-predicted with {result['chip']}'s "
          f"profile fit {result['fit_id']}")
    for c in sorted(result["changes"], key=lambda c: -abs(c["now_ms"] - c["at_run_ms"]))[:10]:
        print(f"  #{c['trial']:<4} {c['at_run_ms']:8.1f} ms -> {c['now_ms']:8.1f} ms"
              f"  (fit at run: {c['fit_at_run'] or 'not recorded'})")
    before, after = result["front_before"], result["front_after"]
    print(f"Pareto set -- {front_note(study)}: before {before}, now {after}"
          + ("" if before == after else f" (left: {sorted(set(before) - set(after))}, "
                                        f"joined: {sorted(set(after) - set(before))})"))
    return 0


def cmd_best(args) -> int:
    from studies.queries import front_note
    from studies.winner import select_winner

    check_output_file(args.output, "-o")
    study = _study(args)
    winner = select_winner(study, metric=args.metric, max_latency_ms=args.max_latency_ms)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(winner.record, indent=2))
    print(front_note(study))
    print(f"{winner.line} -> {out}")
    return 0
