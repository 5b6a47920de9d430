//! Server-side printing: `meta.k8s.io/v1 Table` answers for
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.

use serde_json::{json, Value};

use crate::registry::Strategy;

/// One printer column (`columnDefinitions[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Header (`Ready`); kubectl upper-cases it.
    pub name: &'static str,
    /// `string`, `integer`, `date`, ...
    pub kind: &'static str,
    /// `name` for the name column, else empty.
    pub format: &'static str,
    /// Help text.
    pub description: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
}

impl Column {
    /// A string column.
    pub const fn string(name: &'static str, description: &'static str, priority: u8) -> Self {
        Column {
            name,
            kind: "string",
            format: "",
            description,
            priority,
        }
    }

    /// An integer column.
    pub const fn integer(name: &'static str, description: &'static str, priority: u8) -> Self {
        Column {
            name,
            kind: "integer",
            format: "",
            description,
            priority,
        }
    }

    /// The standard `Age` column.
    pub const fn age() -> Self {
        Column::string(
            "Age",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
            0,
        )
    }

    /// The `Name` column.
    pub fn name_column() -> Self {
        Column {
            name: "Name",
            kind: "string",
            format: "name",
            description: "Name must be unique within a namespace.",
            priority: 0,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// What each row's `object` holds (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The full object.
    Object,
    /// Nothing.
    None,
}

impl IncludeObject {
    /// Parses the query parameter (empty → `Metadata`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "Metadata" => Ok(IncludeObject::Metadata),
            "Object" => Ok(IncludeObject::Object),
            "None" => Ok(IncludeObject::None),
            other => Err(format!("includeObject: Unsupported value: {other:?}: supported values: \"Metadata\", \"None\", \"Object\"")),
        }
    }
}

fn row(strategy: &dyn Strategy, obj: &Value, include: IncludeObject) -> Value {
    let mut cells = Vec::new();
    if strategy.name_column_first() {
        cells.push(Value::String(crate::object::name(obj).to_string()));
    }
    cells.extend(strategy.cells(obj));
    let object = match include {
        IncludeObject::Object => obj.clone(),
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
        }),
    };
    let mut r = json!({"cells": cells});
    if !object.is_null() {
        r["object"] = object;
    }
    r
}

/// The column definitions of a kind (`Name` first).
pub fn column_definitions(strategy: &dyn Strategy) -> Vec<Value> {
    let first = strategy.name_column_first().then(Column::name_column);
    first
        .into_iter()
        .chain(strategy.columns())
        .map(|c| c.to_json())
        .collect()
}

/// A Table for a list (or, with one object, for a get).
pub fn table(
    strategy: &dyn Strategy,
    objects: &[Value],
    include: IncludeObject,
    resource_version: &str,
    continue_token: &str,
    with_columns: bool,
) -> Value {
    let mut meta = json!({});
    if !resource_version.is_empty() {
        meta["resourceVersion"] = json!(resource_version);
    }
    if !continue_token.is_empty() {
        meta["continue"] = json!(continue_token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": if with_columns { column_definitions(strategy) } else { Vec::new() },
        "rows": objects.iter().map(|o| row(strategy, o, include)).collect::<Vec<_>>(),
    })
}

/// Joins strings for a cell, `<none>` when empty.
pub fn or_none(items: Vec<String>) -> Value {
    if items.is_empty() {
        Value::String("<none>".into())
    } else {
        Value::String(items.join(","))
    }
}
