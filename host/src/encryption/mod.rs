//! Field-level encryption: the values of fields a plugin declares
//! `sensitive`, and the records kept in dead letters of such a plugin, are
//! encrypted by the host before they leave the process, so a database (or
//! its files, its backups, its logs) holds ciphertext only.
//!
//! AES-256-GCM with a random 96-bit nonce per value; the associated data
//! binds a value to where it belongs (`output.field`), so a ciphertext
//! copied into another column does not decrypt. A value is stored as
//! `sluice:enc:v1:KEY_ID:BASE64(nonce ‖ ciphertext ‖ tag)`: the key id
//! beside it lets old keys keep decrypting after `encryption.current`
//! moves to a new one.

use crate::config::EncryptionConfig;
use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use std::collections::BTreeMap;

/// What every encrypted value starts with.
pub const PREFIX: &str = "sluice:enc:v1:";

/// Where a dead letter's record key and value belong, for the associated
/// data.
pub const DEAD_LETTER_KEY: &str = "dead_letter.key";
pub const DEAD_LETTER_VALUE: &str = "dead_letter.value";

pub struct FieldCipher {
    current: String,
    keys: BTreeMap<String, LessSafeKey>,
}

impl FieldCipher {
    /// The keys of `[encryption]`, resolved; errors name the key.
    pub fn from_config(config: &EncryptionConfig) -> Result<FieldCipher, String> {
        let mut keys = BTreeMap::new();
        for (id, secret) in &config.keys {
            let key = format!("encryption.keys.{id}");
            let text = secret.resolve().map_err(|e| format!("{key}: {e}"))?;
            let bytes = hex_key(text.trim()).map_err(|e| format!("{key}: {e}"))?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| format!("{key}: not an AES-256 key"))?;
            keys.insert(id.clone(), LessSafeKey::new(key));
        }
        if !keys.contains_key(&config.current) {
            return Err(format!(
                "encryption.current: no key '{}' in encryption.keys",
                config.current
            ));
        }
        Ok(FieldCipher {
            current: config.current.clone(),
            keys,
        })
    }

    /// `plaintext` encrypted with the current key, bound to `context`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let key = &self.keys[&self.current];
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut data = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut data,
        )
        .expect("AES-GCM seals any input under 64 GiB");
        let mut sealed = nonce.to_vec();
        sealed.extend(data);
        format!(
            "{PREFIX}{}:{}",
            self.current,
            base64::engine::general_purpose::STANDARD.encode(sealed)
        )
    }

    /// The plaintext of a `seal`ed value; an error if it was not sealed
    /// for `context`, with a key it knows, or was changed since.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, String> {
        let rest = sealed
            .strip_prefix(PREFIX)
            .ok_or("not an encrypted value")?;
        let (id, data) = rest.split_once(':').ok_or("malformed encrypted value")?;
        let key = self.keys.get(id).ok_or_else(|| {
            format!("encrypted with key '{id}', which encryption.keys does not hold")
        })?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("malformed encrypted value: {e}"))?;
        if data.len() < NONCE_LEN {
            return Err("malformed encrypted value: too short".into());
        }
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "malformed nonce")?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| {
                format!("cannot decrypt a value of {context}: changed, or sealed for another field")
            })?;
        Ok(plaintext.to_vec())
    }

    /// A JSON value sealed as its JSON text.
    pub fn seal_value(&self, context: &str, value: &serde_json::Value) -> String {
        self.seal(context, value.to_string().as_bytes())
    }

    /// The value a `seal_value` sealed; a text that is not encrypted is
    /// returned as it is.
    pub fn open_value(&self, context: &str, text: &str) -> Result<serde_json::Value, String> {
        if !is_sealed(text) {
            return Ok(serde_json::Value::String(text.to_string()));
        }
        serde_json::from_slice(&self.open(context, text)?)
            .map_err(|e| format!("a decrypted value of {context} is not JSON: {e}"))
    }
}

pub fn is_sealed(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// Where a sensitive field's value belongs: `output.field`.
pub fn field_context(output: &str, field: &str) -> String {
    format!("{output}.{field}")
}

fn hex_key(text: &str) -> Result<Vec<u8>, String> {
    let bytes = hex::decode(text).map_err(|_| {
        "must be 64 hexadecimal characters (32 bytes), e.g. from `openssl rand -hex 32`".to_string()
    })?;
    if bytes.len() != 32 {
        return Err(format!(
            "must be 64 hexadecimal characters (32 bytes), not {}",
            text.len()
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn cipher(current: &str, keys: &[(&str, &str)]) -> Result<FieldCipher, String> {
        FieldCipher::from_config(&EncryptionConfig {
            current: current.into(),
            keys: keys
                .iter()
                .map(|(id, k)| (id.to_string(), Secret::new(*k)))
                .collect(),
        })
    }

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn values_round_trip_bound_to_their_field_and_old_keys_still_decrypt() {
        let old = cipher("k1", &[("k1", K1)]).unwrap();
        let sealed = old.seal("orders.card", b"\"4111 1111\"");
        assert!(sealed.starts_with("sluice:enc:v1:k1:"), "{sealed}");
        assert!(!sealed.contains("4111"));
        assert_ne!(
            sealed,
            old.seal("orders.card", b"\"4111 1111\""),
            "random nonce"
        );
        assert_eq!(old.open("orders.card", &sealed).unwrap(), b"\"4111 1111\"");
        // Rotated: new values use k2, k1's still open.
        let rotated = cipher("k2", &[("k1", K1), ("k2", K2)]).unwrap();
        assert_eq!(
            rotated.open("orders.card", &sealed).unwrap(),
            b"\"4111 1111\""
        );
        assert!(
            rotated
                .seal("orders.card", b"x")
                .starts_with("sluice:enc:v1:k2:")
        );

        let e = rotated.open("orders.email", &sealed).unwrap_err();
        assert!(e.contains("sealed for another field"), "{e}");
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let e = old
            .open("orders.card", std::str::from_utf8(&tampered).unwrap())
            .unwrap_err();
        assert!(e.contains("changed"), "{e}");
        let gone = cipher("k2", &[("k2", K2)]).unwrap();
        let e = gone.open("orders.card", &sealed).unwrap_err();
        assert!(
            e.contains("key 'k1', which encryption.keys does not hold"),
            "{e}"
        );
        let value = serde_json::json!({"card": "4111"});
        let sealed = old.seal_value("x.y", &value);
        assert_eq!(old.open_value("x.y", &sealed).unwrap(), value);
        assert_eq!(old.open_value("x.y", "plain").unwrap(), "plain");
    }

    #[test]
    fn bad_keys_name_the_setting() {
        let e = cipher("k1", &[("k1", "abc")]).err().unwrap();
        assert!(
            e.contains("encryption.keys.k1: must be 64 hexadecimal"),
            "{e}"
        );
        let e = cipher("k9", &[("k1", K1)]).err().unwrap();
        assert!(e.contains("encryption.current: no key 'k9'"), "{e}");
    }
}
