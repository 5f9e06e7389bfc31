//! The sink types a config can name (`[sinks.NAME] type = "..."`), their
//! settings, and what each type can do. Adding a sink type starts here: a
//! variant of `SinkConfig` and its `SinkType`; `sink::connect_all` then
//! builds it. Nothing else in the host names a sink type.

use super::secret::url_encode;
use super::{Secret, SinkTls, TlsMode};
use serde::Deserialize;
use sluice_plugin_sdk::schema::OutputKind;
use std::path::PathBuf;

/// What the host needs to know about a type of sink without connecting.
#[derive(Debug)]
pub struct SinkType {
    /// The `type` key.
    pub name: &'static str,
    /// Outputs of this kind without a route go to the only sink of this
    /// type (and dead letters to the only document sink, else the only
    /// table sink).
    pub default_for: OutputKind,
    /// Stores consumer offsets in the same transaction as the rows
    /// (`offsets = "sink"`), and can hold the run ledger.
    pub transactional: bool,
}

const MONGODB: SinkType = SinkType {
    name: "mongodb",
    default_for: OutputKind::Document,
    transactional: false,
};

const MYSQL: SinkType = SinkType {
    name: "mysql",
    default_for: OutputKind::Table,
    transactional: true,
};

/// Every sink type, in the order defaults are looked for.
pub const SINK_TYPES: &[&SinkType] = &[&MONGODB, &MYSQL];

/// A database outputs are written to.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// A MongoDB-protocol server; document outputs go here by default.
    Mongodb {
        /// Connection string, e.g. `mongodb://sluice@db.internal:27017`;
        /// may use `${env:..}`/`${file:..}`. TLS options (`tls`, `ssl`,
        /// `tlsCAFile`, ...) are refused: use the `tls` keys.
        uri: Secret,
        /// Password of the URI's user, instead of writing it in the URI;
        /// may use `${env:..}`/`${file:..}`.
        password: Option<Secret>,
        /// Database the collections live in.
        database: String,
        /// `verify-identity` (default), `verify-ca`, `required` (encrypted,
        /// certificate not checked) or `disabled` (plaintext).
        #[serde(default)]
        tls: TlsMode,
        /// CA certificates (PEM) that signed the server's certificate;
        /// default: the system's.
        tls_ca: Option<PathBuf>,
        /// Client certificate and its private key, in one PEM file, for
        /// servers that require mutual TLS.
        tls_certificate: Option<PathBuf>,
    },
    /// A MySQL-protocol server; table outputs go here by default.
    Mysql {
        /// Connection URL, e.g. `mysql://sluice@db.internal:3306/db`; query
        /// parameters other than the driver's `charset`, `collation`,
        /// `socket`, `timezone` and `statement-cache-capacity` are refused
        /// (TLS has its own keys).
        url: Secret,
        /// Password of the URL's user, instead of writing it in the URL;
        /// may use `${env:..}`/`${file:..}`.
        password: Option<Secret>,
        /// Connections in the pool.
        #[serde(default = "default_pool")]
        max_connections: u32,
        /// `verify-identity` (default), `verify-ca`, `required` (encrypted,
        /// certificate not checked) or `disabled` (plaintext).
        #[serde(default)]
        tls: TlsMode,
        /// CA certificates (PEM) that signed the server's certificate;
        /// default: the webpki roots built into sluice.
        tls_ca: Option<PathBuf>,
        /// Client certificate (PEM), for servers that require it (with
        /// `tls_key`).
        tls_certificate: Option<PathBuf>,
        /// The client certificate's private key (PEM).
        tls_key: Option<PathBuf>,
    },
}

fn default_pool() -> u32 {
    4
}

impl SinkConfig {
    /// What this type of sink can do.
    pub fn sink_type(&self) -> &'static SinkType {
        match self {
            SinkConfig::Mongodb { .. } => &MONGODB,
            SinkConfig::Mysql { .. } => &MYSQL,
        }
    }

    /// The `type` key: `mongodb`, `mysql`.
    pub fn kind(&self) -> &'static str {
        self.sink_type().name
    }

    /// Its TLS settings.
    pub fn tls(&self) -> SinkTls<'_> {
        match self {
            SinkConfig::Mongodb {
                tls,
                tls_ca,
                tls_certificate,
                ..
            } => SinkTls {
                mode: *tls,
                ca: tls_ca.as_deref(),
                certificate: tls_certificate.as_deref(),
                key: None,
            },
            SinkConfig::Mysql {
                tls,
                tls_ca,
                tls_certificate,
                tls_key,
                ..
            } => SinkTls {
                mode: *tls,
                ca: tls_ca.as_deref(),
                certificate: tls_certificate.as_deref(),
                key: tls_key.as_deref(),
            },
        }
    }

    /// The MySQL URL to connect with: references resolved (values in the
    /// user information percent-encoded), `password` and the TLS settings
    /// written in as the driver's parameters. Errors name the key.
    pub fn mysql_url(&self, name: &str) -> Result<String, String> {
        let SinkConfig::Mysql { url, password, .. } = self else {
            return Err(format!("sinks.{name}: is not a mysql sink"));
        };
        let mut url = url
            .resolve_url()
            .map_err(|e| format!("sinks.{name}.url: {e}"))?;
        super::check_mysql_url(&url)
            .map_err(|e| format!("sinks.{name}.url: {}", super::scrub(&e)))?;
        if let Some(password) = password {
            let password = password
                .resolve()
                .map_err(|e| format!("sinks.{name}.password: {e}"))?;
            url = with_password(&url, &password)
                .ok_or_else(|| format!("sinks.{name}.password: the url must name a user and no password (write `mysql://USER@host/db`)"))?;
        }
        let tls = self.tls();
        let mode = match tls.mode {
            TlsMode::Disabled => "DISABLED",
            TlsMode::Required => "REQUIRED",
            TlsMode::VerifyCa => "VERIFY_CA",
            TlsMode::VerifyIdentity => "VERIFY_IDENTITY",
        };
        let mut parameters = vec![format!("ssl-mode={mode}")];
        let files = [
            ("ssl-ca", tls.ca),
            ("ssl-cert", tls.certificate),
            ("ssl-key", tls.key),
        ];
        for (parameter, path) in files {
            if let Some(path) = path {
                parameters.push(format!(
                    "{parameter}={}",
                    url_encode(&path.to_string_lossy())
                ));
            }
        }
        let separator = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{url}{separator}{}", parameters.join("&")))
    }
}

/// `url` with `password` (percent-encoded) after its user name, or `None`
/// when it names no user or already holds a password.
fn with_password(url: &str, password: &str) -> Option<String> {
    let start = url.find("://")? + 3;
    let authority = url[start..]
        .find(['/', '?', '#'])
        .map_or(&url[start..], |end| &url[start..start + end]);
    let at = start + authority.rfind('@')?;
    let user = &url[start..at];
    if user.is_empty() || user.contains(':') || user.contains('/') {
        return None;
    }
    Some(format!(
        "{}{user}:{}{}",
        &url[..start],
        url_encode(password),
        &url[at..]
    ))
}
