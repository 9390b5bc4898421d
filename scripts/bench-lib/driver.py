#!/usr/bin/python3
"""One benchmark run of one agent, inside a throwaway sandbox VM.

scripts/bench runs this through scripts/sandbox, with the bench's work
directory bound on /work and, for timed runs, a cpuacct cgroup made for the
run bound on /bench-cgroup. Not meant to be run by hand.

    driver.py --agent ours|theirs --config 1|2|3 --mode timed|strace|soak
              --name NAME [--idle SECS] [--settle SECS] [--soak SECS]
              [--timeout SECS]

What it does, in order:
  1. installs the agent into the sandbox's root (an overlay on tmpfs): the
     staged tree of `make install` (ours, binary stripped) or the files of
     Debian's waagent_2.7.3 .deb (theirs), copied over /;
  2. installs the same stubs for both agents (see STUBS) and the same
     /etc/waagent.conf (see conf());
  3. starts fabric-sim on the platform's addresses, serving one extension
     handler (and the tenant certificate for configurations 2 and 3);
  4. starts `/usr/sbin/waagent -daemon` as the service file does (own
     session, / as cwd, systemd's default PATH), in the run's cgroup, and
     notes the wall-clock time just before exec;
  5. watches the fabric's record for the Ready report and the extension's
     success status, sampling the cgroup's CPU time every 5 ms and the
     resident memory of all its processes every 10 ms;
  6. optionally waits --settle seconds, then measures --idle seconds of
     steady state (CPU time, requests, memory);
  7. stops the agent (SIGTERM to its session, SIGKILL after 10 s), checks
     what it did to the VM (user, authorized_keys, host keys, the handler's
     status file) and writes /work/out/NAME.json with every raw value, and
     the agent's log, the fabric's record and (strace mode) the trace beside.

--mode strace runs the agent under `strace -f` instead, untimed, to count
the processes it spawns; --mode soak runs ours for --soak seconds after the
extension succeeded, changing the goal state every minute.
"""

import argparse
import ctypes
import json
import os
import platform
import pwd
import signal
import subprocess
import sys
import time

WORK = "/work"
OUT = WORK + "/out"
CGROUP = "/bench-cgroup"
HANDLER = "Contoso.Bench.Hello"
USER = "azureuser"
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
# systemd's default PATH for services; both agents get it, and the stubs in
# /usr/local/sbin come first in it.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What the sandbox lacks or must not really do, replaced for both agents by
# the same small scripts that note their call in /tmp/stubs.log and succeed:
#   eject           not in the image; waagent 2.7.3 dies without it (ours
#                   only warns), and there is no tray to open anyway;
#   ifup, ifdown    not in the image; waagent 2.7.3 publishes the host name
#                   with `ifdown eth0 && ifup eth0` and, without them, waits
#                   3 x 5 s; real ones would run DHCP, which nothing answers;
#   dhclient        not in the image; ours publishes the host name with
#                   `dhclient -1 -nw eth0` when neither networkd nor
#                   NetworkManager runs (same reason as ifup);
#   service, systemctl
#                   only a restart or reload of ssh/sshd is stubbed (everything
#                   else goes to the real command, which finds no init system):
#                   on a VM the init system restarts sshd outside the agent's
#                   processes; here `service ssh restart` would start a real
#                   sshd as the agent's child and count it as the agent's.
SIMPLE_STUB = """#!/bin/sh
echo "{name} $*" >> /tmp/stubs.log
exit 0
"""
SSH_RESTART_STUB = """#!/bin/sh
ssh=n verb=n
for a in "$@"; do
    case $a in
    ssh | sshd | ssh.service | sshd.service) ssh=y ;;
    restart | reload | try-restart | reload-or-restart | try-reload-or-restart) verb=y ;;
    esac
done
if [ $ssh$verb = yy ]; then
    echo "{name} $*" >> /tmp/stubs.log
    exit 0
fi
exec {real} "$@"
"""
STUBS = {
    "eject": SIMPLE_STUB,
    "ifup": SIMPLE_STUB,
    "ifdown": SIMPLE_STUB,
    "dhclient": SIMPLE_STUB,
    "service": SSH_RESTART_STUB,
    "systemctl": SSH_RESTART_STUB,
}
REAL = {"service": "/usr/sbin/service", "systemctl": "/usr/bin/systemctl"}

