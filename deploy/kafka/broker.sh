#!/usr/bin/env bash
# A local KRaft Kafka for development and tests, built from Apache Kafka's own jars on
# Maven Central (see pom.xml): no tarball, no Docker.
#
#   broker.sh fetch                                   jars into the cache (once)
#   broker.sh start [--nodes 1|3] [--port P] [--dir D] fresh cluster, prints bootstrap
#   broker.sh start --node N [--dir D]                 restart one stopped node, data kept
#   broker.sh stop  [--node N] [--dir D]               SIGTERM, SIGKILL after a timeout
#   broker.sh kill  --node N [--dir D]                 SIGKILL one node (crash tests)
#   broker.sh status [--dir D]
#
# Every node is a combined broker+controller on 127.0.0.1. Node i (0-based) listens for
# clients on P+i and for the controller quorum on P+NODES+i, so a cluster uses the 2*NODES
# ports starting at P. With 3 nodes every internal topic is replicated 3 ways with
# min.insync.replicas=2, so the cluster keeps taking acks=all writes with one node down.
#
# Environment: FUNNELSTREAM_KAFKA_CACHE (jar cache), FUNNELSTREAM_KAFKA_DIR (default --dir),
# FUNNELSTREAM_KAFKA_HEAP (default -Xms64m -Xmx512m), JAVA (default: java on PATH).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${FUNNELSTREAM_KAFKA_CACHE:-$HOME/.cache/funnelstream/kafka}"
JAVA="${JAVA:-java}"
# Split on spaces into JVM arguments; 512 MiB per node keeps three nodes well inside
# a developer machine next to the tests.
read -ra HEAP <<<"${FUNNELSTREAM_KAFKA_HEAP:--Xms64m -Xmx512m}"
START_TIMEOUT_S=90
STOP_TIMEOUT_S=20

die() {
    echo "broker.sh: $*" >&2
    exit 1
}

# The cache is keyed by the pom's content, so changing the Kafka version fetches anew
# and never mixes jars of two versions on one classpath.
jars_dir() {
    local sum
    sum="$(sha256sum "$HERE/pom.xml" | cut -c1-12)"
    echo "$CACHE/jars-$sum"
}

