//! Row filters: a small predicate language over a table's columns, parsed once and evaluated
//! against each row's binary values.
//!
//! ```text
//! expr    := and (OR and)*
//! and     := not (AND not)*
//! not     := NOT not | primary
//! primary := '(' expr ')'
//!          | column (= | <> | != | < | <= | > | >=) literal
//!          | column [NOT] IN '(' literal (',' literal)* ')'
//!          | column IS [NOT] NULL
//! literal := number | 'text' (a quote doubled inside) | TRUE | FALSE
//! column  := name | "quoted name"
//! ```
//! Keywords are case-insensitive. Evaluation follows SQL's three-valued logic: a comparison with
//! a NULL value is unknown, and a row is kept only when the whole predicate is true.

use std::cmp::Ordering;

use crate::datum::{self, oid, Datum};
use crate::schema::TableSchema;
use crate::verify::canonical::push_sort_key;
use crate::verify::rendered::{parse_date, parse_uuid};
use crate::Value;

/// A parsed predicate, with columns still named.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    And(Box<Predicate>, Box<Predicate>),
    Or(Box<Predicate>, Box<Predicate>),
    Not(Box<Predicate>),
    Compare {
        column: String,
        op: CompareOp,
        literal: Literal,
    },
    In {
        column: String,
        literals: Vec<Literal>,
        negated: bool,
    },
    IsNull {
        column: String,
        negated: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    fn holds(self, ord: Ordering) -> bool {
        match self {
            CompareOp::Eq => ord == Ordering::Equal,
            CompareOp::Ne => ord != Ordering::Equal,
            CompareOp::Lt => ord == Ordering::Less,
            CompareOp::Le => ord != Ordering::Greater,
            CompareOp::Gt => ord == Ordering::Greater,
            CompareOp::Ge => ord != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A number as written (`42`, `-1.5`).
    Number(String),
    Text(String),
    Bool(bool),
}

impl Predicate {
    /// Parses `text`; the error says where (character offset) and what was expected.
    pub fn parse(text: &str) -> Result<Predicate, String> {
        let tokens = tokenize(text)?;
        let mut p = Parser {
            tokens,
            at: 0,
            depth: 0,
            joins: 0,
        };
        let expr = p.or()?;
        match p.tokens.get(p.at) {
            None => Ok(expr),
            Some(t) => Err(format!(
                "unexpected {} after a complete condition; join conditions with AND or OR",
                t.describe()
            )),
        }
    }

    /// Every column the predicate reads, in the order written.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.visit(&mut |c| out.push(c));
        out
    }

    fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a str)) {
        match self {
            Predicate::And(a, b) | Predicate::Or(a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Predicate::Not(a) => a.visit(f),
            Predicate::Compare { column, .. }
            | Predicate::In { column, .. }
            | Predicate::IsNull { column, .. } => f(column),
        }
    }

    /// Resolves columns against `table` (by name) and literals against their column's type.
    /// The error names the column and says what is wrong.
    pub fn bind(&self, table: &TableSchema) -> Result<Bound, String> {
        let column = |name: &str| -> Result<(usize, u32), String> {
            table
                .columns
                .iter()
                .position(|c| c.name == name)
                .map(|i| (i, table.columns[i].type_oid))
                .ok_or_else(|| {
                    format!(
                        "the filter reads column {name:?}, which {} does not have (columns: {})",
                        table.name,
                        table
                            .columns
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        };
        Ok(match self {
            Predicate::And(a, b) => Bound::And(Box::new(a.bind(table)?), Box::new(b.bind(table)?)),
            Predicate::Or(a, b) => Bound::Or(Box::new(a.bind(table)?), Box::new(b.bind(table)?)),
            Predicate::Not(a) => Bound::Not(Box::new(a.bind(table)?)),
            Predicate::Compare {
                column: name,
                op,
                literal,
            } => {
                let (index, type_oid) = column(name)?;
                Bound::Compare {
                    index,
                    type_oid,
                    op: *op,
                    literal: Typed::of(literal, type_oid, name)?,
                }
            }
            Predicate::In {
                column: name,
                literals,
                negated,
            } => {
                let (index, type_oid) = column(name)?;
                Bound::In {
                    index,
                    type_oid,
                    literals: literals
                        .iter()
                        .map(|l| Typed::of(l, type_oid, name))
                        .collect::<Result<_, _>>()?,
                    negated: *negated,
                }
            }
            Predicate::IsNull {
                column: name,
                negated,
            } => Bound::IsNull {
                index: column(name)?.0,
                negated: *negated,
            },
        })
    }
}

/// A predicate bound to one table layout: column indexes and typed literals.
#[derive(Debug, Clone)]
pub enum Bound {
    And(Box<Bound>, Box<Bound>),
    Or(Box<Bound>, Box<Bound>),
    Not(Box<Bound>),
    Compare {
        index: usize,
        type_oid: u32,
        op: CompareOp,
        literal: Typed,
    },
    In {
        index: usize,
        type_oid: u32,
        literals: Vec<Typed>,
        negated: bool,
    },
    IsNull {
        index: usize,
        negated: bool,
    },
}

/// The outcome of evaluating a predicate on a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    True,
    /// False or unknown (NULL): the row is not kept.
    NotTrue,
    /// A column the predicate reads was not sent (an unchanged TOASTed value).
    Unsent,
}

impl Bound {
    /// Evaluates the predicate on `values` (the bound layout's column order).
    pub fn eval(&self, values: &[Value]) -> Verdict {
        match self.tri(values) {
            Ok(Some(true)) => Verdict::True,
            Ok(_) => Verdict::NotTrue,
            Err(Unsent) => Verdict::Unsent,
        }
    }

    /// SQL three-valued result: `None` is unknown.
    fn tri(&self, values: &[Value]) -> Result<Option<bool>, Unsent> {
        Ok(match self {
            Bound::And(a, b) => match (a.tri(values)?, b.tri(values)?) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Bound::Or(a, b) => match (a.tri(values)?, b.tri(values)?) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Bound::Not(a) => a.tri(values)?.map(|v| !v),
            Bound::IsNull { index, negated } => match &values[*index] {
                Value::Unchanged => return Err(Unsent),
                v => Some((*v == Value::Null) != *negated),
            },
            Bound::Compare {
                index,
                type_oid,
                op,
                literal,
            } => match &values[*index] {
                Value::Unchanged => return Err(Unsent),
                Value::Null => None,
                Value::Binary(b) => compare(*type_oid, b, literal).map(|o| op.holds(o)),
            },
            Bound::In {
                index,
                type_oid,
                literals,
                negated,
            } => match &values[*index] {
                Value::Unchanged => return Err(Unsent),
                Value::Null => None,
                Value::Binary(b) => {
                    let mut found = false;
                    for l in literals {
                        if compare(*type_oid, b, l) == Some(Ordering::Equal) {
                            found = true;
                            break;
                        }
                    }
                    Some(found != *negated)
                }
            },
        })
    }
}

struct Unsent;

/// A literal converted to its column's type class, ready to compare.
#[derive(Debug, Clone)]
pub enum Typed {
    /// Order-preserving numeric key (see [`push_sort_key`]), for integers and numeric.
    Exact(Vec<u8>),
    Float(f64),
    Text(String),
    Bool(bool),
    Uuid([u8; 16]),
    /// Days since 2000-01-01.
    Date(i64),
    /// Microseconds since 2000-01-01 (UTC for timestamptz).
    Micros(i64),
}

impl Typed {
    fn of(literal: &Literal, type_oid: u32, column: &str) -> Result<Typed, String> {
        let wrong = |expected: &str| {
            Err(format!(
                "column {column:?} is compared with {}, but it holds {expected}; write the value as {expected}",
                literal.describe()
            ))
        };
        Ok(match type_oid {
            oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::NUMERIC => match literal {
                Literal::Number(n) => Typed::Exact(numeric_key(n)),
                _ => return wrong("a number (e.g. 42 or 1.5)"),
            },
            oid::FLOAT4 | oid::FLOAT8 => match literal {
                Literal::Number(n) => Typed::Float(n.parse().map_err(|_| "not a number")?),
                _ => return wrong("a number (e.g. 42 or 1.5)"),
            },
            oid::BOOL => match literal {
                Literal::Bool(b) => Typed::Bool(*b),
                _ => return wrong("TRUE or FALSE"),
            },
            oid::UUID => match literal {
                Literal::Text(t) => match parse_uuid(t) {
                    Some(u) => Typed::Uuid(u),
                    None => return wrong("a quoted uuid"),
                },
                _ => return wrong("a quoted uuid"),
            },
            oid::DATE => match literal {
                Literal::Text(t) => match parse_date(t) {
                    Some(d) => Typed::Date(d),
                    None => return wrong("a quoted date ('2026-12-01')"),
                },
                _ => return wrong("a quoted date ('2026-12-01')"),
            },
            oid::TIMESTAMP | oid::TIMESTAMPTZ => match literal {
                Literal::Text(t) => match parse_instant_text(t, type_oid == oid::TIMESTAMPTZ) {
                    Some(m) => Typed::Micros(m),
                    None => return wrong("a quoted timestamp ('2026-12-01 10:00:00+00')"),
                },
                _ => return wrong("a quoted timestamp ('2026-12-01 10:00:00+00')"),
            },
            t if is_text_like(t) => match literal {
                Literal::Text(s) => Typed::Text(s.clone()),
                _ => return wrong("text, in single quotes"),
            },
            _ => {
                return Err(format!(
                    "column {column:?} has a type filters cannot compare (only IS NULL works on it); filter on a number, text, boolean, uuid, date or timestamp column"
                ))
            }
        })
    }
}

/// Text, varchar, char(n), name, and types decoded as their text (enums and other user types
/// arrive as their label or text form).
fn is_text_like(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::CHAR
    ) || type_oid >= crate::verify::canonical::FIRST_USER_OID
}

fn numeric_key(text: &str) -> Vec<u8> {
    let mut key = Vec::new();
    // A number that does not parse as numeric cannot come from the tokenizer.
    let _ = push_sort_key(&mut key, &Datum::Numeric(text.to_string()));
    key
}

/// `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]]` with an optional `Z` or `±HH[:MM]` offset, as
/// microseconds since 2000-01-01 (at UTC when `with_zone`).
pub(crate) fn parse_instant_text(text: &str, with_zone: bool) -> Option<i64> {
    let t = text.trim().replace(' ', "T");
    let (date, rest) = t.split_once('T').unwrap_or((&t, "00:00:00"));
    let days = parse_date(date)?;
    let (time, offset_secs) = if let Some(time) = rest.strip_suffix('Z') {
        (time, 0)
    } else if let Some(at) = rest.rfind(['+', '-']) {
        let (time, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut parts = off[1..].split(':');
        let h: i64 = parts.next()?.parse().ok()?;
        let m: i64 = parts.next().unwrap_or("0").parse().ok()?;
        (time, sign * (h * 3600 + m * 60))
    } else {
        (rest, 0)
    };
    let mut hms = time.splitn(3, ':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next().unwrap_or("0").parse().ok()?;
    let s = hms.next().unwrap_or("0");
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let whole: i64 = whole.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: i64 = format!("{frac:0<6}").parse().ok()?;
    let local = days * 86_400_000_000 + ((h * 60 + m) * 60 + whole) * 1_000_000 + frac;
    Some(if with_zone {
        local - offset_secs * 1_000_000
    } else {
        local
    })
}

/// Compares a column value with a literal; `None` when the value cannot be compared (a NaN, a
/// value that does not decode).
fn compare(type_oid: u32, value: &[u8], literal: &Typed) -> Option<Ordering> {
    if is_text_like(type_oid) {
        let Typed::Text(want) = literal else {
            return None;
        };
        let text = std::str::from_utf8(value).ok()?;
        // char(n) compares without its padding, as PostgreSQL does.
        let text = if type_oid == oid::BPCHAR {
            text.trim_end_matches(' ')
        } else {
            text
        };
        let want = if type_oid == oid::BPCHAR {
            want.trim_end_matches(' ')
        } else {
            want.as_str()
        };
        return Some(text.as_bytes().cmp(want.as_bytes()));
    }
    let datum = datum::decode(type_oid, value).ok()?;
    match (datum, literal) {
        (Datum::Int(i), Typed::Exact(k)) => Some(numeric_key(&i.to_string()).cmp(k)),
        (Datum::Numeric(n), Typed::Exact(k)) => {
            if n == "NaN" {
                // NaN sorts above every number in PostgreSQL.
                return Some(Ordering::Greater);
            }
            Some(numeric_key(&n).cmp(k))
        }
        (Datum::Float4(f), Typed::Float(w)) => f64::from(f).partial_cmp(w),
        (Datum::Float8(f), Typed::Float(w)) => f.partial_cmp(w),
        (Datum::Bool(b), Typed::Bool(w)) => Some(b.cmp(w)),
        (Datum::Uuid(u), Typed::Uuid(w)) => Some(u.cmp(w)),
        (Datum::Date(d), Typed::Date(w)) => Some(i64::from(d).cmp(w)),
        (Datum::Timestamp(m) | Datum::TimestampTz(m), Typed::Micros(w)) => Some(m.cmp(w)),
        _ => None,
    }
}

impl Literal {
    fn describe(&self) -> String {
        match self {
            Literal::Number(n) => format!("the number {n}"),
            Literal::Text(t) => format!("the text '{t}'"),
            Literal::Bool(b) => (if *b { "TRUE" } else { "FALSE" }).to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Text(String),
    Number(String),
    Op(&'static str),
    Open,
    Close,
    Comma,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("`{w}`"),
            Token::Quoted(w) => format!("\"{w}\""),
            Token::Text(t) => format!("'{t}'"),
            Token::Number(n) => n.clone(),
            Token::Op(o) => format!("`{o}`"),
            Token::Open => "`(`".into(),
            Token::Close => "`)`".into(),
            Token::Comma => "`,`".into(),
        }
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(k))
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            _ if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            '\'' | '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(format!(
                                "a {c} opened at character {} is never closed",
                                text.chars().take(i).count()
                            ))
                        }
                        Some(&q) if q == c && chars.get(i + 1) == Some(&c) => {
                            s.push(c);
                            i += 2;
                        }
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some(&q) => {
                            s.push(q);
                            i += 1;
                        }
                    }
                }
                tokens.push(if c == '\'' {
                    Token::Text(s)
                } else {
                    Token::Quoted(s)
                });
            }
            '=' | '<' | '>' | '!' => {
                let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
                let op = match two.as_str() {
                    "<=" => "<=",
                    ">=" => ">=",
                    "<>" => "<>",
                    "!=" => "!=",
                    _ if c == '=' => "=",
                    _ if c == '<' => "<",
                    _ if c == '>' => ">",
                    _ => return Err("`!` must be followed by `=`".into()),
                };
                i += op.len();
                tokens.push(Token::Op(op));
            }
            _ if c.is_ascii_digit()
                || ((c == '-' || c == '.')
                    && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                i += 1;
                while chars
                    .get(i)
                    .is_some_and(|d| d.is_ascii_digit() || *d == '.')
                {
                    i += 1;
                }
                let n: String = chars[start..i].iter().collect();
                if n.matches('.').count() > 1 {
                    return Err(format!("{n} is not a number"));
                }
                tokens.push(Token::Number(n));
            }
            _ if c.is_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|d| d.is_alphanumeric() || *d == '_')
                {
                    i += 1;
                }
                tokens.push(Token::Word(chars[start..i].iter().collect()));
            }
            _ => return Err(format!("unexpected character {c:?}")),
        }
    }
    Ok(tokens)
}

