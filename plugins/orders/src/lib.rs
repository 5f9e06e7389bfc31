//! Splits JSON order events into an `orders` table and `order_events` documents.
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
            .field("customer", Type::text(customer))
            .index("by_customer", ["customer"])
            .field("total", Type::decimal(12, 2))
            .field("created_at", Type::Timestamp)
            .optional("status", Type::text(32));
        if cfg!(feature = "v3") {
            orders = orders
                .optional("channel", Type::text(32))
                .index("by_channel", ["channel"]);
        }
        Plugin::new("orders", version).output(orders).output(
            Output::document("order_events")
                .field("order_id", Type::text(64))
                .primary_key(["order_id"])
                .field("event", Type::Json)
                .field("big_spender", Type::Boolean),
        )
    }

    fn process(record: &Record, out: &mut Emitter) -> Result<(), Error> {
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
        out.emit("orders", order)?;
        out.emit(
            "order_events",
            json!({ "order_id": order_id, "big_spender": big_spender,
            "event": record.json::<Value>()? }),
        )
    }
}

export!(Orders);

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
        assert_eq!(out.rejected[0], (1, "order has no id".to_string()));
        assert!(out.rejected[1].1.starts_with("value is not valid JSON"));
    }
}
