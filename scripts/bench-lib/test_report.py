"""Tests of make bench's parsers and arithmetic (report.py) and of the pure
parts of the driver (driver.py). Run by tests/bench_scripts.rs in `cargo
test`, or here: cd scripts/bench-lib && python3 -m unittest -v test_report"""

import json
import os
import tempfile
import time
import unittest

import driver
import report

CONTRACT = (
    "timeline (ms since start): dvd 0-4, transport-key 0-118, goal-state 5-20, "
    "certificates 118-130, user 131-150, host-keys 20-60, sshd 150-160, report 160-165; Ready at 165"
)


class Timeline(unittest.TestCase):
    def test_the_contract_example_in_a_log_line(self):
        log = "2026-12-04T21:33:12.9Z [INFO] provisioning complete\n" f"2026-12-04T21:33:13.1Z [INFO] {CONTRACT}\n"
        tl = report.parse_timeline(log)
        self.assertEqual(tl["outcome"], "Ready")
        self.assertEqual(tl["at"], 165)
        self.assertEqual(
            tl["phases"],
            {
                "dvd": (0, 4),
                "transport-key": (0, 118),
                "goal-state": (5, 20),
                "certificates": (118, 130),
                "user": (131, 150),
                "host-keys": (20, 60),
                "sshd": (150, 160),
                "report": (160, 165),
            },
        )
        # Own work: Ready 165 - end of the last child (transport-key, 118);
        # start to the end of goal-state, 20.
        self.assertEqual(report.own_work(tl), {"after_last_child_ms": 47, "to_goal_state_ms": 20})

    def test_phases_may_be_missing_and_the_outcome_may_be_a_failure(self):
        tl = report.parse_timeline("x timeline (ms since start): dvd 0-3, goal-state 4-9; ProvisioningFailed at 12")
        self.assertEqual(tl, {"phases": {"dvd": (0, 3), "goal-state": (4, 9)}, "outcome": "ProvisioningFailed", "at": 12})
        # No child phase: that figure is unknown, the other is there.
        self.assertEqual(report.own_work(tl), {"after_last_child_ms": None, "to_goal_state_ms": 9})
        only_keys = report.parse_timeline("timeline (ms since start): host-keys 2-40; Ready at 41")
        self.assertEqual(report.own_work(only_keys), {"after_last_child_ms": 1, "to_goal_state_ms": None})

    def test_it_is_tolerant_of_spacing_unknown_phases_and_junk(self):
        tl = report.parse_timeline(
            "timeline (ms since start):dvd 0 - 4 ,  new-thing 7-9, broken, backwards 9-3, x 1-2-3 ;  Ready at 10 \n"
        )
        self.assertEqual(tl["phases"], {"dvd": (0, 4), "new-thing": (7, 9)})
        self.assertEqual((tl["outcome"], tl["at"]), ("Ready", 10))

    def test_the_last_line_wins_and_no_line_is_none(self):
        log = "timeline (ms since start): dvd 0-1; Ready at 5\ntimeline (ms since start): dvd 0-2; Ready at 6\n"
        self.assertEqual(report.parse_timeline(log)["at"], 6)
        self.assertIsNone(report.parse_timeline("reported Ready\n"))
        cut = report.parse_timeline("timeline (ms since start): dvd 0-2, report 3-4")
        self.assertEqual(cut, {"phases": {"dvd": (0, 2), "report": (3, 4)}, "outcome": None, "at": None})

    def test_medians_over_runs_of_each_phase(self):
        runs = []
        for i, (tk, at) in enumerate([(100, 150), (120, 170), (110, 200)]):
            log = f"timeline (ms since start): transport-key 0-{tk}, goal-state 5-{20 + i}; Ready at {at}"
            runs.append({"agent": "ours", "config": 2, "mode": "timed", "timeline": report.parse_timeline(log), "checks": {}})
        runs.append({"agent": "theirs", "config": 2, "mode": "timed", "timeline": None, "checks": {}})
        t = report.timeline_summary(runs)["2"]
        self.assertEqual(t["runs"], 3)
        self.assertEqual(t["phases_ms"]["transport-key"]["median"], 110)
        self.assertEqual(t["phases_ms"]["goal-state"]["values"], [15, 16, 17])
        self.assertEqual(t["after_last_child_ms"]["values"], [50, 50, 90])
        self.assertEqual(t["at_ms"]["median"], 170)


