//! A canary's side of each batch: while the active version's outputs are
//! written, the candidate transforms the same packed batch on a blocking
//! thread; its outputs are routed (never written), compared with what was
//! written and reported to the registry, which may promote it.

use super::compare;
use crate::model::canary::BatchDiff;
use crate::router::{self, DeadLetterContext, Routed, Routes};
use crate::runtime::{CallError, Instance, Limits, PluginVersion, Registry, call_once};
use sluice_plugin_sdk::abi::{BatchResult, Record};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// A pipeline's canary instance and routes, kept between batches.
#[derive(Default)]
pub struct Shadow {
    instance: Option<Instance>,
    /// Routes resolved (never prepared: the canary writes nothing) for the
    /// version with this hash.
    routes: Option<(String, Arc<Routes>)>,
}

/// The canary's call on the current batch, running beside the writes.
pub struct ShadowCall {
    version: Arc<PluginVersion>,
    task: JoinHandle<(Option<Instance>, Result<BatchResult, CallError>)>,
}

impl Shadow {
    /// Starts `plugin`'s candidate on the batch `packed` gives, if there is
    /// a candidate other than `active`.
    pub fn start(
        &mut self,
        registry: &Registry,
        plugin: &str,
        active: &PluginVersion,
        limits: &Limits,
        packed: impl FnOnce() -> Vec<u8>,
    ) -> Option<ShadowCall> {
        let candidate = registry
            .candidate(plugin)
            .filter(|c| c.hash != active.hash)?;
        if self
            .instance
            .as_ref()
            .is_some_and(|i| i.version.hash != candidate.hash)
        {
            self.instance = None;
        }
        let (instance, limits, packed) = (self.instance.take(), limits.clone(), packed());
        let version = candidate.clone();
        let task =
            tokio::task::spawn_blocking(move || call_once(instance, version, limits, &packed));
        Some(ShadowCall {
            version: candidate,
            task,
        })
    }

    /// Waits for the canary's call and compares its routed outputs with
    /// `active`, what the active version wrote. `resolve` gives the routes
    /// of a version.
    pub async fn finish(
        &mut self,
        call: ShadowCall,
        pipeline: &str,
        records: &[Record<'_>],
        active: &Routed,
        resolve: impl FnOnce(&PluginVersion) -> Result<Routes, String>,
    ) -> (Arc<PluginVersion>, BatchDiff) {
        let (instance, result) = match call.task.await {
            Ok(done) => done,
            Err(e) => (None, Err(CallError::Trap(format!("canary call: {e}")))),
        };
        self.instance = instance;
        let canary = call.version;
        let diff = match result {
            Err(e) => BatchDiff::failed(records.len(), e.to_string()),
            Ok(result) => match self.routes(&canary, resolve) {
                Err(e) => BatchDiff::failed(records.len(), e),
                Ok(routes) => {
                    let ctx = DeadLetterContext::new(pipeline, &canary);
                    let routed = router::route(records, result, &routes, &ctx);
                    let mut diff = compare(records.len(), active, &routed);
                    super::mask_sensitive(&mut diff, &routes);
                    diff
                }
            },
        };
        (canary, diff)
    }

    fn routes(
        &mut self,
        canary: &PluginVersion,
        resolve: impl FnOnce(&PluginVersion) -> Result<Routes, String>,
    ) -> Result<Arc<Routes>, String> {
        if let Some((hash, routes)) = &self.routes
            && *hash == canary.hash
        {
            return Ok(routes.clone());
        }
        let routes = Arc::new(resolve(canary)?);
        self.routes = Some((canary.hash.clone(), routes.clone()));
        Ok(routes)
    }
}
