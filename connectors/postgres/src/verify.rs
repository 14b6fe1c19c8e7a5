//! The checker's PostgreSQL reader: key ranges read with parameterised, key-ordered queries
//! (binary results, no value is converted to text), key samples for range bounds, and look-ups
//! by key for re-checks.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use cutover_core::transform::TableTransform;
use cutover_core::verify::{
    self, canon_values, Bound, CanonRow, KeyBound, Precision, RangeScan, ScanLimits, TableSide,
};
use cutover_core::{quote_ident, ConnectorError, Lsn, Result, Row, TableSchema, Value};
use futures::{pin_mut, TryStreamExt};
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};

use crate::conn::PgEndpoint;
use crate::error::classify;

/// A value exactly as the server sent it in binary format, whatever its type.
pub(crate) struct RawValue<'a>(pub(crate) &'a [u8]);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A parameter passed in binary format as it came from the source (its type is the column's).
#[derive(Debug)]
pub(crate) struct RawParam<'a>(pub(crate) Option<&'a Bytes>);

impl ToSql for RawParam<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Some(b) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One table on one PostgreSQL database, read for the checker. The table has the source's
/// shape: the same column names (read in the source's order) and key columns of the same types.
pub struct PgTableSide {
    client: Client,
    endpoint: PgEndpoint,
    table: Arc<TableSchema>,
    keys: Arc<[usize]>,
    /// Transform rules the rows pass before they are compared (the sink's), and the layout
    /// and key positions they produce.
    shape: Option<Shape>,
    precision: Precision,
    /// Range queries: no bound, low only, high only, both.
    ranges: [Statement; 4],
    by_key: Statement,
    /// By key, every column in binary format (no text casts): rows to write back.
    raw_by_key: Statement,
    /// Many keys in one query (an array per key column), where every key column has a
    /// built-in type; otherwise keys are read one query each (pipelined).
    by_keys: Option<Statement>,
}

/// Keys read per query by [`PgTableSide`]'s batched fetch.
const KEYS_PER_QUERY: usize = 5000;

/// PostgreSQL's binary array format for a one-dimensional array of `elements` (none NULL) of
/// the type `element_oid`.
fn binary_array(element_oid: u32, elements: &[&Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(20 + elements.iter().map(|e| 4 + e.len()).sum::<usize>());
    out.put_i32(1); // dimensions
    out.put_i32(0); // no NULLs
    out.put_u32(element_oid);
    out.put_i32(elements.len() as i32);
    out.put_i32(1); // lower bound
    for e in elements {
        out.put_i32(e.len() as i32);
        out.put_slice(e);
    }
    out.freeze()
}

/// A transform, the layout it produces and that layout's key positions.
type Shape = (Arc<TableTransform>, Arc<TableSchema>, Arc<[usize]>);

/// What the checker found about a table on a target before reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeProblem {
    Missing,
    MissingColumns(Vec<String>),
    KeyType {
        column: String,
        source: String,
        target: String,
    },
}

