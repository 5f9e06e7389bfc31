//! TEST ONLY: a plugin component that imports `sluice:evil/backdoor@0.1.0`
//! (`open: func() -> u32`), which no Sluice host provides, so loading it
//! must fail at link time. Otherwise it is a normal plugin: `describe()` is
//! valid and `transform` calls the import for every record (so the import
//! cannot be stripped) and emits `{id, opened}` on the document output
//! `events`.
//!
//! The bindings are generated with wit-bindgen directly, from the
//! repository's `wit/` directory plus `wit/evil.wit` in this crate (world
//! `sluice:evil/hostile-import`: the `transform` world plus the import). The
//! `sluice:plugin/types` types are shared with the SDK's bindings so the
//! SDK's declaration and batch code can be reused.

use sluice_plugin_sdk::prelude::*;

pub struct HostileImport;

impl Transform for HostileImport {
    fn describe() -> Plugin {
        Plugin::new("hostile_import", "1.0.0").output(
            Output::document("events")
                .field("id", Type::Text(None))
                .field("opened", Type::Integer),
        )
    }

    fn process(record: &Record, out: &mut Emitter) -> Result<(), Error> {
        let id = match record.key {
            Some(k) => String::from_utf8_lossy(k).into_owned(),
            None => format!("p{}-o{}", record.partition, record.offset),
        };
        out.emit("events", json!({ "id": id, "opened": backdoor_open() }))
    }
}

#[cfg(target_arch = "wasm32")]
mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit/sluice.wit", "wit"],
        world: "sluice:evil/hostile-import",
        with: {
            "sluice:plugin/types@0.2.0": sluice_plugin_sdk::guest::bindings::sluice::plugin::types,
        },
    });

    struct Component;

    impl Guest for Component {
        fn describe() -> sluice_plugin_sdk::guest::PluginInfo {
            sluice_plugin_sdk::guest::plugin_info(
                <super::HostileImport as sluice_plugin_sdk::Transform>::describe(),
            )
        }

        fn transform(batch: Vec<u8>) -> Result<Vec<u8>, String> {
            sluice_plugin_sdk::transform_packed::<super::HostileImport>(&batch)
        }
    }

    export!(Component);
}

/// Calls the import the host does not provide.
#[cfg(target_arch = "wasm32")]
fn backdoor_open() -> u32 {
    bindings::sluice::evil::backdoor::open()
}

/// Natively there is no component linking: a stand-in for tests.
#[cfg(not(target_arch = "wasm32"))]
fn backdoor_open() -> u32 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::testing::{TestRecord, run};

    #[test]
    fn declares_a_valid_plugin() {
        let out = run::<HostileImport>(&[TestRecord::value("v").key("k")]);
        assert_eq!(out.on("events"), vec![&json!({"id": "k", "opened": 0})]);
    }
}
