# Shared by the harnesses in bench/ that run allot replicas on loopback.
# Source it; it defines functions only.

# require_free_ports KNOB PORT...: exits 2, naming the setting to change, if
# something already answers on one of the ports.
require_free_ports() {
    local knob=$1
    shift
    local port
    for port in "$@"; do
        if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
            echo "something already listens on 127.0.0.1:$port (set $knob)" >&2
            exit 2
        fi
    done
}

# stop_processes TICKS PID...: SIGTERM, then up to 50 ticks of TICKS seconds
# for them to drain and exit (their shutdown grace), then SIGKILL whatever is
# left, and reap.
stop_processes() {
    local tick=$1
    shift
    local pid alive
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep "$tick"
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

# wait_ready NAME PORT PID LOG: waits up to 300 ticks of 0.1 s for the
# replica on PORT to answer /readyz; exits 1, showing LOG, if it exits or
# never gets ready.
wait_ready() {
    local name=$1 port=$2 pid=$3 log=$4
    for _ in $(seq 1 300); do
        curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { echo "$name exited at start-up:" >&2; cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    echo "$name never got ready" >&2
    exit 1
}
