#!/usr/bin/python3
"""make bench's arithmetic and its report: every figure comes from the runs'
files (scripts/bench-lib/driver.py writes them), nothing is typed in.

    report.py line RUN.json             one progress line for a finished run
    report.py summary OUT_DIR META.json RESULTS.json [README.md]
                                        the table (stdout), every raw value and
                                        the medians/ratios (RESULTS.json), and
                                        the README's benchmark section

The parsers (the daemon's timeline line, strace's output) and the
statistics are plain functions, tested by scripts/bench-lib/test_report.py.
"""

import glob
import json
import os
import re
import sys

AGENTS = ("ours", "theirs")
LABEL = {"ours": "waagent-rs", "theirs": "waagent 2.7.3"}
CONFIG_TITLE = {
    1: "1. ed25519 host key; SSH key inline in ovf-env.xml; no Certificates",
    2: "2. ed25519 host key; SSH key by fingerprint, from Certificates",
    3: "3. auto host keys (RSA + ECDSA + Ed25519); SSH key by fingerprint",
}
# Phases that are children the daemon waits for (or overlaps).
CHILD_PHASES = ("transport-key", "host-keys")


# --- the daemon's timeline line ---------------------------------------------

TIMELINE = re.compile(r"timeline \(ms since start\):\s*(?P<body>.*)$")
PHASE = re.compile(r"^\s*(?P<name>[A-Za-z][\w-]*)\s+(?P<a>\d+)\s*-\s*(?P<b>\d+)\s*$")
END = re.compile(r"^\s*(?P<what>Ready|ProvisioningFailed)\s+at\s+(?P<at>\d+)\s*$")


def parse_timeline(text):
    """The last `timeline (ms since start): …; Ready at N` line of a log, as
    {"phases": {name: (start, end)}, "outcome": "Ready", "at": N}; None when
    there is none. Tolerant: unknown phases are kept, malformed parts are
    skipped, phases may be missing, the outcome may be ProvisioningFailed."""
    found = None
    for line in text.splitlines():
        m = TIMELINE.search(line)
        if m:
            found = m.group("body")
    if found is None:
        return None
    head, sep, tail = found.rpartition(";")
    if not sep:
        head, tail = found, ""
    phases = {}
    for part in head.split(","):
        m = PHASE.match(part)
        if m and int(m.group("b")) >= int(m.group("a")):
            phases[m.group("name")] = (int(m.group("a")), int(m.group("b")))
    m = END.match(tail)
    if not m:
        # "…, report 160-165" with no outcome: keep the phases, no end.
        m2 = PHASE.match(tail)
        if m2:
            phases[m2.group("name")] = (int(m2.group("a")), int(m2.group("b")))
        return {"phases": phases, "outcome": None, "at": None}
    return {"phases": phases, "outcome": m.group("what"), "at": int(m.group("at"))}


def own_work(timeline):
    """The daemon's own work around its children: from the end of the last
    child phase (transport-key, host-keys) to the outcome, and from start to
    the end of goal-state. None where the line lacks what it needs."""
    p = timeline["phases"]
    ends = [p[c][1] for c in CHILD_PHASES if c in p]
    at = timeline["at"]
    return {
        "after_last_child_ms": (at - max(ends)) if ends and at is not None else None,
        "to_goal_state_ms": p["goal-state"][1] if "goal-state" in p else None,
    }


# --- strace -f -ttt ---------------------------------------------------------

LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<t>\d+\.\d+)\s+(?P<rest>.*)$")
CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)$")
RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<args>.*)$")
RESULT = re.compile(r"\)\s+=\s+(?P<ret>-?\d+)(?:\s.*)?$")
SPAWNERS = ("fork", "vfork", "clone", "clone3")


def parse_strace(lines):
    """Processes spawned and programs run, from `strace -f -ttt -e
    trace=fork,vfork,clone,clone3,execve` output (one file, pids first).
    Returns events {"t", "pid", "kind", …}: kind "process" (a new process,
    "child" its pid), "thread" (CLONE_THREAD: not a process), "exec" (a
    successful execve, "program" its path). Calls split by strace into
    `<unfinished ...>` and `<... resumed>` are joined."""
    pending = {}
    events = []
    for raw in lines:
        m = LINE.match(raw.rstrip("\n"))
        if not m:
            continue
        pid, t, rest = int(m.group("pid")), float(m.group("t")), m.group("rest")
        r = RESUMED.match(rest)
        if r:
            name, start_t, head = pending.pop(pid, (r.group("name"), t, ""))
            text = head + r.group("args")
            t = start_t
        else:
            c = CALL.match(rest)
            if not c:
                continue
            name, text = c.group("name"), c.group("args")
            if text.endswith("<unfinished ...>"):
                pending[pid] = (name, t, text[: -len("<unfinished ...>")])
                continue
        res = RESULT.search(text)
        if not res:
            continue
        ret = int(res.group("ret"))
        if name in SPAWNERS and ret > 0:
            kind = "thread" if "CLONE_THREAD" in text else "process"
            events.append({"t": t, "pid": pid, "kind": kind, "child": ret})
        elif name == "execve" and ret == 0:
            prog = re.match(r'^"([^"]*)"', text)
            events.append({"t": t, "pid": pid, "kind": "exec", "program": prog.group(1) if prog else "?"})
    return events


