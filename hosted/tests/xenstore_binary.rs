//! The standalone `xenstored` binary: serves on `--socket`, stops on
//! SIGTERM and removes its socket, refuses bad arguments.

use std::process::Command;
use std::time::{Duration, Instant};

use hosted::xenstore::connect;

#[test]
fn serves_until_sigterm_and_cleans_up() {
    let socket = std::env::temp_dir().join(format!("xs-bin-{}.sock", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_xenstored"))
        .arg("--socket")
        .arg(&socket)
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let mut xs = loop {
        if let Ok(xs) = connect(&socket) {
            break xs;
        }
        assert!(Instant::now() < end, "the daemon never listened");
        std::thread::sleep(Duration::from_millis(20));
    };
    xs.write("/tool/test", "hello").unwrap();
    assert_eq!(xs.read("/tool/test").unwrap(), b"hello");
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to our own child process, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket file was left behind");
}

#[test]
fn bad_arguments_are_refused() {
    for args in [&[][..], &["--socket"][..], &["--bogus"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_xenstored"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_xenstored"))
        .args(["--socket", "/nonexistent-dir/xs.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}
