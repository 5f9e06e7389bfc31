#!/usr/bin/env bash
# Installs (first run only), starts, stops and reports the three real servers
# that sluice's demo and integration tests talk to:
#
#   kafka     Apache Kafka 4.x, KRaft single node      127.0.0.1:${SLUICE_KAFKA_PORT:-9092}
#   ferretdb  FerretDB (MongoDB wire protocol), SQLite  127.0.0.1:${SLUICE_MONGO_PORT:-27017}
#   mariadb   MariaDB from Debian, db/user/pass sluice  127.0.0.1:${SLUICE_MYSQL_PORT:-3306}
#
# Everything (downloads, builds, data, logs, pid files) lives under one folder,
# ${SLUICE_SERVICES_DIR:-<repo>/.services}. No systemd: we run our own instances.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SVC_DIR="${SLUICE_SERVICES_DIR:-$REPO/.services}"

KAFKA_VERSION="${SLUICE_KAFKA_VERSION:-4.4.0}"
LOG4J_VERSION="2.25.5" # the log4j2 that Kafka 4.4 itself depends on
FERRETDB_VERSION="v1.24.2"

KAFKA_PORT="${SLUICE_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${SLUICE_KAFKA_CONTROLLER_PORT:-9093}"
MONGO_PORT="${SLUICE_MONGO_PORT:-27017}"
FERRET_DEBUG_PORT="${SLUICE_FERRET_DEBUG_PORT:-8089}"
MYSQL_PORT="${SLUICE_MYSQL_PORT:-3306}"

KAFKA_TIMEOUT=90
OTHER_TIMEOUT=30

DL="$SVC_DIR/downloads"
BIN="$SVC_DIR/bin"
CONF="$SVC_DIR/conf"
DATA="$SVC_DIR/data"
LOGS="$SVC_DIR/logs"
RUN="$SVC_DIR/run"

KAFKA_HOME="$DL/kafka-$KAFKA_VERSION"
FERRETDB_BIN="$BIN/ferretdb-$FERRETDB_VERSION"

