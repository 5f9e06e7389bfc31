//! Declared schema -> CREATE TABLE.

use sluice_plugin_sdk::schema::{Output, Type};

/// Identifiers are already restricted to `[A-Za-z_][A-Za-z0-9_]*`; quote
/// them anyway so reserved words work as column names.
pub fn quote(name: &str) -> String {
    format!("`{name}`")
}

pub fn column_type(ty: Type) -> String {
    match ty {
        Type::Text(Some(n)) => format!("VARCHAR({n})"),
        Type::Text(None) => "LONGTEXT".into(),
        Type::Integer => "BIGINT".into(),
        Type::Float => "DOUBLE".into(),
        Type::Boolean => "BOOLEAN".into(),
        Type::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
        Type::Timestamp => "DATETIME(6)".into(),
        Type::Json => "JSON".into(),
    }
}

/// `collation` is the server's exact one (see `collation.rs`): every text
/// column, keys included, compares byte for byte.
pub fn create_table(table: &str, decl: &Output, collation: &str) -> String {
    let mut parts: Vec<String> = decl
        .fields
        .iter()
        .map(|f| {
            let null = if f.nullable { "NULL" } else { "NOT NULL" };
            format!("{} {} {null}", quote(&f.name), column_type(f.ty))
        })
        .collect();
    let key: Vec<_> = decl.primary_key.iter().map(|k| quote(k)).collect();
    parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
    for i in &decl.indexes {
        let fields: Vec<_> = i.fields.iter().map(|f| quote(f)).collect();
        let unique = if i.unique { "UNIQUE " } else { "" };
        parts.push(format!(
            "{unique}KEY {} ({})",
            quote(&i.name),
            fields.join(", ")
        ));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}",
        quote(table),
        parts.join(",\n  ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_table_becomes_ddl() {
        let decl = Output::table("orders")
            .field("order_id", Type::text(64))
            .field("total", Type::decimal(12, 2))
            .optional("status", Type::text(32))
            .primary_key(["order_id"])
            .index("by_status", ["status"]);
        let ddl = create_table("shop_orders", &decl, "utf8mb4_nopad_bin");
        assert!(
            ddl.starts_with("CREATE TABLE IF NOT EXISTS `shop_orders`"),
            "{ddl}"
        );
        assert!(ddl.contains("`order_id` VARCHAR(64) NOT NULL"));
        assert!(ddl.contains("`total` DECIMAL(12,2) NOT NULL"));
        assert!(ddl.contains("`status` VARCHAR(32) NULL"));
        assert!(ddl.contains("PRIMARY KEY (`order_id`)"));
        assert!(ddl.contains("KEY `by_status` (`status`)"));
        assert!(ddl.ends_with("COLLATE=utf8mb4_nopad_bin"), "{ddl}");
    }
}
