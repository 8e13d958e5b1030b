//! `deploy/systemd/herald.service` passes `systemd-analyze verify` with no complaint about the
//! unit (unknown keys, bad values, a missing binary), its ExecStart pointed at the herald
//! binary built for these tests.
//!
//! The one check in the suite allowed to skip: where `systemd-analyze` is not installed (it
//! comes with Debian's `systemd` package, which `scripts/test rust` installs), it prints a
//! line saying so and checks nothing. It is its own test file so nothing else depends on it.

use std::process::Command;

const UNIT: &str = include_str!("../../../deploy/systemd/herald.service");
const SHIPPED_EXEC: &str = "ExecStart=/usr/local/bin/herald ";

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let version = Command::new("systemd-analyze").arg("--version").output();
    if !matches!(&version, Ok(out) if out.status.success()) {
        eprintln!(
            "SKIPPED: systemd-analyze verify of deploy/systemd/herald.service: systemd-analyze \
             is not installed (apt-get install systemd); nothing was checked"
        );
        return;
    }
    assert_eq!(
        UNIT.matches(SHIPPED_EXEC).count(),
        1,
        "the unit has one `{SHIPPED_EXEC}` line"
    );
    let unit = UNIT.replacen(
        SHIPPED_EXEC,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_herald")),
        1,
    );
    let dir = std::env::temp_dir().join(format!("herald-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join("herald.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // Unknown keys and unparsable values are only warnings (exit 0): fail on any line about
    // the unit.
    let complaints: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("herald.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complains about the unit:\n{}",
        complaints.join("\n")
    );
}