STRACE = """\
79    1796420516.450196 vfork( <unfinished ...>
80    1796420516.454000 execve("/bin/sh", ["sh", "-c", "ifdown eth0 && ifup eth0"], 0x7ffd /* 3 vars */ <unfinished ...>
79    1796420516.454857 <... vfork resumed>) = 80
80    1796420516.455000 <... execve resumed>) = 0
80    1796420516.455546 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 81
81    1796420516.456000 execve("/usr/local/sbin/ifdown", ["ifdown", "eth0"], 0x55 /* 3 vars */) = -1 ENOENT (No such file or directory)
81    1796420516.456100 execve("/usr/sbin/ifdown", ["ifdown", "eth0"], 0x55 /* 3 vars */) = 0
82    1796420516.465269 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = ? ERESTARTNOINTR (To be restarted)
79    1796420517.000000 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, child_tid=0x7f, parent_tid=0x7f, exit_signal=0, stack=0x7f, stack_size=0x7fff00, tls=0x7f} => {parent_tid=[90]}, 88) = 90
79    1796420518.000000 clone3({flags=CLONE_VM|CLONE_VFORK, exit_signal=SIGCHLD, stack=0x7f, stack_size=0x9000}, 88 <unfinished ...>
79    1796420518.100000 <... clone3 resumed>) = 91
91    1796420518.100500 execve("/usr/bin/ssh-keygen", ["ssh-keygen", "-A"], 0x55 /* 2 vars */) = 0
garbage that is not strace
"""


class Strace(unittest.TestCase):
    def test_processes_threads_and_programs(self):
        ev = report.parse_strace(STRACE.splitlines(True))
        procs = [e for e in ev if e["kind"] == "process"]
        self.assertEqual([e["child"] for e in procs], [80, 81, 91])
        # A split call counts at its start.
        self.assertEqual(procs[0]["t"], 1796420516.450196)
        self.assertEqual([e["child"] for e in ev if e["kind"] == "thread"], [90])
        execs = [e["program"] for e in ev if e["kind"] == "exec"]
        self.assertEqual(execs, ["/bin/sh", "/usr/sbin/ifdown", "/usr/bin/ssh-keygen"])

    def test_counting_in_a_window(self):
        ev = report.parse_strace(STRACE.splitlines(True))
        self.assertEqual(report.count_between(ev, "process", 1796420516.0, 1796420517.0), 2)
        self.assertEqual(report.count_between(ev, "process", 1796420517.5, 1796420519.0), 1)
        self.assertEqual(report.programs(ev, 0, 2e9), {"ifdown": 1, "sh": 1, "ssh-keygen": 1})


