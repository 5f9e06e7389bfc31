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
        for (refused, why) in REFUSED_KAFKA_OPTIONS {
            if self.kafka.options.contains_key(*refused) {
                return Err((format!("kafka.options.{refused}"), why.to_string()));
            }
        }
        for (name, sink) in &self.sinks {
            if let super::SinkConfig::Mysql { url, .. } = sink {
                check_mysql_url(url.as_written()).map_err(|e| (format!("sinks.{name}.url"), e))?;
            }
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
    "ssl-mode",
    "sslmode",
    "ssl-ca",
    "sslca",
    "ssl-cert",
    "sslcert",
    "ssl-key",
    "sslkey",
    "charset",
    "collation",
    "statement-cache-capacity",
    "socket",
    "timezone",
    "time-zone",
];

/// Refuses a query parameter the MySQL driver would ignore. Checked on the
/// URL as written (`validate`) and once resolved (at connect: a reference
/// may hold the whole URL).
pub fn check_mysql_url(url: &str) -> Result<(), String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or_default();
    let keys = query.split('&').filter(|p| !p.is_empty());
    match keys
        .map(|pair| pair.split('=').next().unwrap_or_default())
        .find(|k| !MYSQL_URL_PARAMETERS.contains(k))
    {
        Some(unknown) => Err(format!(
            "unknown connection parameter '{unknown}' (known: {}); the driver would ignore it, and a misspelled TLS setting would connect in plaintext",
            MYSQL_URL_PARAMETERS.join(", ")
        )),
        None => Ok(()),
    }
}

/// librdkafka properties `kafka.options` may not set, and why: those
/// sluice sets itself, those a typed setting owns, and those that load
/// native code into the host process (outside any sandbox).
const REFUSED_KAFKA_OPTIONS: &[(&str, &str)] = &[
    ("enable.auto.commit", SET_BY_SLUICE),
    ("enable.auto.offset.store", SET_BY_SLUICE),
    ("group.id", SET_BY_SLUICE),
    ("bootstrap.servers", "is `kafka.brokers`; set it there"),
    ("metadata.broker.list", "is `kafka.brokers`; set it there"),
    ("plugin.library.paths", LOADS_CODE),
    ("ssl.engine.location", LOADS_CODE),
    ("ssl.providers", LOADS_CODE),
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