impl PgTableSide {
    /// Opens a session on `endpoint` for `table` (the source's schema), reading values at
    /// `precision`. Fails with a clear error when the table is missing there, lacks a column,
    /// or has a key column of another type.
    pub async fn open(
        endpoint: &PgEndpoint,
        table: Arc<TableSchema>,
        precision: Precision,
    ) -> Result<PgTableSide> {
        let client = endpoint.connect().await?;
        if let Some(problem) = shape_problem(&client, &table).await? {
            return Err(shape_error(problem, &table, endpoint));
        }
        let keys = comparable_keys(&table)?;
        let list = table
            .columns
            .iter()
            .map(|c| {
                if read_as_text(precision, c) {
                    format!("{}::text", quote_ident(&c.name))
                } else {
                    quote_ident(&c.name)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let ranges = prepare_ranges(&client, &table, &keys, &list).await?;
        let (by_key, raw_by_key) = prepare_by_key(&client, &table, &keys, &list).await?;
        let by_keys = prepare_by_keys(&client, &table, &keys, precision).await?;
        // Values are decoded as they are read: columns cast to text decode as text.
        let read = Arc::new(TableSchema {
            name: table.name.clone(),
            columns: table
                .columns
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    if read_as_text(precision, &c) {
                        c.type_oid = cutover_core::datum::oid::TEXT;
                    }
                    c
                })
                .collect(),
        });
        Ok(PgTableSide {
            client,
            endpoint: endpoint.clone(),
            table: read,
            keys,
            shape: None,
            precision,
            ranges,
            by_key,
            raw_by_key,
            by_keys,
        })
    }

    /// Reads the rows of `keys` with one query per [`KEYS_PER_QUERY`] keys; None when the
    /// table's keys cannot be read so (a key column of a user type, a NULL key value, rows
    /// reshaped by transform rules).
    async fn fetch_batched(
        &self,
        keys: &[Arc<KeyBound>],
        ctx: &str,
    ) -> Option<Result<Vec<Option<CanonRow>>>> {
        let statement = self.by_keys.as_ref()?;
        if self.shape.is_some() || keys.iter().any(|k| k.values.iter().any(Option::is_none)) {
            return None;
        }
        let oids: Vec<u32> = self
            .keys
            .iter()
            .map(|&k| self.table.columns[k].type_oid)
            .collect();
        let read = async {
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(KEYS_PER_QUERY) {
                let arrays: Vec<Bytes> = oids
                    .iter()
                    .enumerate()
                    .map(|(i, &oid)| {
                        let column: Vec<&Bytes> =
                            chunk.iter().filter_map(|k| k.values[i].as_ref()).collect();
                        binary_array(oid, &column)
                    })
                    .collect();
                let params: Vec<RawParam> = arrays.iter().map(|a| RawParam(Some(a))).collect();
                let rows = self
                    .client
                    .query_raw(statement, params.iter())
                    .await
                    .map_err(|e| classify(e, ctx))?;
                pin_mut!(rows);
                let mut found: std::collections::HashMap<Box<[u8]>, CanonRow> =
                    std::collections::HashMap::with_capacity(chunk.len());
                while let Some(row) = rows.try_next().await.map_err(|e| classify(e, ctx))? {
                    if let Some(canon) = self.to_canon(&row, ctx)? {
                        found.insert(canon.sort_key.clone(), canon);
                    }
                }
                out.extend(chunk.iter().map(|k| found.get(&k.sort_key).cloned()));
            }
            Ok(out)
        };
        Some(read.await)
    }

    /// Passes every row read through `transform` (compiled for [`PgTableSide::table`]) before
    /// it is compared: rows a filter leaves out are not there, the rest have the target's
    /// layout. Keys are still given in the source's key columns, which transforms keep.
    pub fn with_transform(mut self, transform: TableTransform) -> PgTableSide {
        let out = transform.output().clone();
        let keys = verify::key_columns(&out);
        self.shape = Some((Arc::new(transform), out, keys));
        self
    }

    /// The schema rows are read in.
    pub fn table(&self) -> &Arc<TableSchema> {
        &self.table
    }

    /// The database's current WAL position (for a source: rows read after this call reflect
    /// every transaction committed before it).
    pub async fn current_wal_lsn(&self) -> Result<Lsn> {
        let text: String = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| classify(e, "cannot read the WAL position"))?
            .get(0);
        text.parse()
            .map_err(|e: cutover_core::ParseLsnError| ConnectorError::fatal(e.to_string()))
    }

