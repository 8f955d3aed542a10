//! Arbitrary lines through the text admin parsers: none may panic, error replies stay one line,
//! and the rows that have a writer read back what they wrote.
#![no_main]

use gearfleet_proto::admin::{AdminCommand, FunctionStats, StatusRow, WorkerRow, WorkerStats, split_list};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = AdminCommand::parse(data) {
        let reply = e.reply();
        assert!(
            reply.ends_with("\r\n") && reply.matches('\n').count() == 1,
            "an admin error reply must be exactly one line: {reply:?}"
        );
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = split_list(text);
    for line in text.split('\n') {
        let _ = StatusRow::parse(line);
        let _ = WorkerRow::parse(line);
        // What `to_line` writes must parse, and writing it again must be a fixed point
        // (the first write may normalise: sanitised fields, the draining flag).
        if let Some(stats) = FunctionStats::parse(line) {
            let once = FunctionStats::parse(&stats.to_line()).expect("FunctionStats::to_line output parses");
            assert_eq!(FunctionStats::parse(&once.to_line()).as_ref(), Some(&once), "FunctionStats fixed point");
        }
        if let Some(stats) = WorkerStats::parse(line) {
            let once = WorkerStats::parse(&stats.to_line()).expect("WorkerStats::to_line output parses");
            assert_eq!(WorkerStats::parse(&once.to_line()).as_ref(), Some(&once), "WorkerStats fixed point");
        }
    }
});
