//! `extends`: a scenario written as changes to another (the what-if variant of a base).
//!
//! The chain of files is read first (each must be valid TOML on its own), then merged from
//! the deepest base up into one table that stage one deserializes. [`Origins`] remembers
//! which file and index each entry of a merged array came from, so that stage two still
//! reports every problem at the file, line and key that wrote it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::de::DeTable;
use toml::{Table, Value};

use super::{ScenarioError, ScenarioErrors, Seg, line_col, locate};

/// For each merged array (`populations`, ...), per entry of the merged array: the
/// (file, index in that file) pairs that wrote it, the most specific file first. File 0 is
/// the scenario itself, 1 its base, and so on.
pub(super) type Origins = HashMap<&'static str, Vec<Vec<(usize, usize)>>>;

/// A merged chain: the table to deserialize and where its array entries came from.
pub(super) struct Merged {
    pub(super) table: Table,
    pub(super) origins: Origins,
}

/// The arrays of tables merged entry by entry (the others are replaced as a whole).
const MERGED_ARRAYS: [&str; 3] = ["populations", "incidents", "interventions"];

/// How many files a chain may have (a guard against runaway chains; cycles are caught).
const MAX_FILES: usize = 16;

/// Reads the bases of the scenario at `path` (whose text is `text`, the first of `sources`),
/// appending each to `sources`, and merges them. `None` when the file extends nothing.
pub(super) fn layers(
    path: &Path,
    text: &str,
    sources: &mut Vec<(PathBuf, String)>,
) -> Result<Option<Merged>, ScenarioErrors> {
    let mut table = parse_table(path, text)?;
    let Some(mut base) = take_extends(path, text, &mut table)? else { return Ok(None) };
    let top_dir = dir_of(path);
    let mut tables = vec![table];
    let mut seen = vec![canonical(path)];
    loop {
        let (child, child_text) = sources.last().expect("the scenario itself is the first source");
        let base_path = dir_of(child).join(&base);
        let fail = |message: String| error_at_extends(child, child_text, message);
        let base_text = std::fs::read_to_string(&base_path)
            .map_err(|e| fail(format!("cannot read the base scenario {}: {e}", base_path.display())))?;
        let id = canonical(&base_path);
        if seen.contains(&id) {
            let chain: Vec<String> = sources.iter().map(|(p, _)| p.display().to_string()).collect();
            return Err(fail(format!("extends forms a cycle: {} → {}", chain.join(" → "), base_path.display())));
        }
        if sources.len() >= MAX_FILES {
            return Err(fail(format!("a chain of more than {MAX_FILES} scenario files")));
        }
        let mut table = parse_table(&base_path, &base_text)?;
        let next = take_extends(&base_path, &base_text, &mut table)?;
        rebase_paths(&mut table, &dir_of(&base_path), &top_dir);
        seen.push(id);
        sources.push((base_path, base_text));
        tables.push(table);
        match next {
            Some(next) => base = next,
            None => break,
        }
    }
    let mut layers = tables.into_iter().enumerate().rev();
    let (deepest, mut merged) = layers.next().expect("a chain has at least two files");
    let mut origins = Origins::new();
    for key in MERGED_ARRAYS {
        let len = merged.get(key).and_then(Value::as_array).map_or(0, Vec::len);
        origins.insert(key, (0..len).map(|i| vec![(deepest, i)]).collect());
    }
    for (layer, table) in layers {
        merge_layer(&mut merged, table, layer, &mut origins);
    }
    Ok(Some(Merged { table: merged, origins }))
}

fn dir_of(path: &Path) -> PathBuf {
    path.parent().unwrap_or(Path::new(".")).to_owned()
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_owned())
}

fn parse_table(path: &Path, text: &str) -> Result<Table, ScenarioErrors> {
    toml::from_str(text).map_err(|e| {
        ScenarioErrors(vec![ScenarioError {
            file: path.to_owned(),
            line: e.span().map(|span| line_col(text, span.start)),
            key: String::new(),
            message: e.message().trim().to_owned(),
        }])
    })
}

fn error_at_extends(path: &Path, text: &str, message: String) -> ScenarioErrors {
    let line = DeTable::parse(text)
        .ok()
        .and_then(|doc| locate(&doc, &[Seg::Key("extends")]))
        .map(|span| line_col(text, span.start));
    ScenarioErrors(vec![ScenarioError { file: path.to_owned(), line, key: "extends".into(), message }])
}

