//! A throwaway PostgreSQL cluster for the tests that run the ledger on PostgreSQL: the
//! machine's Debian postgresql-15 binaries, a temporary directory, a free port on 127.0.0.1 and
//! a Unix socket in that directory, `fsync=off`, `synchronous_commit=off` (the ledger's own
//! sessions set it on, so a server stopped with `-m immediate` loses none of their commits).
//! Each test asks for a database of its own; the cluster is stopped (`pg_ctl stop -m
//! immediate`) when the handle is dropped.
//!
//! initdb refuses to run as root: as root the cluster runs as `postgres` (`runuser -u postgres`)
//! in a directory that user owns. Without the binaries a test skips with a note, except under
//! `CI=true`, where it fails: CI installs them (`.ci/run`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    databases: AtomicU32,
    /// The server's options (`pg_ctl -o`), for a restart.
    options: String,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program args…`, as `postgres` when we are root.
fn command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// Starts a cluster, or returns `None` (after printing why) when this machine has no
    /// PostgreSQL and the run is not CI's.
    pub fn start() -> Option<Postgres> {
        Self::start_with(false)
    }

    /// A cluster that takes TCP connections only over TLS (a self-signed certificate made with
    /// openssl; `hostssl` is the only TCP line of pg_hba.conf).
    pub fn start_tls_only() -> Option<Postgres> {
        Self::start_with(true)
    }

    fn start_with(tls_only: bool) -> Option<Postgres> {
        let initdb = Path::new(BIN).join("initdb");
        if !initdb.exists() {
            let note = format!(
                "PostgreSQL is not installed ({} is missing): apt-get install postgresql-15",
                initdb.display()
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{note}; under CI=true the PostgreSQL tests must run");
            }
            eprintln!("skipped: {note}");
            return None;
        }
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("mqtt-provision-pg-")
            .tempdir()
            .expect("a temporary directory");
        if as_postgres {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown of the cluster directory",
            );
        }
        let data = dir.path().join("data");
        let mut init = command(as_postgres, &initdb);
        init.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(init, "initdb");
        if tls_only {
            let mut cert = command(as_postgres, Path::new("/usr/bin/openssl"));
            cert.args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(data.join("server.key"))
            .arg("-out")
            .arg(data.join("server.crt"));
            run(cert, "openssl req");
            let append = |file: &str, text: &str, replace: bool| {
                let path = data.join(file);
                let old = if replace {
                    String::new()
                } else {
                    std::fs::read_to_string(&path).unwrap()
                };
                std::fs::write(&path, format!("{old}{text}")).unwrap();
            };
            append("postgresql.conf", "\nssl = on\n", false);
            append(
                "pg_hba.conf",
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
                true,
            );
        }
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            dir.path().display()
        );
        let cluster = Postgres {
            dir,
            data,
            port,
            as_postgres,
            databases: AtomicU32::new(0),
            options,
        };
        cluster.start_again();
        Some(cluster)
    }

    /// Starts the server (again, after [`Postgres::stop`]) on the same port and data.
    pub fn start_again(&self) {
        let mut start = command(self.as_postgres, &Path::new(BIN).join("pg_ctl"));
        start
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-o", &self.options, "start"]);
        run(start, "pg_ctl start");
    }

    /// Stops the server at once (`-m immediate`: every session cut, no checkpoint), as a crash
    /// or a cut network looks to its clients.
    pub fn stop(&self) {
        let mut stop = command(self.as_postgres, &Path::new(BIN).join("pg_ctl"));
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        run(stop, "pg_ctl stop");
    }

    /// A new, empty database in the cluster; its URL (user `postgres`, no password).
    pub fn database(&self) -> String {
        let name = format!("ledger{}", self.databases.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs `sql` in `database` with psql; its unaligned, tuples-only output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let mut c = command(self.as_postgres, &Path::new(BIN).join("psql"));
        c.args(["-X", "-q", "-At", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .stdin(Stdio::null());
        let out = c.output().expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The postmaster's pid (the first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> i32 {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut stop = command(self.as_postgres, &Path::new(BIN).join("pg_ctl"));
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// A port nothing listens on now (the kernel's pick, released at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
