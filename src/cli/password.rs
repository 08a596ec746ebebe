//! Where the repository password comes from (binary only): the global
//! `--password-command` / `--password-file` flags, `IMGARC_PASSWORD_FILE`,
//! `IMGARC_PASSWORD`, systemd's `$CREDENTIALS_DIRECTORY/imgarc-password`,
//! then a prompt without echo on `/dev/tty` — first match wins. Asked lazily
//! (only an encrypted repository asks) and at most once per process. With no
//! source and no terminal it fails at once, naming the sources: never a hang.
//! No password, nor any output of a password command, is ever put in an error.

use anyhow::{bail, Context, Result};
use imgarc::crypto::keyfile::PasswordSource;
use imgarc::secret::Secret;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use zeroize::Zeroizing;

/// The sources, in the order they are tried, as every "no password" error names them.
pub const SOURCES: &str = "--password-command, --password-file, IMGARC_PASSWORD_FILE, IMGARC_PASSWORD, \
                           $CREDENTIALS_DIRECTORY/imgarc-password, or a terminal to prompt on";

/// The systemd credential name (`LoadCredential=imgarc-password:/path`).
const CREDENTIAL: &str = "imgarc-password";

/// What the user gave on the command line and in the environment, read once
/// at start-up; the password itself is read only when asked for.
#[derive(Debug, Clone, Default)]
pub struct PasswordSpec {
    pub command: Option<String>,
    pub file: Option<PathBuf>,
}

/// The repository password for this process: resolved on first use, then kept.
pub struct CliPasswords {
    spec: PasswordSpec,
    /// Whether a terminal prompt asks twice (a new repository's first key).
    confirm: bool,
    resolved: OnceLock<Secret>,
}

impl CliPasswords {
    pub fn new(spec: PasswordSpec) -> CliPasswords {
        CliPasswords { spec, confirm: false, resolved: OnceLock::new() }
    }

    /// For `init`: a prompt asks twice and the two answers must match.
    pub fn confirming(spec: PasswordSpec) -> CliPasswords {
        CliPasswords { confirm: true, ..CliPasswords::new(spec) }
    }

    fn resolve(&self) -> Result<Secret> {
        let env_file = std::env::var_os("IMGARC_PASSWORD_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
        let (password, from) = if let Some(cmd) = &self.spec.command {
            (from_command(cmd)?, format!("--password-command {cmd:?}"))
        } else if let Some(file) = &self.spec.file {
            (from_file(file).with_context(|| format!("--password-file {}", file.display()))?, format!("--password-file {}", file.display()))
        } else if let Some(file) = env_file {
            (
                from_file(&file).with_context(|| format!("IMGARC_PASSWORD_FILE={}", file.display()))?,
                format!("IMGARC_PASSWORD_FILE={}", file.display()),
            )
        } else if let Some(pw) = std::env::var_os("IMGARC_PASSWORD").filter(|v| !v.is_empty()) {
            let pw = pw.into_string().map_err(|_| anyhow::anyhow!("IMGARC_PASSWORD is not valid UTF-8"))?;
            (Zeroizing::new(pw), "IMGARC_PASSWORD".to_string())
        } else if let Some(file) = credential_file() {
            (
                from_file(&file).with_context(|| format!("systemd credential {}", file.display()))?,
                format!("systemd credential {}", file.display()),
            )
        } else {
            (prompt(self.confirm)?, "the terminal".to_string())
        };
        if password.is_empty() {
            bail!("the password from {from} is empty: an empty password is refused");
        }
        Ok(Secret::new(password.as_str()))
    }
}

impl PasswordSource for CliPasswords {
    fn password(&self) -> Result<Secret> {
        if let Some(p) = self.resolved.get() {
            return Ok(p.clone());
        }
        let p = self.resolve()?;
        Ok(self.resolved.get_or_init(|| p).clone())
    }
}

/// The password of `copy --to REPO2`'s target: `--to-password-file`, else
/// `IMGARC_TO_PASSWORD_FILE`, else `IMGARC_TO_PASSWORD`, else the source's
/// password (the same sources as every verb). Asked lazily, at most once.
pub struct TargetPasswords<'a> {
    file: Option<PathBuf>,
    source: &'a CliPasswords,
    resolved: OnceLock<Secret>,
}

