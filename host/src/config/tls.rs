//! Encryption and authentication of the connections sluice opens: typed
//! settings for Kafka (`[kafka.tls]`, `[kafka.sasl]`) and for each sink
//! (`tls`, `tls_ca`, ...). Plaintext is used only where the config says so.

use super::Secret;
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[kafka.tls]`: the brokers are reached over TLS.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// CA certificates (PEM) that signed the brokers' certificates;
    /// default: the system's.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that require mutual TLS.
    pub certificate: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Password of an encrypted `key`; may use `${env:..}`/`${file:..}`.
    pub key_password: Option<Secret>,
    /// Check that a broker's certificate names the host connected to.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

/// `[kafka.sasl]`: the client authenticates to the brokers.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN` (PLAIN only with
    /// `[kafka.tls]`: it sends the password as is).
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password; may use `${env:..}`/`${file:..}`.
    pub password: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    /// The name librdkafka and the brokers use.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }

    /// The librdkafka `builtin.features` entry it needs.
    pub fn feature(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 | SaslMechanism::ScramSha256 => "sasl_scram",
            SaslMechanism::Plain => "sasl_plain",
        }
    }
}

/// A sink's `tls`: how the connection to the database is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plaintext; only for a server on a trusted network (e.g. loopback).
    Disabled,
    /// Encrypted, the server's certificate not checked.
    Required,
    /// Encrypted, the certificate signed by `tls_ca` (or a system CA).
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host connected to.
    #[default]
    VerifyIdentity,
}

/// The TLS settings of one sink, as written beside its `url`/`uri`.
#[derive(Debug, Clone, Default)]
pub struct SinkTls<'a> {
    pub mode: TlsMode,
    pub ca: Option<&'a Path>,
    pub certificate: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

impl SinkTls<'_> {
    /// Errors about files that cannot be read or settings that do not go
    /// together, as (key suffix, message).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let files = [
            ("tls_ca", self.ca),
            ("tls_certificate", self.certificate),
            ("tls_key", self.key),
        ];
        for (key, path) in files {
            let Some(path) = path else { continue };
            if self.mode == TlsMode::Disabled {
                return Err((
                    key,
                    "is set but tls = \"disabled\"; set tls to \"verify-identity\" (or remove the key)"
                        .into(),
                ));
            }
            check_readable(path).map_err(|e| (key, e))?;
        }
        Ok(())
    }

    /// `check`, for a sink whose client certificate and key are separate
    /// files (MySQL): one without the other is refused.
    pub fn check_pair(&self) -> Result<(), (&'static str, String)> {
        self.check()?;
        match (self.certificate, self.key) {
            (None, Some(_)) => Err((
                "tls_key",
                "is set without tls_certificate; a client key goes with its certificate".into(),
            )),
            (Some(_), None) => Err((
                "tls_key",
                "is missing: tls_certificate needs its private key".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl KafkaTls {
    /// Errors as (key suffix, message).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let files = [
            ("ca", &self.ca),
            ("certificate", &self.certificate),
            ("key", &self.key),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                check_readable(path).map_err(|e| (key, e))?;
            }
        }
        if self.key_password.is_some() && self.key.is_none() {
            return Err(("key_password", "is set without `key`".into()));
        }
        match (&self.certificate, &self.key) {
            (Some(_), None) => Err((
                "key",
                "is missing: `certificate` needs its private key".into(),
            )),
            (None, Some(_)) => Err((
                "certificate",
                "is missing: `key` needs its certificate".into(),
            )),
            _ => Ok(()),
        }
    }
}

fn check_readable(path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}
