"""Selection quality on the quickstart bundle (issue 15): does ``veca-deploy select`` pick within
1.25x of the fastest fitting path whose accuracy is within the evaluation's resolution of the best?

Everything the user does goes through the real CLI, one process per command, as
``scripts/quickstart.sh`` runs it:

1. ``veca-deploy export --elastic --precision fp32,fp16,int8 --calib fashion-mnist --out DIR --force``
   (or ``--bundle DIR`` to reuse one; ``--smoke``: 2 tiers, ONNX FP32 only);
2. ``veca-deploy eval DIR --data fashion-mnist`` when some candidate has no accuracy (``--eval auto``;
   the quickstart export's accuracy gate already records top-1 with per-image results on 2,000
   held-out images for every artifact) or always (``--eval always``);
3. ``veca-deploy bench DIR --count 200``;
4. ``veca-deploy select DIR --budget-ms B --json`` for each budget (``--budgets 5,tight``; ``tight``
   is the budget at which the faster half of the measured candidates fits, from the profile).

Then, independently of the profile, every candidate that fits a budget is re-timed in this
process: the selector's own candidate objects (``selector.candidates``: artifact x tier x execution
variant, e.g. OpenVINO bf16 on a CPU with AVX512-BF16/AMX), the runner settings the profile used
(``selector.profile.runner_options`` + the variant's options), the same feed, interleaved rounds
(A B C, C B A, ...), medians. The tie set is every fitting candidate the selector's own rule
(``selector.select.tied_with``, i.e. ``resolution``: paired on per-image records, else binomial)
ties with the most accurate fitting one (``selector.select.rank``); the figure of merit is

    ratio = re-timed median of the chosen candidate / fastest re-timed median in the tie set

target <= 1.25 at every budget.

    python benchmarks/selection_quality.py                       # exports the quickstart bundle first
    python benchmarks/selection_quality.py --bundle bundles/veca_tiny
    python benchmarks/selection_quality.py --smoke --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

NAME = "selection_quality"
TARGET = 1.25
#: what scripts/quickstart.sh exports (the --out is added per run)
QUICKSTART_EXPORT = ["export", "--elastic", "--precision", "fp32,fp16,int8", "--calib", "fashion-mnist", "--force"]
SMOKE_EXPORT = ["export", "--cores", "8,16", "--formats", "onnx", "--precision", "fp32", "--elastic", "--force"]


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="reuse this bundle (its manifest and profile are updated in place)")
    ap.add_argument("--budgets", default="5,tight",
                    help="comma list of budgets in ms; 'tight' = the budget the faster half of the candidates fits")
    ap.add_argument("--eval", dest="eval_mode", choices=["auto", "always", "never"], default="auto",
                    help="run veca-deploy eval: auto = only when some candidate has no accuracy")
    ap.add_argument("--eval-limit", type=int, default=2000, help="images for veca-deploy eval (0: the whole split)")
    ap.add_argument("--count", type=int, default=200, help="veca-deploy bench --count (the quickstart's 200)")
    ap.add_argument("--percentile", type=float, default=95)
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None, help="passed to bench, select and the re-timing runners")
    ap.add_argument("--rounds", type=int, default=21, help="interleaved re-timing rounds")
    ap.add_argument("--iters", type=int, default=20, help="calls per sample in the re-timing")
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    if a.smoke:
        a.count, a.rounds, a.iters, a.eval_limit = min(a.count, 20), 3, 3, min(a.eval_limit or 200, 200)
    return a


def cli(args: list[str], log: bool = True) -> dict[str, Any]:
    """One veca-deploy command in its own process (``_common.run_cli``): argv, rc, seconds, peak
    RSS, stdout, the stderr tail."""
    argv = [str(x) for x in args]
    if log:
        cm.log("$ veca-deploy " + " ".join(argv))
    r = cm.run_cli(argv)
    return {"argv": r["argv"], "rc": r["rc"], "seconds": r["wall_s"], "peak_rss_gb": r["peak_rss_gb"],
            "stderr_tail": r["stderr"].strip().splitlines()[-3:] if r["stderr"].strip() else [], "stdout": r["stdout"]}


def provenance(bdir: Path) -> dict[str, Any]:
    """What built the bundle: its manifest's sha256, the veca-deploy code it was exported with (the
    git commit of this checkout, when it is one) and the INT8 recipes it holds."""
    import hashlib

    man = bdir / "manifest.json"
    m = json.loads(man.read_text())
    recipes = sorted({json.dumps({"format": x["format"], "scheme": (x.get("details") or {}).get("target", {}).get("scheme"),
                                  "preset": (x.get("details") or {}).get("target", {}).get("preset"),
                                  "variant": ((x.get("details") or {}).get("recipe") or {}).get("variant")},
                                 sort_keys=True) for x in m["artifacts"] if x["precision"] == "int8"})
    try:
        commit = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "status", "--porcelain"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"manifest_sha256": hashlib.sha256(man.read_bytes()).hexdigest(), "code_commit": commit,
            "code_uncommitted_changes": dirty, "int8_recipes": [json.loads(r) for r in recipes]}


def checked(rec: dict[str, Any]) -> dict[str, Any]:
    if rec["rc"] != 0:
        raise SystemExit(f"{' '.join(rec['argv'])} failed (exit {rec['rc']}): " + " / ".join(rec["stderr_tail"]))
    return rec


def cand_index(bdir: Path) -> tuple[Any, dict[str, Any]]:
    """The bundle as it is now, and the selector's own candidates here, by profile key."""
    from veca_deploy.bundle.reader import Bundle
    from veca_deploy.selector.candidates import candidates, resolve_backends

    b = Bundle.open(bdir)
    return b, {c.key: c for c in candidates(b, resolve_backends("auto", b))}


