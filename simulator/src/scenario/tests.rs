use super::*;

fn parse_text(text: &str) -> Result<Scenario, ScenarioErrors> {
    parse(Path::new("/nowhere/test.toml"), text)
}

const MINIMAL: &str = r#"
[city]
name = "Test"
seed = 1
start = "2025-01-15T00:00:00Z"
duration = "2h"
area = { center = [40.75, -73.98], radius_km = 1.0 }

[[populations]]
type = "air_quality_sensor"
count = 3
interval = "5m"

[[populations.metrics]]
name = "pm25"
unit = "μg/m³"
distribution = { kind = "normal", mean = 20, sd = 3 }
profile = "air"
"#;

#[test]
fn a_minimal_scenario_parses_with_defaults() {
    let scenario = parse_text(MINIMAL).unwrap();
    assert_eq!(scenario.resolution, Resolution::Eight);
    assert_eq!(scenario.duration, Duration::from_secs(7200));
    assert_eq!(scenario.utc_offset_s, 0);
    let population = &scenario.populations[0];
    assert_eq!((population.name.as_str(), population.id_prefix.as_str()), ("air_quality_sensor", "air_quality_sensor"));
    assert_eq!(population.metrics[0].unit, Unit::from("ug/m3"), "units are stored as canonical codes");
    assert_eq!(population.placement, Placement::Uniform);
    assert_eq!(scenario.end().as_nanos() - scenario.start.as_nanos(), 7200 * 1_000_000_000);
}

#[test]
fn every_shipped_scenario_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 1, "no scenario found in {}", dir.display());
}

#[test]
fn syntax_errors_and_unknown_keys_carry_their_line() {
    let error = parse_text("[city]\nname = \"x\"\nseed = \n").unwrap_err();
    assert_eq!(error.0.len(), 1);
    assert_eq!(error.0[0].line.map(|(line, _)| line), Some(3), "{error}");
    let text = MINIMAL.replace("interval = \"5m\"", "interval = \"5m\"\ncolour = \"red\"");
    let error = parse_text(&text).unwrap_err();
    assert!(error.to_string().contains("colour"), "{error}");
    assert!(error.0[0].line.is_some(), "{error}");
}

#[test]
fn every_validation_error_is_reported_with_file_line_and_key() {
    let text = MINIMAL
        .replace("duration = \"2h\"", "duration = \"two hours\"")
        .replace("unit = \"μg/m³\"", "unit = \"furlongs\"")
        .replace("sd = 3", "sd = -3")
        .replace("profile = \"air\"", "profile = \"breezy\"")
        + "\n[[incidents]]\nkind = \"meteor\"\nper_day = 1\n";
    let errors = parse_text(&text).unwrap_err().0;
    let summary: Vec<(String, Option<usize>)> =
        errors.iter().map(|e| (e.key.clone(), e.line.map(|(line, _)| line))).collect();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
    assert_eq!(
        summary,
        vec![
            ("city.duration".to_owned(), line_of("two hours")),
            ("populations[0].metrics[0].distribution.sd".to_owned(), line_of("sd = -3")),
            ("populations[0].metrics[0].profile".to_owned(), line_of("breezy")),
            ("populations[0].metrics[0].unit".to_owned(), line_of("furlongs")),
            ("incidents[0].kind".to_owned(), line_of("meteor")),
        ],
        "{errors:#?}"
    );
    let first = errors[0].to_string();
    let prefix = format!("/nowhere/test.toml:{}:", line_of("two hours").unwrap());
    assert!(first.starts_with(&prefix), "{first}");
    assert!(first.contains("city.duration: not a duration"), "{first}");
}

#[test]
fn interventions_take_daily_or_absolute_windows_and_check_references() {
    let text = MINIMAL.to_owned()
        + r#"
[[interventions]]
name = "heatwave"
from = "12:00"
to = "18:00"
effect = { kind = "scale", metric = "pm25", factor = 1.4 }

[[interventions]]
name = "more sensors"
from = "2025-01-15T01:00:00Z"
to = "2025-01-15T02:00:00Z"
effect = { kind = "add_assets", population = "nope", count = 5, center = [40.75, -73.98] }
"#;
    let errors = parse_text(&text).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].key, "interventions[1].effect.population");
    assert!(errors[0].message.contains("air_quality_sensor"), "names the known populations: {}", errors[0].message);
    let scenario = parse_text(&text.replace("\"nope\"", "\"air_quality_sensor\"")).unwrap();
    assert_eq!(scenario.interventions[0].window, Window::Daily(12 * 3600, 18 * 3600));
    let noon = Timestamp::parse_rfc3339("2025-01-15T12:30:00Z").unwrap();
    assert!(scenario.interventions[0].window.contains(noon, 0));
    assert!(!scenario.interventions[0].window.contains(noon, -3600 * 5), "07:30 in New York");
    assert!(matches!(scenario.interventions[1].effect, Effect::AddAssets { population: 0, count: 5, .. }));
}

#[test]
fn offsets_and_times_of_day_parse_strictly() {
    assert_eq!(parse_offset("+01:00"), Some(3600));
    assert_eq!(parse_offset("-05:30"), Some(-19_800));
    assert_eq!(parse_offset("01:00"), None);
    assert_eq!(parse_offset("+15:00"), None);
    assert_eq!(time_of_day("08:00"), Some(28_800));
    assert_eq!(time_of_day("24:00"), Some(86_400));
    assert_eq!(time_of_day("8:00"), None);
    assert_eq!(time_of_day("08:60"), None);
}

