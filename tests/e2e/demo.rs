//! The README's first command, on a machine with nothing installed.

use crate::common::{dragonflow, sql_rows};

#[test]
fn demo_runs_and_leaves_a_queryable_lake() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let out = dragonflow(&["demo", "--agents", "200", "--duration", "15s", "--lake", lake.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Busiest VMs by CPU"), "{stdout}");
    let rows = sql_rows(&lake, "SELECT count(*) AS n, count(DISTINCT vm_id) AS vms, sum(count) AS values FROM aggregates WHERE measurement = 'cpu' AND field = 'usage_idle'");
    assert_eq!(rows[0]["vms"], "200", "{rows:?}");
    // 15 s at a 2 s interval: 7 or 8 ticks per agent, depending on where the clock starts.
    let values: u64 = rows[0]["values"].parse().unwrap();
    assert!((200 * 7..=200 * 8).contains(&values), "{values}");
}
