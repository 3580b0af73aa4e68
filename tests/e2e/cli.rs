//! The command line: help on every command, read-only SQL, bad job specs refused.

use crate::common::{dragonflow, file_spec};

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["sql", "--help"],
        vec!["loadgen", "--help"],
        vec!["demo", "--help"],
        vec!["bench", "--help"],
    ] {
        let out = dragonflow(&cmd);
        assert!(out.status.success(), "{cmd:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{cmd:?}: {text}");
    }
}

#[test]
fn sql_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().to_str().unwrap();
    let ok = dragonflow(&["sql", "--lake", lake, "SELECT count(*) FROM aggregates"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    for q in [
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/tmp'",
        "COPY (SELECT 1) TO '/tmp/dragonflow-copy-test.parquet'",
        "INSERT INTO aggregates SELECT * FROM aggregates",
        "DROP TABLE aggregates",
        "CREATE TABLE t AS SELECT 1",
    ] {
        let out = dragonflow(&["sql", "--lake", lake, q]);
        assert!(!out.status.success(), "{q} should be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("read-only"), "{q}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/dragonflow-copy-test.parquet").exists());
}

#[test]
fn bad_job_specs_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let lake = dir.path().join("lake");
    let good = std::fs::read_to_string(file_spec(dir.path(), &input, &lake, "json")).unwrap();
    for (bad, field) in [
        (good.replace("size = \"10s\"", "size = \"soon\""), "window.size"),
        (good.replace("kind = \"file\"", "kind = \"carrier-pigeon\""), "source"),
        (good.replace("format = \"json\"", "format = \"yaml\""), "source.format"),
        (good.replace("lateness", "latness"), "window"),
    ] {
        let spec = dir.path().join("bad.toml");
        std::fs::write(&spec, &bad).unwrap();
        let out = dragonflow(&["run", spec.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("`{field}")), "expected field {field} named: {err}");
        assert!(!lake.exists(), "nothing starts for a bad spec");
    }
    let missing = dragonflow(&["run", dir.path().join("nope.toml").to_str().unwrap()]);
    assert!(!missing.status.success());
}
