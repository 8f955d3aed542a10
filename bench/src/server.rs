//! Starting and stopping the servers under test, one at a time, on loopback ports, and reading
//! their CPU time and memory.

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::procstat;
use crate::shape::Shape;
use crate::timestamp::utc_timestamp;

/// Name prefix of the runtime threads of an in-process broker (their CPU time is the server's).
pub const IN_PROCESS_THREAD_PREFIX: &str = "gfbroker";
/// Name prefix of an in-process broker's event-loop threads (also the server's).
const EVENT_LOOP_THREAD_PREFIX: &str = "event-loop-";

/// The servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum ServerKind {
    /// Debian's gearmand, in memory, `--threads=4`.
    Gearmand,
    /// gearmand with `--hashtable-buckets` sized for deep queues.
    GearmandTuned,
    /// gearfleet-broker, in memory.
    Gearfleet,
    /// gearfleet-broker with `--durability fsync` (background jobs acknowledged once on disk).
    GearfleetFsync,
    /// gearfleet-broker with `--durability async` (journal flushed every 100 ms).
    GearfleetAsync,
    /// The floor: what the exchange itself costs. For background submissions and the drain
    /// ([`crate::floor`]) it answers submissions and hands workers made-up jobs, keeping nothing
    /// and sleeping in a blocking read between packets; for foreground jobs
    /// ([`crate::router_floor`]) it routes them with nothing but a FIFO, one thread and one
    /// `epoll`. Not for the memory workload.
    Floor,
}

impl ServerKind {
    /// The default comparison: both gearmands, gearfleet, and the floor (where it applies).
    pub const ALL: [ServerKind; 4] =
        [ServerKind::Gearmand, ServerKind::GearmandTuned, ServerKind::Gearfleet, ServerKind::Floor];

    pub fn label(self) -> &'static str {
        match self {
            ServerKind::Gearmand => "gearmand",
            ServerKind::GearmandTuned => "gearmand-tuned",
            ServerKind::Gearfleet => "gearfleet",
            ServerKind::GearfleetFsync => "gearfleet-fsync",
            ServerKind::GearfleetAsync => "gearfleet-async",
            ServerKind::Floor => "floor",
        }
    }

    /// Whether this server can run workloads of `shape` (the floor keeps no background jobs, so
    /// it has no memory per queued job to show).
    pub fn runs(self, shape: Shape) -> bool {
        self != ServerKind::Floor || shape != Shape::Memory
    }

    pub fn is_gearmand(self) -> bool {
        matches!(self, ServerKind::Gearmand | ServerKind::GearmandTuned)
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How to start each server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub gearmand_bin: PathBuf,
    pub gearmand_threads: u32,
    /// `--hashtable-buckets` of the tuned gearmand.
    pub hashtable_buckets: u32,
    pub broker_bin: PathBuf,
    /// Run gearfleet-broker inside this process (its own runtime and threads) instead of the
    /// binary: for smoke tests, where no release build exists. RSS then includes the generator.
    pub gearfleet_in_process: bool,
    /// `--threads` of gearfleet-broker (0: its default, one fewer than the cores, at least one).
    pub gearfleet_threads: usize,
    /// The gearfleet-bench binary that serves the floor [default: this program].
    pub floor_bin: Option<PathBuf>,
}

