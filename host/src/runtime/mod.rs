//! The WebAssembly side: engine and limits, plugin versions, the registry of
//! what is currently loaded, and the folder watcher that hot-reloads.

mod engine;
mod instance;
mod plugin;
mod registry;
mod wasi;
mod watcher;

pub use instance::Limits;

pub use engine::Runtime;
pub use instance::{CallError, Instance};
pub use plugin::{LoadError, PluginVersion};
pub use registry::{Registry, Unavailable};
pub use watcher::watch;

/// Generated host bindings for `wit/sluice.wit`.
mod bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "transform" });
}