/// Removes the `extends` key, returning the base it names.
fn take_extends(path: &Path, text: &str, table: &mut Table) -> Result<Option<String>, ScenarioErrors> {
    match table.get("extends") {
        None => Ok(None),
        Some(Value::String(base)) => {
            let base = base.clone();
            table.remove("extends");
            Ok(Some(base))
        }
        Some(other) => Err(error_at_extends(
            path,
            text,
            format!("must be the path of a scenario file (a string), not a {}", other.type_str()),
        )),
    }
}

/// Makes a base's relative file names (rules, geometry, area) absolute when the base lies in
/// another directory than the scenario, whose directory anchors them.
fn rebase_paths(table: &mut Table, base_dir: &Path, top_dir: &Path) {
    if canonical(base_dir) == canonical(top_dir) {
        return;
    }
    let base_dir = canonical(base_dir);
    let rebase = |value: &mut Value| {
        if let Value::String(file) = value
            && Path::new(file.as_str()).is_relative()
        {
            *file = base_dir.join(file.as_str()).display().to_string();
        }
    };
    if let Some(Value::Array(rules)) = table.get_mut("rules") {
        rules.iter_mut().for_each(rebase);
    }
    if let Some(Value::Table(city)) = table.get_mut("city") {
        if let Some(geometry) = city.get_mut("geometry") {
            rebase(geometry);
        }
        if let Some(Value::Table(area)) = city.get_mut("area")
            && let Some(geojson) = area.get_mut("geojson")
        {
            rebase(geojson);
        }
    }
}

/// The name that matches an entry of a merged array with its base's: `name`, or a
/// population's `type`. Incidents have none: they are always added.
fn entry_name<'a>(array: &str, entry: &'a Value) -> Option<&'a str> {
    let entry = entry.as_table()?;
    match array {
        "incidents" => None,
        "populations" => entry.get("name").or_else(|| entry.get("type")).and_then(Value::as_str),
        _ => entry.get("name").and_then(Value::as_str),
    }
}

/// Merges the file `layer`'s table over `merged`.
fn merge_layer(merged: &mut Table, over: Table, layer: usize, origins: &mut Origins) {
    for (key, value) in over {
        let array = MERGED_ARRAYS.iter().find(|a| **a == key);
        match (array, value) {
            (Some(array), Value::Array(entries)) => {
                let target = merged.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(target) = target else {
                    *target = Value::Array(entries);
                    continue;
                };
                let sources = origins.entry(array).or_default();
                for (index, entry) in entries.into_iter().enumerate() {
                    let existing = entry_name(array, &entry)
                        .and_then(|name| target.iter().position(|e| entry_name(array, e) == Some(name)));
                    match existing {
                        Some(at) => {
                            merge_value(&mut target[at], entry);
                            sources[at].insert(0, (layer, index));
                        }
                        None => {
                            target.push(entry);
                            sources.push(vec![(layer, index)]);
                        }
                    }
                }
            }
            (_, value) => match merged.get_mut(&key) {
                Some(existing) => merge_value(existing, value),
                None => {
                    merged.insert(key, value);
                }
            },
        }
    }
}

/// Tables merge key by key; anything else is replaced, and so is a table that switches to
/// another form (its old keys belong to the old form): another `kind` (an effect, a
/// distribution, a placement), or a place given another way (`center`, `bbox`, `geojson`,
/// `cell`, `road`).
fn merge_value(target: &mut Value, over: Value) {
    match (target, over) {
        (Value::Table(target), Value::Table(over)) if !switches_form(target, &over) => {
            for (key, value) in over {
                match target.get_mut(&key) {
                    Some(existing) => merge_value(existing, value),
                    None => {
                        target.insert(key, value);
                    }
                }
            }
        }
        (target, over) => *target = over,
    }
}

fn switches_form(target: &Table, over: &Table) -> bool {
    const PLACES: [&str; 5] = ["center", "bbox", "geojson", "cell", "road"];
    match over.get("kind") {
        Some(kind) => target.get("kind") != Some(kind),
        None => PLACES.iter().any(|key| over.contains_key(*key) && !target.contains_key(*key)),
    }
}