class Statistics(unittest.TestCase):
    def test_median_range_and_ratio(self):
        self.assertEqual(report.median([3, 1, 2]), 2)
        self.assertEqual(report.median([4, 1, 3, 2]), 2.5)
        self.assertIsNone(report.median([]))
        s = report.summary([0.5, None, 0.25, 1.0])
        self.assertEqual((s["median"], s["min"], s["max"], s["n"]), (0.5, 0.25, 1.0, 3))
        self.assertIsNone(report.summary([None]))
        self.assertEqual(report.ratio(report.summary([1, 2, 3]), report.summary([8])), 0.25)
        self.assertIsNone(report.ratio(report.summary([1]), report.summary([0])))
        self.assertIsNone(report.ratio(None, report.summary([1])))

    def test_failed_runs_are_left_out_and_named(self):
        good = {"name": "a", "agent": "ours", "config": 1, "mode": "timed", "ready_s": 0.5, "checks": {"user created": True}}
        bad = dict(good, name="b", ready_s=0.1, checks={"user created": False})
        err = dict(good, name="c", ready_s=0.2, error="timed out")
        self.assertEqual(report.problems(bad), ["check failed: user created"])
        self.assertEqual(report.problems(err), ["timed out"])
        self.assertEqual(report.metric_values([good, bad, err], "ours", 1, "timed", lambda r: r["ready_s"]), [0.5])

    def test_a_table_row_has_both_agents_and_the_ratio(self):
        runs = [
            {"name": f"{a}{i}", "agent": a, "config": 1, "mode": "timed", "checks": {}, "ready_s": v,
             "ext_s": 5, "cpu_ready_s": 0.1, "cpu_ext_s": 0.2, "peak_rss_kib": 2048,
             "idle": {"cpu_per_min_s": 0.01, "rss_end_kib": 1024, "requests_per_min": 20}}
            for a, vals in (("ours", [0.1, 0.3, 0.2]), ("theirs", [1.0, 1.2, 1.1])) for i, v in enumerate(vals)
        ]
        row = report.summarize(runs)["1"]["ready_s"]
        self.assertEqual(row["ours"]["median"], 0.2)
        self.assertAlmostEqual(row["ratio"], 0.2 / 1.1)
        text = "\n".join(report.table_lines(report.summarize(runs)))
        self.assertIn("0.200 (0.100-0.300)", text)
        self.assertIn("1.100 (1.000-1.200)", text)

    def test_a_run_line_names_what_made_the_peak_of_rss(self):
        run = {"name": "ours-c1-r1", "checks": {}, "peak_rss_kib": 11264, "peak_rss_processes": [
            {"name": "waagent", "rss_kib": 4352}, {"name": "openssl", "rss_kib": 5120},
            {"name": "sh", "rss_kib": 896}, {"name": "sh", "rss_kib": 896},
            {"name": "mount.udf", "rss_kib": 1740, "left_out": "the sandbox's DVD helper"},
            {"name": None, "rss_kib": 0}]}
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(run, f)
            f.flush()
            self.assertEqual(report.line(f.name),
                             "peak RSS 11.0 MiB (openssl 5.0, waagent 4.2, sh 1.8; not counted: mount.udf 1.7)")
        self.assertEqual(report.peak_makeup({"peak_rss_kib": 1024}), "")

    def test_the_readme_section_is_replaced_between_its_markers(self):
        text = "intro\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\nrest\n"
        self.assertEqual(
            report.replace_section(text, ["new", "table"]),
            "intro\n<!-- bench:begin -->\nnew\ntable\n<!-- bench:end -->\nrest\n",
        )
        with self.assertRaises(ValueError):
            report.replace_section("no markers", ["x"])


def status(seq, state, name=driver.HANDLER):
    return {
        "kind": "status",
        "t": 1.0,
        "content": json.dumps({"aggregateStatus": {"handlerAggregateStatus": [{
            "handlerName": name,
            "runtimeSettingsStatus": {"sequenceNumber": seq, "settingsStatus": {"status": {"status": state}}},
        }]}}),
    }


