//! One wasmtime engine for the process: component model on, epoch
//! interruption for time limits, and a ticker thread driving the epoch.

use std::time::Duration;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, Engine, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// How often the epoch advances: the granularity of `batch_timeout`.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-store host state: a WASI context with no capabilities, and limits.
pub struct State {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[derive(Clone)]
pub struct Runtime {
    pub engine: Engine,
    pub linker: std::sync::Arc<Linker<State>>,
}

impl Runtime {
    pub fn new() -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // Plugins built for wasm32-wasip2 import WASI interfaces through std;
        // they are linked, but every store gets an empty WasiCtx: no files,
        // no network, no environment, no arguments, closed stdio.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Runtime {
            engine,
            linker: std::sync::Arc::new(linker),
        })
    }
}
