//! Last write wins: of the versions of one key in a batch, only the latest
//! is written, in every sink.

use super::Routed;
use serde_json::Value;
use std::collections::HashMap;

impl Routed {
    /// Last write wins: of the versions of one key in a batch, only the
    /// one from the latest record (by position in the batch, which is
    /// partition offset order; the last emitted if one record emits it
    /// twice) is written. Every sink gets its rows from here, so every sink
    /// applies the same rule, and no write carries a key twice. Rows keep
    /// the order of their kept versions. Dead letters are keyed by record
    /// and reason slot: a plugin naming a record twice leaves one letter.
    pub(super) fn keep_last_per_key(&mut self) {
        for (output, rows) in &mut self.rows {
            let sources = self.sources.get_mut(output).expect("a source per row");
            let keep = latest_per_key(rows.iter().map(|r| &r.id), sources.iter().copied());
            if let Some(keep) = keep {
                retain_marked(rows, &keep);
                retain_marked(sources, &keep);
            }
        }
        let letters = &mut self.dead_letters;
        if let Some(keep) = latest_per_key(letters.iter().map(|r| &r.id), 0..letters.len()) {
            retain_marked(letters, &keep);
        }
    }
}

/// For rows with these ids, from records at these batch positions: which
/// ones hold their key's latest version (the latest position; the later
/// row on a tie). `None` when every key appears once (the common case).
fn latest_per_key<'a>(
    ids: impl Iterator<Item = &'a Value>,
    positions: impl Iterator<Item = usize>,
) -> Option<Vec<bool>> {
    // A value's compact JSON text identifies it: values are normalised by
    // their declaration, and composite keys list their fields in one order.
    let keys: Vec<String> = ids.map(Value::to_string).collect();
    let mut latest: HashMap<&str, (usize, usize)> = HashMap::with_capacity(keys.len());
    for (row, (key, position)) in keys.iter().zip(positions).enumerate() {
        let e = latest.entry(key).or_insert((position, row));
        if position >= e.0 {
            *e = (position, row);
        }
    }
    if latest.len() == keys.len() {
        return None;
    }
    Some(
        keys.iter()
            .enumerate()
            .map(|(row, key)| latest[key.as_str()].1 == row)
            .collect(),
    )
}

fn retain_marked<T>(items: &mut Vec<T>, keep: &[bool]) {
    let mut marks = keep.iter();
    items.retain(|_| *marks.next().expect("a mark per item"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Row;
    use serde_json::json;

    fn row(id: Value, version: u32) -> Row {
        let Value::Object(fields) = json!({ "v": version }) else {
            unreachable!()
        };
        Row::upsert(id, fields)
    }

    /// Rows of one output as (id, version) after the reduction.
    fn kept(rows: &[(Value, u32)], sources: &[usize]) -> Vec<(Value, u32, usize)> {
        let mut routed = Routed::default();
        routed.rows.insert(
            "o".into(),
            rows.iter().map(|(id, v)| row(id.clone(), *v)).collect(),
        );
        routed.sources.insert("o".into(), sources.to_vec());
        routed.keep_last_per_key();
        routed.rows["o"]
            .iter()
            .zip(&routed.sources["o"])
            .map(|(r, s)| (r.id.clone(), r.fields["v"].as_u64().unwrap() as u32, *s))
            .collect()
    }

    #[test]
    fn ten_versions_of_one_key_leave_the_last() {
        let rows: Vec<_> = (1..=10).map(|v| (json!("o-1"), v)).collect();
        let sources: Vec<_> = (0..10).collect();
        assert_eq!(kept(&rows, &sources), vec![(json!("o-1"), 10, 9)]);
    }

    #[test]
    fn other_keys_keep_their_order_and_the_latest_record_wins_whatever_the_emission_order() {
        // A per-batch plugin may emit record 3's output before record 1's.
        let rows = [
            (json!("a"), 1),
            (json!("b"), 2),
            (json!("a"), 3),
            (json!("c"), 4),
            (json!("a"), 5),
        ];
        let sources = [0, 1, 3, 2, 1];
        assert_eq!(
            kept(&rows, &sources),
            vec![(json!("b"), 2, 1), (json!("a"), 3, 3), (json!("c"), 4, 2)]
        );
        // One record emitting a key twice: the later emission wins.
        let rows = [(json!(7), 1), (json!(7), 2)];
        assert_eq!(kept(&rows, &[4, 4]), vec![(json!(7), 2, 4)]);
    }

    #[test]
    fn keys_differ_by_exact_value_and_composite_keys_by_every_field() {
        let rows = [
            (json!("pad-id"), 1),
            (json!("pad-id "), 2),
            (json!("Pad-id"), 3),
            (json!({"a": 1, "b": "x"}), 4),
            (json!({"a": 1, "b": "y"}), 5),
            (json!({"a": 1, "b": "x"}), 6),
        ];
        let got: Vec<u32> = kept(&rows, &[0, 1, 2, 3, 4, 5])
            .into_iter()
            .map(|(_, v, _)| v)
            .collect();
        assert_eq!(got, vec![1, 2, 3, 5, 6]);
    }

    #[test]
    fn unique_keys_are_left_as_they_are() {
        let ids = [json!("a"), json!("b")];
        assert_eq!(latest_per_key(ids.iter(), 0..2), None);
    }
}