cmd_fetch() {
    local jars tmp
    jars="$(jars_dir)"
    if [[ -f "$jars/.complete" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    mkdir -p "$CACHE"
    tmp="$(mktemp -d "$CACHE/fetch.XXXXXX")"
    # Fetch into a temporary dir and rename, so an interrupted fetch never looks complete.
    mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >&2
    touch "$tmp/.complete"
    rm -rf "$jars"
    mv "$tmp" "$jars"
}

# --- cluster layout, persisted in DIR/cluster.env so later commands need only --dir ---

load_layout() {
    [[ -f "$DIR/cluster.env" ]] || die "no cluster in $DIR (run: broker.sh start --dir $DIR)"
    # shellcheck disable=SC1091
    source "$DIR/cluster.env"
}

bootstrap_servers() {
    local i out=""
    for ((i = 0; i < NODES; i++)); do
        out+="${out:+,}127.0.0.1:$((PORT + i))"
    done
    echo "$out"
}

node_pid() {
    local pidfile="$DIR/node-$1/pid"
    [[ -f "$pidfile" ]] || return 1
    local pid
    pid="$(cat "$pidfile")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

write_configs() {
    local i voters="" rf=$NODES isr=$((NODES > 1 ? 2 : 1))
    for ((i = 0; i < NODES; i++)); do
        voters+="${voters:+,}$((i + 1))@127.0.0.1:$((PORT + NODES + i))"
    done
    cat >"$DIR/log4j2.properties" <<'EOF'
# Broker logs go to the node's server.log; INFO is kept for startup and failover messages.
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
EOF
    for ((i = 0; i < NODES; i++)); do
        mkdir -p "$DIR/node-$i/data"
        cat >"$DIR/node-$i/server.properties" <<EOF
process.roles=broker,controller
node.id=$((i + 1))
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$((PORT + i)),CONTROLLER://127.0.0.1:$((PORT + NODES + i))
advertised.listeners=PLAINTEXT://127.0.0.1:$((PORT + i))
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DIR/node-$i/data

# Topics are created explicitly (Log.ensure_topic), as in production.
auto.create.topics.enable=false
num.partitions=8
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr

# Fast start and fast tests: no join delay for the first group member, a dead node is
# fenced within seconds.
group.initial.rebalance.delay.ms=0
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=6000

# Two cores for the whole machine: few threads per node.
num.network.threads=2
num.io.threads=2
background.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.segment.bytes=16777216
log.retention.hours=24
EOF
    done
}

format_node() {
    "$JAVA" "${HEAP[@]}" -cp "$(jars_dir)/*" \
        -Dlog4j2.configurationFile="$DIR/log4j2.properties" \
        kafka.tools.StorageTool format --ignore-formatted \
        --cluster-id="$CLUSTER_ID" -c "$DIR/node-$1/server.properties" >"$DIR/node-$1/format.log" 2>&1 ||
        die "formatting node $1 failed: $(tail -5 "$DIR/node-$1/format.log")"
}

launch_node() {
    local i=$1
    if node_pid "$i" >/dev/null; then
        return 0
    fi
    # setsid: the broker outlives this script and ignores the caller's Ctrl-C.
    setsid "$JAVA" "${HEAP[@]}" -XX:+UseSerialGC -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$DIR/log4j2.properties" \
        -cp "$(jars_dir)/*" kafka.Kafka "$DIR/node-$i/server.properties" \
        >>"$DIR/node-$i/server.log" 2>&1 </dev/null &
    echo $! >"$DIR/node-$i/pid"
}

# Ready means the node logged that its server started (it has joined the quorum and
# registered with the controller) and its client port accepts connections.
wait_ready() {
    local i deadline=$((SECONDS + START_TIMEOUT_S))
    for i in "$@"; do
        while true; do
            node_pid "$i" >/dev/null ||
                die "node $i exited during startup: $(tail -20 "$DIR/node-$i/server.log")"
            if grep -q "Kafka Server started" "$DIR/node-$i/server.log" 2>/dev/null &&
                (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + i))") 2>/dev/null; then
                break
            fi
            ((SECONDS < deadline)) ||
                die "node $i not ready after ${START_TIMEOUT_S}s; see $DIR/node-$i/server.log"
            sleep 0.2
        done
    done
}

cmd_start() {
    local i pids=() nodes=()
    if [[ -n "$ONLY_NODE" ]]; then
        load_layout
        [[ -f "$DIR/node-$ONLY_NODE/server.properties" ]] || die "no node $ONLY_NODE in $DIR"
        if node_pid "$ONLY_NODE" >/dev/null; then
            bootstrap_servers
            return 0
        fi
        cmd_fetch
        # A restarted node logs "started" again; only a fresh line counts.
        : >"$DIR/node-$ONLY_NODE/server.log"
        launch_node "$ONLY_NODE"
        wait_ready "$ONLY_NODE"
        bootstrap_servers
        return 0
    fi
    [[ "$NODES" == 1 || "$NODES" == 3 ]] || die "--nodes must be 1 or 3"
    if [[ -f "$DIR/cluster.env" ]]; then
        (
            load_layout
            for ((i = 0; i < NODES; i++)); do
                if node_pid "$i" >/dev/null; then
                    die "a cluster is running in $DIR ($(bootstrap_servers)); stop it first"
                fi
            done
        )
    fi
    # Only ever wipe a directory this script made: --dir pointing at $HOME must not hurt.
    if [[ -d "$DIR" && ! -f "$DIR/cluster.env" && -n "$(ls -A "$DIR")" ]]; then
        die "$DIR exists, is not empty and holds no cluster; pick another --dir"
    fi
    cmd_fetch
    rm -rf "$DIR"
    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    # A Kafka cluster id is 16 random bytes in unpadded URL-safe base64.
    CLUSTER_ID="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    printf 'NODES=%s\nPORT=%s\nCLUSTER_ID=%s\n' "$NODES" "$PORT" "$CLUSTER_ID" >"$DIR/cluster.env"
    write_configs
    for ((i = 0; i < NODES; i++)); do
        format_node "$i" &
        pids+=($!)
        nodes+=("$i")
    done
    for i in "${pids[@]}"; do
        wait "$i" || die "storage format failed"
    done
    for i in "${nodes[@]}"; do
        launch_node "$i"
    done
    wait_ready "${nodes[@]}"
    bootstrap_servers | tee "$DIR/bootstrap"
}

stop_nodes() {
    local signal=$1
    shift
    local i pid pids=() deadline=$((SECONDS + STOP_TIMEOUT_S))
    # Signal every node at once: stopping them one by one makes the last ones wait for a
    # controller quorum that has already gone.
    for i in "$@"; do
        if pid="$(node_pid "$i")"; then
            kill "-$signal" "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                echo "broker.sh: pid $pid did not stop in ${STOP_TIMEOUT_S}s; killing" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.1
        done
    done
    for i in "$@"; do
        rm -f "$DIR/node-$i/pid"
    done
}

all_nodes() {
    local i
    for ((i = 0; i < NODES; i++)); do
        echo "$i"
    done
}

cmd_stop() {
    [[ -f "$DIR/cluster.env" ]] || return 0
    load_layout
    if [[ -n "$ONLY_NODE" ]]; then
        stop_nodes TERM "$ONLY_NODE"
    else
        # shellcheck disable=SC2046
        stop_nodes TERM $(all_nodes)
    fi
}

cmd_kill() {
    [[ -n "$ONLY_NODE" ]] || die "kill needs --node N"
    load_layout
    stop_nodes KILL "$ONLY_NODE"
}

cmd_status() {
    local i pid up=0
    load_layout
    for ((i = 0; i < NODES; i++)); do
        if pid="$(node_pid "$i")"; then
            echo "node $i: running (pid $pid, 127.0.0.1:$((PORT + i)))"
            up=$((up + 1))
        else
            echo "node $i: stopped"
        fi
    done
    echo "bootstrap: $(bootstrap_servers)"
    ((up > 0))
}

COMMAND="${1:-}"
shift || true
NODES=1
PORT=19092
DIR="${FUNNELSTREAM_KAFKA_DIR:-${TMPDIR:-/tmp}/funnelstream-kafka}"
ONLY_NODE=""
while (($#)); do
    case "$1" in
    --nodes) NODES="$2" && shift 2 ;;
    --port) PORT="$2" && shift 2 ;;
    --dir) DIR="$2" && shift 2 ;;
    --node) ONLY_NODE="$2" && shift 2 ;;
    *) die "unknown option $1" ;;
    esac
done

case "$COMMAND" in
fetch) cmd_fetch && echo "jars in $(jars_dir)" ;;
start) cmd_start ;;
stop) cmd_stop ;;
kill) cmd_kill ;;
status) cmd_status ;;
*) die "usage: broker.sh fetch|start|stop|kill|status [--nodes 1|3] [--port P] [--dir D] [--node N]" ;;
esac