# Unix socket paths are limited to ~108 bytes; fall back to /tmp for deep checkouts.
MYSQL_SOCK="$RUN/mariadb.sock"
if ((${#MYSQL_SOCK} > 100)); then
  MYSQL_SOCK="/tmp/sluice-mariadb-$(printf %s "$SVC_DIR" | md5sum | cut -c1-12).sock"
fi

for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$MONGO_PORT" "$FERRET_DEBUG_PORT" "$MYSQL_PORT"; do
  if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then echo "error: bad port '$p'" >&2; exit 2; fi
done

export DEBIAN_FRONTEND=noninteractive

usage() {
  cat <<EOF
usage: scripts/services.sh COMMAND [SERVICE...]

Commands:
  up       install if missing, start if not running, wait until ready
  down     stop (data is kept)
  status   one line per service
  reset    stop and wipe all service data (downloads are kept)

SERVICE is any of: kafka ferretdb mariadb (default: all three).

Environment:
  SLUICE_SERVICES_DIR            where everything lives   ($SVC_DIR)
  SLUICE_KAFKA_PORT              Kafka broker port        ($KAFKA_PORT)
  SLUICE_KAFKA_CONTROLLER_PORT   Kafka controller port    ($KAFKA_CONTROLLER_PORT)
  SLUICE_MONGO_PORT              FerretDB port            ($MONGO_PORT)
  SLUICE_FERRET_DEBUG_PORT       FerretDB debug HTTP port ($FERRET_DEBUG_PORT)
  SLUICE_MYSQL_PORT              MariaDB port             ($MYSQL_PORT)
  SLUICE_KAFKA_VERSION           Kafka version from Maven Central ($KAFKA_VERSION)

Clients: kafka 127.0.0.1:$KAFKA_PORT, mongodb://127.0.0.1:$MONGO_PORT/,
mysql://sluice:sluice@127.0.0.1:$MYSQL_PORT/sluice
EOF
}

say() { echo "==> $*"; }
die() { echo "error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# pid_alive NAME MARKER: the pid file names a live process whose command line
# contains MARKER (guards against a recycled pid belonging to something else).
pid_alive() {
  local pidfile="$RUN/$1.pid" pid
  [[ -s $pidfile ]] || return 1
  pid="$(<"$pidfile")"
  kill -0 "$pid" 2>/dev/null || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ $cmdline == *"$2"* ]]
}

# spawn NAME LOGFILE CMD...: start CMD detached (own session, so it outlives
# this shell and a Ctrl-C in it). The wrapper records its pid then execs, so
# the pid file holds the server's pid. Inherited fds above 2 are closed so a
# CI harness waiting on a pipe is not kept open by the servers.
spawn() {
  local name=$1 log=$2
  shift 2
  rm -f "$RUN/$name.pid"
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c '
    fds=(/proc/$$/fd/*)
    for fd in "${fds[@]##*/}"; do
      ((fd > 2)) && [[ -e /proc/$$/fd/$fd ]] && eval "exec $fd>&-"
    done
    echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" >>"$log" 2>&1 </dev/null &
  local i
  for ((i = 0; i < 50; i++)); do [[ -s $RUN/$name.pid ]] && return 0; sleep 0.1; done
  die "$name: could not start (see $log)"
}

# wait_ready NAME TIMEOUT CHECK_FN LOG...: poll CHECK_FN; on timeout (or if the
# process dies) show the log tails and fail.
wait_ready() {
  local name=$1 timeout=$2 check=$3 marker=$4
  shift 4
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if "$check"; then return 0; fi
    pid_alive "$name" "$marker" || { fail_with_logs "$name" "exited during startup" "$@"; }
    sleep 1
  done
  fail_with_logs "$name" "not ready after ${timeout}s" "$@"
}

fail_with_logs() {
  local name=$1 why=$2 f
  shift 2
  {
    echo "error: $name: $why"
    for f in "$@"; do
      [[ -s $f ]] || continue
      echo "---- last 20 lines of $f"
      tail -n 20 "$f"
    done
  } >&2
  exit 1
}

declare -A FOREIGN=()
# reuse_foreign NAME PORT CHECK: called when no server of ours is running.
# Returns 1 if PORT is free (start ours). If something else holds it and it
# passes CHECK (e.g. the same services started from another checkout), use it;
# otherwise fail rather than start a second server that cannot bind.
reuse_foreign() {
  local name=$1 port=$2 check=$3
  port_open "$port" || return 1
  if "$check"; then
    say "$name: using the working $name already on 127.0.0.1:$port (not started from $SVC_DIR)"
    FOREIGN[$name]=1
    return 0
  fi
  die "$name: port $port is taken by another process (not a working $name); free it or set another port"
}

# stop NAME MARKER GRACE: SIGTERM, wait up to GRACE seconds, then SIGKILL.
stop() {
  local name=$1 marker=$2 grace=$3 pid i
  if ! pid_alive "$name" "$marker"; then
    rm -f "$RUN/$name.pid"
    echo "==> $name: not running"
    return 0
  fi
  pid="$(<"$RUN/$name.pid")"
  say "$name: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name: still running after ${grace}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$RUN/$name.pid"
}

APT_UPDATED=0
# apt_install CMD PKG...: install Debian packages unless CMD is already present.
apt_install() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [[ $(id -u) == 0 ]] || die "$cmd is missing; install: apt-get install $* (needs root)"
  say "installing $* (apt, first run only)..."
  # Lock timeout: another apt-get may be running (e.g. a machine setup step).
  local apt=(apt-get -q -y -o DPkg::Lock::Timeout=600)
  if ((APT_UPDATED == 0)); then
    "${apt[@]}" update >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
  # Keep package scripts from starting a system-wide mariadb on our port.
  local guard=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$guard"
    chmod +x "$guard"
  fi
  local rc=0
  "${apt[@]}" install --no-install-recommends "$@" >"$LOGS/apt.log" 2>&1 || rc=$?
  [[ -z $guard ]] || rm -f "$guard"
  ((rc == 0)) || fail_with_logs apt "apt-get install $* failed" "$LOGS/apt.log"
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing $*"
}

# ---------------------------------------------------------------- kafka

KAFKA_MARKER="$CONF/kafka/server.properties"

kafka_install() {
  [[ -f $KAFKA_HOME/libs/.complete ]] && return 0
  apt_install java openjdk-17-jre-headless
  apt_install mvn maven
  say "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only)..."
  # A throwaway pom whose only job is to let Maven resolve the broker's runtime
  # classpath; log4j-slf4j-impl routes Kafka's slf4j logging to log4j2.
  rm -rf "$KAFKA_HOME.tmp"
  mkdir -p "$KAFKA_HOME.tmp"
  cat >"$KAFKA_HOME.tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sluice</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  # copy-dependencies copies kafka_2.13 itself too, as it is a dependency here.
  mvn -B -q -Dstyle.color=never -f "$KAFKA_HOME.tmp/pom.xml" -Dmaven.repo.local="$DL/m2" \
    dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_HOME.tmp/libs" >"$LOGS/kafka-install.log" 2>&1 ||
    fail_with_logs kafka "mvn could not fetch kafka_2.13:$KAFKA_VERSION" "$LOGS/kafka-install.log"
  ls "$KAFKA_HOME.tmp/libs/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null
  touch "$KAFKA_HOME.tmp/libs/.complete"
  rm -rf "$KAFKA_HOME"
  mv "$KAFKA_HOME.tmp" "$KAFKA_HOME"
}

kafka_java() {
  java -Dlog4j2.configurationFile="$CONF/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$LOGS" -cp "$KAFKA_HOME/libs/*" "$@"
}

kafka_configure() {
  mkdir -p "$CONF/kafka"
  # Written on every start so port overrides take effect.
  cat >"$CONF/kafka/server.properties" <<EOF
# Generated by scripts/services.sh -- edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA/kafka
num.partitions=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
# Single node: every internal topic must live with one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOF
  # Kafka's INFO startup chatter is thousands of lines: keep warnings, plus the
  # few lines that say it started.
  cat >"$CONF/kafka/log4j2.properties" <<'EOF'
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/kafka.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
logger.appinfo.name = org.apache.kafka.common.utils.internals.AppInfoParser
logger.appinfo.level = INFO
EOF
}

# Formats the KRaft storage once, as a single-node dynamic quorum. (Changing
# ports later is fine: a lone voter elects itself without dialling anyone.)
kafka_format() {
  [[ -f $DATA/kafka/meta.properties ]] && return 0
  [[ -s $DATA/kafka.cluster-id ]] || kafka_java kafka.tools.StorageTool random-uuid >"$DATA/kafka.cluster-id"
  say "kafka: formatting storage (first run only)..."
  kafka_java kafka.tools.StorageTool format --standalone \
    -t "$(<"$DATA/kafka.cluster-id")" -c "$CONF/kafka/server.properties" \
    >>"$LOGS/kafka.out" 2>&1 || fail_with_logs kafka "storage format failed" "$LOGS/kafka.out"
}

# A metadata round trip that lists our broker, as a client would see it.
kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  local meta
  meta="$(timeout 10 kcat -b "127.0.0.1:$KAFKA_PORT" -L -m 5 2>/dev/null)" || return 1
  [[ $meta == *"broker 1 at"* ]]
}