    /// About `ranges` bounds that split the table into ranges of similar size, from a sample
    /// of keys (`TABLESAMPLE SYSTEM`), in key order. Empty for tables too small to split.
    pub async fn sample_bounds(&self, rows_per_range: u64) -> Result<(u64, Vec<Arc<KeyBound>>)> {
        let ctx = format!("cannot sample the keys of {}", self.table.name);
        let (estimate, pages): (i64, i32) = self
            .client
            .query_one(
                "SELECT greatest(reltuples, 0)::int8, relpages FROM pg_class WHERE oid = $1::text::regclass",
                &[&self.table.name.quoted()],
            )
            .await
            .map_err(|e| classify(e, &ctx))
            .map(|r| (r.get(0), r.get(1)))?;
        let estimate = if estimate > 0 {
            estimate as u64
        } else {
            let n: i64 = self
                .client
                .query_one(
                    &format!("SELECT count(*) FROM {}", self.table.name.quoted()),
                    &[],
                )
                .await
                .map_err(|e| classify(e, &ctx))?
                .get(0);
            n as u64
        };
        let ranges = estimate / rows_per_range.max(1);
        if ranges < 2 {
            return Ok((estimate, Vec::new()));
        }
        // Whole pages are sampled (cheap), at least eight per range so that bounds spread over
        // the key space even when keys follow the insertion order; small or never-analyzed
        // tables sample rows.
        let method = if pages > 0 && (pages as u64) > ranges * 64 {
            format!(
                "SYSTEM ({:.6})",
                (100.0 * (ranges * 8) as f64 / f64::from(pages)).min(100.0)
            )
        } else {
            format!(
                "BERNOULLI ({:.6})",
                (100.0 * (ranges * 16) as f64 / estimate as f64).min(100.0)
            )
        };
        let key_list = self
            .keys
            .iter()
            .map(|&k| quote_ident(&self.table.columns[k].name))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {key_list} FROM {} TABLESAMPLE {method}",
            self.table.name.quoted()
        );
        let rows = self
            .client
            .query(&sql, &[])
            .await
            .map_err(|e| classify(e, &ctx))?;
        let key_table = TableSchema {
            name: self.table.name.clone(),
            columns: self
                .keys
                .iter()
                .map(|&k| self.table.columns[k].clone())
                .collect(),
        };
        let key_positions: Arc<[usize]> = (0..self.keys.len()).collect::<Vec<_>>().into();
        let mut sample = Vec::with_capacity(rows.len());
        for row in &rows {
            let values = (0..self.keys.len())
                .map(|i| {
                    row.try_get::<_, Option<RawValue>>(i)
                        .map(|v| v.map(|v| v.0))
                        .map_err(|e| classify(e, &ctx))
                })
                .collect::<Result<Vec<_>>>()?;
            let canon = canon_values(
                &key_table,
                &key_positions,
                values.into_iter(),
                Precision::default(),
            )
            .map_err(|e| ConnectorError::fatal(format!("{ctx}: {e}")))?;
            sample.push(KeyBound::of(&canon));
        }
        sample.sort_by(|a, b| a.sort_key.cmp(&b.sort_key));
        sample.dedup_by(|a, b| a.sort_key == b.sort_key);
        let step = (sample.len() as u64 / ranges).max(1) as usize;
        let bounds = sample
            .into_iter()
            .skip(step - 1)
            .step_by(step)
            .map(Arc::new)
            .collect();
        Ok((estimate, bounds))
    }

    /// The rows with these keys as binary values (for repairs), `None` where a key has no row.
    pub async fn fetch_rows(&self, keys: &[Arc<KeyBound>]) -> Result<Vec<Option<Row>>> {
        let ctx = format!("cannot read rows of {} by key", self.table.name);
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let params: Vec<RawParam> = key.values.iter().map(|v| RawParam(v.as_ref())).collect();
            let rows = self
                .client
                .query_raw(&self.raw_by_key, params.iter())
                .await
                .map_err(|e| classify(e, &ctx))?;
            pin_mut!(rows);
            out.push(
                match rows.try_next().await.map_err(|e| classify(e, &ctx))? {
                    Some(row) => {
                        let mut values = Vec::with_capacity(self.table.columns.len());
                        for i in 0..self.table.columns.len() {
                            let v = row
                                .try_get::<_, Option<RawValue>>(i)
                                .map_err(|e| classify(e, &ctx))?;
                            values.push(match v {
                                Some(v) => Value::Binary(Bytes::copy_from_slice(v.0)),
                                None => Value::Null,
                            });
                        }
                        Some(Row(values))
                    }
                    None => None,
                },
            );
        }
        Ok(out)
    }

    /// A row holding only `key`'s values (other columns NULL), as a delete carries it.
    pub fn key_row(&self, key: &KeyBound) -> Row {
        let mut values = vec![Value::Null; self.table.columns.len()];
        for (&k, v) in self.keys.iter().zip(&key.values) {
            values[k] = v.clone().map_or(Value::Null, Value::Binary);
        }
        Row(values)
    }

    /// The row in canonical form; `None` when the transform's filter leaves it out.
    fn to_canon(&self, row: &tokio_postgres::Row, ctx: &str) -> Result<Option<CanonRow>> {
        let n = self.table.columns.len();
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            let v = row
                .try_get::<_, Option<RawValue>>(i)
                .map_err(|e| classify(e, ctx))?;
            values.push(v.map(|v| v.0));
        }
        let bad = |e: verify::CanonError| {
            ConnectorError::fatal(format!("{ctx}: {e}")).with_hint(
                "the column types differ from the source's; compare tables of the same types",
            )
        };
        let Some((transform, out, keys)) = &self.shape else {
            return canon_values(&self.table, &self.keys, values.into_iter(), self.precision)
                .map(Some)
                .map_err(bad);
        };
        let row = Row(values
            .into_iter()
            .map(|v| v.map_or(Value::Null, |b| Value::Binary(Bytes::copy_from_slice(b))))
            .collect());
        let Some(row) = transform.row(row) else {
            return Ok(None);
        };
        let shaped = row.0.iter().map(|v| match v {
            Value::Binary(b) => Some(b.as_ref()),
            _ => None,
        });
        canon_values(out, keys, shaped, self.precision)
            .map(Some)
            .map_err(bad)
    }
}

