//! Helper roles the checks run as separate processes (this same binary):
//! what no shell applet can do exactly.
use std::{io::ErrorKind, net::TcpStream, time::Duration};

/// Exit code of `connect` when the kernel refused with EPERM.
pub const EPERM_EXIT: i32 = 13;

pub fn main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("threads") => threads(args.get(1).and_then(|c| c.parse().ok()).unwrap_or(7)),
        Some("spin") => spin(args.get(1).and_then(|c| c.parse().ok()).unwrap_or(8)),
        Some("fork") => fork(),
        Some("connect") => connect(args.get(1).map_or("", String::as_str)),
        Some("sendto") => sendto(args.get(1).map_or("", String::as_str)),
        _ => {
            eprintln!(
                "spyglass-kernel-check helper: threads CODE | spin N | fork | connect ADDR | sendto ADDR"
            );
            2
        }
    }
}

/// The main thread ends first; a second thread ends the process with
/// `code`. The exit record must name the process once, with the code.
fn threads(code: i32) -> i32 {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::process::exit(code);
    });
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: the raw exit(2) syscall ends the calling (main) thread only,
    // without unwinding; the process lives on in the spawned thread, which
    // owns nothing of this thread's stack.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("exit(2) returned")
}

/// `n` threads and the main thread spin until the process is killed: all
/// of them exit at once, on every CPU.
fn spin(n: usize) -> i32 {
    for _ in 0..n {
        std::thread::spawn(|| loop {
            std::hint::spin_loop();
        });
    }
    loop {
        std::hint::spin_loop();
    }
}

/// fork(2) without exec: prints the child's pid, reaps it.
fn fork() -> i32 {
    // SAFETY: the child only calls _exit.
    let child = unsafe { libc::fork() };
    match child {
        // SAFETY: _exit in the forked child; nothing else runs there.
        0 => unsafe { libc::_exit(0) },
        -1 => 1,
        pid => {
            println!("{pid}");
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &raw mut status, 0) };
            0
        }
    }
}

/// One UDP datagram to `addr` from an unconnected socket (sendto(2)):
/// exit [`EPERM_EXIT`] when the kernel refuses it.
fn sendto(addr: &str) -> i32 {
    let sent = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"x", addr));
    match sent {
        Ok(_) => 0,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => EPERM_EXIT,
        Err(e) => {
            eprintln!("sendto {addr}: {e}");
            1
        }
    }
}

/// TCP connect to `addr`: 0 when connected, [`EPERM_EXIT`] when refused by
/// policy (EPERM), 1 otherwise.
fn connect(addr: &str) -> i32 {
    match TcpStream::connect(addr) {
        Ok(_) => 0,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => EPERM_EXIT,
        Err(e) => {
            eprintln!("connect {addr}: {e}");
            1
        }
    }
}