impl ServerOptions {
    /// Where `cargo build --release -p gearfleet-broker` puts the broker: `$CARGO_TARGET_DIR`,
    /// defaulting to the project's shared `$HOME/.cache/gearfleet/target`.
    pub fn default_broker_bin() -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".cache/gearfleet/target")
        });
        target.join("release/gearfleet-broker")
    }

    /// Whether `kind` can be started here.
    pub fn available(&self, kind: ServerKind) -> bool {
        match kind {
            ServerKind::Gearmand | ServerKind::GearmandTuned => is_executable(&self.gearmand_bin),
            ServerKind::Gearfleet => self.gearfleet_in_process || is_executable(&self.broker_bin),
            // The durable modes need the binary (a data directory per run).
            ServerKind::GearfleetFsync | ServerKind::GearfleetAsync => is_executable(&self.broker_bin),
            ServerKind::Floor => true,
        }
    }

    /// One line describing the servers' versions and flags, for the report.
    pub fn describe(&self, kind: ServerKind) -> String {
        match kind {
            ServerKind::Floor => "no job server: for background submissions and the drain it answers each \
                                  submission with JOB_CREATED and each GRAB_JOB with a made-up job, keeping \
                                  nothing (one thread per connection, blocking read and write, so it sleeps \
                                  between packets); for foreground jobs it routes each job through a FIFO to \
                                  a worker and its result back, with nothing else (one thread, one epoll, one \
                                  read per readiness event, one write per peer per batch, no polling): what \
                                  the system calls and wake-ups of the exchange cost, with no work of a \
                                  server's own"
                .to_string(),
            ServerKind::Gearmand => {
                format!("{} `--threads={}`", gearmand_version(&self.gearmand_bin), self.gearmand_threads)
            }
            ServerKind::GearmandTuned => format!(
                "{} `--threads={} --hashtable-buckets={}`",
                gearmand_version(&self.gearmand_bin),
                self.gearmand_threads,
                self.hashtable_buckets
            ),
            ServerKind::GearfleetFsync | ServerKind::GearfleetAsync => {
                let mode = if self_kind_is_fsync(kind) { "fsync" } else { "async" };
                format!("gearfleet-broker release binary, `--durability {mode}` (journal on this machine's disk)")
            }
            ServerKind::Gearfleet => {
                let threads = if self.gearfleet_threads == 0 {
                    format!("default threads ({})", gearfleet_broker::Config::default_threads())
                } else {
                    format!("`--threads={}`", self.gearfleet_threads)
                };
                if self.gearfleet_in_process {
                    format!("gearfleet-broker in process (smoke only), {threads}")
                } else {
                    let built = std::fs::metadata(&self.broker_bin)
                        .and_then(|m| m.modified())
                        .map(|t| format!(" built {}", utc_timestamp(t)))
                        .unwrap_or_default();
                    // The broker reads the same environment, so this is the poll it will use.
                    let idle_poll = <gearfleet_broker::Config as clap::Parser>::try_parse_from(["gearfleet-broker"])
                        .map(|c| format!(", idle poll {} µs", c.idle_poll.as_micros()))
                        .unwrap_or_default();
                    format!(
                        "gearfleet-broker release binary ({}{built}), in memory, {threads}{idle_poll}",
                        self.broker_bin.display()
                    )
                }
            }
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn gearmand_version(bin: &Path) -> String {
    let out = Command::new(bin).arg("--version").output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("gearmand").trim();
    line.split(" - ").next().unwrap_or(line).to_string()
}

/// A running server under test. Dropping it stops the server.
pub struct Server {
    pub kind: ServerKind,
    pub addr: SocketAddr,
    inner: Inner,
}

enum Inner {
    Process {
        child: Child,
        dir: PathBuf,
    },
    InProcess {
        rt: Option<tokio::runtime::Runtime>,
        running: Option<gearfleet_broker::Running>,
    },
    /// A server someone else started; its process id, when given, is used for CPU and RSS.
    Attached {
        pid: Option<u32>,
    },
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

impl Server {
    /// Starts `kind` for workloads of `shape` (which decides the floor's program).
    pub fn start(kind: ServerKind, opts: &ServerOptions, shape: Shape) -> Result<Server> {
        if kind == ServerKind::Gearfleet && opts.gearfleet_in_process {
            return Server::start_in_process(opts);
        }
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = std::env::temp_dir().join(format!(
            "gearfleet-bench-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cmd = match kind {
            ServerKind::Gearmand | ServerKind::GearmandTuned => {
                let mut c = Command::new(&opts.gearmand_bin);
                c.arg("--listen=127.0.0.1")
                    .arg(format!("--port={port}"))
                    .arg(format!("--threads={}", opts.gearmand_threads))
                    .arg("--log-file=none")
                    .arg("--verbose=ERROR")
                    .arg(format!("--pid-file={}", dir.join("gearmand.pid").display()));
                if kind == ServerKind::GearmandTuned {
                    c.arg(format!("--hashtable-buckets={}", opts.hashtable_buckets));
                }
                c
            }
            ServerKind::Gearfleet | ServerKind::GearfleetFsync | ServerKind::GearfleetAsync => {
                let mut c = Command::new(&opts.broker_bin);
                if kind != ServerKind::Gearfleet {
                    let mode = if self_kind_is_fsync(kind) { "fsync" } else { "async" };
                    c.arg("--durability").arg(mode).arg("--data-dir").arg(dir.join("data"));
                }
                c.arg("--listen")
                    .arg(addr.to_string())
                    .arg("--http-listen")
                    .arg("127.0.0.1:0")
                    .arg("--handle-host")
                    .arg("bench")
                    .env("GEARFLEET_LOG", "error");
                if opts.gearfleet_threads > 0 {
                    c.arg("--threads").arg(opts.gearfleet_threads.to_string());
                }
                c
            }
            ServerKind::Floor => {
                // This program serves the floor (unless told where gearfleet-bench is: tests).
                let bin = match &opts.floor_bin {
                    Some(b) => b.clone(),
                    None => std::env::current_exe().context("finding gearfleet-bench itself")?,
                };
                let mut c = Command::new(bin);
                c.arg("floor-server").arg("--listen").arg(addr.to_string());
                if shape == Shape::Fg {
                    c.arg("--route");
                }
                c
            }
        };
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        // The server must not outlive the benchmark, even when the benchmark is killed.
        // SAFETY: prctl is async-signal-safe and touches nothing but the child's own flags.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {kind} ({:?})", cmd.get_program()))?;
        let mut server = Server { kind, addr, inner: Inner::Process { child, dir } };
        server.wait_listening(Duration::from_secs(15))?;
        Ok(server)
    }

    fn start_in_process(opts: &ServerOptions) -> Result<Server> {
        let mut config = gearfleet_broker::Config::for_tests();
        config.handle_host = Some("bench".into());
        config.threads = opts.gearfleet_threads;
        // The binary's runtime, with threads named for the CPU accounting.
        let rt = gearfleet_broker::runtime::builder(&config).thread_name(IN_PROCESS_THREAD_PREFIX).build()?;
        let running = rt.block_on(gearfleet_broker::start(config)).context("starting gearfleet-broker in process")?;
        let addr = running.gearman_addr;
        Ok(Server {
            kind: ServerKind::Gearfleet,
            addr,
            inner: Inner::InProcess { rt: Some(rt), running: Some(running) },
        })
    }

    fn wait_listening(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            // A connection to itself (the kernel may pick the port being probed as the source
            // port while nothing listens there) is not the server.
            if let Ok(s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200))
                && s.local_addr().ok() != s.peer_addr().ok()
            {
                return Ok(());
            }
            if let Inner::Process { child, dir } = &mut self.inner
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                bail!("{} exited at start ({status}): {}", self.kind, log.trim());
            }
            if start.elapsed() > limit {
                bail!("{} is not listening on {} after {limit:?}", self.kind, self.addr);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the server runs inside this process (its CPU time is then part of ours).
    pub fn in_process(&self) -> bool {
        matches!(self.inner, Inner::InProcess { .. })
    }

    /// A server already running at `addr` (started by someone else), with its process id if known.
    pub fn attach(kind: ServerKind, addr: SocketAddr, pid: Option<u32>) -> Server {
        Server { kind, addr, inner: Inner::Attached { pid } }
    }

    /// CPU time the server has used so far (None: unknown, for an attached server without pid).
    pub fn cpu(&self) -> Result<Option<Duration>> {
        match &self.inner {
            Inner::Process { child, .. } => procstat::process_cpu(child.id()).map(Some),
            Inner::InProcess { .. } => Ok(Some(
                procstat::self_threads_cpu(IN_PROCESS_THREAD_PREFIX)?
                    + procstat::self_threads_cpu(EVENT_LOOP_THREAD_PREFIX)?,
            )),
            Inner::Attached { pid: Some(pid) } => procstat::process_cpu(*pid).map(Some),
            Inner::Attached { pid: None } => Ok(None),
        }
    }

    /// The server's resident memory in bytes (in process: this whole process's).
    pub fn rss(&self) -> Result<Option<u64>> {
        match &self.inner {
            Inner::Process { child, .. } => procstat::rss_bytes(child.id()).map(Some),
            Inner::InProcess { .. } => procstat::rss_bytes(std::process::id()).map(Some),
            Inner::Attached { pid: Some(pid) } => procstat::rss_bytes(*pid).map(Some),
            Inner::Attached { pid: None } => Ok(None),
        }
    }

    /// The server's error output so far (empty in process), to explain a failure.
    pub fn stderr_tail(&self) -> String {
        match &self.inner {
            Inner::Process { dir, .. } => {
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().rev().take(5).collect();
                lines.into_iter().rev().collect::<Vec<_>>().join("\n")
            }
            Inner::InProcess { .. } | Inner::Attached { .. } => String::new(),
        }
    }

    /// Stops the server (SIGKILL for processes: nothing it holds is needed afterwards).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        match &mut self.inner {
            Inner::Process { child, dir } => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(&*dir);
            }
            Inner::InProcess { rt, running } => {
                if let (Some(rt), Some(running)) = (rt.as_ref(), running.take()) {
                    rt.block_on(async {
                        let _ = tokio::time::timeout(Duration::from_secs(10), running.stop()).await;
                    });
                }
                if let Some(rt) = rt.take() {
                    rt.shutdown_timeout(Duration::from_secs(2));
                }
            }
            Inner::Attached { .. } => {}
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A loopback port free right now (the OS picks it; the server binds it a moment later).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn self_kind_is_fsync(kind: ServerKind) -> bool {
    kind == ServerKind::GearfleetFsync
}
