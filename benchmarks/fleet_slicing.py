"""Fleet slicing through the CLI (issue 17): one bundle, two device classes, two signed slices.

What a fleet team runs, as separate ``veca-deploy`` processes: ``bench --out`` on each "device"
(here the same CPU pinned to one core and to two: different device ids), ``fleet`` over both
profiles, ``keygen``, ``pack --sign-key`` per profile, ``validate`` of each slice with only the
public key trusted, and ``Runtime.open`` of each slice pinned like its device (it must find the
slice's profile, profile nothing and make the offline decision). Reports the bytes each device
receives against the full bundle, and wall time and peak RSS of every command.

    python benchmarks/fleet_slicing.py [--bundle DIR] [--budget-ms 5] [--count 100]

Without ``--bundle`` it exports the quickstart bundle (``export --elastic --precision
fp32,fp16,int8 --calib fashion-mnist``); ``--smoke``: ONNX FP32 tiers 8 and 16, 10 runs each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as cm  # noqa: E402

SERVE = ("import sys, numpy as np\nfrom veca_deploy import Runtime\n"
         "rt = Runtime.open(sys.argv[1], budget_ms=float(sys.argv[2]), adaptive=True, measure=False)\n"
         "p = rt.predict(np.zeros((28, 28), np.uint8))\n"
         "print(rt.selection.chosen.cand.key, rt.selection.profiled, len(rt.tiers))\n")


def run(args: list[str], cpus: list[int] | None = None, env: dict | None = None) -> dict:
    """One process: exit code, stdout, stderr, wall seconds and its own peak RSS (from wait4)."""
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(args, stdout=fo, stderr=fe, text=True, env={**os.environ, **(env or {})},
                             preexec_fn=(lambda: os.sched_setaffinity(0, set(cpus))) if cpus else None)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    return {"argv": args[1:], "rc": p.returncode, "stdout": out, "stderr": err, "wall_s": round(wall, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def cli(*args, cpus=None, env=None) -> dict:
    r = run([sys.executable, "-m", "veca_deploy.cli", *map(str, args)], cpus, env)
    if r["rc"] != 0:
        raise SystemExit(f"veca-deploy {' '.join(map(str, args))}: exit {r['rc']}: {r['stderr'].strip()[-400:]}")
    return r


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="bundle folder (default: export the quickstart bundle to a temp folder)")
    ap.add_argument("--budget-ms", type=float, default=5.0, help="the devices' budget (the quickstart's: 5 ms)")
    ap.add_argument("--count", type=int, default=None, help="runs per candidate in bench (default 100, smoke 10)")
    ap.add_argument("--out", default=str(cm.RESULTS))
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs 2 usable cores (one device class pinned to 1 core, one to 2)")
    count = a.count or (10 if a.smoke else 100)
    fp = cm.fingerprint()
    result = cm.header(fp, benchmark="fleet_slicing", budget_ms=a.budget_ms, count=count, smoke=a.smoke)
    with tempfile.TemporaryDirectory(prefix="veca-fleet-") as tmp:
        tmp = Path(tmp)
        commands = []
        bundle = Path(a.bundle) if a.bundle else tmp / "bundle"
        if not a.bundle:
            exp = (["--cores", "8,16", "--formats", "onnx", "--precision", "fp32"] if a.smoke
                   else ["--precision", "fp32,fp16,int8", "--calib", "fashion-mnist"])
            cm.log(f"exporting {'a smoke' if a.smoke else 'the quickstart'} bundle ...")
            commands.append(cli("export", "--elastic", *exp, "--out", bundle, "--force", "-q"))
        keys = tmp / "keys"
        commands.append(cli("keygen", "--out", keys))
        devices = []
        for cores in (cpus[:1], cpus[:2]):
            prof = tmp / f"profile-{len(cores)}c.json"
            cm.log(f"bench pinned to {len(cores)} core(s) ...")
            b = cli("bench", bundle, "--count", count, "--quiet", "--out", prof, cpus=cores)
            pack_dir = tmp / f"pack-{len(cores)}c"
            p = cli("pack", bundle, "--profile", prof, "--budget-ms", a.budget_ms, "--out", pack_dir,
                    "--sign-key", keys / "veca-signing.key", "--json")
            pk = json.loads(p["stdout"])
            env = {"VECA_PUBLIC_KEY": str(keys / "veca-signing.pub")}
            v = cli("validate", pack_dir, env=env)
            s = run([sys.executable, "-c", SERVE, str(pack_dir), str(a.budget_ms)], cores, env)
            s["argv"] = ["Runtime.open", str(pack_dir), f"budget_ms={a.budget_ms:g}", "adaptive=True", "+ predict"]
            served = s["stdout"].split() if s["rc"] == 0 else []
            commands += [b, p, v, s]
            devices.append({
                "device": pk["device"], "usable_cores": len(cores), "chosen": pk["chosen"], "kept": pk["kept"],
                "artifacts": pk["artifacts"], "artifacts_total": len(pk["artifacts"]) + len(pk["dropped"]),
                "bytes_before": pk["bytes_before"], "bytes_after": pk["bytes_after"], "fraction": pk["fraction"],
                "signed_by": pk["signed_by"], "validated": "signed by trusted key" in v["stdout"],
                "served": served[0] if served else None, "served_profiled": served[1] == "True" if served else None,
                "served_same_choice": bool(served) and served[0] == pk["chosen"], "serve_error": s["stderr"][-300:] if s["rc"] else None,
                "bench_wall_s": b["wall_s"], "bench_peak_rss_mb": b["peak_rss_mb"],
                "pack_wall_s": p["wall_s"], "pack_peak_rss_mb": p["peak_rss_mb"]})
        fl = cli("fleet", bundle, *(tmp / f"profile-{len(c)}c.json" for c in (cpus[:1], cpus[:2])),
                 "--budget-ms", a.budget_ms, "--json")
        commands.append(fl)
        view = json.loads(fl["stdout"])
        result["fleet"] = [{"device": c["device"], "pareto": c["pareto"],
                            "chosen": (c["selection"] or {}).get("chosen"), "failure": c["failure"]}
                           for c in view["classes"]]
        result["devices"] = devices
        result["commands"] = [{k: v for k, v in c.items() if k not in ("stdout", "stderr")} for c in commands]
    cm.finish(result)
    rows = [[d["device"], d["usable_cores"], d["chosen"], f"{len(d['artifacts'])} of {d['artifacts_total']}",
             f"{d['bytes_after'] / 1e6:.2f} of {d['bytes_before'] / 1e6:.2f} MB", f"{100 * d['fraction']:.1f} %",
             "yes" if d["validated"] else "NO", "yes" if d["served_same_choice"] and d["served_profiled"] is False else "NO"]
            for d in devices]
    md = (f"Fleet slicing through the CLI on {result['machine']}: budget {a.budget_ms:g} ms, bench --count {count}\n\n"
          + cm.md_table(["device class", "cores", "chosen", "artifacts shipped", "bytes", "share",
                         "validates (signed)", "serves the same choice, no profiling"], rows)
          + "\n" + cm.md_table(["command", "wall s", "peak RSS MB"],
                               [[" ".join(map(str, c["argv"])).replace(str(tmp), "$TMP")[:110], c["wall_s"], c["peak_rss_mb"]]
                                for c in result["commands"]]))
    cm.publish(a.out, "fleet_slicing" + ("-smoke" if a.smoke else ""), result, md)
    return result


if __name__ == "__main__":
    main()