kafka_start() {
  apt_install kcat kcat # our readiness probe; demo and tests use it too
  if ! pid_alive kafka "$KAFKA_MARKER"; then
    reuse_foreign kafka "$KAFKA_PORT" kafka_ready && return 0
    kafka_install
    kafka_configure
    kafka_format
    say "kafka: starting Kafka $KAFKA_VERSION..."
    spawn kafka "$LOGS/kafka.out" java -Xms256m -Xmx512m -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$CONF/kafka/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
      -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$CONF/kafka/server.properties"
  fi
}

kafka_wait() {
  [[ -z ${FOREIGN[kafka]:-} ]] || return 0
  wait_ready kafka "$KAFKA_TIMEOUT" kafka_ready "$KAFKA_MARKER" "$LOGS/kafka.log" "$LOGS/kafka.out"
  say "kafka: ready on 127.0.0.1:$KAFKA_PORT"
}

kafka_down() { stop kafka "$KAFKA_MARKER" 60; }

# ---------------------------------------------------------------- ferretdb

FERRET_MARKER="$FERRETDB_BIN"

ferretdb_install() {
  [[ -x $FERRETDB_BIN ]] && return 0
  command -v go >/dev/null 2>&1 || die "ferretdb: Go (1.24+) is required to build FerretDB"
  say "ferretdb: building FerretDB $FERRETDB_VERSION from source (first run only, ~3 min)..."
  # A plain `go install ...@version` builds a binary that panics at start: the
  # published module lacks build/version/version.txt. So: fetch the module,
  # copy it, add that file, build.
  # Private caches (kept under $SVC_DIR) and no inherited GOFLAGS/go.work.
  export GOMODCACHE="$DL/go/mod" GOCACHE="$DL/go/build" GOFLAGS='' GOWORK=off
  local src="$DL/ferretdb-src" dir
  dir="$(cd "$DL" && go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" 2>>"$LOGS/ferretdb-install.log" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d $dir ]] || fail_with_logs ferretdb "go mod download failed" "$LOGS/ferretdb-install.log"
  rm -rf "$src"
  cp -r "$dir" "$src"
  chmod -R u+w "$src"
  echo "$FERRETDB_VERSION" >"$src/build/version/version.txt"
  mkdir -p "$BIN"
  # -buildvcs=false: the copy sits inside this repo's git tree, which is not FerretDB's.
  (cd "$src" && go build -buildvcs=false -o "$FERRETDB_BIN.tmp" ./cmd/ferretdb) \
    >>"$LOGS/ferretdb-install.log" 2>&1 ||
    fail_with_logs ferretdb "go build failed" "$LOGS/ferretdb-install.log"
  mv "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
  # The caches are only for this one build; drop them (the module cache is
  # read-only, which would otherwise make the folder awkward to delete).
  go clean -modcache
  rm -rf "$src" "$DL/go"
}