# The three configurations: host key type, and where the SSH key comes from.
CONFIGS = {
    1: {"host_keys": "ed25519", "certificates": False},
    2: {"host_keys": "ed25519", "certificates": True},
    3: {"host_keys": "auto", "certificates": True},
}


def conf(host_keys):
    """The one /etc/waagent.conf both agents read (every choice spelled out;
    Debian's package defaults where the benchmark has no reason to differ)."""
    return f"""# scripts/bench: the same file for waagent-rs and waagent 2.7.3
Provisioning.Agent=waagent
Provisioning.DeleteRootPassword=y
Provisioning.RegenerateSshHostKeyPair=y
Provisioning.SshHostKeyPairType={host_keys}
Provisioning.MonitorHostName=y
Provisioning.DecodeCustomData=n
Provisioning.ExecuteCustomData=n
Provisioning.AllowResetSysUser=n
ResourceDisk.Format=n
ResourceDisk.EnableSwap=n
Logs.Verbose=n
Logs.Console=y
OS.EnableFirewall=n
OS.EnableRDMA=n
OS.RootDeviceScsiTimeout=300
OS.SshDir=/etc/ssh
AutoUpdate.Enabled=n
Extensions.Enabled=y
Extensions.GoalStatePeriod=6
"""


def log(msg):
    print(f"driver: {msg}", file=sys.stderr, flush=True)


def write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def prepare(agent, config):
    tree = f"{WORK}/{agent}-root"
    # tar keeps /lib, /sbin... as the image's symlinks (merged /usr).
    subprocess.run(
        f"tar -C {tree} -cf - . | tar -C / -xf - --keep-directory-symlink",
        shell=True,
        check=True,
    )
    os.makedirs("/usr/local/sbin", exist_ok=True)
    for name, text in STUBS.items():
        write(f"/usr/local/sbin/{name}", text.format(name=name, real=REAL.get(name, "")), 0o755)
    write("/etc/waagent.conf", conf(CONFIGS[config]["host_keys"]))
    write("/tmp/handlers.json", handlers_json(0))


def handlers_json(seq):
    return json.dumps(
        [
            {
                "name": HANDLER,
                "version": "1.0.0",
                "seqNo": seq,
                "publicSettings": {"greeting": f"hello {seq}"},
                "packages": [{"version": "1.0.0", "zip": f"{WORK}/hello-1.0.0.zip"}],
            }
        ]
    )


def start_fabric(config):
    args = [
        f"{WORK}/fabric-sim",
        "--wire", "168.63.129.16:80",
        "--plugin", "168.63.129.16:32526",
        "--imds", "169.254.169.254:80",
        "--handlers", "/tmp/handlers.json",
        "--record", "/tmp/fabric.jsonl",
    ]
    if CONFIGS[config]["certificates"]:
        args += ["--tenant-cert", f"{WORK}/tenant.crt:{WORK}/tenant.key"]
    out = open("/tmp/fabric.log", "w")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd="/tmp")
    deadline = time.time() + 30
    while time.time() < deadline:
        with open("/tmp/fabric.log") as f:
            if "fabric-sim:" in f.read():
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise SystemExit("fabric-sim did not start: " + open("/tmp/fabric.log").read())


