//! Splits JSON order events into an `orders` table and `order_events`
//! documents; a tombstone of an order's key, or `{"id": ..., "op":
//! "delete"}`, deletes both.
use sluice_plugin_sdk::prelude::*;

pub struct Orders;

#[derive(serde::Deserialize)]
struct Event {
    id: Option<String>,
    customer: String,
    total: Number,
    created_at: String,
    status: Option<String>,
    channel: Option<String>,
}

/// An event that is an operation rather than an order: `{"id", "op"}`.
#[derive(serde::Deserialize)]
struct Op {
    id: String,
    op: String,
}

impl Transform for Orders {
    fn describe() -> Plugin {
        let version = match () {
            _ if cfg!(feature = "v2") => "2.0.0",
            _ if cfg!(feature = "v3") => "3.0.0",
            _ if cfg!(feature = "narrow") => "3.0.0-narrow",
            _ => "1.0.0",
        };
        let customer = if cfg!(feature = "narrow") { 16 } else { 128 };
        let mut orders = Output::table("orders")
            .field("order_id", Type::text(64))
            .primary_key(["order_id"])
            .field("customer", Type::text(customer));
        // An encrypted value cannot be looked up: no index on it then.
        orders = if cfg!(feature = "sensitive") {
            orders.sensitive(["customer"])
        } else {
            orders.index("by_customer", ["customer"])
        };
        orders = orders
            .field("total", Type::decimal(12, 2))
            .field("created_at", Type::Timestamp)
            .optional("status", Type::text(32));
        if cfg!(feature = "v3") {
            orders = orders
                .optional("channel", Type::text(32))
                .index("by_channel", ["channel"]);
        }
        let mut events = Output::document("order_events")
            .field("order_id", Type::text(64))
            .primary_key(["order_id"])
            .field("event", Type::Json)
            .field("big_spender", Type::Boolean);
        if cfg!(feature = "sensitive") {
            events = events.sensitive(["event"]);
        }
        let plugin = Plugin::new("orders", version);
        if !cfg!(feature = "partitioned") {
            return plugin.output(orders).output(events);
        }
        // Orders spread over 8 partitions by id; one history row per event,
        // in daily partitions of its time (old days can be dropped whole).
        orders = orders.partition_by_hash("order_id", 8);
        events = events.shard_key(["order_id"]);
        let history = Output::table("order_history")
            .field("order_id", Type::text(64))
            .field("at", Type::Timestamp)
            .primary_key(["order_id", "at"])
            .optional("status", Type::text(32))
            .field("total", Type::decimal(12, 2))
            .partition_by_day("at");
        plugin.output(orders).output(events).output(history)
    }

    fn process(record: &Record, out: &mut Emitter) -> Result<(), Error> {
        // A tombstone (no value) or `{"id": ..., "op": "delete"}` deletes
        // the order and its events document.
        let deleted = match record.value {
            // A plugin from before deletes rejected tombstones.
            None if cfg!(feature = "result-v1") => None,
            None => Some(
                record
                    .key_str()
                    .ok_or(Error("tombstone without a key".into()))?,
            ),
            Some(_) => None,
        };
        let op: Option<Op> = match deleted {
            Some(_) => None,
            None => record.json().ok(),
        };
        let deleted = deleted.or(op
            .as_ref()
            .filter(|o| o.op == "delete")
            .map(|o| o.id.as_str()));
        if let Some(id) = deleted {
            out.delete("orders", id)?;
            return out.delete("order_events", id);
        }
        let event: Event = record.json()?;
        let order_id = event
            .id
            .filter(|id| !id.is_empty())
            .ok_or(Error("order has no id".into()))?;
        let status = event.status.map(|s| {
            if cfg!(feature = "v2") {
                s.to_uppercase()
            } else {
                s
            }
        });
        let big_spender = event.total.as_f64().unwrap_or(0.0) >= 100.0;
        let mut order = json!({ "order_id": order_id, "customer": event.customer,
            "total": event.total, "created_at": event.created_at, "status": status });
        if cfg!(feature = "v3") {
            order["channel"] = json!(event.channel.unwrap_or_else(|| "web".into()));
        }
        if cfg!(feature = "partitioned") {
            let at = record
                .timestamp
                .map_or(json!(event.created_at), |ms| json!(ms));
            out.emit(
                "order_history",
                json!({ "order_id": order_id, "at": at, "status": order["status"],
                    "total": event.total }),
            )?;
        }
        out.emit("orders", order)?;
        out.emit(
            "order_events",
            json!({ "order_id": order_id, "big_spender": big_spender,
            "event": record.json::<Value>()? }),
        )
    }
}

