//! The CLI's side of the API (`sluice trigger`, `backfill`, `pipelines`).

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

pub struct Client {
    base: String,
    authorization: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the API at `listen`, sending `token` with each request.
    pub fn new(listen: std::net::SocketAddr, token: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client {
            base: format!("http://{listen}"),
            authorization: format!("Bearer {token}"),
            agent,
        }
    }

    /// A client for the host that runs `config`: its address and token.
    pub fn for_config(config: &crate::config::Config) -> anyhow::Result<Client> {
        Ok(Client::new(
            config.api.listen,
            &super::token(config, false)?,
        ))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.answer(
            self.agent
                .get(format!("{}{path}", self.base))
                .header("Authorization", &self.authorization)
                .call(),
        )
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.answer(
            self.agent
                .post(format!("{}{path}", self.base))
                .header("Authorization", &self.authorization)
                .send_json(body),
        )
    }

    fn answer<T: DeserializeOwned>(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<T> {
        let mut response = response.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the sluice host at {} ({e}); is `sluice run` running with this config? (its address is `api.listen`)",
                self.base
            )
        })?;
        let status = response.status();
        let body: serde_json::Value = response
            .body_mut()
            .read_json()
            .map_err(|e| anyhow::anyhow!("{}: unreadable answer ({status}): {e}", self.base))?;
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("no reason given");
            anyhow::bail!("{message}");
        }
        Ok(serde_json::from_value(body)?)
    }
}