# Real MongoDB wire-protocol round trip: OP_MSG {ping: 1, $db: "admin"}, and
# the reply must contain {ok: 1.0} (BSON: 01 'o' 'k' 00 + little-endian 1.0).
ferretdb_ready() {
  local reply
  # shellcheck disable=SC2016 # $db is a literal BSON key
  reply="$(timeout 5 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$MONGO_PORT"' || exit 1
    printf "\x33\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00\x00\x00\x00\x00\x00\x1e\x00\x00\x00\x10ping\x00\x01\x00\x00\x00\x02\$db\x00\x06\x00\x00\x00admin\x00\x00" >&3
    head -c 38 <&3 | od -An -tx1 | tr -d " \n"' 2>/dev/null)" || return 1
  [[ $reply == *016f6b00000000000000f03f* ]]
}

ferretdb_start() {
  if ! pid_alive ferretdb "$FERRET_MARKER"; then
    reuse_foreign ferretdb "$MONGO_PORT" ferretdb_ready && return 0
    ferretdb_install
    mkdir -p "$DATA/ferretdb/sqlite" "$DATA/ferretdb/state"
    say "ferretdb: starting FerretDB $FERRETDB_VERSION..."
    spawn ferretdb "$LOGS/ferretdb.log" "$FERRETDB_BIN" --handler=sqlite \
      --sqlite-url="file:$DATA/ferretdb/sqlite/" --state-dir="$DATA/ferretdb/state" \
      --listen-addr="127.0.0.1:$MONGO_PORT" --debug-addr="127.0.0.1:$FERRET_DEBUG_PORT" \
      --telemetry=disable --log-level=warn
  fi
}

ferretdb_wait() {
  [[ -z ${FOREIGN[ferretdb]:-} ]] || return 0
  wait_ready ferretdb "$OTHER_TIMEOUT" ferretdb_ready "$FERRET_MARKER" "$LOGS/ferretdb.log"
  say "ferretdb: ready on 127.0.0.1:$MONGO_PORT"
}

ferretdb_down() { stop ferretdb "$FERRET_MARKER" 15; }

# ---------------------------------------------------------------- mariadb

MYSQL_MARKER="--datadir=$DATA/mariadb"

# --no-defaults everywhere: ignore /etc/mysql (the Debian system instance's config).
mariadb_ready() { mariadb-admin --no-defaults --socket="$MYSQL_SOCK" -uroot --connect-timeout=2 ping >/dev/null 2>&1; }

# What the tests do: log in over TCP as sluice.
mariadb_login_ok() {
  mariadb --no-defaults -h127.0.0.1 -P"$MYSQL_PORT" -usluice -psluice --connect-timeout=3 \
    sluice -e 'SELECT 1' >/dev/null 2>&1
}