#[cfg(not(feature = "result-v1"))]
export!(Orders);

/// The same plugin answering as one built before deletes: packed result
/// version 1, whose outputs have no op byte.
#[cfg(all(target_arch = "wasm32", feature = "result-v1"))]
const _: () = {
    use sluice_plugin_sdk::abi;
    struct Version1;
    impl sluice_plugin_sdk::guest::Guest for Version1 {
        fn describe() -> sluice_plugin_sdk::guest::PluginInfo {
            sluice_plugin_sdk::guest::plugin_info(<Orders as Transform>::describe())
        }
        fn transform(batch: Vec<u8>) -> Result<Vec<u8>, String> {
            let packed = sluice_plugin_sdk::transform_packed::<Orders>(&batch)?;
            let result = abi::decode_result(&packed).map_err(|e| e.to_string())?;
            let mut b = b"SLR\x01".to_vec();
            let put = |b: &mut Vec<u8>, bytes: &[u8]| {
                b.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                b.extend_from_slice(bytes);
            };
            b.extend_from_slice(&(result.outputs.len() as u32).to_le_bytes());
            for o in &result.outputs {
                b.extend_from_slice(&o.source.to_le_bytes());
                put(&mut b, o.output.as_bytes());
                put(&mut b, &o.value);
            }
            b.extend_from_slice(&(result.errors.len() as u32).to_le_bytes());
            for e in &result.errors {
                b.extend_from_slice(&e.source.to_le_bytes());
                put(&mut b, e.reason.as_bytes());
            }
            Ok(b)
        }
    }
    sluice_plugin_sdk::guest::export_transform!(Version1 with_types_in sluice_plugin_sdk::guest::bindings);
};

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::testing::{TestRecord, run};

    #[test]
    fn splits_valid_events_and_rejects_bad_ones() {
        let good = json!({"id": "o-1", "customer": "ada", "total": 120.5,
            "created_at": "2024-05-01T10:00:00Z", "status": "paid", "items": [{"sku": "x"}]});
        let out = run::<Orders>(&[
            TestRecord::json(good),
            TestRecord::json(
                json!({"customer": "bob", "total": 1, "created_at": "2024-05-01T10:00:00Z"}),
            ),
            TestRecord::value("{not json"),
        ]);
        assert_eq!(out.on("orders").len(), 1);
        assert_eq!(out.on("orders")[0]["total"], "120.50");
        assert_eq!(out.on("order_events")[0]["big_spender"], true);
        assert_eq!(out.on("order_events")[0]["event"]["items"][0]["sku"], "x");
        assert_eq!(out.rejected.len(), 2);
        assert!(out.deletes.is_empty());
        assert_eq!(out.rejected[0], (1, "order has no id".to_string()));
        assert!(out.rejected[1].1.starts_with("value is not valid JSON"));
    }

    #[test]
    fn a_tombstone_or_a_delete_event_deletes_the_order_and_its_events() {
        let out = run::<Orders>(&[
            TestRecord::tombstone("o-1"),
            TestRecord::json(json!({"id": "o-2", "op": "delete"})),
            TestRecord {
                key: None,
                ..TestRecord::tombstone("")
            },
        ]);
        let deleted: Vec<_> = out
            .deletes
            .iter()
            .map(|(o, k, i)| (o.as_str(), k.clone(), *i))
            .collect();
        assert_eq!(
            deleted,
            [
                ("orders", json!({"order_id": "o-1"}), 0),
                ("order_events", json!({"order_id": "o-1"}), 0),
                ("orders", json!({"order_id": "o-2"}), 1),
                ("order_events", json!({"order_id": "o-2"}), 1),
            ]
        );
        assert_eq!(out.rejected, [(2, "tombstone without a key".to_string())]);
    }
}
