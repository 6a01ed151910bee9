//! A private PostgreSQL cluster run from the system's server binaries.
//!
//! `hookq dev` keeps one under `.hookq/` so a fresh checkout runs with one command, and
//! the test kit keeps one under `/tmp` so tests need no set-up. `initdb` and `postgres`
//! refuse to run as root, so as root every server command runs as the `postgres` user
//! (created by Debian's `postgresql` package) through `runuser`, and the folder is handed
//! to that user. Starting is idempotent and guarded by a file lock, so concurrent test
//! processes share one cluster.
//!
//! The cluster listens on TCP `127.0.0.1` only, with no Unix-domain socket: every client
//! (hookq, the tests, the scripts' `psql`/`pg_isready`) connects by URL over loopback, and
//! `pg_ctl -w` waits on `postmaster.pid`'s status line, not on a connection. A socket
//! would live in the cluster's folder as `<dir>/.s.PGSQL.<port>`, and a socket path is
//! limited to 107 bytes: from a checkout about 110 characters deep the server refused to
//! start ("could not create any Unix-domain sockets"). With none, the cluster starts from
//! any folder. The setting is written to `postgresql.conf` and also given on the command
//! line at every start, so a cluster initialised by an older hookq (whose configuration
//! still names its folder) starts too. When the server does not start, the error carries
//! what it wrote to its log during that attempt: PostgreSQL's own reason.

use std::{
    fs::{self, File},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Why the private cluster could not be set up or started.
#[derive(Debug, thiserror::Error)]
pub enum DevDbError {
    /// No `initdb` in `$HOOKQ_PG_BIN` or `/usr/lib/postgresql/*/bin`.
    #[error(
        "PostgreSQL server binaries not found (looked for initdb in $HOOKQ_PG_BIN and /usr/lib/postgresql/*/bin): install them with `apt-get install -y postgresql`"
    )]
    NoBinaries,
    /// An I/O operation failed: on the path, or running the command, named first.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A server command (`initdb`, `pg_ctl`, …) exited unsuccessfully.
    #[error("`{cmd}` failed: {output}")]
    Command {
        /// The command line run.
        cmd: String,
        /// What it printed.
        output: String,
    },
    /// `pg_ctl start` failed; the server's own reason is in its log.
    #[error("PostgreSQL in {dir} did not start: {output}\nits log ({log}) says:\n{log_tail}")]
    Start {
        /// The cluster's folder.
        dir: String,
        /// What `pg_ctl` printed.
        output: String,
        /// The server log's path.
        log: String,
        /// The last lines the server wrote to its log during this start.
        log_tail: String,
    },
}

/// Given to the server at every start (command-line settings override
/// `postgresql.conf`): no Unix-domain socket, see the module documentation. `pg_ctl`
/// hands these options to `/bin/sh`, so they hold no quotes or spaces in values.
const START_OPTIONS: &str = "-c unix_socket_directories=";

/// How much of the server's log a start failure quotes.
const LOG_TAIL_LINES: usize = 20;

/// Options that differ between a developer's instance and a test run's.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Tests turn durability off for speed; `hookq dev` keeps PostgreSQL's defaults.
    pub durable: bool,
}

/// A running local cluster, reachable on `127.0.0.1:{port}` as `postgres` (trust auth,
/// loopback only).
#[derive(Clone, Debug)]
pub struct LocalCluster {
    /// The cluster's folder (`.hookq/` for `hookq dev`); its data directory is `data/` in
    /// it.
    pub dir: PathBuf,
    /// The TCP port it listens on at `127.0.0.1`.
    pub port: u16,
    bin: PathBuf,
}

