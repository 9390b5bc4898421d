# waagent-rs: build, install and uninstall.
#
# Needs GNU make (gmake on FreeBSD); recipes use only POSIX sh.
#
#   make                        build target/release/waagent (cargo, --locked)
#   make install                install the binary, config, init file, log rotation
#   make uninstall              remove what install put there
#   make test                   fmt check, clippy, cargo test, the boot test,
#                               make cross
#   make boot-test              the .deb booted for real: a Debian 12 root under
#                               systemd in systemd-nspawn (scripts/boot-test)
#   make cross                  FreeBSD: clippy of every target; arm64 Linux:
#                               the tests under qemu-user, the release binary
#                               (scripts/cross; Debian's rustc-web, as root)
#   make faults                 the fault matrix alone, printed (make test runs it too)
#   make size                   release binary size (x86_64, and arm64 when
#                               the cross tools are here) and start-up time
#   make bench                  measure beside Debian's waagent 2.7.3 (scripts/bench)
#   make fuzz                   fuzz every parser of outside input, FUZZ_SECONDS
#                               (default 60) per target (scripts/fuzz)
#   make demo                   build, install into a throwaway root and run the agent there
#
# Every variable below can be overridden on the command line, e.g.
#   make install DESTDIR=/tmp/root PREFIX=/usr INIT=systemd DISTRO=debian
#
# install never builds when BIN is given and exists, never runs systemctl or
# any other service manager, and never overwrites an existing waagent.conf
# that differs from the shipped one (the new file goes to waagent.conf.new).
# Enabling the service is the job of "waagent -register-service".

# Operating system (uname -s); decides FreeBSD vs Linux defaults.
ifeq ($(origin OS),undefined)
OS := $(shell uname -s)
endif

ifeq ($(OS),FreeBSD)
PREFIX ?= /usr/local
SYSCONFDIR ?= $(PREFIX)/etc
else
PREFIX ?= /usr
SYSCONFDIR ?= /etc
endif

DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
SYSTEMDUNITDIR ?= /lib/systemd/system
RCDIR ?= $(PREFIX)/etc/rc.d
INITDDIR ?= $(SYSCONFDIR)/init.d
LOGROTATEDIR ?= $(SYSCONFDIR)/logrotate.d
NEWSYSLOGDIR ?= $(SYSCONFDIR)/newsyslog.conf.d

CARGO ?= cargo
# The binary to install. The default path is built by cargo if it is missing;
# any other path must already exist.
RELEASE_BIN := target/release/waagent
BIN ?= $(RELEASE_BIN)

# Init system: systemd, rcd (FreeBSD rc.d) or sysv (LSB init script).
VALID_INITS := systemd rcd sysv
ifeq ($(origin INIT),undefined)
ifeq ($(OS),FreeBSD)
INIT := rcd
else ifneq ($(wildcard /run/systemd/system),)
INIT := systemd
else ifneq ($(shell command -v systemctl 2>/dev/null),)
INIT := systemd
else
INIT := sysv
endif
endif

# Which conf/waagent-$(DISTRO).conf to install; "generic" is conf/waagent.conf.
VALID_DISTROS := generic $(patsubst conf/waagent-%.conf,%,$(wildcard conf/waagent-*.conf))
ifeq ($(origin DISTRO),undefined)
ifeq ($(OS),FreeBSD)
DISTRO := freebsd
else
DISTRO := $(shell \
	if [ -r /etc/os-release ]; then . /etc/os-release; fi; \
	for id in $$ID $$ID_LIKE; do \
		case "$$id" in \
		(ubuntu) echo ubuntu; exit 0;; \
		(debian) echo debian; exit 0;; \
		(rhel|centos|ol|fedora) echo redhat; exit 0;; \
		(sles|suse|opensuse*) echo suse; exit 0;; \
		(coreos|flatcar) echo coreos; exit 0;; \
		esac; \
	done; \
	echo generic)
endif
endif

ifeq ($(DISTRO),generic)
CONF_SRC := conf/waagent.conf
else
CONF_SRC := conf/waagent-$(DISTRO).conf
endif
CONF_DST := $(SYSCONFDIR)/waagent.conf

# Init file per INIT: source, destination, mode.
INIT_SRC_systemd := packaging/systemd/waagent.service
INIT_DST_systemd := $(SYSTEMDUNITDIR)/waagent.service
INIT_MODE_systemd := 0644
INIT_SRC_rcd := packaging/rc.d/waagent
INIT_DST_rcd := $(RCDIR)/waagent
INIT_MODE_rcd := 0555
INIT_SRC_sysv := packaging/sysv/waagent
INIT_DST_sysv := $(INITDDIR)/waagent
INIT_MODE_sysv := 0755
INIT_SRC = $(INIT_SRC_$(INIT))
INIT_DST = $(INIT_DST_$(INIT))
INIT_MODE = $(INIT_MODE_$(INIT))