mariadb_start() {
  apt_install mariadbd mariadb-server mariadb-client
  if ! pid_alive mariadb "$MYSQL_MARKER"; then
    reuse_foreign mariadb "$MYSQL_PORT" mariadb_login_ok && return 0
    if [[ ! -d $DATA/mariadb/mysql ]]; then
      say "mariadb: initialising data directory (first run only)..."
      rm -rf "$DATA/mariadb"
      # root logs in through the unix socket only (as the OS user running this).
      mariadb-install-db --no-defaults --datadir="$DATA/mariadb" --user="$(id -un)" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$LOGS/mariadb-install.log" 2>&1 ||
        fail_with_logs mariadb "mariadb-install-db failed" "$LOGS/mariadb-install.log"
    fi
    say "mariadb: starting MariaDB $(mariadbd --version | sed -n 's/.*Ver \([^ ]*\).*/\1/p')..."
    spawn mariadb "$LOGS/mariadb.out" mariadbd --no-defaults --datadir="$DATA/mariadb" \
      --socket="$MYSQL_SOCK" --port="$MYSQL_PORT" --bind-address=127.0.0.1 \
      --skip-name-resolve --user="$(id -un)" --log-error="$LOGS/mariadb.log" \
      --pid-file="$RUN/mariadbd.pid"
  fi
}

mariadb_wait() {
  [[ -z ${FOREIGN[mariadb]:-} ]] || return 0
  wait_ready mariadb "$OTHER_TIMEOUT" mariadb_ready "$MYSQL_MARKER" "$LOGS/mariadb.log" "$LOGS/mariadb.out"
  # Idempotent, so it also repairs a dropped user or database.
  mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot <<'EOF' || die "mariadb: could not create the sluice database/user"
CREATE DATABASE IF NOT EXISTS sluice;
CREATE USER IF NOT EXISTS 'sluice'@'127.0.0.1' IDENTIFIED BY 'sluice';
CREATE USER IF NOT EXISTS 'sluice'@'localhost' IDENTIFIED BY 'sluice';
GRANT ALL PRIVILEGES ON sluice.* TO 'sluice'@'127.0.0.1', 'sluice'@'localhost';
EOF
  say "mariadb: ready on 127.0.0.1:$MYSQL_PORT (database sluice, user sluice/sluice)"
}

mariadb_down() { stop mariadb "$MYSQL_MARKER" 30; }

# ---------------------------------------------------------------- commands

status_line() {
  local name=$1 marker=$2 port=$3 state pid=-
  if pid_alive "$name" "$marker"; then
    pid="$(<"$RUN/$name.pid")"
    if port_open "$port"; then state=running; else state="starting?"; fi
  elif port_open "$port"; then
    state="foreign" # something not started from $SVC_DIR holds the port
  else
    state=stopped
  fi
  printf '%-9s %-9s 127.0.0.1:%-6s pid %s\n' "$name" "$state" "$port" "$pid"
}

main() {
  local cmd="${1:-}"
  [[ -n $cmd ]] || { usage >&2; exit 2; }
  shift || true
  local services=("$@") s
  ((${#services[@]})) || services=(kafka ferretdb mariadb)
  for s in "${services[@]}"; do
    case $s in kafka | ferretdb | mariadb) ;; *) die "unknown service '$s' (kafka, ferretdb, mariadb)" ;; esac
  done

  case $cmd in
  -h | --help | help) usage; return 0 ;;
  up | down | reset) ;;
  status)
    for s in "${services[@]}"; do
      case $s in
      kafka) status_line kafka "$KAFKA_MARKER" "$KAFKA_PORT" ;;
      ferretdb) status_line ferretdb "$FERRET_MARKER" "$MONGO_PORT" ;;
      mariadb) status_line mariadb "$MYSQL_MARKER" "$MYSQL_PORT" ;;
      esac
    done
    return 0
    ;;
  *) usage >&2; exit 2 ;;
  esac

  mkdir -p "$DL" "$BIN" "$CONF" "$DATA" "$LOGS" "$RUN"
  # One `up`/`down` at a time (parallel test runners may all call `up`).
  # spawn() closes this fd in the servers so they don't hold the lock.
  exec 9>"$SVC_DIR/.lock"
  flock 9

  case $cmd in
  up)
    # Start everything first, then wait, so Kafka boots while FerretDB builds.
    for s in "${services[@]}"; do "${s}_start"; done
    for s in "${services[@]}"; do "${s}_wait"; done
    ;;
  down) for s in "${services[@]}"; do "${s}_down"; done ;;
  reset)
    for s in "${services[@]}"; do
      "${s}_down"
      case $s in
      kafka) rm -rf "$DATA/kafka" "$DATA"/kafka.* ;;
      ferretdb) rm -rf "$DATA/ferretdb" ;;
      mariadb) rm -rf "$DATA/mariadb" ;;
      esac
      say "$s: data wiped"
    done
    ;;
  esac
}

main "$@"