def start_agent(cgroup, strace):
    """Forks, joins the cgroup, notes the time, execs the agent; returns
    (pid, time just before exec) once the exec is done, so that no sample
    sees the forked copy of this Python process (its RSS is not the
    agent's)."""
    argv = ["/usr/sbin/waagent", "-daemon"]
    if strace:
        argv = [
            "/usr/bin/strace", "-f", "--seccomp-bpf", "-ttt", "-qq",
            "-e", "trace=fork,vfork,clone,clone3,execve", "-e", "signal=none",
            "-o", "/tmp/strace.txt",
        ] + argv
    env = {"PATH": PATH, "LANG": "C.UTF-8"}
    r, w = os.pipe()
    # Close-on-exec (os.pipe's default): EOF on done_r means the exec is done.
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(done_r)
            os.setsid()
            if cgroup:
                with open(f"{CGROUP}/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))
            os.chdir("/")
            null = os.open("/dev/null", os.O_RDONLY)
            out = os.open("/tmp/agent.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.write(w, repr(time.time()).encode())
            os.close(w)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.close(w)
    os.close(done_w)
    t0 = float(os.read(r, 64).decode())
    os.close(r)
    os.read(done_r, 1)
    os.close(done_r)
    return pid, t0


class Record:
    """The fabric's record (fabric-sim --record), read as it grows."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lines = []

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        new = [json.loads(line) for line in complete if line.strip()]
        self.lines += new
        return new


def handler_success(event, seq):
    """True when a status upload says our handler's enable of `seq` succeeded."""
    if event.get("kind") != "status":
        return False
    try:
        status = json.loads(event["content"])
        handlers = status["aggregateStatus"]["handlerAggregateStatus"]
    except (ValueError, KeyError, TypeError):
        return False
    for h in handlers:
        rs = h.get("runtimeSettingsStatus") or {}
        s = ((rs.get("settingsStatus") or {}).get("status") or {}).get("status")
        if h.get("handlerName") == HANDLER and s == "success" and str(rs.get("sequenceNumber")) == str(seq):
            return True
    return False


class Cgroup:
    def __init__(self, path):
        self.path = path

    def usage_s(self):
        try:
            with open(f"{self.path}/cpuacct.usage") as f:  # cgroup v1
                return int(f.read()) / 1e9
        except FileNotFoundError:
            with open(f"{self.path}/cpu.stat") as f:  # cgroup v2
                for line in f:
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) / 1e6
            raise

    def pids(self):
        with open(f"{self.path}/cgroup.procs") as f:
            return [int(p) for p in f.read().split()]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


# The agents' own processes, as /proc/PID/comm names them: ours is one
# `waagent`; waagent 2.7.3 is its daemon (`waagent`, the script's name) and
# its extension handler (`python3 -u /usr/sbin/waagent -run-exthandlers`).
# Everything else in the cgroup is a tool either agent runs (useradd,
# ssh-keygen, openssl, sh, mount...).
AGENT_COMMS = ("waagent", "python3")


def pss_kib(pid):
    """Proportional set size: each shared page split among the processes
    mapping it, so a sum over processes counts libc once, not once per child."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def process(pid):
    """{"pid", "ppid", "name", "rss_kib"} of a process: its name and parent
    from one read of /proc/PID/stat (the sampler's, every 10 ms, beside the
    agent it measures), its RSS from statm (stat's rss field is the kernel's
    per-CPU estimate, off by up to a few hundred KiB); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        # pid (comm) state ppid ...: comm may hold spaces and parentheses,
        # so it ends at the last ")".
        name, rest = stat[stat.index("(") + 1:].rsplit(")", 1)
        parent = int(rest.split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return {"pid": pid, "ppid": parent, "name": name, "rss_kib": rss_kib(pid)}


# kcmp(2) tells whether two processes share one address space. Between its
# clone and its exec, a child made by posix_spawn or vfork (both agents
# start their tools so) runs in its parent's memory, and /proc shows it with
# the parent's RSS: counted twice, a sample caught in that window would
# double the agent.
SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(platform.machine())
KCMP_VM = 1
_libc = ctypes.CDLL(None, use_errno=True)


def same_address_space(a, b):
    """True when a and b share one mm; False when they do not, or when kcmp
    cannot say (each is then counted)."""
    if SYS_KCMP is None:
        return False
    return _libc.syscall(SYS_KCMP, a, b, KCMP_VM, 0, 0) == 0


# scripts/sandbox-lib/mount-dvd, installed as these, stands in for the
# kernel's UDF and ISO 9660 drivers, which the sandbox's kernel lacks: on a
# VM, mount(8) asks the kernel. Neither it nor what it runs (xorriso, mount,
# dd) is counted, for either agent; the agent's own `mount` is.
SANDBOX_HELPERS = ("mount.udf", "mount.iso9660")


def counted_processes(procs, same_mm=same_address_space):
    """Of procs ({"pid", "ppid", "name", ...}), those a sum of memory counts,
    and the rest with why: one process per address space (the lowest pid),
    and nothing of the sandbox's DVD helper or below it."""
    by_pid = {p["pid"]: p for p in procs}

    def under_helper(p):
        seen = set()
        while p is not None and p["pid"] not in seen:
            if p["name"] in SANDBOX_HELPERS:
                return True
            seen.add(p["pid"])
            p = by_pid.get(p["ppid"])
        return False

    counted, left_out = [], []
    for p in sorted(procs, key=lambda p: p["pid"]):
        if under_helper(p):
            left_out.append(dict(p, why="the sandbox's DVD helper"))
            continue
        twin = next((q for q in counted if same_mm(q["pid"], p["pid"])), None)
        if twin is not None:
            left_out.append(dict(p, why=f"in the address space of pid {twin['pid']}"))
            continue
        counted.append(p)
    return counted, left_out


def status_field(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return line.split()[1] if field == "Name" else int(line.split()[1])
    except OSError:
        pass
    return None


class Sampler:
    """CPU time of the cgroup and the summed RSS of its processes, over time."""

    def __init__(self, cgroup):
        self.cg = cgroup
        self.cpu = []  # (t, seconds)
        self.peak_rss = 0
        self.peak_rss_t = None
        self.peak_procs = 0
        self.last_rss = 0
        self.peak_pss = 0
        self.peak_own_rss = 0
        self.peak_rss_procs = []

    def sample_cpu(self):
        if self.cg:
            self.cpu.append((time.time(), self.cg.usage_s()))

    def sample_rss(self):
        if not self.cg:
            return
        pids = self.cg.pids()
        procs = [p for p in map(process, pids) if p is not None]
        counted, left_out = counted_processes(procs)
        total = sum(p["rss_kib"] for p in counted)
        self.last_rss = total
        self.peak_procs = max(self.peak_procs, len(pids))
        if total > self.peak_rss:
            self.peak_rss, self.peak_rss_t = total, time.time()
            # What made the peak: a child's name is only known while it runs.
            self.peak_rss_procs = [{"name": p["name"], "rss_kib": p["rss_kib"]} for p in counted] + [
                {"name": p["name"], "rss_kib": p["rss_kib"], "left_out": p["why"]} for p in left_out]
        self.peak_pss = max(self.peak_pss, sum(pss_kib(p["pid"]) for p in counted))
        own = sum(p["rss_kib"] for p in counted if p["name"] in AGENT_COMMS)
        self.peak_own_rss = max(self.peak_own_rss, own)

    def cpu_at(self, t):
        """CPU seconds at wall-clock time t, interpolated between samples."""
        s = self.cpu
        if not s:
            return None
        if t <= s[0][0]:
            return s[0][1]
        for (ta, ca), (tb, cb) in zip(s, s[1:]):
            if ta <= t <= tb:
                return ca if tb == ta else ca + (cb - ca) * (t - ta) / (tb - ta)
        return s[-1][1]


def watch(sampler, record, pid, until, timeout_at, period=0.005):
    """Samples until `until(event)` is true for some event of the record (its
    time is returned), the agent dies, or timeout_at."""
    next_rss = 0.0
    while True:
        now = time.time()
        sampler.sample_cpu()
        if now >= next_rss:
            sampler.sample_rss()
            next_rss = now + 0.010
        for ev in record.poll():
            if ev.get("kind") == "health" and ev.get("subStatus") == "ProvisioningFailed":
                raise RunFailed(f"ProvisioningFailed: {ev.get('description')}")
            if until(ev):
                sampler.sample_cpu()
                return ev["t"]
        if now > timeout_at:
            raise RunFailed("timed out")
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done == pid:
            raise RunFailed("the agent exited")
        time.sleep(period)


def sleep_sampling(sampler, record, until_t, period=0.1):
    """Samples CPU and RSS every `period` until wall-clock until_t, reading
    the record as it grows; the last CPU sample is taken at until_t (or
    just after)."""
    while True:
        now = time.time()
        sampler.sample_rss()
        sampler.sample_cpu()
        record.poll()
        if now >= until_t:
            return
        time.sleep(min(period, until_t - now))


class RunFailed(Exception):
    pass


def stop(pid, cgroup):
    """SIGTERM to the agent's session, as a service manager stops it; what
    is left 10 s later (or once the agent itself is gone) is SIGKILLed. The
    sandbox's end would kill it anyway; this keeps the trace complete."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done == pid:
            break
        time.sleep(0.02)
    for p in (cgroup.pids() if cgroup else []) + [pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ssh_key_blob(path):
    with open(path) as f:
        return f.read().split()[1]


def verify(config, t0):
    """What the agent did to the VM; every value must be true."""
    checks = {}
    try:
        pw = pwd.getpwnam(USER)
        checks["user created"] = os.path.isdir(pw.pw_dir)
    except KeyError:
        checks["user created"] = False
    expected = ssh_key_blob(f"{WORK}/tenant.ssh.pub" if CONFIGS[config]["certificates"] else f"{WORK}/userkey.pub")
    try:
        with open(f"/home/{USER}/.ssh/authorized_keys") as f:
            checks["SSH key in authorized_keys"] = expected in f.read()
    except OSError:
        checks["SSH key in authorized_keys"] = False
    # The image's own host keys (the host's, below the overlay) must be gone,
    # and exactly the configured kinds made anew.
    want = {"ed25519"} if CONFIGS[config]["host_keys"] == "ed25519" else {"rsa", "ecdsa", "ed25519"}
    have, new = set(), set()
    for n in os.listdir("/etc/ssh"):
        if n.startswith("ssh_host_") and n.endswith("_key.pub"):
            kind = n[len("ssh_host_"):-len("_key.pub")]
            have.add(kind)
            if os.stat(f"/etc/ssh/{n}").st_mtime >= t0 - 1:
                new.add(kind)
    checks[f"host keys: only new {'+'.join(sorted(want))}"] = have == want == new
    try:
        with open(f"/var/lib/waagent/{HANDLER}-1.0.0/status/0.status") as f:
            checks["handler's status file: success"] = '"success"' in f.read()
    except OSError:
        checks["handler's status file: success"] = False
    return checks


def copy_out(name, files):
    for src, suffix in files:
        try:
            with open(src, "rb") as f:
                data = f.read()
        except OSError:
            continue
        with open(f"{OUT}/{name}.{suffix}", "wb") as f:
            f.write(data)


def requests_between(record, a, b):
    return sum(1 for e in record.lines if e.get("kind") == "request" and a <= e["t"] < b)


def connections_opened_between(record, a, b):
    """TCP connections whose first request came in [a, b): the simulator
    numbers each service's connections and records the number with each
    request."""
    first = {}
    for e in record.lines:
        if e.get("kind") == "request" and e.get("connection"):
            first.setdefault((e["service"], e["connection"]), e["t"])
    return sum(1 for t in first.values() if a <= t < b)


def startup(args):
    """Best and median wall-clock time of `waagent -version`, 20 times, less
    that of /bin/true started the same way."""
    def times(argv):
        out = []
        for _ in range(20):
            a = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"PATH": PATH})
            out.append(time.perf_counter() - a)
        return sorted(out)
    base = times(["/bin/true"])
    agent = times(["/usr/sbin/waagent", "-version"])
    result = {
        "agent": args.agent, "config": args.config, "mode": "startup", "name": args.name,
        "best_ms": (agent[0] - base[0]) * 1000, "median_ms": (agent[10] - base[10]) * 1000,
        "true_best_ms": base[0] * 1000, "checks": {},
    }
    with open(f"{OUT}/{args.name}.json", "w") as f:
        json.dump(result, f, indent=1)
    return 0


def run(args):
    cfg = args.config
    prepare(args.agent, cfg)
    if args.mode == "startup":
        return startup(args)
    fabric = start_fabric(cfg)
    cgroup = Cgroup(CGROUP) if args.mode != "strace" else None
    sampler = Sampler(cgroup)
    record = Record("/tmp/fabric.jsonl")
    result = {"agent": args.agent, "config": cfg, "mode": args.mode, "name": args.name}
    pid, t0 = start_agent(cgroup, args.mode == "strace")
    result["t0"] = t0
    try:
        timeout_at = t0 + args.timeout
        t_ready = watch(sampler, record, pid, lambda e: e.get("kind") == "health" and e.get("state") == "Ready", timeout_at)
        result["ready_s"] = t_ready - t0
        result["cpu_ready_s"] = sampler.cpu_at(t_ready)
        # The first success may have come with the Ready report's turn.
        seen = next((e["t"] for e in record.lines if handler_success(e, 0)), None)
        t_ext = seen or watch(sampler, record, pid, lambda e: handler_success(e, 0), timeout_at)
        result["ext_s"] = t_ext - t0
        result["cpu_ext_s"] = sampler.cpu_at(t_ext)
        t_done = max(t_ready, t_ext)
        if args.mode == "soak":
            result["soak"] = soak(args, sampler, record, pid, t_done)
        elif args.idle > 0:
            start = t_done + args.settle
            sleep_sampling(sampler, record, start)
            end = start + args.idle
            rss_before = sampler.peak_rss
            sleep_sampling(sampler, record, end)
            minutes = args.idle / 60
            result["idle"] = {
                "start": start,
                "end": end,
                "secs": args.idle,
                "cpu_s": None if not cgroup else sampler.cpu_at(end) - sampler.cpu_at(start),
                "requests": requests_between(record, start, end),
                "connections": connections_opened_between(record, start, end),
                "rss_end_kib": sampler.last_rss if cgroup else None,
                "peak_rss_grew_kib": (sampler.peak_rss - rss_before) if cgroup else None,
            }
            idle = result["idle"]
            idle["requests_per_min"] = idle["requests"] / minutes
            idle["connections_per_min"] = idle["connections"] / minutes
            idle["cpu_per_min_s"] = None if idle["cpu_s"] is None else idle["cpu_s"] / minutes
        if cgroup:
            result["peak_rss_kib"] = sampler.peak_rss
            result["peak_rss_at_s"] = sampler.peak_rss_t - t0
            result["peak_pss_kib"] = sampler.peak_pss
            result["peak_own_rss_kib"] = sampler.peak_own_rss
            result["peak_processes"] = sampler.peak_procs
            result["peak_rss_processes"] = sampler.peak_rss_procs
            result["processes_at_end"] = {
                str(p): {"name": status_field(p, "Name"), "rss_kib": rss_kib(p), "hwm_kib": status_field(p, "VmHWM")}
                for p in cgroup.pids()
            }
    except RunFailed as e:
        result["error"] = str(e)
    finally:
        stop(pid, cgroup)
        fabric.terminate()
    result["checks"] = verify(cfg, t0)
    result["requests_total"] = sum(1 for e in record.lines if e.get("kind") == "request")
    try:
        with open("/tmp/stubs.log") as f:
            result["stubs_called"] = f.read().splitlines()
    except OSError:
        result["stubs_called"] = []
    copy_out(args.name, [
        ("/var/log/waagent.log", "waagent.log"),
        ("/tmp/fabric.jsonl", "fabric.jsonl"),
        ("/tmp/agent.out", "agent.out"),
        ("/tmp/strace.txt", "strace"),
    ])
    with open(f"{OUT}/{args.name}.json", "w") as f:
        json.dump(result, f, indent=1)
    return 0 if "error" not in result and all(result["checks"].values()) else 1


def soak(args, sampler, record, pid, t_done):
    """Every `period` seconds a new goal state (the handler's next sequence
    number); per period: CPU, RSS, requests, and when that enable's success
    was uploaded."""
    period = min(60.0, float(args.soak))
    count = max(1, round(args.soak / period))
    rows = []
    start = t_done + args.settle
    sleep_sampling(sampler, record, start, period=1.0)
    main_pid = pid
    for m in range(1, count + 1):
        a, b = start + (m - 1) * period, start + m * period
        with open("/tmp/handlers.tmp", "w") as f:
            f.write(handlers_json(m))
        os.rename("/tmp/handlers.tmp", "/tmp/handlers.json")
        peak = 0
        peak_main = 0
        while time.time() < b:
            sampler.sample_cpu()
            sampler.sample_rss()
            peak = max(peak, sampler.last_rss)
            peak_main = max(peak_main, rss_kib(main_pid))
            record.poll()
            time.sleep(min(1.0, max(0.0, b - time.time())))
        sampler.sample_cpu()
        record.poll()
        ok = next((e["t"] for e in record.lines if handler_success(e, m) and e["t"] >= a), None)
        rows.append({
            "period": m,
            "secs": period,
            "cpu_s": sampler.cpu_at(b) - sampler.cpu_at(a),
            "rss_end_kib": rss_kib(main_pid),
            "rss_peak_kib": peak_main,
            "rss_all_peak_kib": peak,
            "requests": requests_between(record, a, b),
            "seq": m,
            "success_after_s": None if ok is None else ok - a,
        })
        log(f"soak {m}/{count}: cpu {rows[-1]['cpu_s']:.3f} s, rss {rows[-1]['rss_end_kib']} KiB, "
            f"seq {m} {'succeeded' if ok else 'NOT seen'}")
    return {"period_s": period, "rows": rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--agent", choices=["ours", "theirs"], required=True)
    p.add_argument("--config", type=int, choices=sorted(CONFIGS), required=True)
    p.add_argument("--mode", choices=["timed", "strace", "soak", "startup"], default="timed")
    p.add_argument("--name", required=True)
    p.add_argument("--idle", type=float, default=0)
    p.add_argument("--settle", type=float, default=10)
    p.add_argument("--soak", type=float, default=600)
    p.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    os.makedirs(OUT, exist_ok=True)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