# Log rotation: newsyslog on FreeBSD, logrotate elsewhere.
ifeq ($(OS),FreeBSD)
LOGCONF_SRC := packaging/newsyslog/waagent.conf
LOGCONF_DST := $(NEWSYSLOGDIR)/waagent.conf
else
LOGCONF_SRC := packaging/logrotate/waagent
LOGCONF_DST := $(LOGROTATEDIR)/waagent
endif

SUBST = sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g'

# install and uninstall refuse unknown INIT or DISTRO values before doing
# anything (including building).
ifneq ($(filter install uninstall,$(MAKECMDGOALS)),)
ifneq ($(words $(INIT)) $(filter $(VALID_INITS),$(INIT)),1 $(INIT))
$(error INIT='$(INIT)' is not valid; use one of: $(VALID_INITS))
endif
ifneq ($(words $(DISTRO)) $(filter $(VALID_DISTROS),$(DISTRO)),1 $(DISTRO))
$(error DISTRO='$(DISTRO)' is not valid; use one of: $(VALID_DISTROS))
endif
endif

.PHONY: all build install uninstall test boot-test cross faults size bench clean demo fuzz

all: build

build:
	$(CARGO) build --release --locked

# Only the default binary path has a rule: a BIN given on the command line is
# used as it is, and a missing default binary is built once.
$(RELEASE_BIN):
	$(CARGO) build --release --locked

install: $(BIN)
	install -d "$(DESTDIR)$(SBINDIR)" "$(DESTDIR)$(SYSCONFDIR)" \
		"$(DESTDIR)$(dir $(INIT_DST))" "$(DESTDIR)$(dir $(LOGCONF_DST))"
	install -m 0755 "$(BIN)" "$(DESTDIR)$(SBINDIR)/waagent"
	@if [ -e "$(DESTDIR)$(CONF_DST)" ] && ! cmp -s "$(CONF_SRC)" "$(DESTDIR)$(CONF_DST)"; then \
		install -m 0644 "$(CONF_SRC)" "$(DESTDIR)$(CONF_DST).new" && \
		echo "note: $(DESTDIR)$(CONF_DST) exists and was kept; the new configuration is in $(DESTDIR)$(CONF_DST).new"; \
	else \
		echo "install -m 0644 $(CONF_SRC) $(DESTDIR)$(CONF_DST)"; \
		install -m 0644 "$(CONF_SRC)" "$(DESTDIR)$(CONF_DST)"; \
	fi
	rm -f "$(DESTDIR)$(INIT_DST)"
	$(SUBST) "$(INIT_SRC)" > "$(DESTDIR)$(INIT_DST)"
	chmod $(INIT_MODE) "$(DESTDIR)$(INIT_DST)"
	install -m 0644 "$(LOGCONF_SRC)" "$(DESTDIR)$(LOGCONF_DST)"

uninstall:
	rm -f "$(DESTDIR)$(SBINDIR)/waagent" "$(DESTDIR)$(INIT_DST)" \
		"$(DESTDIR)$(LOGCONF_DST)" "$(DESTDIR)$(CONF_DST).new"
	@if [ -e "$(DESTDIR)$(CONF_DST)" ]; then \
		if cmp -s "$(CONF_SRC)" "$(DESTDIR)$(CONF_DST)"; then \
			echo "rm -f $(DESTDIR)$(CONF_DST)"; rm -f "$(DESTDIR)$(CONF_DST)"; \
		else \
			echo "note: $(DESTDIR)$(CONF_DST) was modified and is kept"; \
		fi; \
	fi

# As root the namespace sandbox must work: its tests fail instead of
# skipping (WAAGENT_RS_REQUIRE_SANDBOX), so CI cannot pass without them.
# The boot test (scripts/boot-test) runs after cargo test, under the same
# rule. Likewise make cross (WAAGENT_RS_REQUIRE_CROSS): as root
# scripts/setup installs its tools, so only a non-root run may skip it.
# Tests that cannot run here (not root, no ../shared samples) note it in
# SKIP_LOG; the last lines of the run list them.
SKIP_LOG = target/skipped-tests.txt
test:
	./scripts/setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	@mkdir -p target && rm -f "$(SKIP_LOG)"
	@if [ "$$(id -u)" = 0 ]; then \
		WAAGENT_RS_REQUIRE_SANDBOX=1 WAAGENT_RS_REQUIRE_CROSS=1; \
		export WAAGENT_RS_REQUIRE_SANDBOX WAAGENT_RS_REQUIRE_CROSS; \
	fi; \
	WAAGENT_RS_SKIP_LOG="$(CURDIR)/$(SKIP_LOG)"; export WAAGENT_RS_SKIP_LOG; \
	$(CARGO) test --locked; status=$$?; \
	CARGO="$(CARGO)" ./scripts/boot-test || status=1; \
	./scripts/cross || status=1; \
	if [ -s "$(SKIP_LOG)" ]; then \
		echo; echo "make test: these tests did not run here (they passed by skipping):"; \
		sort -u "$(SKIP_LOG)" | sed 's/^/  /'; \
		echo "make test: suites skipped: $$(cut -d: -f1 "$(SKIP_LOG)" | sort -u | tr '\n' ' ')"; \
	else \
		echo "make test: every test ran; none was skipped"; \
	fi; \
	exit $$status

