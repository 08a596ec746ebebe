//! SIGINT and SIGTERM (binary only): both are blocked in every thread from the start and taken by
//! one thread with sigwait(3), which finishes the run in order — the metrics file written (exit
//! code 130 for SIGINT, 143 for SIGTERM, what systemd's stop sends), held repository locks removed,
//! the terminal's echo restored if a password prompt had turned it off — then exits the process.
//! A plain handler could do none of that safely; a thread outside signal context can.

use super::password::{termios_get, termios_set};
use std::sync::OnceLock;

/// The exit code of a run stopped by `signal`: 128 + its number (130 SIGINT, 143 SIGTERM), the shell's convention.
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// The terminal's settings when imgarc started, to put back if a prompt is interrupted with echo off.
static TTY_AT_START: OnceLock<Option<libc::termios>> = OnceLock::new();

/// Blocks SIGINT and SIGTERM and starts the thread that waits for them; `on_signal` runs on
/// that thread and must end the process. Call before any other thread starts (they inherit the
/// mask; child processes do not: the standard library resets it before exec).
#[allow(unsafe_code)] // sigemptyset/sigaddset/pthread_sigmask/sigwait(3) on a sigset_t we own
pub fn install(on_signal: impl Fn(i32) + Send + 'static) -> std::io::Result<()> {
    TTY_AT_START.get_or_init(tty_settings);
    // SAFETY: sigset_t is plain data that sigemptyset initializes.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; SIGINT and SIGTERM are valid signal numbers.
    let blocked = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if blocked != 0 {
        return Err(std::io::Error::from_raw_os_error(blocked));
    }
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        let mut signal = 0;
        // SAFETY: `set` lives in this closure; sigwait writes the signal number into `signal`.
        if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
            on_signal(signal);
        }
    })?;
    Ok(())
}

/// "SIGINT" or "SIGTERM", for the message.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Puts the terminal's echo back as it was at start, if it is off now (an interrupted password prompt).
pub fn restore_tty() {
    use std::os::fd::AsRawFd;
    let Some(Some(saved)) = TTY_AT_START.get() else { return };
    let Ok(tty) = std::fs::File::open("/dev/tty") else { return };
    if let Ok(now) = termios_get(tty.as_raw_fd()) {
        if now.c_lflag & libc::ECHO != saved.c_lflag & libc::ECHO {
            let _ = termios_set(tty.as_raw_fd(), saved);
        }
    }
}

fn tty_settings() -> Option<libc::termios> {
    use std::os::fd::AsRawFd;
    let tty = std::fs::File::open("/dev/tty").ok()?;
    termios_get(tty.as_raw_fd()).ok()
}
