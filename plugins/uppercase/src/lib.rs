//! A dozen-line filter/map: keeps non-empty text messages, upper-cased.
use sluice_plugin_sdk::prelude::*;

pub struct Uppercase;

impl Transform for Uppercase {
    fn describe() -> Plugin {
        Plugin::new("uppercase", "1.0.0")
            .output(Output::document("shouts").field("text", Type::Text(None)))
    }

    fn process(record: &Record, out: &mut Emitter) -> Result<(), Error> {
        let text = record.value_str()?.trim();
        if text.is_empty() {
            return Ok(()); // filtered out, not an error
        }
        out.emit("shouts", json!({ "text": text.to_uppercase() }))
    }
}

export!(Uppercase);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::testing::{TestRecord, run};

    #[test]
    fn uppercases_and_filters() {
        let out = run::<Uppercase>(&[TestRecord::value("hi"), TestRecord::value("  ")]);
        assert_eq!(out.on("shouts"), vec![&json!({"text": "HI"})]);
        assert!(out.rejected.is_empty());
    }
}