/// Deepest nesting of parentheses and NOT a filter may have: the parser, and every walk of the
/// parsed condition, recurse once per level.
const MAX_DEPTH: usize = 64;

/// Most AND/OR joins in one filter (each is a level of the parsed condition).
const MAX_JOINS: usize = 256;

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Parentheses and NOTs open at this point.
    depth: usize,
    /// AND and OR joins so far.
    joins: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn eat_keyword(&mut self, k: &str) -> bool {
        if self.peek().is_some_and(|t| t.keyword(k)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Predicate, String> {
        let mut left = self.and()?;
        while self.eat_keyword("or") {
            self.joined()?;
            left = Predicate::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Predicate, String> {
        let mut left = self.not()?;
        while self.eat_keyword("and") {
            self.joined()?;
            left = Predicate::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn joined(&mut self) -> Result<(), String> {
        self.joins += 1;
        if self.joins > MAX_JOINS {
            return Err(format!(
                "the filter joins more than {MAX_JOINS} conditions with AND/OR; use IN (...) for a list of values, or split the rule"
            ));
        }
        Ok(())
    }

    /// Enters one level of nesting (a parenthesis or a NOT).
    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "the filter nests parentheses and NOT more than {MAX_DEPTH} deep; write it flatter"
            ));
        }
        Ok(())
    }

    fn not(&mut self) -> Result<Predicate, String> {
        if self.eat_keyword("not") {
            self.deeper()?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Predicate::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Predicate, String> {
        let column = match self.next() {
            Some(Token::Open) => {
                self.deeper()?;
                let inner = self.or()?;
                self.depth -= 1;
                return match self.next() {
                    Some(Token::Close) => Ok(inner),
                    other => Err(format!("expected `)`, found {}", describe(other.as_ref()))),
                };
            }
            Some(Token::Word(w))
                if !["and", "or", "not", "in", "is", "null", "true", "false"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                w
            }
            Some(Token::Quoted(w)) => w,
            other => {
                return Err(format!(
                    "expected a column name, found {}",
                    describe(other.as_ref())
                ))
            }
        };
        match self.next() {
            Some(Token::Op(op)) => {
                let op = match op {
                    "=" => CompareOp::Eq,
                    "<>" | "!=" => CompareOp::Ne,
                    "<" => CompareOp::Lt,
                    "<=" => CompareOp::Le,
                    ">" => CompareOp::Gt,
                    _ => CompareOp::Ge,
                };
                let literal = self.literal()?;
                Ok(Predicate::Compare {
                    column,
                    op,
                    literal,
                })
            }
            Some(t) if t.keyword("is") => {
                let negated = self.eat_keyword("not");
                if !self.eat_keyword("null") {
                    return Err(format!(
                        "expected NULL after IS{}, found {}",
                        if negated { " NOT" } else { "" },
                        describe(self.peek())
                    ));
                }
                Ok(Predicate::IsNull { column, negated })
            }
            Some(t) if t.keyword("in") || t.keyword("not") => {
                let negated = t.keyword("not");
                if negated && !self.eat_keyword("in") {
                    return Err(format!(
                        "expected IN after {column} NOT, found {}",
                        describe(self.peek())
                    ));
                }
                if self.next() != Some(Token::Open) {
                    return Err(format!("expected `(` after IN for column {column}"));
                }
                let mut literals = vec![self.literal()?];
                loop {
                    match self.next() {
                        Some(Token::Comma) => literals.push(self.literal()?),
                        Some(Token::Close) => break,
                        other => {
                            return Err(format!(
                                "expected `,` or `)` in the IN list of {column}, found {}",
                                describe(other.as_ref())
                            ))
                        }
                    }
                }
                Ok(Predicate::In {
                    column,
                    literals,
                    negated,
                })
            }
            other => Err(format!(
                "expected a comparison (=, <>, <, <=, >, >=), IN or IS after column {column}, found {}",
                describe(other.as_ref())
            )),
        }
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.next() {
            Some(Token::Number(n)) => Ok(Literal::Number(n)),
            Some(Token::Text(t)) => Ok(Literal::Text(t)),
            Some(t) if t.keyword("true") => Ok(Literal::Bool(true)),
            Some(t) if t.keyword("false") => Ok(Literal::Bool(false)),
            Some(t) if t.keyword("null") => Err(
                "a comparison with NULL is never true; write `column IS NULL` or `IS NOT NULL`"
                    .into(),
            ),
            other => Err(format!(
                "expected a value (a number, 'text', TRUE or FALSE), found {}",
                describe(other.as_ref())
            )),
        }
    }
}

fn describe(t: Option<&Token>) -> String {
    t.map_or_else(|| "the end of the filter".into(), Token::describe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, TableName};
    use bytes::Bytes;

    fn table() -> TableSchema {
        TableSchema {
            name: TableName::new("public", "orders"),
            columns: vec![
                Column::new("id", oid::INT8, true),
                Column::new("status", oid::TEXT, false),
                Column::new("total", oid::NUMERIC, false),
                Column::new("region", oid::BPCHAR, false),
                Column::new("at", oid::TIMESTAMPTZ, false),
            ],
        }
    }

    fn numeric(text: &str) -> Value {
        // 12.50 as numeric binary: ndigits 2, weight 0, sign +, dscale 2, digits 12, 5000.
        let bytes: &[u8] = match text {
            "12.50" => &[0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x13, 0x88],
            _ => unreachable!(),
        };
        Value::Binary(Bytes::copy_from_slice(bytes))
    }

    fn row(id: i64, status: Option<&str>, at_micros: i64) -> Vec<Value> {
        vec![
            Value::Binary(Bytes::copy_from_slice(&id.to_be_bytes())),
            status.map_or(Value::Null, |s| Value::Binary(Bytes::from(s.to_string()))),
            numeric("12.50"),
            Value::Binary(Bytes::from_static(b"eu  ")),
            Value::Binary(Bytes::copy_from_slice(&at_micros.to_be_bytes())),
        ]
    }

    fn eval(filter: &str, values: &[Value]) -> Verdict {
        Predicate::parse(filter)
            .unwrap()
            .bind(&table())
            .unwrap()
            .eval(values)
    }

    #[test]
    fn comparisons_in_lists_and_null_logic_follow_sql() {
        let r = row(7, Some("active"), 0);
        assert_eq!(eval("id = 7", &r), Verdict::True);
        assert_eq!(eval("id >= 8", &r), Verdict::NotTrue);
        assert_eq!(eval("total > 12.4 AND total <= 12.5", &r), Verdict::True);
        assert_eq!(eval("status IN ('trial', 'active')", &r), Verdict::True);
        assert_eq!(
            eval("status NOT IN ('trial', 'active')", &r),
            Verdict::NotTrue
        );
        assert_eq!(eval("region = 'eu'", &r), Verdict::True);
        assert_eq!(eval("NOT (id = 7) OR status = 'active'", &r), Verdict::True);
        assert_eq!(eval("at >= '2000-01-01 00:00:00+00'", &r), Verdict::True);
        assert_eq!(eval("at > '2000-01-01T01:00:00+02:00'", &r), Verdict::True);
        let null = row(7, None, 0);
        assert_eq!(eval("status = 'active'", &null), Verdict::NotTrue);
        assert_eq!(eval("NOT (status = 'active')", &null), Verdict::NotTrue);
        assert_eq!(eval("status IS NULL", &null), Verdict::True);
        assert_eq!(eval("status = 'x' OR id = 7", &null), Verdict::True);
        let mut unsent = r.clone();
        unsent[1] = Value::Unchanged;
        assert_eq!(eval("status = 'active'", &unsent), Verdict::Unsent);
    }

    #[test]
    fn mistakes_are_explained() {
        let bind = |f: &str| Predicate::parse(f).and_then(|p| p.bind(&table()).map(|_| ()));
        assert!(bind("nope = 1").unwrap_err().contains("does not have"));
        assert!(bind("status = 1")
            .unwrap_err()
            .contains("text, in single quotes"));
        assert!(bind("id = 'x'").unwrap_err().contains("a number"));
        assert!(bind("id = NULL").unwrap_err().contains("IS NULL"));
        assert!(bind("id = 1 status = 'a'")
            .unwrap_err()
            .contains("AND or OR"));
        assert!(bind("status = 'open").unwrap_err().contains("never closed"));
        assert!(bind("(id = 1").unwrap_err().contains("expected `)`"));
        assert_eq!(
            Predicate::parse("a = 1 AND (b IS NOT NULL OR \"C d\" IN (1, 2))")
                .unwrap()
                .columns(),
            vec!["a", "b", "C d"]
        );
    }

    #[test]
    fn deep_or_long_filters_are_refused_clearly_not_by_a_stack_overflow() {
        let deep = format!("{}a = 1{}", "(".repeat(100_000), ")".repeat(100_000));
        let e = Predicate::parse(&deep).unwrap_err();
        assert!(e.contains("more than 64 deep"), "{e}");
        let nots = format!("{}a = 1", "NOT ".repeat(100_000));
        assert!(Predicate::parse(&nots).unwrap_err().contains("deep"));
        let long = vec!["a = 1"; 100_000].join(" AND ");
        let e = Predicate::parse(&long).unwrap_err();
        assert!(e.contains("more than 256 conditions"), "{e}");
        // Within the limits, nesting still parses.
        let ok = format!("{}a = 1{}", "(".repeat(60), ")".repeat(60));
        assert!(Predicate::parse(&ok).is_ok());
        assert!(Predicate::parse(&vec!["a = 1"; 200].join(" OR ")).is_ok());
    }
}
