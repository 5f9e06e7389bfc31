//! TEST ONLY: a plugin exactly as one built before contract 0.2.0 looks to
//! the host. Its bindings come from the frozen `wit/v0.1.0/sluice.wit`
//! (`output-decl` without partitioning or shard key) and it answers in
//! result encoding version 1 (no operation byte: every output is an
//! upsert). It does not use the SDK, which follows the current contract,
//! so it keeps compiling to the old one whatever the SDK becomes.
//!
//! It declares the table `legacy_events` (`id` text(64) key, `body` text)
//! and writes one row per record: the key (or `p{partition}-o{offset}`)
//! and the value as text. A record without a value is rejected.

wit_bindgen::generate!({
    path: "../../wit/v0.1.0/sluice.wit",
    world: "transform",
});

use sluice::plugin::types::{Field, FieldType, OutputDecl, OutputKind};

struct Legacy;

impl Guest for Legacy {
    fn describe() -> PluginInfo {
        let field = |name: &str, type_, nullable| Field {
            name: name.into(),
            type_,
            nullable,
        };
        PluginInfo {
            name: "legacy_v0_1".into(),
            version: "0.1.0".into(),
            outputs: vec![OutputDecl {
                name: "legacy_events".into(),
                kind: OutputKind::Table,
                fields: vec![
                    field("id", FieldType::Text(Some(64)), false),
                    field("body", FieldType::Text(None), true),
                ],
                primary_key: vec!["id".into()],
                indexes: vec![],
            }],
        }
    }

    fn transform(batch: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut input = Reader(&batch);
        if input.take(4)? != b"SLB\x01" {
            return Err("not a version 1 batch".into());
        }
        let mut outputs = Vec::new();
        let mut errors = Vec::new();
        for index in 0..input.u32()? {
            let _topic = input.bytes()?;
            let partition = i32::from_le_bytes(input.take(4)?.try_into().unwrap());
            let offset = i64::from_le_bytes(input.take(8)?.try_into().unwrap());
            let _timestamp = input.take(8)?;
            let key = input.opt_bytes()?;
            let value = input.opt_bytes()?;
            for _ in 0..input.u32()? {
                input.bytes()?;
                input.opt_bytes()?;
            }
            let Some(value) = value else {
                errors.push((index, "a record without a value".to_string()));
                continue;
            };
            let id = match key {
                Some(k) => String::from_utf8_lossy(k).into_owned(),
                None => format!("p{partition}-o{offset}"),
            };
            let row = format!(
                "{{\"id\":{},\"body\":{}}}",
                json_string(&id),
                json_string(&String::from_utf8_lossy(value))
            );
            outputs.push((index, row));
        }
        // Result encoding version 1: "SLR" 1, outputs without an op byte.
        let mut out = b"SLR\x01".to_vec();
        out.extend((outputs.len() as u32).to_le_bytes());
        for (index, row) in outputs {
            out.extend(index.to_le_bytes());
            put(&mut out, b"legacy_events");
            put(&mut out, row.as_bytes());
        }
        out.extend((errors.len() as u32).to_le_bytes());
        for (index, reason) in errors {
            out.extend(index.to_le_bytes());
            put(&mut out, reason.as_bytes());
        }
        Ok(out)
    }
}

export!(Legacy);

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated batch".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>, String> {
        match self.u32()? {
            u32::MAX => Ok(None),
            n => self.take(n as usize).map(Some),
        }
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend((bytes.len() as u32).to_le_bytes());
    out.extend(bytes);
}

fn json_string(s: &str) -> String {
    let mut quoted = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if (c as u32) < 0x20 => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}
