#!/bin/sh
# Runs inside the sandbox (fresh /run, /etc an overlay that vanishes): the
# init script of kind $1 (sysv or rcd), installed under /tmp/t, through its
# verbs against the stub agent. Prints a transcript in which the daemon's
# pid reads PID and a stray process's OTHER.
set -u
kind=$1
T=/tmp/t
PIDFILE=/var/run/waagent.pid
pid=NONE
other=NONE
case $kind in
sysv)
	script=$T/init.d/waagent ;;
rcd)
	script=$T/rc.d/waagent
	cp "$T/rc.subr" /etc/rc.subr
	printf 'waagent_enable="YES"\nwaagent_flags="-configuration-path:%s"\n' \
		"$T/etc/waagent.conf" >/etc/rc.conf ;;
*)
	echo "usage: $0 sysv|rcd" >&2
	exit 2 ;;
esac

names() {
	sed -e "s/\([^0-9]\|^\)$pid\([^0-9]\|$\)/\1PID\2/g" \
		-e "s/\([^0-9]\|^\)$other\([^0-9]\|$\)/\1OTHER\2/g"
}
step() {
	out=$(sh "$script" "$@" 2>&1)
	rc=$?
	echo "\$ $*"
	[ -z "$out" ] || printf '%s\n' "$out" | names
	echo "rc=$rc"
}
facts() {
	if [ -e "$PIDFILE" ]; then
		echo "pid file: $(names <"$PIDFILE")"
	else
		echo "pid file: none"
	fi
}
alive() {
	if kill -0 "$1" 2>/dev/null; then echo "$2: running"; else echo "$2: gone"; fi
}

step status
step start
i=0
while [ ! -s "$PIDFILE" ] && [ "$i" -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
pid=$(cat "$PIDFILE")
facts
step status
step start
step stop
facts
alive "$pid" daemon
step status

# A pid file left naming a process that is not the agent, though
# "waagent" is in its command line.
sh -c 'sleep 300; :' /var/log/waagent.log &
other=$!
echo "$other" >"$PIDFILE"
step status
step stop
facts
alive "$other" other
kill "$other"

echo "calls:"
names <"$T/calls"