class Driver(unittest.TestCase):
    def test_a_connection_counts_where_its_first_request_came(self):
        class Record:
            lines = [
                {"kind": "request", "service": "Wire", "connection": 1, "t": 1.0},
                {"kind": "request", "service": "Wire", "connection": 1, "t": 7.0},
                {"kind": "request", "service": "HostPlugin", "connection": 1, "t": 7.5},
                {"kind": "request", "service": "Wire", "connection": 2, "t": 13.0},
                {"kind": "status", "t": 13.5},
                {"kind": "request", "service": "Wire", "t": 14.0},
            ]
        # Wire 1 was opened before the window; HostPlugin 1 and Wire 2 in it.
        self.assertEqual(driver.connections_opened_between(Record, 5.0, 20.0), 2)
        self.assertEqual(driver.connections_opened_between(Record, 0.0, 5.0), 1)
        self.assertEqual(driver.requests_between(Record, 5.0, 20.0), 4)

    def test_memory_counts_each_address_space_once_and_not_the_sandboxs_dvd_helper(self):
        procs = [
            {"pid": 10, "ppid": 1, "name": "waagent"},
            {"pid": 12, "ppid": 10, "name": "waagent"},  # between its vfork and its exec
            {"pid": 13, "ppid": 10, "name": "openssl"},
            {"pid": 14, "ppid": 10, "name": "mount"},
            {"pid": 15, "ppid": 14, "name": "mount.udf"},
            {"pid": 16, "ppid": 15, "name": "xorriso"},
            {"pid": 17, "ppid": 15, "name": "mount"},
        ]
        shared = {frozenset((10, 12))}
        counted, left_out = driver.counted_processes(procs, lambda a, b: frozenset((a, b)) in shared)
        self.assertEqual([p["pid"] for p in counted], [10, 13, 14])
        self.assertEqual({p["pid"]: p["why"] for p in left_out}, {
            12: "in the address space of pid 10",
            15: "the sandbox's DVD helper",
            16: "the sandbox's DVD helper",
            17: "the sandbox's DVD helper",
        })

    def test_kcmp_tells_a_thread_from_a_forked_child(self):
        if driver.SYS_KCMP is None:
            self.skipTest("no kcmp number for this machine")
        me = os.getpid()
        if not driver.same_address_space(me, me):
            self.skipTest("kcmp(2) does not answer here (a kernel without CONFIG_KCMP?)")
        child = os.fork()
        if child == 0:
            time.sleep(5)
            os._exit(0)
        try:
            self.assertFalse(driver.same_address_space(me, child))
            forked = driver.process(child)
            self.assertEqual((forked["pid"], forked["ppid"]), (child, me))
            self.assertEqual(forked["name"], driver.process(me)["name"])
            self.assertGreater(forked["rss_kib"], 0)
        finally:
            os.kill(child, 9)
            os.waitpid(child, 0)
        # Gone between the cgroup's listing and the read: not sampled at all.
        self.assertIsNone(driver.process(child))

    def test_the_extension_succeeded_only_for_its_handler_and_sequence_number(self):
        self.assertTrue(driver.handler_success(status(0, "success"), 0))
        self.assertFalse(driver.handler_success(status(0, "transitioning"), 0))
        self.assertFalse(driver.handler_success(status(1, "success"), 0))
        self.assertFalse(driver.handler_success(status(0, "success", name="Other.Handler"), 0))
        self.assertFalse(driver.handler_success({"kind": "status", "content": "not json"}, 0))
        self.assertFalse(driver.handler_success({"kind": "request"}, 0))
        # waagent writes the sequence number as a string in some versions.
        self.assertTrue(driver.handler_success(status("3", "success"), 3))

    def test_the_record_is_read_as_it_grows_never_half_a_line(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "fabric.jsonl")
            rec = driver.Record(path)
            self.assertEqual(rec.poll(), [])
            with open(path, "w") as f:
                f.write('{"kind": "request", "t": 1}\n{"kind": "hea')
            self.assertEqual(rec.poll(), [{"kind": "request", "t": 1}])
            with open(path, "a") as f:
                f.write('lth", "t": 2}\n')
            self.assertEqual(rec.poll(), [{"kind": "health", "t": 2}])
            self.assertEqual(len(rec.lines), 2)

    def test_cpu_time_is_interpolated_between_samples(self):
        s = driver.Sampler(None)
        s.cpu = [(10.0, 1.0), (10.01, 1.02), (10.02, 1.02)]
        self.assertAlmostEqual(s.cpu_at(10.005), 1.01)
        self.assertEqual(s.cpu_at(9.0), 1.0)
        self.assertEqual(s.cpu_at(11.0), 1.02)

    def test_both_agents_get_the_same_configuration(self):
        ed = driver.conf("ed25519")
        self.assertIn("Provisioning.SshHostKeyPairType=ed25519\n", ed)
        self.assertIn("AutoUpdate.Enabled=n\n", ed)
        self.assertIn("Extensions.Enabled=y\n", ed)
        self.assertEqual(driver.conf("auto").replace("=auto", "=ed25519"), ed)


if __name__ == "__main__":
    unittest.main()
