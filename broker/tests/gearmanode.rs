//! The GearmaNode (Node.js Gearman library) acceptance run: `tests/gearmanode/run.sh` installs the
//! library with its pinned test tools into ~/.cache, starts this broker on 127.0.0.1:4730 and runs
//! mocha (the upstream suite when its files are present, see the script's header, plus gearfleet's
//! own live checks in `tests/gearmanode/live/`).
//!
//! Port 4730 is fixed by the library's tests, so this binary holds a single test, and the script
//! serialises concurrent runs with a lock file. Skipped with a message when node/npm are missing,
//! unless `GEARFLEET_REQUIRE_PEERS=1`.

use std::path::Path;
use std::process::Command;

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

#[test]
fn gearmanode_suite_passes_against_gearfleet() {
    let required = std::env::var("GEARFLEET_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    if !(on_path("node") && on_path("npm")) {
        assert!(!required, "node/npm not found on PATH, and GEARFLEET_REQUIRE_PEERS=1");
        eprintln!("skipping: node/npm not installed, so the GearmaNode suite cannot run");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gearmanode/run.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--server", "gearfleet"])
        .env("GEARFLEET_BROKER_BIN", env!("CARGO_BIN_EXE_gearfleet-broker"))
        .output()
        .expect("run tests/gearmanode/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Keep the output small: mocha's result lines and the script's own messages.
    let summary: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with('✓')
                || t.contains("passing")
                || t.contains("failing")
                || t.contains("pending")
                || t.starts_with("gearmanode:")
                || t.split_once(')').is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    eprintln!("{}", summary.join("\n"));
    match out.status.code() {
        Some(0) => {}
        Some(77) if !required => eprintln!("skipping: {script:?} reported its prerequisites missing"),
        code => panic!("{script:?} exited with {code:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"),
    }
}