def count_between(events, kind, a, b):
    return sum(1 for e in events if e["kind"] == kind and a <= e["t"] <= b)


def programs(events, a, b):
    """{program basename: times run} between a and b, most frequent first."""
    seen = {}
    for e in events:
        if e["kind"] == "exec" and a <= e["t"] <= b:
            name = os.path.basename(e["program"])
            seen[name] = seen.get(name, 0) + 1
    return dict(sorted(seen.items(), key=lambda kv: (-kv[1], kv[0])))


# --- statistics --------------------------------------------------------------

def median(values):
    v = sorted(values)
    n = len(v)
    if n == 0:
        return None
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def summary(values):
    """{"median", "min", "max", "n", "values"} of the non-None values."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": median(v), "min": min(v), "max": max(v), "n": len(v), "values": v}


def ratio(ours, theirs):
    if not ours or not theirs or theirs["median"] in (0, None) or ours["median"] is None:
        return None
    return ours["median"] / theirs["median"]


# --- the runs ------------------------------------------------------------------

def load_runs(out_dir):
    runs = []
    for path in sorted(glob.glob(os.path.join(out_dir, "*.json"))):
        with open(path) as f:
            run = json.load(f)
        base = path[: -len(".json")]
        try:
            with open(base + ".waagent.log", errors="replace") as f:
                run["timeline"] = parse_timeline(f.read())
        except OSError:
            run["timeline"] = None
        if run.get("mode") == "strace":
            try:
                with open(base + ".strace", errors="replace") as f:
                    events = parse_strace(f)
            except OSError:
                events = []
            t0, ext = run.get("t0"), run.get("ext_s")
            if ext is not None:
                end = t0 + ext
                run["processes_to_ext"] = count_between(events, "process", t0, end)
                run["threads_to_ext"] = count_between(events, "thread", t0, end)
                run["programs_to_ext"] = programs(events, t0, end)
            idle = run.get("idle")
            if idle:
                minutes = idle["secs"] / 60
                idle["processes"] = count_between(events, "process", idle["start"], idle["end"])
                idle["processes_per_min"] = idle["processes"] / minutes
                idle["programs"] = programs(events, idle["start"], idle["end"])
        runs.append(run)
    return runs


def problems(run):
    """Why a run does not count: an error or a failed check."""
    out = []
    if run.get("error"):
        out.append(run["error"])
    out += [f"check failed: {k}" for k, ok in run.get("checks", {}).items() if not ok]
    return out


def metric_values(runs, agent, config, mode, get):
    vals = []
    for r in runs:
        if r["agent"] == agent and r["config"] == config and r["mode"] == mode and not problems(r):
            try:
                vals.append(get(r))
            except (KeyError, TypeError):
                pass
    return vals


MIB = 1024.0
METRICS = [
    # key, label, mode, getter, format
    ("ready_s", "start to Ready received (s)", "timed", lambda r: r["ready_s"], "{:.3f}"),
    ("ext_s", "start to extension status (s)", "timed", lambda r: r["ext_s"], "{:.2f}"),
    ("cpu_ready_s", "CPU to Ready, children incl. (s)", "timed", lambda r: r["cpu_ready_s"], "{:.3f}"),
    ("cpu_ext_s", "CPU to extension status (s)", "timed", lambda r: r["cpu_ext_s"], "{:.3f}"),
    ("cpu_idle_per_min_s", "CPU per idle minute (s)", "timed", lambda r: r["idle"]["cpu_per_min_s"], "{:.4f}"),
    ("peak_rss_mib", "peak RSS, all processes (MiB)", "timed", lambda r: r["peak_rss_kib"] / MIB, "{:.1f}"),
    ("peak_pss_mib", "peak PSS, all processes (MiB)", "timed", lambda r: r["peak_pss_kib"] / MIB, "{:.1f}"),
    ("peak_own_rss_mib", "peak RSS, agent's own procs (MiB)", "timed", lambda r: r["peak_own_rss_kib"] / MIB, "{:.1f}"),
    ("idle_rss_mib", "RSS in steady state (MiB)", "timed", lambda r: r["idle"]["rss_end_kib"] / MIB, "{:.1f}"),
    ("processes_to_ext", "processes spawned to ext. status", "strace", lambda r: r["processes_to_ext"], "{:.0f}"),
    ("processes_idle_per_min", "processes spawned per idle min", "strace", lambda r: r["idle"]["processes_per_min"], "{:.1f}"),
    ("requests_idle_per_min", "requests per idle minute", "timed", lambda r: r["idle"]["requests_per_min"], "{:.1f}"),
    ("connections_idle_per_min", "TCP connections per idle minute", "timed", lambda r: r["idle"]["connections_per_min"], "{:.1f}"),
]


def summarize(runs):
    configs = sorted({r["config"] for r in runs if r["mode"] in ("timed", "strace")})
    out = {}
    for c in configs:
        rows = {}
        for key, _label, mode, get, _fmt in METRICS:
            row = {a: summary(metric_values(runs, a, c, mode, get)) for a in AGENTS}
            row["ratio"] = ratio(row["ours"], row["theirs"])
            rows[key] = row
        out[str(c)] = rows
    return out


def timeline_summary(runs):
    """Median duration of each phase of our daemon's timeline and the own-work
    figures, over the timed runs of each configuration."""
    out = {}
    for c in sorted({r["config"] for r in runs}):
        tls = [r["timeline"] for r in runs if r["agent"] == "ours" and r["config"] == c
               and r["mode"] == "timed" and r.get("timeline") and not problems(r)]
        if not tls:
            out[str(c)] = None
            continue
        names = []
        for tl in tls:
            names += [n for n in tl["phases"] if n not in names]
        phases = {n: summary([tl["phases"][n][1] - tl["phases"][n][0] for tl in tls if n in tl["phases"]]) for n in names}
        own = [own_work(tl) for tl in tls]
        out[str(c)] = {
            "runs": len(tls),
            "phases_ms": phases,
            "at_ms": summary([tl["at"] for tl in tls]),
            "after_last_child_ms": summary([o["after_last_child_ms"] for o in own]),
            "to_goal_state_ms": summary([o["to_goal_state_ms"] for o in own]),
        }
    return out


def soak_summary(runs):
    soak = [r for r in runs if r["mode"] == "soak" and r.get("soak")]
    if not soak:
        return None
    r = soak[-1]
    rows = r["soak"]["rows"]
    later = rows[1:] or rows
    rss = [x["rss_end_kib"] for x in later]
    cpu = [x["cpu_s"] * 60 / x["secs"] for x in rows]
    return {
        "agent": r["agent"],
        "period_s": r["soak"]["period_s"],
        "rows": rows,
        "rss_after_first_kib": {"min": min(rss), "max": max(rss)},
        "cpu_per_min_s": {"min": min(cpu), "max": max(cpu)},
        "all_succeeded": all(x["success_after_s"] is not None for x in rows),
        "problems": problems(r),
    }


# --- printing ------------------------------------------------------------------

def cell(s, fmt):
    if not s:
        return "n/a"
    m = fmt.format(s["median"])
    if s["n"] == 1:
        return m
    return f"{m} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def table_lines(summ, markdown=False):
    lines = []
    for c, rows in summ.items():
        title = CONFIG_TITLE.get(int(c), f"configuration {c}")
        if markdown:
            lines += ["", f"**{title}**", "", "| | waagent-rs | waagent 2.7.3 | ours/theirs |", "|---|---:|---:|---:|"]
        else:
            lines += ["", title, f"  {'':34} {'waagent-rs':>22} {'waagent 2.7.3':>24} {'ours/theirs':>11}"]
        for key, label, _mode, _get, fmt in METRICS:
            row = rows[key]
            if not row["ours"] and not row["theirs"]:
                continue
            r = "n/a" if row["ratio"] is None else f"{row['ratio']:.3f}"
            if markdown:
                lines.append(f"| {label} | {cell(row['ours'], fmt)} | {cell(row['theirs'], fmt)} | {r} |")
            else:
                lines.append(f"  {label:34} {cell(row['ours'], fmt):>22} {cell(row['theirs'], fmt):>24} {r:>11}")
    return lines


def timeline_lines(tl):
    lines = ["", "waagent-rs's time to Ready by phase (its own timeline line; median ms)"]
    for c, t in tl.items():
        if not t:
            lines.append(f"  configuration {c}: n/a (no timeline line in the daemon's log)")
            continue
        phases = ", ".join(f"{n} {s['median']:.0f}" for n, s in t["phases_ms"].items())
        own = t["after_last_child_ms"]
        gs = t["to_goal_state_ms"]
        lines.append(f"  configuration {c} ({t['runs']} runs): {phases}; outcome at {t['at_ms']['median']:.0f}")
        lines.append(
            "    own work: last child phase to Ready "
            + ("n/a" if not own else f"{own['median']:.0f} ms")
            + ", start to end of goal-state "
            + ("n/a" if not gs else f"{gs['median']:.0f} ms")
        )
    return lines


def soak_lines(soak):
    if not soak:
        return ["", "soak: not run (BENCH_SOAK_SECS=0)"]
    lines = ["", f"soak: waagent-rs, a new goal state (next sequence number) every {soak['period_s']:.0f} s"]
    lines.append(f"  {'minute':>6} {'CPU s':>8} {'RSS KiB':>8} {'peak KiB':>9} {'requests':>9}  new sequence number")
    for x in soak["rows"]:
        ok = "n/a" if x["success_after_s"] is None else f"success after {x['success_after_s']:.1f} s"
        lines.append(f"  {x['period']:>6} {x['cpu_s']:>8.3f} {x['rss_end_kib']:>8} {x['rss_peak_kib']:>9} {x['requests']:>9}  {x['seq']}: {ok}")
    r = soak["rss_after_first_kib"]
    c = soak["cpu_per_min_s"]
    lines.append(
        f"  RSS after the first minute {r['min']}-{r['max']} KiB (growth {r['max'] - r['min']} KiB); "
        f"CPU per minute {c['min']:.3f}-{c['max']:.3f} s; "
        + ("every goal state succeeded" if soak["all_succeeded"] else "SOME GOAL STATES DID NOT SUCCEED")
    )
    return lines


def size_lines(meta):
    s = meta.get("sizes", {})
    if not s:
        return []
    k = lambda b: f"{b / 1024:.0f} KiB"
    lines = ["", "installed size"]
    if "ours_tree" in s:
        lines.append(f"  waagent-rs: {k(s['ours_tree']['bytes'])} ({', '.join(s['ours_tree']['files'])})")
    if "theirs_tree" in s:
        lines.append(
            f"  waagent 2.7.3: {k(s['theirs_tree']['bytes'])} unpacked from {s.get('theirs_deb', '?')} "
            f"(Installed-Size {s.get('theirs_installed_size_kib', '?')} KiB); "
            f"the Python it needs: {s['python_kib']} KiB installed ({', '.join(s['python_packages'])})"
        )
    if "ours_binary" in s:
        lines.append(f"  our stripped binary: {k(s['ours_binary'])}; crates in the waagent binary's normal "
                     f"dependencies: {s.get('crates', '?')} (Cargo.lock: {s.get('crates_lock', '?')} packages)")
    st = meta.get("startup")
    if st:
        lines.append("  start-up of `waagent -version` in the sandbox (best of 20, /bin/true's subtracted): " + ", ".join(
            f"{LABEL[a]} {v['best_ms']:.1f} ms" for a, v in sorted(st.items())))
    return lines


def render(summ, tl, soak, meta, runs):
    lines = [f"make bench: waagent-rs beside Debian's waagent 2.7.3 — median (min-max) of {meta.get('runs', '?')} runs each, "
             f"{meta.get('machine', '')}"]
    lines += table_lines(summ)
    lines += [
        "",
        "  Ready and extension status: wall clock from exec to the fabric receiving it. CPU: the run's cpuacct cgroup",
        "  (every process of the agent, children included). RSS: the sum over the cgroup's processes, sampled every",
        "  10 ms from the exec, each address space once (a child between its vfork and its exec shares its parent's), and",
        "  without the sandbox's stand-in for the kernel's UDF driver (mount.udf, and what it runs); PSS likewise, with",
        "  each shared page (libc, libcrypto) split among the processes mapping it;",
        "  the agent's own processes: ours, `waagent`; waagent 2.7.3's, its daemon and its python3 extension handler (the",
        "  tools both run, such as useradd, ssh-keygen and openssl, left out; ours runs them side by side, waagent in turn).",
        f"  Idle: {meta.get('idle_secs', '?')} s from {meta.get('settle_secs', '?')} s after the extension's status, "
        "in every timed run.",
        "  Processes: strace -f (fork/vfork/clone/clone3 without CLONE_THREAD) in one separate untimed run per agent and",
        "  configuration; the agent's own first process not counted.",
    ]
    for r in runs:
        if problems(r):
            lines.append(f"  NOT COUNTED: {r['name']}: {'; '.join(problems(r))}")
    lines += timeline_lines(tl)
    lines += soak_lines(soak)
    lines += size_lines(meta)
    return lines


def readme_section(summ, tl, soak, meta):
    out = [
        f"Latest `make bench`: {meta.get('date', '?')}, {meta.get('machine', '?')}; "
        f"median (min-max) of {meta.get('runs', '?')} runs of each agent per configuration, "
        f"idle figures over {meta.get('idle_secs', '?')} s.",
    ]
    if meta.get("note"):
        out += ["", meta["note"]]
    out += table_lines(summ, markdown=True)
    out += [""]
    out += ["```"] + [l for l in timeline_lines(tl) + soak_lines(soak) + size_lines(meta) if l] + ["```"]
    return out


def replace_section(text, body_lines):
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    a, b = text.find(begin), text.find(end)
    if a < 0 or b < a:
        raise ValueError("README.md has no <!-- bench:begin --> ... <!-- bench:end --> section")
    return text[: a + len(begin)] + "\n" + "\n".join(body_lines) + "\n" + text[b:]


# --- commands ------------------------------------------------------------------

def peak_makeup(r):
    """What made the peak of RSS, by process name, and what was left out of
    it: " (openssl 6.5, waagent 4.3; not counted: mount.udf 1.7)"."""
    def by_name(procs):
        sums = {}
        for p in procs:
            if not p.get("rss_kib"):
                continue  # gone between the listing and the read
            name = p.get("name") or "?"
            sums[name] = sums.get(name, 0) + p.get("rss_kib", 0)
        return ", ".join(f"{n} {kib / MIB:.1f}" for n, kib in sorted(sums.items(), key=lambda kv: -kv[1]))

    procs = r.get("peak_rss_processes") or []
    counted = by_name([p for p in procs if not p.get("left_out")])
    left_out = by_name([p for p in procs if p.get("left_out")])
    if not counted:
        return ""
    return f" ({counted}" + (f"; not counted: {left_out}" if left_out else "") + ")"


def line(path):
    with open(path) as f:
        r = json.load(f)
    p = problems(r)
    bits = []
    if r.get("ready_s") is not None:
        bits.append(f"Ready {r['ready_s']:.3f} s")
    if r.get("ext_s") is not None:
        bits.append(f"extension {r['ext_s']:.2f} s")
    if r.get("cpu_ready_s") is not None:
        bits.append(f"CPU to Ready {r['cpu_ready_s']:.3f} s")
    if r.get("peak_rss_kib"):
        bits.append(f"peak RSS {r['peak_rss_kib'] / MIB:.1f} MiB{peak_makeup(r)}")
    if r.get("peak_pss_kib"):
        bits.append(f"peak PSS {r['peak_pss_kib'] / MIB:.1f} MiB")
    if r.get("idle") and r["idle"].get("cpu_per_min_s") is not None:
        bits.append(f"idle CPU {r['idle']['cpu_per_min_s']:.4f} s/min")
    if r.get("idle"):
        bits.append(f"idle requests {r['idle']['requests_per_min']:.1f}/min")
        if r["idle"].get("connections_per_min") is not None:
            bits.append(f"connections {r['idle']['connections_per_min']:.1f}/min")
    if r.get("best_ms") is not None:
        bits.append(f"best {r['best_ms']:.1f} ms, median {r['median_ms']:.1f} ms")
    return ", ".join(bits) + ("" if not p else "  FAILED: " + "; ".join(p))


def main(argv):
    if len(argv) >= 2 and argv[0] == "line":
        print(line(argv[1]))
        return 0
    if len(argv) >= 4 and argv[0] == "summary":
        out_dir, meta_path, results_path = argv[1:4]
        readme = argv[4] if len(argv) > 4 else None
        with open(meta_path) as f:
            meta = json.load(f)
        runs = load_runs(out_dir)
        meta["startup"] = {r["agent"]: {"best_ms": r["best_ms"], "median_ms": r["median_ms"]}
                           for r in runs if r["mode"] == "startup"}
        summ = summarize(runs)
        tl = timeline_summary(runs)
        soak = soak_summary(runs)
        print("\n".join(render(summ, tl, soak, meta, runs)))
        with open(results_path, "w") as f:
            json.dump({"meta": meta, "summary": summ, "timeline": tl, "soak": soak, "runs": runs}, f, indent=1)
        if readme:
            with open(readme) as f:
                text = f.read()
            with open(readme, "w") as f:
                f.write(replace_section(text, readme_section(summ, tl, soak, meta)))
        bad = [r["name"] for r in runs if problems(r)]
        return 1 if bad else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
