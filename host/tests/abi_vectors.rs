//! The host's side of the golden vectors of the packed encoding
//! (`plugin-sdk/tests/vectors/`, specified in `docs/plugin-abi.md`). The
//! host has no decoder of its own: `runtime::Instance::transform` reads a
//! plugin's result with `abi::result_output_count` (for the limits) and
//! `abi::decode_result`, and the pipeline packs batches with a
//! `BatchWriter`. The shared checks go through exactly those functions.

#[path = "../../plugin-sdk/tests/support/mod.rs"]
mod support;

use sluice_plugin_sdk::abi;

#[test]
fn the_host_decodes_and_encodes_the_golden_vectors() {
    support::check_all();
}

/// A plugin built with an SDK from before the version header: what the
/// operator reads (inside "plugin returned a malformed result: ...").
#[test]
fn a_result_from_an_unversioned_sdk_asks_for_a_rebuild() {
    let old = support::vectors()
        .into_iter()
        .find(|v| v.name == "bad-result-version-0")
        .expect("vector bad-result-version-0");
    // The limit check before decoding must not read the old count.
    assert_eq!(abi::result_output_count(&old.bytes), None);
    let e = abi::decode_result(&old.bytes).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "plugin encoded the result with ABI version 0 (unversioned), host expects ABI \
             version {v}: rebuild the plugin with the sluice-plugin-sdk for ABI version {v}",
            v = abi::RESULT_VERSION
        )
    );
}