impl LocalCluster {
    /// Initialises (first time) and starts (when not running) the cluster in `dir`.
    pub fn ensure(dir: &Path, opts: &ClusterOptions) -> Result<Self, DevDbError> {
        let bin = find_bin_dir().ok_or(DevDbError::NoBinaries)?;
        fs::create_dir_all(dir).map_err(|e| DevDbError::Io(dir.display().to_string(), e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| DevDbError::Io(dir.display().to_string(), e))?;
        let lock_path = dir.join(".lock");
        let lock = File::create(&lock_path)
            .map_err(|e| DevDbError::Io(lock_path.display().to_string(), e))?;
        lock.lock()
            .map_err(|e| DevDbError::Io(lock_path.display().to_string(), e))?;

        let cluster = LocalCluster {
            port: read_or_pick_port(&dir)?,
            dir,
            bin,
        };
        let data = cluster.data_dir();
        if !data.join("PG_VERSION").exists() {
            if is_root() {
                cluster.run(
                    Command::new("chown")
                        .arg("-R")
                        .arg("postgres:postgres")
                        .arg(&cluster.dir),
                )?;
            }
            cluster.run(
                cluster
                    .server_cmd("initdb")
                    .args([
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--no-instructions",
                        "-D",
                    ])
                    .arg(&data),
            )?;
            let mut conf = format!(
                "\n# written by hookq\nlisten_addresses = '127.0.0.1'\nport = {}\n# TCP only: a socket path in a deep folder exceeds 107 bytes\nunix_socket_directories = ''\nmax_connections = 300\n",
                cluster.port
            );
            if !opts.durable {
                conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
            }
            let conf_path = data.join("postgresql.conf");
            let mut old = fs::read_to_string(&conf_path)
                .map_err(|e| DevDbError::Io(conf_path.display().to_string(), e))?;
            old.push_str(&conf);
            fs::write(&conf_path, old)
                .map_err(|e| DevDbError::Io(conf_path.display().to_string(), e))?;
        }
        if !cluster.is_running() {
            let log = cluster.dir.join("server.log");
            if is_root() {
                let _ = File::create(&log);
                cluster.run(Command::new("chown").arg("postgres:postgres").arg(&log))?;
            }
            // This attempt's lines start at the log's current end.
            let log_start = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            cluster
                .run(
                    cluster
                        .server_cmd("pg_ctl")
                        .args(["-w", "-t", "60", "-o", START_OPTIONS, "-D"])
                        .arg(&data)
                        .arg("-l")
                        .arg(&log)
                        .arg("start"),
                )
                .map_err(|e| match e {
                    DevDbError::Command { output, .. } => DevDbError::Start {
                        dir: cluster.dir.display().to_string(),
                        output,
                        log: log.display().to_string(),
                        log_tail: log_tail(&log, log_start),
                    },
                    other => other,
                })?;
        }
        drop(lock);
        Ok(cluster)
    }

    /// A hot standby of `primary` in `dir`, started and streaming: `pg_basebackup -R`
    /// copies the primary (configuration included, so only the port is added) and writes
    /// the `standby.signal` and `primary_conninfo` that make it follow. Read-only until
    /// [`LocalCluster::promote`]; the failover tests use the pair as a real primary and
    /// standby, so both hold the same rows and ids.
    pub fn standby_of(primary: &LocalCluster, dir: &Path) -> Result<Self, DevDbError> {
        fs::create_dir_all(dir).map_err(|e| DevDbError::Io(dir.display().to_string(), e))?;
        let port = read_or_pick_port(dir)?;
        let data = dir.join("data");
        if !data.join("PG_VERSION").exists() {
            if is_root() {
                primary.run(Command::new("chown").arg("postgres:postgres").arg(dir))?;
            }
            primary.run(
                primary
                    .server_cmd("pg_basebackup")
                    .args(["-h", "127.0.0.1", "-U", "postgres", "-R", "-X", "stream"])
                    .args(["--checkpoint=fast", "-p"])
                    .arg(primary.port.to_string())
                    .arg("-D")
                    .arg(&data),
            )?;
            let conf_path = data.join("postgresql.conf");
            let mut conf = fs::read_to_string(&conf_path)
                .map_err(|e| DevDbError::Io(conf_path.display().to_string(), e))?;
            conf.push_str(&format!("\n# the standby's own port\nport = {port}\n"));
            fs::write(&conf_path, conf)
                .map_err(|e| DevDbError::Io(conf_path.display().to_string(), e))?;
        }
        Self::ensure(dir, &ClusterOptions { durable: true })
    }

    /// Promotes a standby to primary and waits until it takes writes.
    pub fn promote(&self) -> Result<(), DevDbError> {
        self.run(
            self.server_cmd("pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(self.data_dir())
                .arg("promote"),
        )
    }

    /// The data directory (`PGDATA`): `data/` under [`LocalCluster::dir`].
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A connection URL for database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// True when `pg_ctl status` finds the server running.
    pub fn is_running(&self) -> bool {
        self.server_cmd("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(self.data_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Fast shutdown (in-flight transactions are rolled back; committed data is kept).
    pub fn stop(&self) -> Result<(), DevDbError> {
        if !self.is_running() {
            return Ok(());
        }
        self.run(
            self.server_cmd("pg_ctl")
                .args(["-w", "-m", "fast", "-D"])
                .arg(self.data_dir())
                .arg("stop"),
        )
    }

    /// Starts a stopped cluster again (tests use it to simulate an outage).
    pub fn start(&self) -> Result<(), DevDbError> {
        Self::ensure(&self.dir, &ClusterOptions { durable: true }).map(|_| ())
    }

    fn server_cmd(&self, name: &str) -> Command {
        let prog = self.bin.join(name);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(prog);
            c
        } else {
            Command::new(prog)
        }
    }

    fn run(&self, cmd: &mut Command) -> Result<(), DevDbError> {
        let desc = format!("{cmd:?}");
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| DevDbError::Io(desc.clone(), e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DevDbError::Command {
                cmd: desc,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
                .trim()
                .to_string(),
            })
        }
    }
}

/// The last [`LOG_TAIL_LINES`] lines written to `log` after byte `from`.
fn log_tail(log: &Path, from: u64) -> String {
    let text = match fs::read(log) {
        Ok(bytes) => {
            String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or(&bytes)).into_owned()
        }
        Err(e) => return format!("(cannot read it: {e})"),
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.trim().is_empty() {
        "(nothing)".into()
    } else {
        tail
    }
}

/// std has no `geteuid`; `/proc/self` is owned by the effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn read_or_pick_port(dir: &Path) -> Result<u16, DevDbError> {
    let path = dir.join("port");
    if let Some(p) = fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return Ok(p);
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| DevDbError::Io("picking a free port".into(), e))?
        .port();
    fs::write(&path, port.to_string())
        .map_err(|e| DevDbError::Io(path.display().to_string(), e))?;
    Ok(port)
}

/// `$HOOKQ_PG_BIN`, else the newest `/usr/lib/postgresql/<v>/bin` that has `initdb`.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("HOOKQ_PG_BIN") {
        let p = PathBuf::from(p);
        return p.join("initdb").exists().then_some(p);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}