/// Whether column `c` is read in its text form at `precision` (a user-defined or extension
/// type, when the target compares those as text).
fn read_as_text(precision: Precision, c: &cutover_core::Column) -> bool {
    precision.user_types_as_text && c.type_oid >= verify::canonical::FIRST_USER_OID
}

/// The error for a table that cannot be compared on `endpoint`, with its fix.
fn shape_error(
    problem: ShapeProblem,
    table: &TableSchema,
    endpoint: &PgEndpoint,
) -> ConnectorError {
    let (what, hint) = match problem {
        ShapeProblem::Missing => (
            format!("table {} does not exist on the {} {endpoint}", table.name, endpoint.role()),
            "create it (cutover run creates missing target tables), or leave it out with --table".to_string(),
        ),
        ShapeProblem::MissingColumns(cols) => (
            format!(
                "table {} on the {} {endpoint} lacks column(s) {}",
                table.name,
                endpoint.role(),
                cols.join(", ")
            ),
            "add the columns, or compare a table of the same shape".to_string(),
        ),
        ShapeProblem::KeyType {
            column,
            source,
            target,
        } => (
            format!(
                "key column {column} of {} is {source} on the source but {target} on the {} {endpoint}; keys must have the same type on both sides",
                table.name,
                endpoint.role()
            ),
            format!("change the target's column to {source}"),
        ),
    };
    ConnectorError::fatal(format!("{what}.")).with_hint(hint)
}

/// The table's key columns; fails when it has none or one the checker cannot order.
fn comparable_keys(table: &TableSchema) -> Result<Arc<[usize]>> {
    let keys = verify::key_columns(table);
    if keys.is_empty() {
        return Err(ConnectorError::fatal(format!(
            "table {} has no primary key or replica identity index, so its rows cannot be matched by key",
            table.name
        ))
        .with_hint("add a primary key (see cutover check)"));
    }
    for &k in keys.iter() {
        let c = &table.columns[k];
        if !verify::orderable_key_type(c.type_oid) {
            return Err(ConnectorError::fatal(format!(
                "key column {} of {} has type {}, which the checker cannot order yet",
                c.name, table.name, c.type_name
            ))
            .with_hint("leave the table out with --table, or compare it with another tool"));
        }
    }
    Ok(keys)
}