def key_of(tier: dict[str, Any]) -> str:
    """The profile key of a ``select --json`` candidate (Candidate.key: artifact@cC[+variant])."""
    return f"{tier['artifact']}@c{tier['cores']}" + (f"+{tier['execution']}" if tier.get("execution") else "")


def tight_budget(bundle, cands: dict[str, Any], percentile: float, margin: float, threads: int | None) -> float | None:
    """The budget (ms, 2 decimals, rounded up) at which the faster half of the profiled candidates fits."""
    import math

    from veca_deploy.selector.profile import load_profile

    prof = load_profile(bundle)
    lat = sorted(t.percentile(percentile) for c in cands.values()
                 if prof is not None and (t := prof.timing(c, threads)) is not None)
    if not lat:
        return None
    half = lat[(len(lat) - 1) // 2]
    budget = math.ceil(half / (1 - margin) * 100) / 100
    while budget * (1 - margin) < half:  # select's own comparison, in floating point
        budget = round(budget + 0.01, 2)
    return budget


def retime(bundle, cands: list[Any], threads: int | None, rounds: int, iters: int) -> tuple[dict, dict]:
    """Interleaved medians of ``cands`` with the profile's runner settings (one runner per artifact x
    execution variant, as ``measure_candidates`` builds them) and the profile's feed."""
    from veca_deploy.runtimes import check_feed, create_runner
    from veca_deploy.selector.profile import example_feed, runner_options

    runners: dict[tuple, Any] = {}
    calls, settings = {}, {}
    try:
        for c in cands:
            r = runners.get(c.runner_key)
            if r is None:
                opts = runner_options(c.backend, threads, c.runner_extra)
                r = runners[c.runner_key] = create_runner(c.backend, bundle.path_of(c.artifact), **opts).activate()
            feed = check_feed(r.input_specs(), example_feed(c))
            calls[c.key] = (lambda r=r, feed=feed: r.infer(feed, check=False))
            try:
                settings[c.key] = r.describe()
            except Exception:
                settings[c.key] = {"backend": c.backend}
        cm.log(f"re-timing {len(calls)} fitting candidate(s): {rounds} interleaved rounds x {iters} calls")
        samples = cm.interleaved(calls, rounds=rounds, warmup=2, iters=iters, discard=1)
    finally:
        for r in runners.values():
            r.close()
    return samples, settings


def analyse(sel: dict[str, Any], cands: dict[str, Any], ms: dict[str, float]) -> dict[str, Any]:
    """The selector's choice against the fastest re-timed candidate of the tie set, the tie set
    computed with the selector's own rule (rank, tied_with, resolution, comparison)."""
    from veca_deploy.selector.select import Measured, comparison, rank, resolution, tied_with

    fitting = rank([Measured(cands[key_of(m)], m["latency_ms"]) for m in sel["candidates"] if m["fits"]])
    leader = fitting[0]
    tied = [m for m in fitting if tied_with(leader, m)]
    chosen = key_of(sel["chosen"])
    tie_keys = [m.cand.key for m in tied]
    fastest = min(tie_keys, key=lambda k: ms[k])
    fastest_fit = min((m.cand.key for m in fitting), key=lambda k: ms[k])
    dec = sel.get("decision") or {}
    rows = []
    for m in fitting:
        c = m.cand
        rows.append({"key": c.key, **c.tier.to_dict(), "accuracy": c.accuracy, "samples": c.samples,
                     "profile_ms": round(m.latency_ms, 4), "retimed_ms": round(ms[c.key], 4),
                     "tied": m in tied, "resolution": None if m is leader else round(resolution(leader.cand, c), 5),
                     "comparison": None if m is leader else comparison(leader.cand, c),
                     "leader": m is leader, "chosen": c.key == chosen, "fastest_in_tie_set": c.key == fastest})
    ratio = cm.ratio(ms[chosen], ms[fastest])
    return {"chosen": chosen, "chosen_tier": sel["chosen"], "chosen_ms": round(ms[chosen], 4),
            "chosen_profile_ms": sel["chosen"]["latency_ms"], "leader": leader.cand.key,
            "tie_set": tie_keys, "fastest_in_tie_set": fastest, "fastest_in_tie_set_ms": round(ms[fastest], 4),
            "fastest_fitting": fastest_fit, "fastest_fitting_ms": round(ms[fastest_fit], 4),
            "ratio": ratio, "met": ratio is not None and ratio <= TARGET,
            "chosen_in_tie_set": chosen in tie_keys,
            "agrees_with_decision": dec.get("leader") == leader.cand.key and sorted(dec.get("tied", [])) == sorted(tie_keys),
            "decision": dec, "fitting": len(fitting), "rows": rows}


def main(argv=None) -> dict:
    a = parse(argv)
    fp = cm.fingerprint(a.threads)
    from veca_deploy.runtimes import supported_variants

    cpu = fp.get("cpu") or {}
    result = cm.header(fp, benchmark=NAME, smoke=a.smoke, target_ratio=TARGET,
                       isa=cpu.get("features") or cpu.get("isa") or [],
                       openvino_variants=list(supported_variants("openvino")),
                       onnxruntime_variants=list(supported_variants("onnxruntime")), threads=a.threads,
                       percentile=a.percentile, margin=a.margin, bench_count=a.count)
    cm.log(f"machine: {result['machine']}")
    commands: list[dict] = []
    thr = ["--threads", str(a.threads)] if a.threads else []

    # 1. the bundle: the quickstart export, through the CLI
    if a.bundle:
        bdir = Path(a.bundle)
    else:
        bdir = Path(tempfile.mkdtemp(prefix="veca-selq-")) / "veca_tiny"
        rec = checked(cli((SMOKE_EXPORT if a.smoke else QUICKSTART_EXPORT) + ["--out", bdir]))
        commands.append({k: v for k, v in rec.items() if k != "stdout"})
    result["bundle"] = {"path": str(bdir), "exported": not a.bundle, **provenance(bdir)}

    # 2. accuracies: what the bundle records, and eval when some candidate has none
    bundle, cands = cand_index(bdir)
    missing = sorted(k for k, c in cands.items() if c.accuracy is None)
    run_eval = a.eval_mode == "always" or (a.eval_mode == "auto" and missing)
    ev = {"mode": a.eval_mode, "candidates_without_accuracy_before": missing, "ran": bool(run_eval)}
    if run_eval:
        rec = checked(cli(["eval", bdir, "--data", "fashion-mnist", "--quiet"]
                          + (["--limit", str(a.eval_limit)] if a.eval_limit else [])))
        commands.append({k: v for k, v in rec.items() if k != "stdout"})
        bundle, cands = cand_index(bdir)
    ev["samples"] = sorted({c.samples for c in cands.values() if c.samples} or [])
    ev["per_image_records"] = sum(c.record is not None for c in cands.values())
    ev["candidates"] = len(cands)
    ev["without_accuracy"] = sorted(k for k, c in cands.items() if c.accuracy is None)
    result["evaluation"] = ev
    cm.log(f"{len(cands)} candidates; accuracy on {ev['samples']} images, per-image records for "
           f"{ev['per_image_records']}")

    # 3. the profile
    rec = checked(cli(["bench", bdir, "--count", a.count, "--quiet"] + thr))
    commands.append({k: v for k, v in rec.items() if k != "stdout"})
    from veca_deploy.selector.profile import load_profile, passes_of

    prof = load_profile(bundle)  # bench's passes (its default), as the profile records them
    result["bench_passes"] = passes_of(prof.entries.values()) if prof is not None else None

    # 4. select per budget
    budgets: list[tuple[str, float]] = []
    for b in [x.strip() for x in a.budgets.split(",") if x.strip()]:
        if b == "tight":
            v = tight_budget(bundle, cands, a.percentile, a.margin, a.threads)
            if v is not None:
                budgets.append(("tight", v))
        else:
            budgets.append((b, float(b)))
    sels = []
    for label, b in budgets:
        rec = cli(["select", bdir, "--budget-ms", b, "--percentile", a.percentile, "--margin", a.margin, "--json"] + thr)
        commands.append({k: v for k, v in rec.items() if k != "stdout"})
        if rec["rc"] == 0:
            sels.append((label, b, json.loads(rec["stdout"]), rec))
        else:
            sels.append((label, b, None, rec))
    bundle, cands = cand_index(bdir)  # what select saw (eval and bench do not change the candidates)

    # 5. re-time every candidate that fits some budget, interleaved, one process
    fit_keys = sorted({key_of(m) for _, _, s, _ in sels if s for m in s["candidates"] if m["fits"]})
    unknown = [k for k in fit_keys if k not in cands]
    if unknown:
        raise SystemExit(f"select returned candidates this process does not know: {unknown}")
    samples, settings = retime(bundle, [cands[k] for k in fit_keys], a.threads, a.rounds, a.iters) if fit_keys \
        else ({}, {})
    ms = {k: cm.med(s) for k, s in samples.items()}
    result["retime"] = {"rounds": a.rounds, "iters": a.iters, "warmup": 2, "discard": 1, "threads": a.threads,
                        "how": "selector.candidates objects, selector.profile.runner_options + the variant's options "
                               "and example_feed; runtimes.timing.interleaved; sample = mean ms of iters calls",
                        "timings": {k: cm.summary(s) for k, s in samples.items()}, "runners": settings}

    rows = []
    for label, b, s, rec in sels:
        row: dict[str, Any] = {"label": label, "budget_ms": b, "select_argv": rec["argv"], "select_rc": rec["rc"]}
        if s is None:
            row.update(error=" / ".join(rec["stderr_tail"]), met=None, ratio=None)
        else:
            row.update(limit_ms=s["limit_ms"], device=s["device"], **analyse(s, cands, ms))
        rows.append(row)
    result["commands"] = commands
    result["budgets"] = rows
    judged = [r for r in rows if r.get("ratio") is not None]
    result["met"] = bool(judged) and all(r["met"] for r in judged)
    cm.finish(result)
    cm.publish(a.out, NAME, result, markdown(result))
    return result


def _acc(v: float | None, n: int | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %" + (f" (n={n})" if n else "")


def markdown(r: dict[str, Any]) -> str:
    ev = r["evaluation"]
    ort = r.get("onnxruntime_variants") or []
    out = [(f"Machine: {r['machine']} (OpenVINO execution variants here: "
           f"{', '.join(r['openvino_variants']) or 'none'}"
           + (f"; ONNX Runtime: {', '.join(ort)}" if ort else "") + "). Bundle: the quickstart bundle "
           f"({'exported by this run' if r['bundle']['exported'] else r['bundle']['path']}); "
           f"accuracies from the manifest ({'after `veca-deploy eval`' if ev['ran'] else 'no eval needed'}; "
           f"samples {ev['samples']}, per-image records for {ev['per_image_records']} of {ev['candidates']} "
           f"candidates). `veca-deploy select --budget-ms B --json` (p{r['percentile']:g} from `bench --count "
           f"{r['bench_count']}`, runs spread over {r.get('bench_passes') or 1} passes; margin {r['margin']:g}), then every fitting candidate re-timed here: medians of {r['retime']['rounds']} "
           f"interleaved rounds x {r['retime']['iters']} calls. Tie set: the selector's own `tied_with` against "
           f"the most accurate fitting candidate. Target: chosen / fastest in tie set <= {r['target_ratio']:g}.\n\n")]
    hdr = ["budget ms", "fitting", "chosen", "chosen ms", "tie set", "fastest in tie set", "its ms", "ratio",
           "fastest fitting (ms)", "target"]
    tab = []
    for b in r["budgets"]:
        budget = f"{b['budget_ms']:g}" + (" (tight)" if b["label"] == "tight" else "")
        if b.get("ratio") is None:
            tab.append([budget, 0, f"none (select exit {b['select_rc']})", None, None, None, None, None, None, "-"])
            continue
        tab.append([budget, b["fitting"], b["chosen"],
                    b["chosen_ms"], len(b["tie_set"]), b["fastest_in_tie_set"], b["fastest_in_tie_set_ms"],
                    b["ratio"], f"{b['fastest_fitting']} ({b['fastest_fitting_ms']:.3g})",
                    "**met**" if b["met"] else "**not met**"])
    out.append(cm.md_table(hdr, tab))
    for b in r["budgets"]:
        if b.get("error"):
            out.append(f"\nBudget {b['budget_ms']:g} ms: {b['error']}\n")
    for b in r["budgets"]:
        if b.get("rows") is None:
            continue
        out.append(f"\nBudget {b['budget_ms']:g} ms (limit {b['limit_ms']:g} ms): leader `{b['leader']}`; "
                   f"select's reason: {b['decision'].get('reason', '-')}\n\n")
        out.append(cm.md_table(
            ["candidate", "top-1", "resolution vs leader", "comparison", "tied", f"profile p{r['percentile']:g} ms", "re-timed ms", ""],
            [[x["key"], _acc(x["accuracy"], x["samples"]),
              None if x["resolution"] is None else f"{100 * x['resolution']:.2f} pt", x["comparison"] or "leader",
              "yes" if x["tied"] else "", x["profile_ms"], x["retimed_ms"],
              " ".join(t for t, f in (("chosen", x["chosen"]), ("fastest-tied", x["fastest_in_tie_set"])) if f)]
             for x in sorted(b["rows"], key=lambda x: x["retimed_ms"])]))
    return "".join(out)


if __name__ == "__main__":
    main()
