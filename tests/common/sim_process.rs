//! The simulator as a process of its own (`mqtt-provision simulate`), for the tests and
//! benchmarks that kill it, restart it, or measure it apart from the worker.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct SimProcess {
    child: Child,
    port: u16,
}

impl SimProcess {
    /// Starts `bin simulate` on 127.0.0.1:`listen_port` (0 picks one) with one instance and one
    /// `ID:SECRET` key, plus `extra` flags; returns once it has printed its address.
    pub fn start(
        bin: &str,
        listen_port: u16,
        instance: &str,
        access_key: &str,
        extra: &[&str],
    ) -> SimProcess {
        let listen = format!("127.0.0.1:{listen_port}");
        let mut child = Command::new(bin)
            .args([
                "simulate",
                "--listen",
                &listen,
                "--instance-id",
                instance,
                "--access-key",
                access_key,
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("simulator starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains(&format!("(instance {instance},")),
            "simulate --instance-id {instance} serves that instance: {line:?}"
        );
        let port = line
            .split("http://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        SimProcess { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn get(&self, path: &str) -> String {
        let url = format!("{}{path}", self.endpoint());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { reqwest::get(&url).await.unwrap().text().await.unwrap() })
    }

    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/__sim/stats")).unwrap()
    }

    /// CPU seconds the simulator process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // After the ')': state is field 0, utime 11, stime 12 (clock ticks).
        (ticks(11) + ticks(12)) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
