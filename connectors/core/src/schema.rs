use std::fmt;

/// A schema-qualified table name, compared and hashed exactly (PostgreSQL identifiers are
/// case-sensitive once created).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The name quoted for SQL: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes an SQL identifier, doubling embedded quotes.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// One replicated column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// PostgreSQL type OID; values travel in that type's binary send format.
    pub type_oid: u32,
    pub type_modifier: i32,
    /// The SQL type as `format_type` renders it (e.g. `numeric(12,2)`), used to create targets.
    /// Empty when the schema came from the replication stream rather than the catalog.
    pub type_name: String,
    pub nullable: bool,
    /// Part of the key that identifies a row (primary key or replica identity index).
    pub key: bool,
    /// The column's default expression on the source (`pg_get_expr` text), when the catalog
    /// was read for it: used to add the column to a target with the same default.
    pub default: Option<String>,
}

impl Column {
    /// A column of a type known only by OID (no type name, no modifier, no default); nullable
    /// unless it is part of the key.
    pub fn new(name: impl Into<String>, type_oid: u32, key: bool) -> Column {
        Column {
            name: name.into(),
            type_oid,
            type_modifier: -1,
            type_name: String::new(),
            nullable: !key,
            key,
            default: None,
        }
    }
}

/// A table's shape as the pipeline sees it: columns in source order and which of them form the
/// row key. Every [`crate::Row`] of this table has exactly `columns.len()` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub name: TableName,
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// Indexes of the key columns, in column order.
    pub fn key_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
    }

    /// Whether the table has a key to apply changes by.
    pub fn has_key(&self) -> bool {
        self.columns.iter().any(|c| c.key)
    }

    /// Every column, quoted, in column order, for SQL: `"id", "name"`.
    pub fn quoted_columns(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The key columns compared with numbered parameters from `$first` on, for SQL:
    /// `"order_id" = $1 AND "line" = $2`.
    pub fn key_equals(&self, first: usize) -> String {
        self.key_indexes()
            .enumerate()
            .map(|(n, i)| format!("{} = ${}", quote_ident(&self.columns[i].name), first + n))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}
