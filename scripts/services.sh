#!/usr/bin/env bash
# Installs (first run only), starts, stops and reports the real servers that
# sluice's demo and integration tests talk to:
#
#   kafka           Apache Kafka 4.x, KRaft single node      127.0.0.1:${SLUICE_KAFKA_PORT:-9092}
#   ferretdb        FerretDB (MongoDB wire protocol), SQLite  127.0.0.1:${SLUICE_MONGO_PORT:-27017}
#   mariadb         MariaDB from Debian, db/user/pass sluice  127.0.0.1:${SLUICE_MYSQL_PORT:-3306}
#
# and the secure profile, always on next to those plaintext defaults, with
# certificates from a local CA made once under <services dir>/tls:
#
#   kafka           SASL_SSL + SCRAM-SHA-512/256              127.0.0.1:${SLUICE_KAFKA_SASL_PORT:-9094}
#                   SSL with a client certificate (mTLS)      127.0.0.1:${SLUICE_KAFKA_MTLS_PORT:-9095}
#   ferretdb        TLS listener, same process and data       127.0.0.1:${SLUICE_MONGO_TLS_PORT:-27018}
#   mariadb-secure  second MariaDB: TLS required, encrypted   127.0.0.1:${SLUICE_MYSQL_SECURE_PORT:-3307}
#                   at rest (file_key_management)
#
# Everything (downloads, builds, data, logs, pid files, certificates, keys)
# lives under one folder, ${SLUICE_SERVICES_DIR:-<repo>/.services}. No systemd:
# we run our own instances. See docs/secure-services.md.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SVC_DIR="${SLUICE_SERVICES_DIR:-$REPO/.services}"

KAFKA_VERSION="${SLUICE_KAFKA_VERSION:-4.4.0}"
LOG4J_VERSION="2.25.5" # the log4j2 that Kafka 4.4 itself depends on
FERRETDB_VERSION="v1.24.2"

KAFKA_PORT="${SLUICE_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${SLUICE_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_SASL_PORT="${SLUICE_KAFKA_SASL_PORT:-9094}"
KAFKA_MTLS_PORT="${SLUICE_KAFKA_MTLS_PORT:-9095}"
MONGO_PORT="${SLUICE_MONGO_PORT:-27017}"
MONGO_TLS_PORT="${SLUICE_MONGO_TLS_PORT:-27018}"
FERRET_DEBUG_PORT="${SLUICE_FERRET_DEBUG_PORT:-8089}"
MYSQL_PORT="${SLUICE_MYSQL_PORT:-3306}"
MYSQL_SECURE_PORT="${SLUICE_MYSQL_SECURE_PORT:-3307}"

# Secure profile credentials. Local development only: they are in this file.
KAFKA_SCRAM_USER=sluice
KAFKA_SCRAM_PASSWORD=sluice-scram-secret
MYSQL_SECURE_USER=sluice
MYSQL_SECURE_PASSWORD=sluice-tls-secret

KAFKA_TIMEOUT=90
OTHER_TIMEOUT=30

DL="$SVC_DIR/downloads"
BIN="$SVC_DIR/bin"
CONF="$SVC_DIR/conf"
DATA="$SVC_DIR/data"
LOGS="$SVC_DIR/logs"
RUN="$SVC_DIR/run"
TLS="$SVC_DIR/tls"
SECRETS="$SVC_DIR/secrets"

KAFKA_HOME="$DL/kafka-$KAFKA_VERSION"
FERRETDB_BIN="$BIN/ferretdb-$FERRETDB_VERSION"