/// The look-ups by key: one selecting `list`, and one selecting every column in binary format.
async fn prepare_by_key(
    client: &Client,
    table: &TableSchema,
    keys: &[usize],
    list: &str,
) -> Result<(Statement, Statement)> {
    let key_match = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| format!("{} = ${}", quote_ident(&table.columns[k].name), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let raw_list = table.quoted_columns();
    let mut by_key = Vec::with_capacity(2);
    for columns in [list, raw_list.as_str()] {
        by_key.push(
            client
                .prepare(&format!(
                    "SELECT {columns} FROM {} WHERE {key_match}",
                    table.name.quoted()
                ))
                .await
                .map_err(|e| classify(e, &format!("cannot read {} by key", table.name)))?,
        );
    }
    let raw_by_key = by_key.pop().expect("two statements");
    let by_key = by_key.pop().expect("two statements");
    Ok((by_key, raw_by_key))
}

/// The look-up of many keys in one query (an array per key column); `None` when a key column
/// has a user-defined type.
async fn prepare_by_keys(
    client: &Client,
    table: &TableSchema,
    keys: &[usize],
    precision: Precision,
) -> Result<Option<Statement>> {
    let batched = keys.iter().all(|&k| {
        let c = &table.columns[k];
        !c.type_name.is_empty() && c.type_oid < verify::canonical::FIRST_USER_OID
    });
    if !batched {
        return Ok(None);
    }
    let arrays = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| format!("${}::{}[]", i + 1, table.columns[k].type_name))
        .collect::<Vec<_>>()
        .join(", ");
    let names = (0..keys.len())
        .map(|i| format!("cutover_key_{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let on = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            format!(
                "t.{} = k.cutover_key_{i}",
                quote_ident(&table.columns[k].name)
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let columns = table
        .columns
        .iter()
        .map(|c| {
            let q = format!("t.{}", quote_ident(&c.name));
            if read_as_text(precision, c) {
                format!("{q}::text")
            } else {
                q
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {columns} FROM {} t JOIN unnest({arrays}) AS k({names}) ON {on}",
        table.name.quoted()
    );
    Ok(Some(client.prepare(&sql).await.map_err(|e| {
        classify(e, &format!("cannot read {} by key", table.name))
    })?))
}

/// The four range queries of a table (no bound, low, high, both), selecting `list`.
async fn prepare_ranges(
    client: &Client,
    table: &TableSchema,
    keys: &[usize],
    list: &str,
) -> Result<[Statement; 4]> {
    let key_expr: Vec<String> = keys
        .iter()
        .map(|&k| {
            let c = &table.columns[k];
            if verify::text_key_type(c.type_oid) {
                format!("{} COLLATE \"C\"", quote_ident(&c.name))
            } else {
                quote_ident(&c.name)
            }
        })
        .collect();
    let tuple = format!("({})", key_expr.join(", "));
    let params = |from: usize| {
        format!(
            "({})",
            (0..keys.len())
                .map(|i| format!("${}", from + i))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let n = keys.len();
    let base = format!("SELECT {list} FROM {}", table.name.quoted());
    let order = format!(" ORDER BY {}", key_expr.join(", "));
    let texts = [
        format!("{base}{order}"),
        format!("{base} WHERE {tuple} > {}{order}", params(1)),
        format!("{base} WHERE {tuple} <= {}{order}", params(1)),
        format!(
            "{base} WHERE {tuple} > {} AND {tuple} <= {}{order}",
            params(1),
            params(n + 1)
        ),
    ];
    let mut prepared = Vec::with_capacity(4);
    for text in &texts {
        prepared.push(
            client
                .prepare(text)
                .await
                .map_err(|e| classify(e, &format!("cannot read {} by key range", table.name)))?,
        );
    }
    Ok(prepared.try_into().expect("four statements"))
}

/// Finds what keeps `table` (the source's shape) from being compared on the database behind
/// `client`: a missing table, missing columns, or key columns of another type.
pub async fn shape_problem(client: &Client, table: &TableSchema) -> Result<Option<ShapeProblem>> {
    let rows = client
        .query(
            "SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.name.quoted()],
        )
        .await
        .map_err(|e| classify(e, &format!("cannot read the columns of {}", table.name)))?;
    if rows.is_empty() {
        return Ok(Some(ShapeProblem::Missing));
    }
    let found: Vec<(String, u32, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let missing: Vec<String> = table
        .columns
        .iter()
        .filter(|c| !found.iter().any(|(n, _, _)| *n == c.name))
        .map(|c| c.name.clone())
        .collect();
    if !missing.is_empty() {
        return Ok(Some(ShapeProblem::MissingColumns(missing)));
    }
    for c in table.columns.iter().filter(|c| c.key) {
        if let Some((_, oid, name)) = found.iter().find(|(n, _, _)| *n == c.name) {
            if *oid != c.type_oid {
                return Ok(Some(ShapeProblem::KeyType {
                    column: c.name.clone(),
                    source: c.type_name.clone(),
                    target: name.clone(),
                }));
            }
        }
    }
    Ok(None)
}

#[async_trait]
impl TableSide for PgTableSide {
    async fn scan(&self, low: &Bound, high: &Bound, limits: ScanLimits) -> Result<RangeScan> {
        let ctx = format!(
            "cannot read a key range of {} on the {} {}",
            self.table.name,
            self.endpoint.role(),
            self.endpoint
        );
        let mut params: Vec<RawParam> = Vec::new();
        let variant = match (low, high) {
            (Bound::Unbounded, Bound::Unbounded) => 0,
            (Bound::Key(lo), Bound::Unbounded) => {
                params.extend(lo.values.iter().map(|v| RawParam(v.as_ref())));
                1
            }
            (Bound::Unbounded, Bound::Key(hi)) => {
                params.extend(hi.values.iter().map(|v| RawParam(v.as_ref())));
                2
            }
            (Bound::Key(lo), Bound::Key(hi)) => {
                params.extend(lo.values.iter().map(|v| RawParam(v.as_ref())));
                params.extend(hi.values.iter().map(|v| RawParam(v.as_ref())));
                3
            }
        };
        let stream = self
            .client
            .query_raw(&self.ranges[variant], params.iter())
            .await
            .map_err(|e| classify(e, &ctx))?;
        pin_mut!(stream);
        let mut scan = RangeScan::new();
        let mut last: Option<Box<[u8]>> = None;
        while let Some(row) = stream.try_next().await.map_err(|e| classify(e, &ctx))? {
            let Some(canon) = self.to_canon(&row, &ctx)? else {
                continue;
            };
            if last.as_ref().is_some_and(|l| *l >= canon.sort_key) {
                return Err(ConnectorError::fatal(format!(
                    "{ctx}: the server returned keys out of the checker's order"
                ))
                .with_hint("key columns must use a deterministic collation; report this with the table's definition"));
            }
            last = Some(canon.sort_key.clone());
            scan.push(canon, &limits);
        }
        Ok(scan)
    }

    async fn fetch(&self, keys: &[Arc<KeyBound>]) -> Result<Vec<Option<CanonRow>>> {
        let ctx = format!(
            "cannot read rows of {} by key on the {} {}",
            self.table.name,
            self.endpoint.role(),
            self.endpoint
        );
        let ctx = &ctx;
        if let Some(rows) = self.fetch_batched(keys, ctx).await {
            return rows;
        }
        let queries = keys.iter().map(|key| async move {
            let params: Vec<RawParam> = key.values.iter().map(|v| RawParam(v.as_ref())).collect();
            let stream = self
                .client
                .query_raw(&self.by_key, params.iter())
                .await
                .map_err(|e| classify(e, ctx))?;
            pin_mut!(stream);
            match stream.try_next().await.map_err(|e| classify(e, ctx))? {
                Some(row) => self.to_canon(&row, ctx),
                None => Ok(None),
            }
        });
        // Pipelined on the one connection, in batches to bound what is in flight.
        let mut out = Vec::with_capacity(keys.len());
        let mut queries = queries.collect::<Vec<_>>().into_iter();
        loop {
            let batch: Vec<_> = queries.by_ref().take(256).collect();
            if batch.is_empty() {
                break;
            }
            out.extend(futures::future::try_join_all(batch).await?);
        }
        Ok(out)
    }
}
