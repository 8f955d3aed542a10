//! A broker shutting down (SIGTERM, see `server::Running::shut_down`): it takes no new jobs
//! (every submission is answered `ERROR SHUTTING_DOWN`, so clients with a server list go to
//! another broker), hands out no more (every worker connection is drained, new ones included, and
//! nothing undrains them), and lets the jobs workers already hold finish. Queued background jobs
//! stay in the journal and are served again when the broker comes back.

use super::State;

/// The error code a submission gets from a broker that is shutting down.
pub const SHUTTING_DOWN: &[u8] = b"SHUTTING_DOWN";

impl State {
    /// Stops taking and handing out jobs (see the module docs).
    pub fn begin_shutdown(&mut self) {
        self.closing = true;
        for c in self.conns.values_mut() {
            c.draining = true;
        }
    }

    /// Whether [`begin_shutdown`](Self::begin_shutdown) was called.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Jobs workers hold right now (what a shutdown waits for; not the jobs held for a worker
    /// that lost its connection, which cannot end here before it comes back).
    pub fn assigned_jobs(&self) -> u64 {
        self.functions.iter().map(|f| f.running).sum::<u64>().saturating_sub(self.held)
    }
}

#[cfg(test)]
mod tests {
    use gearfleet_proto::PacketType;

    use super::super::model::{Effects, Limits};
    use super::super::testing::*;
    use super::*;

    #[test]
    fn a_closing_broker_refuses_submissions_hands_out_nothing_and_lets_running_jobs_finish() {
        let mut s = state(Limits::default());
        let worker = connect(&mut s, 1);
        let client = connect(&mut s, 2);
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"", b"running"]);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"queued"]);
        received(&client);
        req(&mut s, 1, PacketType::GrabJob, &[]);
        let assigned = received(&worker);
        assert_eq!(assigned[0].ptype, PacketType::JobAssign);
        let handle = assigned[0].arg(0).to_vec();
        assert_eq!(s.assigned_jobs(), 1);

        s.begin_shutdown();
        assert!(s.closing());
        for ptype in [PacketType::SubmitJob, PacketType::SubmitJobBg, PacketType::SubmitJobHighBg] {
            req(&mut s, 2, ptype, &[b"f", b"", b"new"]);
            let reply = received(&client);
            assert_eq!(reply.len(), 1, "{ptype:?}");
            assert_eq!(reply[0].ptype, PacketType::Error, "{ptype:?}");
            assert_eq!(reply[0].arg(0), SHUTTING_DOWN);
        }
        req(&mut s, 1, PacketType::GrabJob, &[]);
        assert_eq!(sent(&worker), [PacketType::NoJob], "the queued job is not handed out");
        let mut fx = Effects::default();
        s.set_draining("10.0.0.1", false, &mut fx);
        req(&mut s, 1, PacketType::GrabJob, &[]);
        assert_eq!(sent(&worker), [PacketType::NoJob], "an undrain does not reopen a closing broker");
        let late = connect(&mut s, 3);
        req(&mut s, 3, PacketType::CanDo, &[b"f"]);
        req(&mut s, 3, PacketType::GrabJob, &[]);
        assert_eq!(sent(&late), [PacketType::NoJob], "nor does a worker that connects now get it");

        req(&mut s, 1, PacketType::WorkComplete, &[&handle, b"done"]);
        let done = received(&client);
        assert_eq!(done[0].ptype, PacketType::WorkComplete, "the running job still finishes");
        assert_eq!(s.assigned_jobs(), 0);
        assert_eq!(s.queued_total, 1, "the background job stays queued");
    }
}
