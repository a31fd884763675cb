//! Multi-process test support: the test binary re-runs itself as a child
//! domain, with `HOSTED_TEST_ROLE` naming what the child does.
//!
//! The child runs one `#[test]` function (`--exact`), which does nothing
//! unless the role variable is set. Parent and child talk in lines: the
//! parent writes commands to the child's stdin, the child prints replies
//! prefixed with `@@` on stdout (other lines are the test harness's own).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub const ROLE_VAR: &str = "HOSTED_TEST_ROLE";
pub const DIR_VAR: &str = "HOSTED_TEST_DIR";
const PREFIX: &str = "@@";
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh directory for one test's hypervisor (removed on drop).
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "hosted-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The role this process plays, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// The hypervisor directory a child joins.
pub fn child_dir() -> PathBuf {
    PathBuf::from(std::env::var(DIR_VAR).expect("HOSTED_TEST_DIR set by the parent"))
}

/// A numeric parameter the parent passed.
pub fn param(name: &str) -> u64 {
    let v = std::env::var(name).unwrap_or_else(|_| panic!("parameter {name} not passed to the child"));
    v.parse()
        .unwrap_or_else(|_| panic!("parameter {name}={v} is not a number"))
}

/// Child: sends a reply line to the parent.
pub fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{PREFIX}{msg}").expect("write to parent");
    out.flush().expect("flush to parent");
}

/// Child: waits for the parent's next command line.
pub fn hear() -> String {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("read from parent");
    line.trim_end().to_string()
}

/// Parent's handle on a child domain process.
pub struct ChildDomain {
    child: Child,
    stdin: Option<ChildStdin>,
    replies: Receiver<String>,
    role: String,
}

impl ChildDomain {
    /// Runs `test` of this binary as role `role`, joining `dir`, with the
    /// extra environment `params`.
    pub fn spawn(test: &str, role: &str, dir: &TestDir, params: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, role)
            .env(DIR_VAR, &dir.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in params {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child domain");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness may have printed `test child ... ` on the
                // same line before the child's first reply.
                if let Some((_, msg)) = line.split_once(PREFIX) {
                    if tx.send(msg.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        ChildDomain {
            child,
            stdin,
            replies: rx,
            role: role.to_string(),
        }
    }

    /// Sends a command line.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("child stdin open");
        writeln!(stdin, "{cmd}").expect("write to child");
        stdin.flush().expect("flush to child");
    }

    /// Waits for the next reply.
    pub fn reply(&mut self) -> String {
        match self.replies.recv_timeout(REPLY_TIMEOUT) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => panic!("child {} did not answer within {REPLY_TIMEOUT:?}", self.role),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait();
                panic!("child {} exited without answering: {status:?}", self.role)
            }
        }
    }

    /// Waits for a reply and checks it.
    pub fn expect(&mut self, want: &str) {
        let got = self.reply();
        assert_eq!(got, want, "child {} answered {got:?}, expected {want:?}", self.role);
    }

    /// Waits for the child to exit (bounded).
    pub fn wait(mut self) -> ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait for child") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("child {} did not exit within {REPLY_TIMEOUT:?}", self.role);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the child and checks it passed.
    pub fn finish(self) {
        let role = self.role.clone();
        let status = self.wait();
        assert!(
            status.success(),
            "child {role} failed: {status:?} (its output is above)"
        );
    }
}

impl Drop for ChildDomain {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