impl<'a> TargetPasswords<'a> {
    pub fn new(file: Option<PathBuf>, source: &'a CliPasswords) -> TargetPasswords<'a> {
        TargetPasswords { file, source, resolved: OnceLock::new() }
    }

    fn resolve(&self) -> Result<Secret> {
        let env_file = std::env::var_os("IMGARC_TO_PASSWORD_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
        let (password, from) = if let Some(file) = &self.file {
            (
                from_file(file).with_context(|| format!("--to-password-file {}", file.display()))?,
                format!("--to-password-file {}", file.display()),
            )
        } else if let Some(file) = env_file {
            (
                from_file(&file).with_context(|| format!("IMGARC_TO_PASSWORD_FILE={}", file.display()))?,
                format!("IMGARC_TO_PASSWORD_FILE={}", file.display()),
            )
        } else if let Some(pw) = std::env::var_os("IMGARC_TO_PASSWORD").filter(|v| !v.is_empty()) {
            let pw = pw.into_string().map_err(|_| anyhow::anyhow!("IMGARC_TO_PASSWORD is not valid UTF-8"))?;
            (Zeroizing::new(pw), "IMGARC_TO_PASSWORD".to_string())
        } else {
            return self.source.password();
        };
        if password.is_empty() {
            bail!("the target password from {from} is empty: an empty password is refused");
        }
        Ok(Secret::new(password.as_str()))
    }
}

impl PasswordSource for TargetPasswords<'_> {
    fn password(&self) -> Result<Secret> {
        if let Some(p) = self.resolved.get() {
            return Ok(p.clone());
        }
        let p = self.resolve()?;
        Ok(self.resolved.get_or_init(|| p).clone())
    }
}

/// A new password (`key add`, `key passwd`): `--new-password-file`, else a
/// terminal prompt asked twice. Never the repository password's sources: the
/// point is a different password.
pub fn new_password(file: Option<&Path>) -> Result<Secret> {
    let pw = match file {
        Some(f) => from_file(f).with_context(|| format!("--new-password-file {}", f.display()))?,
        None => prompt_on_tty("new password", true)
            .map_err(|e| e.context("no new password: pass --new-password-file FILE, or run on a terminal to be prompted (twice)"))?,
    };
    if pw.is_empty() {
        bail!("the new password is empty: an empty password is refused");
    }
    Ok(Secret::new(pw.as_str()))
}

/// `$CREDENTIALS_DIRECTORY/imgarc-password`, if systemd passed it.
fn credential_file() -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|v| !v.is_empty())?;
    let file = Path::new(&dir).join(CREDENTIAL);
    file.exists().then_some(file)
}

/// Drops one trailing newline (`\n` or `\r\n`): what `echo` and editors add.
fn strip_newline(mut s: Zeroizing<String>) -> Zeroizing<String> {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

fn from_file(path: &Path) -> Result<Zeroizing<String>> {
    let bytes = Zeroizing::new(std::fs::read(path).context("cannot read the password file")?);
    let text = std::str::from_utf8(&bytes).map_err(|_| anyhow::anyhow!("the password file is not valid UTF-8"))?;
    Ok(strip_newline(Zeroizing::new(text.to_string())))
}

/// Runs `sh -c CMD`; its standard output minus one trailing newline is the
/// password. Its standard error goes to ours (a helper may explain itself);
/// a failure names the command and its status, never what it printed.
fn from_command(cmd: &str) -> Result<Zeroizing<String>> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run the password command {cmd:?}"))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        bail!("the password command {cmd:?} failed ({})", out.status);
    }
    let text = std::str::from_utf8(&stdout).map_err(|_| anyhow::anyhow!("the password command {cmd:?} printed invalid UTF-8"))?;
    Ok(strip_newline(Zeroizing::new(text.to_string())))
}

fn prompt(confirm: bool) -> Result<Zeroizing<String>> {
    prompt_on_tty("repository password", confirm).map_err(|e| e.context(format!("no password given: use {SOURCES}")))
}

/// Asks on the controlling terminal with echo off (twice when `confirm`).
/// Without a controlling terminal, opening `/dev/tty` fails at once (ENXIO).
fn prompt_on_tty(what: &str, confirm: bool) -> Result<Zeroizing<String>> {
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").context("no terminal to prompt on")?;
    let first = read_hidden(&tty, &format!("Enter {what}: "))?;
    if confirm {
        let second = read_hidden(&tty, &format!("Enter {what} again: "))?;
        if *first != *second {
            bail!("the two passwords differ");
        }
    }
    Ok(first)
}

/// One line from `tty` with echo off; echo is restored even if reading fails.
fn read_hidden(tty: &std::fs::File, prompt: &str) -> Result<Zeroizing<String>> {
    use std::os::fd::AsRawFd;
    let fd = tty.as_raw_fd();
    let mut writer = tty;
    writer.write_all(prompt.as_bytes())?;
    writer.flush()?;
    let saved = termios_get(fd)?;
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ECHONL);
    quiet.c_lflag |= libc::ICANON;
    termios_set(fd, &quiet)?;
    let mut line = Zeroizing::new(String::new());
    let read = std::io::BufReader::new(tty).read_line(&mut line);
    let restored = termios_set(fd, &saved);
    let _ = writer.write_all(b"\n");
    let n = read.context("cannot read the password from the terminal")?;
    restored?;
    if n == 0 {
        bail!("no password typed (end of input on the terminal)");
    }
    Ok(strip_newline(line))
}

#[allow(unsafe_code)] // tcgetattr(3) on a descriptor we own
pub(super) fn termios_get(fd: i32) -> Result<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot read the terminal's settings");
    }
    Ok(t)
}

#[allow(unsafe_code)] // tcsetattr(3) on a descriptor we own
pub(super) fn termios_set(fd: i32, t: &libc::termios) -> Result<()> {
    // SAFETY: `t` is a valid termios from tcgetattr.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot change the terminal's settings");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(strip_newline(Zeroizing::new("pw\n".into())).as_str(), "pw");
        assert_eq!(strip_newline(Zeroizing::new("pw\r\n".into())).as_str(), "pw");
        assert_eq!(strip_newline(Zeroizing::new("pw\n\n".into())).as_str(), "pw\n");
        assert_eq!(strip_newline(Zeroizing::new("pw ".into())).as_str(), "pw ");
    }
}
