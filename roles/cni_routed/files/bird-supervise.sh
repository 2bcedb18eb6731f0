#!/bin/sh
# The lab's service manager for BIRD (a lab node has no systemd): a loop that restarts `bird -f`
# one second after it exits, started detached in the node's namespaces.
#   bird-supervise.sh start|stop|status CONF SOCKET DIR
# start prints "started" or "running"; stop prints "stopped" or "absent" (and shuts BIRD down cleanly,
# so it takes its kernel routes with it).
set -eu
cmd=$1 conf=$2 ctl=$3 dir=$4
pidf=$dir/supervisor.pid
running() { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }
case $cmd in
  status)
    if running; then echo running; else echo absent; fi ;;
  start)
    if running; then echo running; exit 0; fi
    mkdir -p "$dir" "$(dirname "$ctl")"
    setsid sh -c 'echo $$ > "$0"; while :; do bird -f -c "$1" -s "$2" -P "$3/bird.pid" || true; echo "bird exited, restart in 1 s" >&2; sleep 1; done' \
      "$pidf" "$conf" "$ctl" "$dir" </dev/null >>"$dir/bird.log" 2>&1 &
    i=0
    while [ $i -lt 100 ]; do
      if birdc -s "$ctl" show status >/dev/null 2>&1; then echo started; exit 0; fi
      sleep 0.1; i=$((i + 1))
    done
    echo "BIRD did not answer on $ctl within 10 s; see $dir/bird.log" >&2
    exit 1 ;;
  stop)
    if ! running && ! birdc -s "$ctl" show status >/dev/null 2>&1; then echo absent; exit 0; fi
    if running; then kill "$(cat "$pidf")"; rm -f "$pidf"; fi  # the loop first: it must not restart BIRD
    birdc -s "$ctl" down >/dev/null 2>&1 || true
    i=0
    while [ -f "$dir/bird.pid" ] && kill -0 "$(cat "$dir/bird.pid")" 2>/dev/null && [ $i -lt 50 ]; do
      sleep 0.1; i=$((i + 1))
    done
    echo stopped ;;
  *)
    echo "usage: $0 start|stop|status CONF SOCKET DIR" >&2; exit 2 ;;
esac
