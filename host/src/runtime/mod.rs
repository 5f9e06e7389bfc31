//! The WebAssembly side: engine and limits, plugin versions, the registry of
//! what is currently loaded, and the folder watcher that hot-reloads.

mod bindings;
mod call;
mod engine;
mod instance;
mod plugin;
mod registry;
mod wasi;
mod watcher;

pub use bindings::CONTRACT;
pub use call::{CallError, Limits};
pub use engine::Runtime;
pub use instance::{Instance, call_once};
pub use plugin::{LoadError, PluginVersion, short_hash};
pub use registry::{Admission, AdmitAll, Registry, Unavailable};
pub use watcher::watch;