# The agent's .deb installed into a minimal Debian 12 root and booted twice
# under systemd in systemd-nspawn, against fabric-sim inside: provisioning,
# the journal, restart, stop, the firewall at boot, extensions after a
# reboot, purge (scripts/boot-test; PASS/FAIL per assertion, logs in
# target/boot-test/). As root; the root file system is cached in
# /var/cache/waagent-rs. About 5 minutes cold, 40 seconds with the cache and
# a built package.
boot-test:
	@if [ "$$(id -u)" = 0 ]; then WAAGENT_RS_REQUIRE_SANDBOX=1; export WAAGENT_RS_REQUIRE_SANDBOX; fi; \
	CARGO="$(CARGO)" ./scripts/boot-test

# The platforms besides x86_64 Linux (scripts/cross says how each is
# tested): FreeBSD x86_64 type-checked and linted with clippy -D warnings
# (Debian's rust-web-clippy), not linked; arm64 Linux built, its unit and
# integration tests run under qemu-user (the sandbox's skip, saying so),
# the release binary run. Debian's rustc-web 1.96 with -Zbuild-std, in
# target/cross. Skips, saying why, when its tools are missing.
cross:
	./scripts/cross

# The fault matrix (tests/faults_e2e.rs), alone and printed: every transient
# fault on every URL and a SIGKILL at every step, each in its own sandbox (as
# root). "make test" runs it too, within cargo test; the matrix is also left in
# target/tmp/fault-matrix.txt. WAAGENT_RS_FAULT_ONLY=TEXT runs only the cases
# whose row or column contains TEXT.
faults:
	@if [ "$$(id -u)" = 0 ]; then WAAGENT_RS_REQUIRE_SANDBOX=1; export WAAGENT_RS_REQUIRE_SANDBOX; fi; \
	$(CARGO) test --locked --test faults_e2e -- --nocapture

# Size of the stripped release binary, for this machine and (built by
# scripts/cross, when its tools are here) for arm64 Linux, and the
# best-of-20 wall-clock time of "waagent -version" (process start-up
# included), with hyperfine if installed, else with date +%s%N.
# Informational only.
size: build
	@cp "$(RELEASE_BIN)" "$(RELEASE_BIN).stripped" && \
	{ strip "$(RELEASE_BIN).stripped" 2>/dev/null || true; } && \
	bytes=$$(wc -c < "$(RELEASE_BIN).stripped" | tr -d ' ') && \
	rm -f "$(RELEASE_BIN).stripped" && \
	echo "size: $$(uname -m) ($$(uname -s)): $$bytes bytes ($$((bytes / 1024)) KiB) stripped"
	@./scripts/cross size
	@if command -v hyperfine >/dev/null 2>&1; then \
		hyperfine -N --warmup 3 --runs 20 "$(RELEASE_BIN) -version"; \
	elif [ "$$(date +%N)" != N ] && [ "$$(date +%N)" != "%N" ]; then \
		best=; base=; i=0; \
		while [ $$i -lt 20 ]; do \
			t0=$$(date +%s%N); t1=$$(date +%s%N); \
			d=$$((t1 - t0)); \
			if [ -z "$$base" ] || [ $$d -lt $$base ]; then base=$$d; fi; \
			t0=$$(date +%s%N); \
			"$(RELEASE_BIN)" -version >/dev/null 2>&1; \
			t1=$$(date +%s%N); \
			d=$$((t1 - t0)); \
			if [ -z "$$best" ] || [ $$d -lt $$best ]; then best=$$d; fi; \
			i=$$((i + 1)); \
		done; \
		echo "start-up: $$(((best - base) / 1000)) us for '$(RELEASE_BIN) -version' (best of 20, measured with date(1); its own $$((base / 1000)) us subtracted)"; \
	else \
		echo "start-up: not measured (needs hyperfine or date +%N)"; \
	fi

# Size and start-up; as root, waagent-rs beside Debian's waagent 2.7.3 in
# sandboxed VMs against fabric-sim (time to Ready and to an extension's
# status, CPU, memory, processes, requests, installed size, a soak), the
# BENCH_* knobs and the README table: see scripts/bench. About 60 minutes.
bench:
	./scripts/bench

# Every fuzz target of tests/fuzz for FUZZ_SECONDS each: libFuzzer with the
# nightly toolchain, else a bounded stable loop; the table it ends with is
# also in target/fuzz/summary.txt. Not part of "test" (it takes minutes);
# tests/fuzz_targets.rs runs the same bodies briefly in every cargo test.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) CARGO=$(CARGO) ./scripts/fuzz $(FUZZ_TARGETS)

# The README's first command: the agent's main job, in a throwaway root.
demo:
	./scripts/demo

clean:
	$(CARGO) clean