# Unix socket paths are limited to ~108 bytes; fall back to /tmp for deep checkouts.
MYSQL_SOCK="$RUN/mariadb.sock"
if ((${#MYSQL_SOCK} > 100)); then
  MYSQL_SOCK="/tmp/sluice-mariadb-$(printf %s "$SVC_DIR" | md5sum | cut -c1-12).sock"
fi
MYSQL_SECURE_SOCK="$RUN/mariadb-secure.sock"
if ((${#MYSQL_SECURE_SOCK} > 100)); then
  MYSQL_SECURE_SOCK="/tmp/sluice-mariadb-secure-$(printf %s "$SVC_DIR" | md5sum | cut -c1-12).sock"
fi

declare -A PORT_SEEN=()
for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_PORT" "$KAFKA_MTLS_PORT" "$MONGO_PORT" \
  "$MONGO_TLS_PORT" "$FERRET_DEBUG_PORT" "$MYSQL_PORT" "$MYSQL_SECURE_PORT"; do
  if ! [[ $p =~ ^[0-9]+$ ]] || ((p < 1 || p > 65535)); then echo "error: bad port '$p'" >&2; exit 2; fi
  [[ -z ${PORT_SEEN[$p]:-} ]] || { echo "error: port $p is set for two listeners" >&2; exit 2; }
  PORT_SEEN[$p]=1
done

export DEBIAN_FRONTEND=noninteractive

usage() {
  cat <<EOF
usage: scripts/services.sh COMMAND [SERVICE...]

Commands:
  up       install if missing, start if not running (restart if its
           configuration changed), wait until ready
  down     stop (data is kept)
  status   one line per service, plus its secure endpoints
  reset    stop and wipe the services' data (downloads and the CA are kept)

SERVICE is any of: kafka ferretdb mariadb mariadb-secure (default: all four).

Environment:
  SLUICE_SERVICES_DIR            where everything lives   ($SVC_DIR)
  SLUICE_KAFKA_PORT              Kafka PLAINTEXT port     ($KAFKA_PORT)
  SLUICE_KAFKA_CONTROLLER_PORT   Kafka controller port    ($KAFKA_CONTROLLER_PORT)
  SLUICE_KAFKA_SASL_PORT         Kafka SASL_SSL port      ($KAFKA_SASL_PORT)
  SLUICE_KAFKA_MTLS_PORT         Kafka SSL (mTLS) port    ($KAFKA_MTLS_PORT)
  SLUICE_MONGO_PORT              FerretDB port            ($MONGO_PORT)
  SLUICE_MONGO_TLS_PORT          FerretDB TLS port        ($MONGO_TLS_PORT)
  SLUICE_FERRET_DEBUG_PORT       FerretDB debug HTTP port ($FERRET_DEBUG_PORT)
  SLUICE_MYSQL_PORT              MariaDB port             ($MYSQL_PORT)
  SLUICE_MYSQL_SECURE_PORT       MariaDB TLS-only port    ($MYSQL_SECURE_PORT)
  SLUICE_KAFKA_VERSION           Kafka version from Maven Central ($KAFKA_VERSION)

Clients (plaintext, the default for tests and the demo):
  kafka 127.0.0.1:$KAFKA_PORT, mongodb://127.0.0.1:$MONGO_PORT/,
  mysql://sluice:sluice@127.0.0.1:$MYSQL_PORT/sluice

Secure profile (local development credentials; CA: $TLS/ca.pem):
  kafka 127.0.0.1:$KAFKA_SASL_PORT  SASL_SSL, SCRAM-SHA-512 or SCRAM-SHA-256,
                   user $KAFKA_SCRAM_USER, password $KAFKA_SCRAM_PASSWORD
  kafka 127.0.0.1:$KAFKA_MTLS_PORT  SSL, client certificate required:
                   $TLS/client.pem + client.key (CN=sluice)
  mongodb://127.0.0.1:$MONGO_TLS_PORT/?tls=true&tlsCAFile=$TLS/ca.pem
                   (FerretDB with SQLite: no authentication)
  mysql://$MYSQL_SECURE_USER:$MYSQL_SECURE_PASSWORD@127.0.0.1:$MYSQL_SECURE_PORT/sluice  TLS required
                   (user REQUIRE SSL), data encrypted at rest
  Server certificate $TLS/server.pem: SAN localhost, 127.0.0.1.
  $TLS/wrong-ca.pem is an unrelated CA, for tests that must fail verification.
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

# have CMD: CMD is on the PATH, or CMD is a shell function here that succeeds.
have() {
  if [[ $(type -t "$1") == function ]]; then "$1"; else command -v "$1" >/dev/null 2>&1; fi
}

APT_UPDATED=0
# apt_install CMD PKG...: install Debian packages unless CMD is already present
# (CMD may be a check function, see have).
apt_install() {
  local cmd=$1
  shift
  have "$cmd" && return 0
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
  have "$cmd" || die "$cmd still missing after installing $*"
}

# The configuration a server was started with, as a hash: the given text
# (its config file or arguments) plus the certificates it serves.
stamp_of() { { printf '%s\n' "$@"; cat "$TLS/ca.pem" "$TLS/server.pem"; } | sha256sum | cut -d' ' -f1; }

# restart_if_changed NAME MARKER GRACE STAMP: a server of ours that was started
# with another configuration (or before this script recorded one) is stopped,
# so that the caller starts it afresh with the current one.
restart_if_changed() {
  local name=$1 marker=$2 grace=$3 stamp=$4
  pid_alive "$name" "$marker" || return 0
  [[ $(cat "$RUN/$name.stamp" 2>/dev/null) != "$stamp" ]] || return 0
  say "$name: configuration changed since it started; restarting"
  stop "$name" "$marker" "$grace"
}

# ---------------------------------------------------------------- tls (secure profile)

# A local CA made once with openssl, and what it signs. Private keys are the
# owner's only (0600). Kafka reads PEM stores: server-keystore.pem holds the
# unencrypted PKCS#8 key and the chain (Kafka 4.4 needs no ssl.key.password
# for an unencrypted key), and ca.pem is the truststore.
TLS_FILES=(ca.pem ca.key server.pem server.key server-keystore.pem client.pem client.key wrong-ca.pem)
TLS_SUBJECT="/O=sluice local development"

tls_complete() {
  local f
  for f in "${TLS_FILES[@]}"; do [[ -s $TLS/$f ]] || return 1; done
}

# tls_issue DIR NAME CN EXTENSIONS: DIR/NAME.key and DIR/NAME.pem signed by DIR/ca.
tls_issue() {
  local dir=$1 name=$2 cn=$3 ext=$4
  printf '%s\n' "$ext" >"$dir/$name.ext" &&
    openssl req -new -newkey rsa:2048 -nodes -keyout "$dir/$name.key" -subj "$TLS_SUBJECT/CN=$cn" \
      -out "$dir/$name.csr" &&
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -sha256 -days 3650 \
      -set_serial "0x$(openssl rand -hex 16)" -extfile "$dir/$name.ext" -out "$dir/$name.pem" &&
    rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# tls_make DIR: everything in TLS_FILES, in DIR. (No `set -e` in here: it is
# called from a `||` list, so each step is chained with &&.)
tls_make() {
  local dir=$1
  # CA: ~10 years; leaf certificates: 3650 days.
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/ca.key" -out "$dir/ca.pem" -sha256 -days 3660 \
    -subj "$TLS_SUBJECT/CN=sluice local dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
    tls_issue "$dir" server localhost "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1" &&
    tls_issue "$dir" client sluice "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth" &&
    cat "$dir/server.key" "$dir/server.pem" "$dir/ca.pem" >"$dir/server-keystore.pem" &&
    # An unrelated CA (its key is thrown away), for tests that must fail verification.
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$dir/wrong-ca.key" -out "$dir/wrong-ca.pem" \
      -sha256 -days 3660 -subj "$TLS_SUBJECT/CN=sluice unrelated CA (must not be trusted)" \
      -addext "basicConstraints=critical,CA:TRUE" &&
    rm -f "$dir/wrong-ca.key" &&
    openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" "$dir/client.pem"
}

tls_setup() {
  apt_install openssl openssl # also the probes' TLS client
  if ! tls_complete; then
    say "tls: creating a local CA and certificates in $TLS (first run only)..."
    rm -rf "$TLS.tmp"
    mkdir -p "$TLS.tmp"
    (umask 077 && tls_make "$TLS.tmp") >"$LOGS/tls.log" 2>&1 ||
      fail_with_logs tls "could not create the certificates" "$LOGS/tls.log"
    rm -rf "$TLS"
    mv "$TLS.tmp" "$TLS"
  fi
  # Certificates are public; keys (and the keystore holding one) are not.
  chmod 755 "$TLS"
  chmod 644 "$TLS"/*.pem
  chmod 600 "$TLS"/*.key "$TLS/server-keystore.pem"
  secrets_write
}

# The secure profile's credentials as files (owner-only), so that
# config/secure.toml can give them by reference (${file:...}) and run as is;
# and a field-encryption key (32 random bytes, hex), made once.
secrets_write() {
  mkdir -p "$SECRETS"
  chmod 700 "$SECRETS"
  (
    umask 077
    printf '%s\n' "$KAFKA_SCRAM_PASSWORD" >"$SECRETS/kafka.password"
    printf '%s\n' "$MYSQL_SECURE_PASSWORD" >"$SECRETS/mysql.password"
    [[ -s $SECRETS/field-key-1 ]] || openssl rand -hex 32 >"$SECRETS/field-key-1"
  )
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

# Debian's kcat links librdkafka 2.0.2, whose SCRAM client repeats the client
# nonce in its final message (fixed in librdkafka 2.6.1, confluentinc/
# librdkafka#4895); Kafka 4.x checks the nonce strictly and refuses every such
# login as "invalid credentials". So SCRAM probes run Debian's kcat on
# librdkafka $RDKAFKA_VERSION, the version sluice's rdkafka-sys bundles, taken
# from the confluent-kafka wheel on PyPI (the wheel ships librdkafka as a
# self-contained shared library).
RDKAFKA_VERSION=2.12.1
RDKAFKA_DIR="$DL/librdkafka-$RDKAFKA_VERSION"

venv_works() { python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }

rdkafka_install() {
  [[ -s $RDKAFKA_DIR/librdkafka.so.1 ]] && return 0
  apt_install python3 python3
  apt_install venv_works python3-venv
  say "kafka: fetching librdkafka $RDKAFKA_VERSION (PyPI: confluent-kafka==$RDKAFKA_VERSION) for kcat's SCRAM logins (first run only)..."
  local tmp="$RDKAFKA_DIR.tmp" lib
  rm -rf "$tmp"
  mkdir -p "$tmp"
  {
    python3 -m venv "$tmp/venv" &&
      "$tmp/venv/bin/pip" download --quiet --no-deps --only-binary=:all: --dest "$tmp" \
        "confluent-kafka==$RDKAFKA_VERSION" &&
      "$tmp/venv/bin/python" -m zipfile -e "$tmp"/confluent_kafka-*.whl "$tmp/wheel"
  } >"$LOGS/librdkafka-install.log" 2>&1 ||
    fail_with_logs kafka "could not fetch confluent-kafka==$RDKAFKA_VERSION" "$LOGS/librdkafka-install.log"
  lib="$(find "$tmp/wheel" -name 'librdkafka*.so*' | head -n 1)"
  [[ -n $lib ]] || die "kafka: no librdkafka in the confluent-kafka $RDKAFKA_VERSION wheel"
  mkdir -p "$tmp/lib"
  cp "$lib" "$tmp/lib/librdkafka.so.1"
  [[ $(LD_LIBRARY_PATH="$tmp/lib" kcat -V) == *"librdkafka $RDKAFKA_VERSION"* ]] ||
    die "kafka: kcat does not load librdkafka $RDKAFKA_VERSION from $tmp/lib"
  rm -rf "$RDKAFKA_DIR"
  mv "$tmp/lib" "$RDKAFKA_DIR"
  rm -rf "$tmp"
}

kafka_java() {
  java -Dlog4j2.configurationFile="$CONF/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$LOGS" -cp "$KAFKA_HOME/libs/*" "$@"
}

kafka_configure() {
  mkdir -p "$CONF/kafka"
  cat >"$CONF/kafka/server.properties" <<EOF
# Generated by scripts/services.sh -- edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,SSL://127.0.0.1:$KAFKA_MTLS_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,SSL://127.0.0.1:$KAFKA_MTLS_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
# Secure profile. SASL_SSL: SCRAM users live in the cluster metadata.
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
# Both TLS listeners serve the local CA's server certificate; SSL requires a
# client certificate signed by that CA.
ssl.keystore.type=PEM
ssl.keystore.location=$TLS/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
ssl.enabled.protocols=TLSv1.3,TLSv1.2
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.ssl.ssl.client.auth=required
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

# What the SCRAM user was created with; kept in $DATA/kafka.scram so that it
# is added once (a change of user or password here adds it again).
kafka_scram_stamp() {
  printf '%s SCRAM-SHA-512,SCRAM-SHA-256 %s\n' "$KAFKA_SCRAM_USER" \
    "$(printf %s "$KAFKA_SCRAM_PASSWORD" | sha256sum | cut -c1-16)"
}

# Formats the KRaft storage once, as a single-node dynamic quorum. (Changing
# ports later is fine: a lone voter elects itself without dialling anyone.)
# The SCRAM user goes into the initial metadata.
kafka_format() {
  [[ -f $DATA/kafka/meta.properties ]] && return 0
  [[ -s $DATA/kafka.cluster-id ]] || kafka_java kafka.tools.StorageTool random-uuid >"$DATA/kafka.cluster-id"
  say "kafka: formatting storage (first run only)..."
  local m scram=()
  for m in SCRAM-SHA-512 SCRAM-SHA-256; do
    scram+=(--add-scram "$m=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]")
  done
  kafka_java kafka.tools.StorageTool format --standalone \
    -t "$(<"$DATA/kafka.cluster-id")" -c "$CONF/kafka/server.properties" "${scram[@]}" \
    >>"$LOGS/kafka.out" 2>&1 || fail_with_logs kafka "storage format failed" "$LOGS/kafka.out"
  kafka_scram_stamp >"$DATA/kafka.scram"
}

# Storage formatted before the secure listeners existed has no SCRAM user: add
# it once through the running broker, as kafka-configs.sh does. (kafka-configs
# lives in the kafka-tools jar, which the broker does not need: fetched only
# for this.)
kafka_scram_user() {
  [[ $(cat "$DATA/kafka.scram" 2>/dev/null) != "$(kafka_scram_stamp)" ]] || return 0
  local jar="$KAFKA_HOME/tools/kafka-tools-$KAFKA_VERSION.jar"
  if [[ ! -s $jar ]]; then
    apt_install mvn maven
    say "kafka: fetching kafka-tools $KAFKA_VERSION (kafka-configs) from Maven Central (once)..."
    if ! mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$DL/m2" dependency:copy \
      -Dartifact="org.apache.kafka:kafka-tools:$KAFKA_VERSION" -DoutputDirectory="$KAFKA_HOME/tools" \
      >"$LOGS/kafka-tools-install.log" 2>&1 || [[ ! -s $jar ]]; then
      fail_with_logs kafka "mvn could not fetch kafka-tools:$KAFKA_VERSION" "$LOGS/kafka-tools-install.log"
    fi
  fi
  say "kafka: adding SCRAM user $KAFKA_SCRAM_USER (storage formatted before the SASL_SSL listener)..."
  # One mechanism per call: Kafka 4.4 refuses both in one request
  # (DuplicateResourceException: "A user credential cannot be altered twice
  # in the same request").
  local m
  for m in SCRAM-SHA-512 SCRAM-SHA-256; do
    java -Dlog4j2.configurationFile="$CONF/kafka/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
      -cp "$KAFKA_HOME/libs/*:$jar" org.apache.kafka.tools.ConfigCommand \
      --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter --entity-type users --entity-name "$KAFKA_SCRAM_USER" \
      --add-config "$m=[password=$KAFKA_SCRAM_PASSWORD]" >>"$LOGS/kafka.out" 2>&1 ||
      fail_with_logs kafka "could not add the SCRAM user ($m)" "$LOGS/kafka.out"
  done
  kafka_scram_stamp >"$DATA/kafka.scram"
}

# A metadata round trip that lists our broker, as a client would see it.
kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  local meta
  meta="$(timeout 10 kcat -b "127.0.0.1:$KAFKA_PORT" -L -m 5 2>/dev/null)" || return 1
  [[ $meta == *"broker 1 at"* ]]
}

# The secure profile's readiness: a SCRAM-SHA-512 login over TLS, verifying
# the broker's certificate (our CA, IP 127.0.0.1 in its SAN), then a metadata
# round trip. kcat runs on the newer librdkafka (see rdkafka_install).
kafka_sasl_ready() {
  port_open "$KAFKA_SASL_PORT" || return 1
  local meta
  meta="$(LD_LIBRARY_PATH="$RDKAFKA_DIR" timeout 10 kcat -b "127.0.0.1:$KAFKA_SASL_PORT" -X security.protocol=SASL_SSL \
    -X sasl.mechanisms=SCRAM-SHA-512 -X sasl.username="$KAFKA_SCRAM_USER" \
    -X sasl.password="$KAFKA_SCRAM_PASSWORD" -X ssl.ca.location="$TLS/ca.pem" -L -m 5 2>/dev/null)" || return 1
  [[ $meta == *"broker 1 at 127.0.0.1:$KAFKA_SASL_PORT"* ]]
}

kafka_stamp() { stamp_of "$(<"$CONF/kafka/server.properties")"; }

kafka_start() {
  apt_install kcat kcat # our readiness probe; demo and tests use it too
  rdkafka_install       # for the SCRAM probe
  tls_setup
  # Written on every `up`; a running broker started from another version of
  # it (e.g. before the secure listeners) is restarted.
  kafka_configure
  restart_if_changed kafka "$KAFKA_MARKER" 60 "$(kafka_stamp)"
  if ! pid_alive kafka "$KAFKA_MARKER"; then
    reuse_foreign kafka "$KAFKA_PORT" kafka_ready && return 0
    kafka_install
    kafka_format
    say "kafka: starting Kafka $KAFKA_VERSION..."
    spawn kafka "$LOGS/kafka.out" java -Xms256m -Xmx512m -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$CONF/kafka/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
      -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$CONF/kafka/server.properties"
    kafka_stamp >"$RUN/kafka.stamp"
  fi
}

kafka_wait() {
  [[ -z ${FOREIGN[kafka]:-} ]] || return 0
  wait_ready kafka "$KAFKA_TIMEOUT" kafka_ready "$KAFKA_MARKER" "$LOGS/kafka.log" "$LOGS/kafka.out"
  kafka_scram_user
  wait_ready kafka "$OTHER_TIMEOUT" kafka_sasl_ready "$KAFKA_MARKER" "$LOGS/kafka.log" "$LOGS/kafka.out"
  say "kafka: ready on 127.0.0.1:$KAFKA_PORT (SASL_SSL/SCRAM on $KAFKA_SASL_PORT, mTLS on $KAFKA_MTLS_PORT)"
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
# shellcheck disable=SC2016 # $db is a literal BSON key
FERRET_PING='\x33\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00\x00\x00\x00\x00\x00\x1e\x00\x00\x00\x10ping\x00\x01\x00\x00\x00\x02$db\x00\x06\x00\x00\x00admin\x00\x00'
FERRET_PONG=016f6b00000000000000f03f

ferretdb_ready() {
  local reply
  # shellcheck disable=SC2016 # expanded by the inner bash
  reply="$(timeout 5 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$MONGO_PORT"' || exit 1
    printf "$0" >&3
    head -c 38 <&3 | od -An -tx1 | tr -d " \n"' "$FERRET_PING" 2>/dev/null)" || return 1
  [[ $reply == *"$FERRET_PONG"* ]]
}

# The same ping over the TLS listener, verifying the server certificate
# (chain to our CA, and IP 127.0.0.1 in its SAN). s_client stops reading at
# the end of its input, hence the short sleep for the reply.
ferretdb_tls_ready() {
  port_open "$MONGO_TLS_PORT" || return 1
  local reply
  # shellcheck disable=SC2059 # the escapes are the point
  reply="$( { printf "$FERRET_PING"; sleep 0.5; } |
    timeout 5 openssl s_client -quiet -no_ign_eof -verify_return_error -CAfile "$TLS/ca.pem" \
      -verify_ip 127.0.0.1 -connect "127.0.0.1:$MONGO_TLS_PORT" 2>/dev/null |
    head -c 38 | od -An -tx1 | tr -d ' \n')" || return 1
  [[ $reply == *"$FERRET_PONG"* ]]
}

ferretdb_both_ready() { ferretdb_ready && ferretdb_tls_ready; }

# One process, one data folder, two listeners: plaintext and TLS. Without
# --listen-tls-ca-file, FerretDB asks for no client certificate (with it, it
# requires one: tls.RequireAndVerifyClientCert).
ferretdb_args() {
  FERRET_ARGS=(--handler=sqlite
    --sqlite-url="file:$DATA/ferretdb/sqlite/" --state-dir="$DATA/ferretdb/state"
    --listen-addr="127.0.0.1:$MONGO_PORT" --debug-addr="127.0.0.1:$FERRET_DEBUG_PORT"
    --listen-tls="127.0.0.1:$MONGO_TLS_PORT" --listen-tls-cert-file="$TLS/server.pem"
    --listen-tls-key-file="$TLS/server.key"
    --telemetry=disable --log-level=warn)
}

ferretdb_start() {
  tls_setup
  local -a FERRET_ARGS
  ferretdb_args
  restart_if_changed ferretdb "$FERRET_MARKER" 15 "$(stamp_of "${FERRET_ARGS[@]}")"
  if ! pid_alive ferretdb "$FERRET_MARKER"; then
    reuse_foreign ferretdb "$MONGO_PORT" ferretdb_ready && return 0
    ferretdb_install
    mkdir -p "$DATA/ferretdb/sqlite" "$DATA/ferretdb/state"
    say "ferretdb: starting FerretDB $FERRETDB_VERSION..."
    spawn ferretdb "$LOGS/ferretdb.log" "$FERRETDB_BIN" "${FERRET_ARGS[@]}"
    stamp_of "${FERRET_ARGS[@]}" >"$RUN/ferretdb.stamp"
  fi
}

ferretdb_wait() {
  [[ -z ${FOREIGN[ferretdb]:-} ]] || return 0
  wait_ready ferretdb "$OTHER_TIMEOUT" ferretdb_both_ready "$FERRET_MARKER" "$LOGS/ferretdb.log"
  say "ferretdb: ready on 127.0.0.1:$MONGO_PORT (TLS on $MONGO_TLS_PORT)"
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

# ---------------------------------------------------------------- mariadb-secure

# A second MariaDB (same binaries, own datadir/socket/pid/log) for the secure
# profile: TCP clients must use TLS (1.2+); InnoDB data and redo log,
# temporary files and tables, Aria table files and binlogs (when turned on)
# are encrypted at rest with keys from file_key_management. Not encrypted by
# MariaDB: the Aria log (aria_log.*), which also carries changes to the
# mysql.* system tables. The key file sits next to the data, encrypted with a
# password file that sits next to it too: that keeps the key out of the
# datadir, nothing more (see docs/secure-services.md, "Production").
MYSQL_SECURE_DATA="$DATA/mariadb-secure"
MYSQL_SECURE_KEYS="$DATA/mariadb-secure.keys"
MYSQL_SECURE_CNF="$CONF/mariadb-secure/my.cnf"
# Its options are in the defaults file, so its command line never contains
# the plain instance's marker (--datadir=$DATA/mariadb).
MYSQL_SECURE_MARKER="--defaults-file=$MYSQL_SECURE_CNF"

mariadb_secure_configure() {
  mkdir -p "$CONF/mariadb-secure"
  cat >"$MYSQL_SECURE_CNF" <<EOF
# Generated by scripts/services.sh -- edits are overwritten.
[mysqld]
datadir=$MYSQL_SECURE_DATA
socket=$MYSQL_SECURE_SOCK
port=$MYSQL_SECURE_PORT
bind-address=127.0.0.1
skip-name-resolve
user=$(id -un)
log-error=$LOGS/mariadb-secure.log
pid-file=$RUN/mariadbd-secure.pid

# In transit: TCP connections must use TLS (the unix socket stays open to the
# local root, which the script uses).
ssl-ca=$TLS/ca.pem
ssl-cert=$TLS/server.pem
ssl-key=$TLS/server.key
tls_version=TLSv1.2,TLSv1.3
require_secure_transport=ON

# At rest.
plugin_load_add=file_key_management
file_key_management_filename=$MYSQL_SECURE_KEYS/keyfile.enc
file_key_management_filekey=FILE:$MYSQL_SECURE_KEYS/keyfile.key
file_key_management_encryption_algorithm=AES_CTR
innodb_encrypt_tables=FORCE
innodb_encrypt_log=ON
innodb_encrypt_temporary_tables=ON
innodb_encryption_threads=1
encrypt_tmp_files=ON
encrypt_tmp_disk_tables=ON
encrypt_binlog=ON
aria_encrypt_tables=ON
EOF
}

# The encryption key, made once per datadir: "1;<64 hex digits>" (key id 1,
# AES-256), encrypted with `openssl enc -aes-256-cbc -md sha1` (the format
# file_key_management reads) under a random password in keyfile.key. The
# clear key is never written to disk.
mariadb_secure_keys() {
  [[ -s $MYSQL_SECURE_KEYS/keyfile.enc && -s $MYSQL_SECURE_KEYS/keyfile.key ]] && return 0
  if [[ -d $MYSQL_SECURE_DATA/mysql ]]; then
    die "mariadb-secure: its encryption keys ($MYSQL_SECURE_KEYS) are missing, so its data cannot be read; restore them, or wipe it: scripts/services.sh reset mariadb-secure"
  fi
  say "mariadb-secure: generating the encryption key (first run only)..."
  rm -rf "$MYSQL_SECURE_KEYS"
  (umask 077 && mkdir -p "$MYSQL_SECURE_KEYS" &&
    openssl rand -hex 32 >"$MYSQL_SECURE_KEYS/keyfile.key" &&
    printf '1;%s\n' "$(openssl rand -hex 32)" |
    openssl enc -aes-256-cbc -md sha1 -pass "file:$MYSQL_SECURE_KEYS/keyfile.key" \
      -out "$MYSQL_SECURE_KEYS/keyfile.enc") 2>"$LOGS/mariadb-secure-keys.log" ||
    fail_with_logs mariadb-secure "could not generate the key file" "$LOGS/mariadb-secure-keys.log"
}

mariadb_secure_ready() {
  mariadb-admin --no-defaults --socket="$MYSQL_SECURE_SOCK" -uroot --connect-timeout=2 ping >/dev/null 2>&1
}

# What a client does: log in over TCP with TLS, verifying the server
# certificate against our CA.
mariadb_secure_login_ok() {
  mariadb --no-defaults -h127.0.0.1 -P"$MYSQL_SECURE_PORT" -u"$MYSQL_SECURE_USER" \
    -p"$MYSQL_SECURE_PASSWORD" --ssl-ca="$TLS/ca.pem" --ssl-verify-server-cert --connect-timeout=3 \
    sluice -e 'SELECT 1' >/dev/null 2>&1
}

mariadb_secure_start() {
  apt_install mariadbd mariadb-server mariadb-client
  tls_setup
  mariadb_secure_configure
  restart_if_changed mariadb-secure "$MYSQL_SECURE_MARKER" 30 "$(stamp_of "$(<"$MYSQL_SECURE_CNF")")"
  if ! pid_alive mariadb-secure "$MYSQL_SECURE_MARKER"; then
    reuse_foreign mariadb-secure "$MYSQL_SECURE_PORT" mariadb_secure_login_ok && return 0
    mariadb_secure_keys
    if [[ ! -d $MYSQL_SECURE_DATA/mysql ]]; then
      say "mariadb-secure: initialising data directory, encrypted (first run only)..."
      rm -rf "$MYSQL_SECURE_DATA"
      # Bootstrapped with the same options, so the system tables and the redo
      # log are encrypted from the start.
      mariadb-install-db --defaults-file="$MYSQL_SECURE_CNF" --auth-root-authentication-method=socket \
        --skip-test-db >"$LOGS/mariadb-secure-install.log" 2>&1 ||
        fail_with_logs mariadb-secure "mariadb-install-db failed" "$LOGS/mariadb-secure-install.log"
    fi
    say "mariadb-secure: starting MariaDB $(mariadbd --version | sed -n 's/.*Ver \([^ ]*\).*/\1/p') (TLS only, encrypted at rest)..."
    spawn mariadb-secure "$LOGS/mariadb-secure.out" mariadbd --defaults-file="$MYSQL_SECURE_CNF"
    stamp_of "$(<"$MYSQL_SECURE_CNF")" >"$RUN/mariadb-secure.stamp"
  fi
}

mariadb_secure_wait() {
  [[ -z ${FOREIGN[mariadb-secure]:-} ]] || return 0
  wait_ready mariadb-secure "$OTHER_TIMEOUT" mariadb_secure_ready "$MYSQL_SECURE_MARKER" \
    "$LOGS/mariadb-secure.log" "$LOGS/mariadb-secure.out"
  # Idempotent, so it also repairs a dropped user or database. Same privileges
  # as the plain instance's user; the user itself requires TLS too (REQUIRE
  # SSL), on top of the server-wide require_secure_transport.
  local u="'$MYSQL_SECURE_USER'@'127.0.0.1', '$MYSQL_SECURE_USER'@'localhost'"
  mariadb --no-defaults --socket="$MYSQL_SECURE_SOCK" -uroot <<EOF || die "mariadb-secure: could not create the sluice database/user"
CREATE DATABASE IF NOT EXISTS sluice;
CREATE USER IF NOT EXISTS '$MYSQL_SECURE_USER'@'127.0.0.1' IDENTIFIED BY '$MYSQL_SECURE_PASSWORD' REQUIRE SSL;
CREATE USER IF NOT EXISTS '$MYSQL_SECURE_USER'@'localhost' IDENTIFIED BY '$MYSQL_SECURE_PASSWORD' REQUIRE SSL;
GRANT ALL PRIVILEGES ON sluice.* TO $u;
EOF
  if ! mariadb_secure_login_ok; then
    # An existing user with another password: reset it (only then, as the
    # Aria log of the system tables is not encrypted; see docs).
    mariadb --no-defaults --socket="$MYSQL_SECURE_SOCK" -uroot \
      -e "ALTER USER '$MYSQL_SECURE_USER'@'127.0.0.1' IDENTIFIED BY '$MYSQL_SECURE_PASSWORD',
          '$MYSQL_SECURE_USER'@'localhost' IDENTIFIED BY '$MYSQL_SECURE_PASSWORD' REQUIRE SSL" || true
    mariadb_secure_login_ok ||
      fail_with_logs mariadb-secure "user $MYSQL_SECURE_USER cannot log in over TLS on 127.0.0.1:$MYSQL_SECURE_PORT" \
        "$LOGS/mariadb-secure.log"
  fi
  say "mariadb-secure: ready on 127.0.0.1:$MYSQL_SECURE_PORT (TLS required, encrypted at rest; database sluice, user $MYSQL_SECURE_USER/$MYSQL_SECURE_PASSWORD)"
}

mariadb_secure_down() { stop mariadb-secure "$MYSQL_SECURE_MARKER" 30; }

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
  printf '%-14s %-9s 127.0.0.1:%-6s pid %s\n' "$name" "$state" "$port" "$pid"
}

# endpoint_line LABEL PORT WHAT: one of a service's secure listeners.
endpoint_line() {
  local state=closed
  if port_open "$2"; then state=open; fi
  printf '  %-12s %-9s 127.0.0.1:%-6s %s\n' "$1" "$state" "$2" "$3"
}

# The secure profile's endpoints, printed by `status`.
SECURE_ENDPOINTS="kafka SASL_SSL 127.0.0.1:$KAFKA_SASL_PORT (SCRAM $KAFKA_SCRAM_USER), \
kafka mTLS 127.0.0.1:$KAFKA_MTLS_PORT, ferretdb TLS 127.0.0.1:$MONGO_TLS_PORT, \
mariadb-secure TLS 127.0.0.1:$MYSQL_SECURE_PORT ($MYSQL_SECURE_USER); CA $TLS/ca.pem"

main() {
  local cmd="${1:-}"
  [[ -n $cmd ]] || { usage >&2; exit 2; }
  shift || true
  local services=("$@") s
  ((${#services[@]})) || services=(kafka ferretdb mariadb mariadb-secure)
  for s in "${services[@]}"; do
    case $s in
    kafka | ferretdb | mariadb | mariadb-secure) ;;
    *) die "unknown service '$s' (kafka, ferretdb, mariadb, mariadb-secure)" ;;
    esac
  done

  case $cmd in
  -h | --help | help) usage; return 0 ;;
  up | down | reset) ;;
  status)
    for s in "${services[@]}"; do
      case $s in
      kafka)
        status_line kafka "$KAFKA_MARKER" "$KAFKA_PORT"
        endpoint_line sasl_ssl "$KAFKA_SASL_PORT" "SCRAM-SHA-512/256, user $KAFKA_SCRAM_USER"
        endpoint_line "ssl (mTLS)" "$KAFKA_MTLS_PORT" "client certificate required"
        ;;
      ferretdb)
        status_line ferretdb "$FERRET_MARKER" "$MONGO_PORT"
        endpoint_line tls "$MONGO_TLS_PORT" "TLS, no authentication (SQLite backend)"
        ;;
      mariadb) status_line mariadb "$MYSQL_MARKER" "$MYSQL_PORT" ;;
      mariadb-secure)
        status_line mariadb-secure "$MYSQL_SECURE_MARKER" "$MYSQL_SECURE_PORT"
        endpoint_line tls "$MYSQL_SECURE_PORT" "TLS required, encrypted at rest, user $MYSQL_SECURE_USER"
        ;;
      esac
    done
    echo "secure: $SECURE_ENDPOINTS"
    return 0
    ;;
  *) usage >&2; exit 2 ;;
  esac

  mkdir -p "$DL" "$BIN" "$CONF" "$DATA" "$LOGS" "$RUN"
  local fn=() # function prefix per service: mariadb-secure -> mariadb_secure
  for s in "${services[@]}"; do fn+=("${s//-/_}"); done
  # One `up`/`down` at a time (parallel test runners may all call `up`).
  # spawn() closes this fd in the servers so they don't hold the lock.
  exec 9>"$SVC_DIR/.lock"
  flock 9

  case $cmd in
  up)
    # Start everything first, then wait, so Kafka boots while FerretDB builds.
    for s in "${fn[@]}"; do "${s}_start"; done
    for s in "${fn[@]}"; do "${s}_wait"; done
    ;;
  down) for s in "${fn[@]}"; do "${s}_down"; done ;;
  reset)
    for s in "${services[@]}"; do
      "${s//-/_}_down"
      case $s in
      kafka) rm -rf "$DATA/kafka" "$DATA"/kafka.* ;;
      ferretdb) rm -rf "$DATA/ferretdb" ;;
      mariadb) rm -rf "$DATA/mariadb" ;;
      mariadb-secure) rm -rf "$MYSQL_SECURE_DATA" "$MYSQL_SECURE_KEYS" ;;
      esac
      say "$s: data wiped"
    done
    ;;
  esac
}

main "$@"
