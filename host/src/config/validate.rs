//! Checks across keys that parsing alone cannot make: names, references
//! between sections, limits, and what each sink type can do. Each error
//! names the key to fix.

use super::{
    Config, MAX_INTERVAL, MAX_STACK_KIB, OffsetStore, PipelineConfig, SINK_TYPES, Schedule,
};

impl Config {
    /// `offsets = "sink"`: the rows, the dead letters and the offsets are
    /// written in one transaction, so they must all go to one sink that
    /// has transactions. Returns the pipeline key that breaks it.
    fn check_one_transactional_sink(
        &self,
        p: &PipelineConfig,
    ) -> Result<(), (&'static str, String)> {
        let (sink, _) = self.dead_letter_sink(p).map_err(|_| {
            (
                "dead_letter.sink",
                "no sink for dead letters; set dead_letter.sink".to_string(),
            )
        })?;
        let kinds = transactional_kinds();
        let hint = "offsets = \"sink\" (or \"mysql\") writes the rows, the dead letters and the offsets in one transaction";
        if !self
            .sinks
            .get(&sink)
            .is_some_and(|s| s.sink_type().transactional)
        {
            return Err((
                "dead_letter.sink",
                format!(
                    "dead letters go to sink '{sink}', which is not a {kinds} sink; {hint}, so set dead_letter.sink to the pipeline's {kinds} sink"
                ),
            ));
        }
        if let Some((output, route)) = p.routes.iter().find(|(_, r)| r.sink != sink) {
            return Err((
                "routes",
                format!(
                    "output '{output}' goes to sink '{}' but dead letters go to '{sink}'; {hint}, so every output must go to that one sink",
                    route.sink
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.pipelines.iter().enumerate() {
            let key = |k: &str| format!("pipelines[{i}].{k}");
            sluice_plugin_sdk::schema::check_identifier("pipeline name", &p.name)
                .map_err(|e| (key("name"), e))?;
            if !names.insert(&p.name) {
                return Err((
                    key("name"),
                    format!("pipeline '{}' is defined twice", p.name),
                ));
            }
            sluice_plugin_sdk::schema::check_identifier("plugin name", &p.plugin)
                .map_err(|e| (key("plugin"), e))?;
            if p.topics.is_empty() {
                return Err((key("topics"), "at least one topic is required".into()));
            }
            if p.batch.max_records == 0 {
                return Err((key("batch.max_records"), "must be at least 1".into()));
            }
            for (output, route) in &p.routes {
                if !self.sinks.contains_key(&route.sink) {
                    return Err((
                        key(&format!("routes.{output}.sink")),
                        self.unknown_sink(&route.sink),
                    ));
                }
                if let Some(name) = &route.name {
                    sluice_plugin_sdk::schema::check_identifier("table or collection name", name)
                        .map_err(|e| (key(&format!("routes.{output}.name")), e))?;
                }
            }
            if let Some(sink) = &p.dead_letter.sink
                && !self.sinks.contains_key(sink)
            {
                return Err((key("dead_letter.sink"), self.unknown_sink(sink)));
            }
            Schedule::from_config(&p.schedule)
                .map_err(|(k, e)| (key(&format!("schedule{k}")), e))?;
            if !(1..=100).contains(&p.retry.max_attempts) {
                return Err((key("retry.max_attempts"), "must be from 1 to 100".into()));
            }
            if p.retry.backoff > MAX_INTERVAL {
                return Err((key("retry.backoff"), "must be at most 366 days".into()));
            }
            for (guest, host) in &p.grants.read_dirs {
                if !guest.starts_with('/') {
                    return Err((
                        key(&format!("grants.read_dirs.{guest}")),
                        "the guest path must be absolute, like \"/lookup\"".into(),
                    ));
                }
                if !host.is_dir() {
                    return Err((
                        key(&format!("grants.read_dirs.{guest}")),
                        format!("{} is not a folder", host.display()),
                    ));
                }
            }
            if p.offsets == OffsetStore::Sink {
                self.check_one_transactional_sink(p)
                    .map_err(|(k, e)| (key(k), e))?;
            }
            // A plugin's versions are promoted per plugin, so its pipelines
            // must agree on how a new version takes over.
            if let Some(other) = self
                .pipelines
                .iter()
                .find(|o| o.plugin == p.plugin && o.reload != p.reload)
            {
                return Err((
                    key("reload"),
                    format!(
                        "pipeline '{}' runs plugin '{}' with reload = \"{}\"; every pipeline of one plugin needs the same reload mode",
                        other.name,
                        p.plugin,
                        other.reload.as_str()
                    ),
                ));
            }
        }
        if !(64..=MAX_STACK_KIB).contains(&self.engine.stack_kib) {
            return Err((
                "engine.stack_kib".into(),
                format!("must be from 64 to {MAX_STACK_KIB}"),
            ));
        }
        self.check_kafka_security()?;
        if let Some(encryption) = &self.encryption {
            for id in encryption.keys.keys() {
                sluice_plugin_sdk::schema::check_identifier("key id", id)
                    .map_err(|e| (format!("encryption.keys.{id}"), e))?;
            }
            if !encryption.keys.contains_key(&encryption.current) {
                return Err((
                    "encryption.current".into(),
                    format!("no key '{}' in encryption.keys", encryption.current),
                ));
            }
        }
        if let Some(token) = &self.api.token
            && let Ok(value) = token.resolve()
            && value.len() < 32
        {
            return Err((
                "api.token".into(),
                "must be at least 32 characters (e.g. `openssl rand -hex 32`)".into(),
            ));
        }
        if self.api.enabled && !self.api.listen.ip().is_loopback() {
            return Err((
                "api.listen".into(),
                format!(
                    "{} is not a loopback address; the API speaks plain HTTP, so it listens on loopback only (127.0.0.1 or [::1]); to reach it from elsewhere put a TLS-terminating proxy in front",
                    self.api.listen
                ),
            ));
        }
        for (name, sink) in &self.sinks {
            match sink {
                super::SinkConfig::Mysql { url, .. } => {
                    check_mysql_url(url.as_written())
                        .map_err(|e| (format!("sinks.{name}.url"), e))?;
                }
                super::SinkConfig::Mongodb { uri, password, .. } => {
                    check_mongodb_uri(uri.as_written(), password.is_some())
                        .map_err(|e| (format!("sinks.{name}.uri"), e))?;
                }
            }
            let tls = sink.tls();
            let checked = match sink {
                // MySQL takes the client certificate and key as two files.
                super::SinkConfig::Mysql { .. } => tls.check_pair(),
                super::SinkConfig::Mongodb { .. } => tls.check(),
            };
            checked.map_err(|(key, e)| (format!("sinks.{name}.{key}"), e))?;
        }
        if let Some(sink) = &self.ledger.sink {
            match self.sinks.get(sink) {
                None => return Err(("ledger.sink".into(), self.unknown_sink(sink))),
                Some(s) if !s.sink_type().transactional => {
                    return Err((
                        "ledger.sink".into(),
                        format!(
                            "sink '{sink}' is {}; the ledger needs a {} sink (or no `ledger.sink` for the embedded SQLite ledger)",
                            s.kind(),
                            transactional_kinds()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The typed TLS and SASL settings, and the raw options they own.
    fn check_kafka_security(&self) -> Result<(), (String, String)> {
        if let Some(tls) = &self.kafka.tls {
            tls.check()
                .map_err(|(key, e)| (format!("kafka.tls.{key}"), e))?;
        }
        if let Some(sasl) = &self.kafka.sasl
            && sasl.mechanism == super::SaslMechanism::Plain
            && self.kafka.tls.is_none()
        {
            return Err((
                "kafka.sasl.mechanism".into(),
                "PLAIN sends the password as is, and without [kafka.tls] it would cross the network in clear; add [kafka.tls] or use SCRAM-SHA-512".into(),
            ));
        }
        for key in self.kafka.options.keys() {
            if let Some((_, owner)) = KAFKA_OPTIONS_OWNED.iter().find(|(k, _)| k == key) {
                return Err((
                    format!("kafka.options.{key}"),
                    format!("is set by `{owner}`; set it there"),
                ));
            }
            if let Some((_, why)) = REFUSED_KAFKA_OPTIONS.iter().find(|(k, _)| k == key) {
                return Err((format!("kafka.options.{key}"), why.to_string()));
            }
        }
        Ok(())
    }

    fn unknown_sink(&self, name: &str) -> String {
        let known: Vec<_> = self.sinks.keys().map(String::as_str).collect();
        format!(
            "no sink named '{name}' (defined: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )
    }
}

/// The query parameters the MySQL driver (sqlx) reads from a URL; it
/// ignores any other silently.
const MYSQL_URL_PARAMETERS: &[&str] = &[
    "charset",
    "collation",
    "statement-cache-capacity",
    "socket",
    "timezone",
    "time-zone",
];

/// The driver's TLS parameters: the sink's `tls` keys own them.
const MYSQL_TLS_PARAMETERS: &[&str] = &[
    "ssl-mode", "sslmode", "ssl-ca", "sslca", "ssl-cert", "sslcert", "ssl-key", "sslkey",
];

/// Refuses a query parameter the MySQL driver would ignore, and the TLS
/// ones the sink's typed keys own. Checked on the URL as written
/// (`validate`) and once resolved (at connect: a reference may hold the
/// whole URL).
pub fn check_mysql_url(url: &str) -> Result<(), String> {
    // Parameters sluice appends (TLS) would land after a fragment, unread.
    if url.contains('#') {
        return Err("'#' is not allowed in a MySQL URL (percent-encode it as %23)".into());
    }
    for key in query_keys(url) {
        if MYSQL_TLS_PARAMETERS.contains(&key) {
            return Err(format!(
                "the parameter '{key}' is refused: TLS is set by the sink's `tls`, `tls_ca`, `tls_certificate` and `tls_key` keys"
            ));
        }
        if !MYSQL_URL_PARAMETERS.contains(&key) {
            return Err(format!(
                "unknown connection parameter '{key}' (known: {}); the driver would ignore it, and a misspelled setting would pass unnoticed",
                MYSQL_URL_PARAMETERS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Refuses TLS options in a MongoDB URI (the sink's `tls` keys own them)
/// and a password both in the URI and in `password`.
pub fn check_mongodb_uri(uri: &str, has_password: bool) -> Result<(), String> {
    if let Some(key) = query_keys(uri).find(|k| {
        let k = k.to_ascii_lowercase();
        k == "ssl" || k.starts_with("tls")
    }) {
        return Err(format!(
            "the option '{key}' is refused: TLS is set by the sink's `tls`, `tls_ca` and `tls_certificate` keys"
        ));
    }
    let authority = uri.split_once("://").map_or("", |(_, rest)| rest);
    let authority = authority.split(['/', '?']).next().unwrap_or_default();
    if has_password
        && let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        return Err(
            "holds a password and `password` is set too; keep one (the `password` key)".into(),
        );
    }
    Ok(())
}

/// The keys of a URL's query.
fn query_keys(url: &str) -> impl Iterator<Item = &str> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split('=').next().unwrap_or_default())
}

/// librdkafka properties `kafka.options` may not set, and why: those
/// sluice sets itself, those a typed setting owns, and those that load
/// native code into the host process (outside any sandbox).
const REFUSED_KAFKA_OPTIONS: &[(&str, &str)] = &[
    ("enable.auto.commit", SET_BY_SLUICE),
    ("enable.auto.offset.store", SET_BY_SLUICE),
    ("group.id", SET_BY_SLUICE),
    ("plugin.library.paths", LOADS_CODE),
    ("ssl.engine.location", LOADS_CODE),
    ("ssl.providers", LOADS_CODE),
    (
        "enable.ssl.certificate.verification",
        "would accept any broker certificate; refused (give the broker's CA as `kafka.tls.ca`)",
    ),
];

/// librdkafka properties a typed setting owns: (property, the key to use).
const KAFKA_OPTIONS_OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
    ("security.protocol", "[kafka.tls] and [kafka.sasl]"),
    ("ssl.ca.location", "kafka.tls.ca"),
    ("ssl.ca.pem", "kafka.tls.ca"),
    ("ssl.certificate.location", "kafka.tls.certificate"),
    ("ssl.certificate.pem", "kafka.tls.certificate"),
    ("ssl.key.location", "kafka.tls.key"),
    ("ssl.key.pem", "kafka.tls.key"),
    ("ssl.key.password", "kafka.tls.key_password"),
    (
        "ssl.endpoint.identification.algorithm",
        "kafka.tls.verify_hostname",
    ),
    ("sasl.mechanism", "kafka.sasl.mechanism"),
    ("sasl.mechanisms", "kafka.sasl.mechanism"),
    ("sasl.username", "kafka.sasl.username"),
    ("sasl.password", "kafka.sasl.password"),
];

const SET_BY_SLUICE: &str = "is set by sluice (offsets are committed after the sinks acknowledged; the group is `pipelines[].group_id`)";
const LOADS_CODE: &str =
    "loads native libraries into the host process, outside any sandbox; refused";

/// The sink types that have transactions, for messages: "mysql".
fn transactional_kinds() -> String {
    let kinds: Vec<&str> = SINK_TYPES
        .iter()
        .filter(|t| t.transactional)
        .map(|t| t.name)
        .collect();
    kinds.join(" or ")
}