/// Writes `files` (name, text) into a fresh temporary directory.
fn scenario_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn the_shipped_heatwave_variant_is_its_base_plus_two_interventions() {
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let base = load(&scenarios.join("downtown-air-quality.toml")).unwrap();
    let variant = load(&scenarios.join("downtown-heatwave.toml")).unwrap();
    assert_eq!(variant.name, "Downtown heatwave");
    assert_eq!(variant.seed, base.seed);
    assert_eq!(format!("{:?}", variant.populations), format!("{:?}", base.populations));
    assert_eq!(variant.rules, base.rules);
    let names: Vec<&str> = variant.interventions.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["heatwave", "extra sensors"]);
    assert!(base.interventions.is_empty());
}

#[test]
fn a_variant_merges_tables_and_named_entries_over_its_base() {
    let base = MINIMAL.to_owned()
        + r#"
[[populations]]
name = "counters"
type = "traffic_counter"
count = 4
interval = "1m"

[[populations.metrics]]
name = "flow"
unit = "{count}"
distribution = { kind = "poisson", lambda = 300 }
profile = "traffic"

[[incidents]]
kind = "traffic"
per_day = 2

[[interventions]]
name = "closure"
from = "08:00"
to = "10:00"
effect = { kind = "scale", metric = "flow", factor = 0.5 }
"#;
    let variant = r#"
extends = "base.toml"

[city]
seed = 7
area = { radius_km = 2.0 }

[[populations]]
name = "counters"
placement = { kind = "clustered", centers = [[40.75, -73.98]], spread_m = 200 }

[[populations]]
name = "counters"
count = 40

[[populations]]
type = "air_quality_sensor"
interval = "10m"

[[incidents]]
kind = "traffic"
per_day = 5

[[interventions]]
name = "closure"
to = "11:00"
"#;
    let dir = scenario_dir(&[("base.toml", &base), ("variant.toml", variant)]);
    let scenario = load(&dir.path().join("variant.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(scenario.seed, 7);
    assert_eq!(scenario.name, "Test", "untouched keys come from the base");
    let counts: Vec<(String, u32)> = scenario.populations.iter().map(|p| (p.name.clone(), p.count)).collect();
    assert_eq!(counts, [("air_quality_sensor".to_owned(), 3), ("counters".to_owned(), 40)]);
    assert_eq!(scenario.populations[0].interval, Duration::from_secs(600));
    assert!(
        matches!(scenario.populations[1].placement, Placement::Clustered { .. }),
        "a placement of another kind replaces the base's: {:?}",
        scenario.populations[1].placement
    );
    assert_eq!(scenario.incidents.len(), 2, "incidents are added, not merged");
    assert_eq!(scenario.interventions.len(), 1);
    let base_only = load(&dir.path().join("base.toml")).unwrap();
    assert_ne!(format!("{:?}", scenario.interventions[0].window), format!("{:?}", base_only.interventions[0].window));
    assert_eq!(
        format!("{:?}", scenario.interventions[0].effect),
        format!("{:?}", base_only.interventions[0].effect),
        "the effect the variant did not mention stays the base's"
    );
}

#[test]
fn errors_in_a_chain_name_the_file_and_line_that_wrote_the_key() {
    let base = MINIMAL.replace("sd = 3", "sd = -3");
    let variant = "extends = \"base.toml\"\n\n[city]\nduration = \"two hours\"\n";
    let dir = scenario_dir(&[("base.toml", &base), ("variant.toml", variant)]);
    let errors = load(&dir.path().join("variant.toml")).unwrap_err().0;
    let found: Vec<(PathBuf, String, Option<usize>)> = errors
        .iter()
        .map(|e| (e.file.file_name().unwrap().into(), e.key.clone(), e.line.map(|(line, _)| line)))
        .collect();
    let sd_line = base.lines().position(|l| l.contains("sd = -3")).map(|i| i + 1);
    assert_eq!(
        found,
        vec![
            ("variant.toml".into(), "city.duration".to_owned(), Some(4)),
            ("base.toml".into(), "populations[0].metrics[0].distribution.sd".to_owned(), sd_line),
        ],
        "{errors:#?}"
    );
}

#[test]
fn a_base_in_another_directory_keeps_its_relative_paths_and_cycles_are_refused() {
    let base = "rules = [\"rules/x.toml\"]\n".to_owned() + MINIMAL;
    let dir = scenario_dir(&[
        ("base/base.toml", &base),
        ("base/rules/x.toml", "# a rule file\n"),
        ("what-if/variant.toml", "extends = \"../base/base.toml\"\n"),
        ("a.toml", "extends = \"b.toml\"\n"),
        ("b.toml", "extends = \"a.toml\"\n"),
        ("missing.toml", "# no base\nextends = \"nowhere.toml\"\n"),
    ]);
    let scenario = load(&dir.path().join("what-if/variant.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(scenario.rules.len(), 1);
    assert!(scenario.rules[0].is_file(), "{:?}", scenario.rules);

    let cycle = load(&dir.path().join("a.toml")).unwrap_err();
    assert!(cycle.to_string().contains("extends forms a cycle"), "{cycle}");
    let missing = load(&dir.path().join("missing.toml")).unwrap_err().0;
    assert_eq!((missing[0].key.as_str(), missing[0].line.map(|(l, _)| l)), ("extends", Some(2)), "{missing:?}");
    assert!(missing[0].message.contains("cannot read the base scenario"), "{missing:?}");
}
