//! Guards the crate boundaries written in ARCHITECTURE.md: a forbidden dependency edge, direct
//! or transitive, fails this test.
//!
//! Normal and build dependencies count; dev-dependencies do not (tests may use anything).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Command;

use serde_json::{Value, json};

/// One boundary: `krate` must not reach any of `forbidden` (by package name), nor, when
/// `no_workspace_deps`, any other workspace member.
struct Rule {
    krate: &'static str,
    forbidden: &'static [&'static str],
    no_workspace_deps: bool,
}

const RULES: &[Rule] = &[
    Rule {
        krate: "citytwin-core",
        forbidden: &[
            "tokio",
            "ractor",
            "tonic",
            "prost",
            "bevy",
            "async-std",
            "axum",
            "hyper",
            "rumqttc",
            "lapin",
            "async-nats",
        ],
        no_workspace_deps: true,
    },
    Rule { krate: "citytwin-visualizer", forbidden: &["citytwin-twin"], no_workspace_deps: false },
    // The simulator drives a twin only through the CLI's narrow ingest loop.
    Rule {
        krate: "citytwin-simulator",
        forbidden: &["citytwin-twin", "ractor", "tokio", "tonic", "bevy"],
        no_workspace_deps: false,
    },
    Rule { krate: "citytwin-proto", forbidden: &["citytwin-twin", "ractor", "bevy"], no_workspace_deps: false },
];

/// Every violation of `rules` in `metadata` (the output of `cargo metadata --format-version 1`),
/// each with the dependency path that leads to it.
fn violations(metadata: &Value, rules: &[Rule]) -> Vec<String> {
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("metadata has packages")
        .iter()
        .map(|package| (package["id"].as_str().unwrap(), package["name"].as_str().unwrap()))
        .collect();
    let members: BTreeSet<&str> =
        metadata["workspace_members"].as_array().unwrap().iter().map(|id| names[id.as_str().unwrap()]).collect();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().expect("metadata has a resolve graph") {
        let from = node["id"].as_str().unwrap();
        for dep in node["deps"].as_array().unwrap() {
            let not_dev_only =
                dep["dep_kinds"].as_array().unwrap().iter().any(|kind| kind["kind"].as_str() != Some("dev"));
            if not_dev_only {
                edges.entry(from).or_default().push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    let mut found = Vec::new();
    for rule in rules {
        let Some((&start, _)) = names.iter().find(|(_, name)| **name == rule.krate) else {
            found.push(format!("{} is not in the workspace", rule.krate));
            continue;
        };
        // Breadth-first, remembering how each package was reached, to print the path.
        let mut reached_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(id) = queue.pop_front() {
            for &next in edges.get(id).map(Vec::as_slice).unwrap_or_default() {
                if next != start && !reached_from.contains_key(next) {
                    reached_from.insert(next, id);
                    queue.push_back(next);
                }
            }
        }
        for &id in reached_from.keys() {
            let name = names[id];
            let forbidden = rule.forbidden.contains(&name) || (rule.no_workspace_deps && members.contains(name));
            if forbidden {
                let mut path = vec![name];
                let mut at = id;
                while let Some(&prev) = reached_from.get(at) {
                    path.push(names[prev]);
                    at = prev;
                }
                path.push(rule.krate);
                path.dedup();
                path.reverse();
                found.push(format!("{} must not depend on {name}: {}", rule.krate, path.join(" -> ")));
            }
        }
    }
    found
}

#[test]
fn workspace_respects_its_crate_boundaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let found = violations(&metadata, RULES);
    assert!(found.is_empty(), "forbidden crate edges:\n{}", found.join("\n"));
}

/// A tiny metadata document: `edges` are (from, to, kind) with kind `normal`, `dev` or `build`.
fn fake_metadata(members: &[&str], edges: &[(&str, &str, &str)]) -> Value {
    let mut all: BTreeSet<&str> = members.iter().copied().collect();
    for (from, to, _) in edges {
        all.insert(from);
        all.insert(to);
    }
    let id = |name: &str| format!("{name} 0.1.0");
    let packages: Vec<Value> = all.iter().map(|name| json!({"id": id(name), "name": name})).collect();
    let nodes: Vec<Value> = all
        .iter()
        .map(|name| {
            let deps: Vec<Value> = edges
                .iter()
                .filter(|(from, _, _)| from == name)
                .map(|(_, to, kind)| {
                    let kind = if *kind == "normal" { Value::Null } else { json!(kind) };
                    json!({"name": to, "pkg": id(to), "dep_kinds": [{"kind": kind, "target": null}]})
                })
                .collect();
            json!({"id": id(name), "deps": deps})
        })
        .collect();
    json!({"packages": packages, "workspace_members": members.iter().map(|m| id(m)).collect::<Vec<_>>(), "resolve": {"nodes": nodes}})
}

#[test]
fn checker_catches_direct_and_transitive_forbidden_edges() {
    let members = ["citytwin-core", "citytwin-twin", "citytwin-visualizer", "citytwin-proto", "citytwin-simulator"];
    let clean = fake_metadata(
        &members,
        &[
            ("citytwin-twin", "citytwin-core", "normal"),
            ("citytwin-twin", "tokio", "normal"),
            ("citytwin-core", "serde", "normal"),
        ],
    );
    assert_eq!(violations(&clean, RULES), Vec::<String>::new());

    let direct = fake_metadata(&members, &[("citytwin-core", "tokio", "normal")]);
    assert_eq!(violations(&direct, RULES), ["citytwin-core must not depend on tokio: citytwin-core -> tokio"]);

    let transitive =
        fake_metadata(&members, &[("citytwin-core", "some-helper", "normal"), ("some-helper", "ractor", "build")]);
    assert_eq!(
        violations(&transitive, RULES),
        ["citytwin-core must not depend on ractor: citytwin-core -> some-helper -> ractor"]
    );

    let on_workspace = fake_metadata(&members, &[("citytwin-core", "citytwin-proto", "normal")]);
    assert_eq!(
        violations(&on_workspace, RULES),
        ["citytwin-core must not depend on citytwin-proto: citytwin-core -> citytwin-proto"]
    );

    let visualizer = fake_metadata(
        &members,
        &[("citytwin-visualizer", "citytwin-proto", "normal"), ("citytwin-proto", "citytwin-twin", "normal")],
    );
    let found = violations(&visualizer, RULES);
    assert!(found.contains(&"citytwin-visualizer must not depend on citytwin-twin: citytwin-visualizer -> citytwin-proto -> citytwin-twin".to_owned()), "{found:?}");

    let simulator = fake_metadata(&members, &[("citytwin-simulator", "tokio", "normal")]);
    assert_eq!(
        violations(&simulator, RULES),
        ["citytwin-simulator must not depend on tokio: citytwin-simulator -> tokio"]
    );
}

#[test]
fn checker_ignores_dev_dependencies() {
    let members = ["citytwin-core", "citytwin-visualizer", "citytwin-proto", "citytwin-simulator"];
    let dev_only = fake_metadata(&members, &[("citytwin-core", "tokio", "dev")]);
    assert_eq!(violations(&dev_only, RULES), Vec::<String>::new());
}
